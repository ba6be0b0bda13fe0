"""Every import points down the layers of docs/architecture.md: a lower layer never imports a
higher one (lazy imports inside functions count too). `python -m tests.test_layers` prints
the import graph by layer."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sadump"

#: (layer, module prefixes), bottom first; the longest matching prefix decides
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("sadump.errors", "sadump.constants", "sadump.checksum", "sadump.zero_pages",
              "sadump.libc")),
    ("formats", ("sadump.formats",)),
    ("arch", ("sadump.ipl", "sadump.meminfo_reader")),
    ("kernel", ("sadump.kernel",)),
    ("trigger", ("sadump.trigger",)),
    ("analysis", ("sadump.analysis",)),
    ("plan+writers", ("sadump.dump_plan", "sadump.page_filter", "sadump.writers")),
    ("render", ("sadump.render",)),
    ("cli", ("sadump.cli", "sadump.sample", "sadump.__main__", "sadump")),
]


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sadump")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sadump"):
            found.add(node.module)
            known = modules()
            for a in node.names:  # `from sadump.formats import elf` imports a module
                if f"{node.module}.{a.name}" in known:
                    found.add(f"{node.module}.{a.name}")
    return found


def upward_edges() -> list[str]:
    bad = []
    for name, path in modules().items():
        for target in sorted(imports(path)):
            if target != "sadump" and layer_of(target) > layer_of(name):
                bad.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
                           f"({LAYERS[layer_of(target)][0]})")
    return bad


def test_no_import_points_up():
    assert upward_edges() == []


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


if __name__ == "__main__":
    mods = modules()
    for i, (layer, _) in enumerate(LAYERS):
        print(f"== {i} {layer}")
        for name in sorted(m for m in mods if layer_of(m) == i):
            deps = sorted(t for t in imports(mods[name]) if t != name)
            print(f"  {name} -> {', '.join(deps) or '-'}")
    print("upward edges:", upward_edges() or "none")

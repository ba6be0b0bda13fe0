"""The BTF index and `sadump modules` on the hung Debian 13 guest (6.12, 3.85 MB of BTF,
88,137 types), side by side with what bounds them:

    python benchmarks/btf_modules.py [--repeat N]

- index: `Btf.from_bytes` of the guest's /sys/kernel/btf/vmlinux in this process, against
  `bpftool btf dump file` of the same blob (libbpf's parser plus its text output; when
  bpftool is installed) and `cp` of the file;
- find: the kernel's BTF in the raw image, from [__start_BTF, __stop_BTF) and by the
  validated scan of the kernel image (kallsyms decoded beforehand, not counted);
- modules: `sadump modules` as a child on the raw image, the QEMU ELF and the kdump-flat
  file, against the bare start-up of the same interpreter importing typer and construct.

Files come from $SADUMP_REAL_CACHE/deb13, else are decompressed once into
$TMPDIR/sadump-bench/deb13. Medians of --repeat runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BLOB = "deb13/deb13hung-a.btf-vmlinux.bin"
IMAGES = ["deb13/deb13hung-a.raw", "deb13/deb13hung-a.qemu.elf",
          "deb13/deb13hung-a.qemu-kdump-zlib.flat"]


def real_path(name: str) -> Path:
    cache = os.environ.get("SADUMP_REAL_CACHE")
    if cache and (Path(cache) / name).is_file():
        return Path(cache) / name
    target = Path(tempfile.gettempdir()) / "sadump-bench" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        src = ROOT.parent / "shared" / "real" / f"{name}.zst"
        subprocess.run(["zstd", "-q", "-d", "--long=31", str(src), "-o", str(target)],
                       check=True)
    return target


def median_call(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def median_child(argv: list[str], repeat: int) -> float:
    return median_call(lambda: subprocess.run(argv, check=True, stdout=subprocess.DEVNULL,
                                                     stderr=subprocess.DEVNULL),
                       repeat)


def row(what: str, seconds: float, base: float | None = None, base_name: str = "") -> None:
    ratio = f"{seconds / base:6.2f} x {base_name}" if base else ""
    print(f"{what:<46} {seconds * 1000:9.1f} ms  {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    from sadump.analysis import analyse
    from sadump.kernel import btf as B

    blob_path = real_path(BLOB)
    blob = blob_path.read_bytes()
    index = median_call(lambda: B.Btf.from_bytes(blob), args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        cp = median_child(["cp", str(blob_path), os.path.join(tmp, "copy")], args.repeat)
    print(f"BTF: {len(blob):,} bytes, {len(B.Btf.from_bytes(blob)) - 1:,} types")
    row("index (Btf.from_bytes)", index, cp, "cp of the blob")
    if shutil.which("bpftool"):
        bpftool = median_child(["bpftool", "btf", "dump", "file", str(blob_path)], args.repeat)
        row("bpftool btf dump file (libbpf)", bpftool, cp, "cp of the blob")
        row("index against bpftool", index, bpftool, "bpftool")
    else:
        print("bpftool: not installed, row left out")

    a = analyse(str(real_path(IMAGES[0])))
    try:
        syms = a.symbols()
        row("find: [__start_BTF, __stop_BTF) + index",
            median_call(lambda: B.btf_from_symbols(a.kernel_memory, syms), args.repeat),
            index, "index")
        where = B.scan_range(syms)
        row("find: scan of the kernel image + index + check",
            median_call(lambda: B.scan_for_btf(a.kernel_memory, *where), args.repeat),
            index, "index")
    finally:
        a.close()

    startup = median_child([sys.executable, "-c", "import typer, construct"], args.repeat)
    row("python -c 'import typer, construct'", startup)
    for name in IMAGES:
        t = median_child([sys.executable, "-m", "sadump", "modules", str(real_path(name))],
                         args.repeat)
        row(f"sadump modules {Path(name).name}", t, startup, "start-up")


if __name__ == "__main__":
    main()

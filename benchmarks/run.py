"""sadump's speed and memory as ratios against cp, zstd and lz4, measured side by side in one
run on the same files.

    python benchmarks/run.py [--repeat N] [--drop-caches] [--work DIR] [--real-cache DIR]
                             [--tree DIR] [--versus DIR] [--only WORDS] [--json FILE]

Options:
  --repeat N        runs of every command; the table shows the median (default 3)
  --drop-caches     also time the dump-vs-cp cases with cold caches: before each run
                    `sync; echo 3 > /proc/sys/vm/drop_caches` (root only; else said and skipped)
  --work DIR        folder for the test files and outputs (default $TMPDIR/sadump-bench). The
                    inputs are made once and kept for the next run (about 2 GiB on disk); every
                    output is deleted after its run. The free space is checked first.
  --real-cache DIR  a folder that already holds a decompressed rimg-kdump.raw and
                    rimg-kdump.qemu.elf (default $SADUMP_REAL_CACHE); else they are
                    decompressed from ../shared/real/*.zst into the work folder (sparse)
  --tree DIR        the sadump source tree to measure (default: the one holding this script)
  --versus DIR      another tree (e.g. `git archive` of an older commit) whose sadump runs
                    interleaved with the first: columns "--versus" and "its ratio" (to the
                    same reference run), for before/after figures from one run
  --only WORDS      only the cases whose name holds one of these comma-separated words
  --json FILE       also write every run (not only the medians) as JSON

Files:
  real-1g        rimg-kdump.raw: 1 GiB of a real s390x guest, ~95% zero pages, sparse on disk
                 (cp copies only its 50 MiB of data: no target; the real image's is on
                 real-1g-alloc)
  real-1g-alloc  the same bytes with every zero written out (like a fresh QEMU pmemsave file)
  qemu-elf-1g    rimg-kdump.qemu.elf: the same memory as QEMU's dump-guest-memory wrote it
  dense-1g       real-1g with every all-zero page outside the first 64 MiB filled with random
                 bytes, except inside the kexec segments that the kdump kernel's digest covers
                 (so the lowcore, os_info, VMCOREINFO and the digest stay valid: kdump path)
  synth-1g/4g/16g  fixture-builder images (tests/fixtures/builder.py): lowcore, os_info,
                 VMCOREINFO, a kdump kernel with its kexec digest at the top, the rest holes

Method: every command runs as a child (fork + exec), timed from the fork until its output is
on disk: after the child exits the benchmark fsyncs the output file and its folder, for every
tool alike (sadump fsyncs both itself, so there the second fsync finds nothing to do). Peak
RSS is the child's ru_maxrss from os.wait4 (never less than what this script held at the
fork, 10-25 MiB); CPU is the child's user + system time. The commands of one case run
interleaved (sadump, reference, sadump, ...); for warm runs the input is read once before. `cp` is GNU cp:
it keeps the holes of a sparse input, so cp of a sparse file is itself fast. "less start-up"
is the ratio once sadump's fixed start-up (the "sadump CLI floor" row: interpreter, imports,
argument parsing, no image) is taken off its time. The kdump-format rows compare
`sadump dump --mode full --format kdump --compress zstd` (all memory: the bytes zstd reads)
with `zstd -1 -T0` and `lz4 -1`; they say "n/a (not implemented)" when `sadump dump --help`
offers no --compress. Their size row compares the page data (the file less its fixed cost:
headers, both bitmaps, 24 bytes of descriptor per page and the zero page, read from the
written file's header) with zstd's output. The "no check" / "read-back check" rows run
with SADUMP_VERIFY=none / file (the default decodes each compressed page in memory); the
"no pyelftools check" row shows what the check of each written ELF dump costs.
"start-up" rows: sadump's time less that of importing its chosen libraries alone (typer and
construct; rich too where the text report uses it): the decided budget is 40 ms; the "of which"
rows show what those imports add to the bare interpreter.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
REAL_DIR = HERE.parent / "shared" / "real"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

MiB, GiB = 1 << 20, 1 << 30
PAGE = 4096
ZERO_PAGE = bytes(PAGE)
DENSE_KEEP = 64 * MiB  # dense variant: the first 64 MiB stay as they are
NEED_FREE = 4 * GiB  # the inputs this script makes (2 GiB) and the largest outputs
DROP_CACHES = "/proc/sys/vm/drop_caches"
SADUMP = [sys.executable, "-m", "sadump"]
TREE = [HERE]  # the sadump source tree measured
VERSUS: list[Path] = []  # --versus: another tree, run side by side


def use_tree(tree: Path) -> None:
    TREE[0] = tree
    compile_tree(tree)


def compile_tree(tree: Path) -> None:
    """Byte-compile the tree's sadump once, as `pip install` does for an installed one: with
    PYTHONDONTWRITEBYTECODE set (as on the development machines) every run would otherwise
    compile its modules again, some 50 ms that no installed sadump pays."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "sadump")],
                   check=True, stdout=subprocess.DEVNULL)


def tree_env(tree: Path) -> dict[str, str]:
    """Children of a tree start in it (python -m looks there first), with it on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


# ---- running one command ----------------------------------------------------------------------
@dataclass
class Run:
    seconds: float
    cpu: float  # user + system seconds of the child
    rss_kib: int
    out_bytes: int = 0  # the output's length
    fixed: int = 0  # kdump output: bytes before its page data (headers, bitmaps, descriptors)


def fsync_path(path: Path) -> None:
    for p, flags in ((path, os.O_RDONLY), (path.parent, os.O_RDONLY | os.O_DIRECTORY)):
        try:
            fd = os.open(p, flags)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def drop_caches() -> None:
    os.sync()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")


def can_drop_caches() -> bool:
    try:
        drop_caches()
        return True
    except OSError:
        return False


def spawn(cmd: list[str], err_fd: int, tree: Path, env: dict | None = None) -> int:
    """fork + exec, not vfork: the child's ru_maxrss then starts from this script's current
    RSS, not from its high-water mark."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.chdir(tree)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(err_fd, 2)
            os.execvpe(cmd[0], cmd, {**tree_env(tree), **(env or {})})
        finally:
            os._exit(127)
    return pid


def run(cmd: list[str], out: Path | None, ok=(0,), cold: bool = False,
        tree: Path | None = None, env: dict | None = None) -> Run:
    """Time cmd until its output is on disk; its peak RSS and CPU time from wait4."""
    if out is not None:
        out.unlink(missing_ok=True)
    if cold:
        drop_caches()
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        pid = spawn(cmd, err.fileno(), tree or TREE[0], env)
        _, status, usage = os.wait4(pid, 0)
        if out is not None:
            fsync_path(out)
        took = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code not in ok:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-3:]
            raise SystemExit(f"{' '.join(cmd)}: status {code}: " + " / ".join(tail))
    result = Run(took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)
    if out is not None and out.exists():
        result.out_bytes = out.stat().st_size
        result.fixed = kdump_fixed(out)
        out.unlink()
        os.sync()  # the freed blocks are released now, not during the next run
    return result


def kdump_fixed(path: Path) -> int:
    """A kdump-compressed file's bytes before its page data: main header, sub header and
    notes, both bitmaps, one descriptor per dumped page, the shared zero page (0: no such
    file). Read from its header (spec dump-formats 3: big-endian s390x files)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        if head[:8] != b"KDUMP   ":
            return 0

        def be(off: int) -> int:
            return int.from_bytes(head[off:off + 4], "big")

        bs, sub_blocks, bitmap_blocks = be(428), be(432), be(436)
        bitmap_len = bitmap_blocks * bs // 2
        f.seek((1 + sub_blocks) * bs)
        first = f.read(bitmap_len)
        pages = sum(b.bit_count() for b in first)  # level 1: both bitmaps alike
    return (1 + sub_blocks + bitmap_blocks) * bs + 24 * pages + bs


def warm(path: Path) -> None:
    """Read a file's data once so that the page cache holds it (its holes are skipped)."""
    buf = bytearray(MiB)
    fd = os.open(path, os.O_RDONLY)
    try:
        pos, size = 0, os.fstat(fd).st_size
        while pos < size:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, pos, os.SEEK_HOLE)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only holes are left
                    break
                end = size  # no hole support: read the rest
            while pos < end:
                pos += os.preadv(fd, [buf], pos) or end - pos
    finally:
        os.close(fd)


# ---- the files --------------------------------------------------------------------------------
def real_file(name: str, work: Path, cache: str | None) -> Path | None:
    """A decompressed real image: from the cache folder, the work folder, or decompressed."""
    if cache and (Path(cache) / name).is_file():
        return (Path(cache) / name).resolve()
    mine = work / name
    if mine.is_file():
        return mine
    src = REAL_DIR / f"{name}.zst"
    if not src.is_file():
        return None
    from tests.fixtures import decompress_zst_sparse

    print(f"decompressing {src.name} (sparse) into {work}", file=sys.stderr)
    return decompress_zst_sparse(src, mine)


def _stamp(dst: Path) -> Path:
    return dst.with_name(dst.name + ".made-from")


def _key(src: Path, how: str) -> str:
    return f"{src} {src.stat().st_size} {src.stat().st_mtime_ns} {how}"


def made_from(src: Path, dst: Path, how: str) -> bool:
    """dst exists and was made from this src by this recipe (its stamp file says so)."""
    stamp = _stamp(dst)
    return dst.is_file() and stamp.is_file() and stamp.read_text() == _key(src, how)


def keep_stamp(src: Path, dst: Path, how: str) -> None:
    _stamp(dst).write_text(_key(src, how))


def kexec_segments(image: Path) -> list[tuple[int, int]]:
    """The regions the kdump kernel's digest covers, from sadump's own report."""
    p = subprocess.run([*SADUMP, "inspect-meminfo", "--json", str(image)],
                       env=tree_env(TREE[0]), cwd=TREE[0], capture_output=True, text=True,
                       check=False)
    try:
        segs = json.loads(p.stdout)["kdump_kernel"]["segments"]
    except (ValueError, KeyError, TypeError):
        return []
    return [(s, n) for s, n in segs or []]


def make_dense(real: Path, dst: Path) -> Path:
    """real with every zero page past DENSE_KEEP (outside the kexec segments) made random."""
    if made_from(real, dst, "dense v1"):
        return dst
    print(f"making {dst.name} (1 GiB, mostly random bytes)", file=sys.stderr)
    keep = [(s, s + n) for s, n in kexec_segments(real)]
    rng = random.Random(1)
    part = dst.with_name(dst.name + ".part")
    with open(real, "rb", buffering=0) as fin, open(part, "wb", buffering=0) as fout:
        pos = 0
        while block := fin.read(MiB):
            buf = bytearray(block)
            for off in range(0, len(buf), PAGE):
                a = pos + off
                if a < DENSE_KEEP or any(s < a + PAGE and a < e for s, e in keep):
                    continue
                if buf[off:off + PAGE] == ZERO_PAGE:
                    buf[off:off + PAGE] = rng.randbytes(PAGE)
            fout.write(buf)
            pos += len(buf)
        os.fsync(fout.fileno())
    os.replace(part, dst)
    keep_stamp(real, dst, "dense v1")
    return dst


def make_allocated(real: Path, dst: Path) -> Path:
    """real with its holes written out as zeros (not sparse)."""
    if made_from(real, dst, "alloc v1"):
        return dst
    print(f"making {dst.name} (1 GiB, zeros written out)", file=sys.stderr)
    part = dst.with_name(dst.name + ".part")
    subprocess.run(["cp", "--sparse=never", str(real), str(part)], check=True)
    os.replace(part, dst)
    keep_stamp(real, dst, "alloc v1")
    return dst


def make_synthetic(size: int, dst: Path) -> Path:
    """A fixture-builder image of `size` bytes: real structures, the rest holes."""
    if dst.is_file() and dst.stat().st_size == size:
        return dst
    from tests.fixtures.builder import ImageSpec, write_raw

    return write_raw(ImageSpec(mem_size=size, kexec_segments=True), dst)


# ---- cases ------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    sadump: list[str] | None  # None: not implemented by this tree
    ref: list[str] | None  # None: an absolute row
    ref_name: str = "cp"
    target: str = ""
    limit: float | None = None  # the ratio (or, without ref, the seconds) that meets it
    out: bool = True  # the commands write {out}
    ok: tuple[int, ...] = (0, 3)  # sadump statuses that are success (3: full dump fallback)
    cold: bool = False
    size_limit: float | None = None  # compressors: output size ratio that meets the target
    sizes: bool = False
    na: str = "n/a (not implemented)"  # what the row says when sadump is None
    versus: bool = True  # also run sadump's command with the --versus tree
    env: dict = field(default_factory=dict)  # extra environment of sadump's command
    delta: float | None = None  # start-up rows: met when sadump - reference <= delta seconds
    added: bool = False  # show sadump - reference in seconds (start-up rows), not a ratio
    runs: dict[str, list[Run]] = field(
        default_factory=lambda: {"sadump": [], "versus": [], "ref": []})

    def input(self) -> Path | None:
        return next((Path(a) for a in (self.sadump or [])[3:] if os.path.isfile(a)), None)


def run_case(case: Case, out: Path, repeat: int) -> None:
    if case.sadump is None:
        return
    if case.input() is not None and not case.cold:
        warm(case.input())
    cmds = [("sadump", case.sadump, case.ok, TREE[0], case.env)]
    if VERSUS and case.versus:
        cmds.append(("versus", case.sadump, case.ok, VERSUS[0], case.env))
    cmds.append(("ref", case.ref, (0,), TREE[0], {}))
    for _ in range(repeat):
        for who, cmd, ok, tree, env in cmds:
            if cmd is not None:
                full = [a.replace("{out}", str(out)) for a in cmd]
                case.runs[who].append(run(full, out if case.out else None, ok, case.cold, tree,
                                          env))


def has_kdump_format(tree: Path) -> bool:
    help_text = subprocess.run([*SADUMP, "dump", "--help"], env=tree_env(tree), cwd=tree,
                               capture_output=True, text=True, check=False).stdout
    return "kdump" in help_text and "--compress" in help_text


def median(runs: list[Run], what: str = "seconds") -> float:
    return statistics.median(getattr(r, what) for r in runs)


# ---- the table --------------------------------------------------------------------------------
HEAD = ("case", "sadump", "reference", "ratio", "--versus", "its ratio", "less start-up",
        "target", "met", "CPU ratio", "RSS MiB sadump/ref")


def rows_of(c: Case, floor: float | None) -> list[tuple[str, ...]]:
    s, v, r = c.runs["sadump"], c.runs["versus"], c.runs["ref"]
    if c.sadump is None:
        return [(c.name, c.na, c.ref_name if c.ref else "", "", "", "", "", c.target, "", "",
                 "")]
    if not s:
        return []
    rss = f"{max(x.rss_kib for x in s) / 1024:.0f}"
    ts = median(s)
    tv = f"{median(v):.3f} s" if v else ""
    if c.ref is None:
        met = "" if c.limit is None else ("yes" if ts <= c.limit else "NO")
        return [(c.name, f"{ts:.3f} s", "-", "-", tv, "-", "-", c.target, met, "-", f"{rss}/-")]
    tr = median(r)
    ratio = ts / tr
    met = "" if c.limit is None else ("yes" if ratio <= c.limit else "NO")
    if c.delta is not None or c.added:
        met = "" if c.delta is None else "yes" if ts - tr <= c.delta else "NO"
        rss_r = max(x.rss_kib for x in r) / 1024
        return [(c.name, f"{ts:.3f} s", f"{c.ref_name} {tr:.3f} s", f"{ts - tr:+.3f} s", tv,
                 "", "-", c.target, met, "-", f"{rss}/{rss_r:.0f}")]
    less = f"{max(ts - floor, 0) / tr:.2f}" if floor is not None else "-"
    cpu = f"{median(s, 'cpu') / max(median(r, 'cpu'), 1e-3):.2f}"
    vratio = f"{median(v) / tr:.2f}" if v else ""
    out = [(c.name, f"{ts:.3f} s", f"{c.ref_name} {tr:.3f} s", f"{ratio:.2f}", tv, vratio, less,
            c.target, met, cpu, f"{rss}/{max(x.rss_kib for x in r) / 1024:.0f}")]
    if c.sizes:
        zs, zr, fixed = s[-1].out_bytes, r[-1].out_bytes, s[-1].fixed
        ok = "" if c.size_limit is None else (
            "yes" if zs <= c.size_limit * zr + fixed else "NO")
        want = (f"<= {c.size_limit}x + fixed {fixed / MiB:.2f} MiB" if c.size_limit else "")
        out.append(("  output size", f"{zs / MiB:.2f} MiB", f"{c.ref_name} {zr / MiB:.2f} MiB",
                    f"{zs / zr:.2f}; page data {(zs - fixed) / zr:.3f}", "", "", "", want,
                    ok, "", ""))
    return out


def table(cases: list[Case], extra: list[tuple[str, ...]], floor: float | None) -> str:
    rows = [HEAD] + [row for c in cases for row in rows_of(c, floor)] + extra
    if not VERSUS:
        rows = [row[:4] + row[6:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def summary_rows(cases: list[Case]) -> list[tuple[str, ...]]:
    by = {c.name: c for c in cases if c.runs["sadump"]}
    rows = []

    def growth(label: str, big: str, small: str) -> None:
        if big in by and small in by:
            r = median(by[big].runs["sadump"]) / median(by[small].runs["sadump"])
            rows.append((label, "", "", f"{r:.2f}", "", "", "", "~1",
                         "yes" if r < 1.25 else "NO", "", ""))

    growth("synth-16g / synth-4g dump time (same data)", "synth-16g ELF dump, kdump path",
           "synth-4g ELF dump, kdump path")
    growth("synth-16g / synth-1g inspect-meminfo time", "synth-16g inspect-meminfo",
           "synth-1g inspect-meminfo")
    peak = max((x.rss_kib for c in by.values() for x in c.runs["sadump"]), default=0)
    rows.append(("peak RSS of every sadump run", f"{peak / 1024:.0f} MiB", "", "", "", "",
                 "", "< 100 MiB", "yes" if peak < 100 * 1024 else "NO", "", ""))
    return rows


# ---- main -------------------------------------------------------------------------------------
def build_cases(files: dict[str, Path | None], cold: bool, kdump_fmt: bool,
                versus_kdump: bool) -> list[Case]:
    def dump(img: Path, *opts: str) -> list[str]:
        return [*SADUMP, "dump", str(img), "-o", "{out}", *opts]

    def cp(img: Path) -> list[str]:
        return ["cp", str(img), "{out}"]

    real, dense, alloc, qelf = (files[k] for k in ("real-1g", "dense-1g", "real-1g-alloc",
                                                   "qemu-elf-1g"))
    floor = Case("sadump CLI floor (dump, no image)", [*SADUMP, "dump", "no-such-image", "-o",
                 "{out}"], None, out=False, ok=(4,))
    bare = [sys.executable, "-c", "pass"]
    libs = [sys.executable, "-c", "import typer, construct"]
    libs_rich = [sys.executable, "-c", "import typer, construct, rich.console, rich.table"]
    cases = [Case("python -c pass", bare, None, out=False, versus=False), floor,
             # the decided budget: sadump's own share over its chosen libraries' imports
             Case("start-up: sadump --help", [*SADUMP, "--help"], libs, ref_name="libraries",
                  out=False, delta=0.04, target="<= typer, construct + 0.04 s"),
             Case("start-up: inspect-meminfo --sample", [*SADUMP, "inspect-meminfo",
                  "--sample"], libs_rich, ref_name="libraries", out=False, delta=0.04,
                  target="<= typer, construct, rich + 0.04 s"),
             Case("start-up: inspect-meminfo --sample --json", [*SADUMP, "inspect-meminfo",
                  "--sample", "--json"], libs, ref_name="libraries", out=False, delta=0.04,
                  target="<= typer, construct + 0.04 s"),
             # what any command pays before sadump's own code: the chosen CLI and layout
             # libraries' imports (typer brings click)
             Case("  of which: import typer, construct", [sys.executable, "-c",
                  "import typer, construct"], bare, ref_name="python", out=False,
                  versus=False, added=True),
             Case("  of which: import typer, construct, rich.table", [sys.executable, "-c",
                  "import typer, construct, rich.console, rich.table"], bare,
                  ref_name="python", out=False, versus=False, added=True)]
    for tag, is_cold in (("", False), (", cold", True)):
        if is_cold and not cold:
            continue
        # real-1g is sparse: cp copies its 50 MiB of data and nothing else, so its ratio has
        # no target; the target for the real image is on real-1g-alloc (as dump devices and
        # QEMU's pmemsave hold it)
        for name, img, limit in (("real-1g", real, None), ("dense-1g", dense, 1.1)):
            for path, opts in (("kdump", ()), ("full", ("--mode", "full"))):
                cases.append(Case(f"{name} ELF dump, {path} path{tag}", dump(img, *opts),
                                  cp(img), target=f"<= {limit}" if limit else "",
                                  limit=limit, cold=is_cold))
        cases.append(Case(f"dense-1g ELF dump, full path, no pyelftools check{tag}",
                          dump(dense, "--mode", "full"), cp(dense), cold=is_cold,
                          env={"SADUMP_VERIFY": "none"}))
        cases.append(Case(f"real-1g-alloc ELF dump, kdump path{tag}", dump(alloc), cp(alloc),
                          target="<= 0.35", limit=0.35, cold=is_cold))
        if qelf is not None:
            cases.append(Case(f"qemu-elf-1g ELF dump, kdump path{tag}", dump(qelf), cp(qelf),
                              cold=is_cold))
    for n in (4, 16):
        img = files[f"synth-{n}g"]
        cases += [Case(f"synth-{n}g ELF dump, kdump path", dump(img), cp(img)),
                  Case(f"synth-{n}g ELF dump, full path", dump(img, "--mode", "full"), cp(img)),
                  Case(f"synth-{n}g kdump-zstd, full path",
                       dump(img, "--mode", "full", "--format", "kdump") if kdump_fmt else None,
                       None)]
    for name, img in (("real-1g", real), ("dense-1g", dense)):
        kd = dump(img, "--mode", "full", "--format", "kdump", "--compress", "zstd")
        if shutil.which("zstd") is None or shutil.which("lz4") is None:
            cases.append(Case(f"{name} kdump-zstd vs zstd, lz4", None, None,
                              na="n/a (zstd or lz4 not on PATH)"))
            continue
        zstd = ["zstd", "-1", "-T0", "-q", "-f", str(img), "-o", "{out}"]
        cases.append(Case(f"{name} kdump-zstd vs zstd -1 -T0", kd if kdump_fmt else None,
                          zstd, ref_name="zstd", target="<= 1.25", limit=1.25,
                          size_limit=1.05, sizes=True, versus=versus_kdump))
        for mode, what in (("none", "no check"), ("file", "read-back check")):
            cases.append(Case(f"{name} kdump-zstd, {what} (default: in memory)",
                              kd if kdump_fmt else None, zstd, ref_name="zstd",
                              env={"SADUMP_VERIFY": mode}, versus=False))
        cases.append(Case(f"{name} kdump-zstd vs lz4 -1", kd if kdump_fmt else None,
                          ["lz4", "-1", "-q", "-f", str(img), "{out}"], ref_name="lz4",
                          sizes=True, versus=versus_kdump))
    deb13 = files.get("deb13-raw")
    # the task commands against sadump's own start-up (its --help): the kallsyms decode, the
    # BTF index, the task walk and (bt --all) every task's unwind
    startup = [*SADUMP, "--help"]
    for what, opts, delta in (("ps", ("ps",), 0.5), ("bt --all", ("bt", "--all"), 2.0)):
        cases.append(Case(f"deb13 {what}", [*SADUMP, *opts, str(deb13)] if deb13 else None,
                          startup, ref_name="sadump --help", out=False, delta=delta,
                          target=f"<= start-up + {delta} s",
                          na="n/a (no deb13hung-a.raw)"))
    for name in ("synth-1g", "synth-16g", "real-1g"):
        cases.append(Case(f"{name} inspect-meminfo", [*SADUMP, "inspect-meminfo",
                          str(files[name])], None, target="< 0.5 s", limit=0.5, out=False))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--drop-caches", action="store_true")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sadump-bench"))
    ap.add_argument("--real-cache", default=os.environ.get("SADUMP_REAL_CACHE"))
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--versus", default=None)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if shutil.which("cp") is None:
        raise SystemExit("cp is not on PATH")
    use_tree(Path(args.tree).resolve())
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    st = os.statvfs(work)
    have = [p for p in work.iterdir() if p.is_file()]
    free = st.f_bavail * st.f_frsize + sum(p.stat().st_blocks * 512 for p in have)
    if free < NEED_FREE:
        raise SystemExit(f"{work}: {free / GiB:.1f} GiB free (with this script's own files), "
                         f"the benchmark needs {NEED_FREE / GiB:.0f} GiB")
    cold = args.drop_caches and can_drop_caches()
    if args.drop_caches and not cold:
        print(f"--drop-caches: cannot write {DROP_CACHES} (not root?): no cold rows",
              file=sys.stderr)

    real = real_file("rimg-kdump.raw", work, args.real_cache)
    if real is None:
        raise SystemExit(f"no real image: {REAL_DIR} is absent and --real-cache has none")
    files = {
        "real-1g": real,
        "qemu-elf-1g": real_file("rimg-kdump.qemu.elf", work, args.real_cache),
        "dense-1g": make_dense(real, work / "dense-1g.raw"),
        "real-1g-alloc": make_allocated(real, work / "real-1g-alloc.raw"),
        "deb13-raw": real_file("deb13/deb13hung-a.raw", work, args.real_cache),
        **{f"synth-{n}g": make_synthetic(n * GiB, work / f"synth-{n}g.raw") for n in (1, 4, 16)},
    }
    if args.versus:
        VERSUS.append(Path(args.versus).resolve())
        compile_tree(VERSUS[0])
    cases = build_cases(files, cold, has_kdump_format(TREE[0]),
                        bool(VERSUS) and has_kdump_format(VERSUS[0]))
    words = [w for w in args.only.split(",") if w]
    if words:  # the floor rows always run: "less start-up" needs them
        cases = [c for c in cases if c.name.startswith(("python", "sadump CLI"))
                 or any(w in c.name for w in words)]
    out = work / "out"
    for case in cases:
        if case.sadump is not None:
            print(f"running {case.name} ...", file=sys.stderr)
        run_case(case, out, args.repeat)

    floor_case = next(c for c in cases if "CLI floor" in c.name)
    floor = median(floor_case.runs["sadump"]) if floor_case.runs["sadump"] else None
    rss_here = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    versus = f" (--versus {VERSUS[0]})" if VERSUS else ""
    print(f"sadump benchmark: {TREE[0]}{versus}, {os.cpu_count()} CPUs, {_fs_type(work)} at {work}, "
          f"median of {args.repeat} runs, outputs fsynced; no RSS below this script's own "
          f"{rss_here / MiB:.0f} MiB at the fork")
    print(table(cases, summary_rows(cases), floor))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {c.name: {k: [vars(r) for r in v] for k, v in c.runs.items()} for c in cases},
            indent=1))
    return 0


def _fs_type(path: Path) -> str:
    try:
        out = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", str(path)], capture_output=True,
                             text=True, check=False).stdout.strip()
    except OSError:
        return "?"
    return out or "?"


if __name__ == "__main__":
    raise SystemExit(main())

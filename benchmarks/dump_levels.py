"""Dump levels: `sadump dump -d 31 --format kdump` of the kernel's real /proc/vmcore against
`zstd -1 -T0` of the same file, side by side in one run (issue 11's goal: at most half of
zstd's time), with the output sizes and sadump's peak RSS.

    python benchmarks/dump_levels.py [--repeat N] [--vmcore PATH]

The vmcore is rimg-kdump.proc-vmcore.elf: from $SADUMP_REAL_CACHE, else decompressed once from
../shared/real into $TMPDIR/sadump-bench. Each command runs as a child, timed from the fork
until its output is fsynced; the runs alternate (sadump, zstd, sadump, ...); medians shown.

A second row, for context only (the goal is the first): the same vmcore with every page that
makedumpfile's -d 16 reference bitmap calls free filled with random bytes, as the free pages
of a machine that has run for a while hold old data (this guest had just booted: its free
pages are zero, which zstd compresses at memory speed). sadump's output is the same; zstd
now has to compress them. Needs ../shared/real/filter (or $SADUMP_REAL_CACHE/filter).
The classification alone on a synthetic 64 GiB machine: benchmarks/filter_classify.py.
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
NAME = "rimg-kdump.proc-vmcore.elf"
D16 = "filter/rimg-kdump.d16.bitmaps"
PAGE = 4096


def real_path(name: str) -> Path:
    """A real file from $SADUMP_REAL_CACHE, else decompressed once into $TMPDIR/sadump-bench."""
    cache = os.environ.get("SADUMP_REAL_CACHE")
    if cache and (Path(cache) / name).is_file():
        return Path(cache) / name
    target = Path(tempfile.gettempdir()) / "sadump-bench" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.is_file():
        src = ROOT.parent / "shared" / "real" / f"{name}.zst"
        subprocess.run(["zstd", "-q", "-d", "--long=31", str(src), "-o", str(target)], check=True)
    return target


def free_pfns(bitmaps: Path) -> list[tuple[int, int]]:
    """[start, end) pfn runs in the 1st bitmap and not in the 2nd of makedumpfile's -d 16
    file (header block, sub header, then both bitmaps; spec dump-formats 3), read by hand."""
    data = bitmaps.read_bytes()
    bs, sub, blocks = (int.from_bytes(data[o:o + 4], "big") for o in (0x1AC, 0x1B0, 0x1B4))
    first, half = (1 + sub) * bs, blocks // 2 * bs
    one = int.from_bytes(data[first:first + half], "little")
    two = int.from_bytes(data[first + half:first + 2 * half], "little")
    free = one & ~two
    runs, pfn = [], 0
    while free >> pfn:
        pfn += ((free >> pfn) & -(free >> pfn)).bit_length() - 1  # next set bit
        end = pfn + ((~(free >> pfn)) & ((free >> pfn) + 1)).bit_length() - 1  # its run's end
        runs.append((pfn, end))
        pfn = end
    return runs


def pt_loads(path: Path) -> list[tuple[int, int, int]]:
    """(p_paddr, p_offset, p_filesz) of an s390x (big-endian ELF64) core's PT_LOADs."""
    with open(path, "rb") as f:
        head = f.read(64)
        phoff, phnum = int.from_bytes(head[32:40], "big"), int.from_bytes(head[56:58], "big")
        f.seek(phoff)
        table = f.read(56 * phnum)
    out = []
    for i in range(phnum):
        ph = table[56 * i:56 * i + 56]
        if int.from_bytes(ph[0:4], "big") == 1:
            out.append(tuple(int.from_bytes(ph[o:o + 8], "big") for o in (24, 8, 32)))
    return out


def with_old_free_pages(vmcore: Path, bitmaps: Path) -> Path:
    """The vmcore with its free pages random (made once, kept next to the other inputs)."""
    dst = Path(tempfile.gettempdir()) / "sadump-bench" / "vmcore-old-free-pages.elf"
    stamp = dst.with_name(dst.name + ".made-from")
    want = f"{vmcore} {vmcore.stat().st_size} {vmcore.stat().st_mtime_ns} v1"
    if dst.is_file() and stamp.is_file() and stamp.read_text() == want:
        return dst
    print(f"making {dst.name} (free pages filled with random bytes)", file=sys.stderr)
    part = dst.with_name(dst.name + ".part")
    subprocess.run(["cp", "--sparse=always", str(vmcore), str(part)], check=True)
    loads = pt_loads(vmcore)
    with open(part, "r+b") as f:
        for start, end in free_pfns(bitmaps):
            for paddr, off, size in loads:
                a, b = max(start * PAGE, paddr), min(end * PAGE, paddr + size)
                for at in range(a, b, 1 << 20):
                    f.seek(off + at - paddr)
                    f.write(os.urandom(min(1 << 20, b - at)))
        os.fsync(f.fileno())
    os.replace(part, dst)
    stamp.write_text(want)
    return dst


def timed(cmd: list[str], out: Path) -> tuple[float, int]:
    """Wall seconds from the fork until the output is on disk, and the child's peak RSS (KiB)."""
    out.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss


def compare(vmcore: Path, repeat: int, work: Path) -> dict:
    """Medians of sadump -d 31 --format kdump and zstd -1 -T0 of one vmcore, interleaved."""
    ours, theirs = work / "d31.kdump", work / "vmcore.zst"
    sadump = [sys.executable, "-m", "sadump", "dump", str(vmcore), "-d", "31", "--format",
              "kdump", "-o", str(ours), "--force"]
    zstd = ["zstd", "-q", "-f", "-1", "-T0", str(vmcore), "-o", str(theirs)]
    timed(sadump, ours), timed(zstd, theirs)  # warm the page cache and the imports
    runs: dict[str, list[tuple[float, int]]] = {"sadump": [], "zstd": []}
    for _ in range(repeat):
        runs["sadump"].append(timed(sadump, ours))
        runs["zstd"].append(timed(zstd, theirs))
    return {"sadump": statistics.median(t for t, _ in runs["sadump"]),
            "zstd": statistics.median(t for t, _ in runs["zstd"]),
            "rss": max(r for _, r in runs["sadump"]) / 1024,
            "size": ours.stat().st_size, "zsize": theirs.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vmcore")
    args = ap.parse_args()
    if shutil.which("zstd") is None:
        raise SystemExit("zstd is not installed (apt-get install zstd)")
    vmcore = Path(args.vmcore) if args.vmcore else real_path(NAME)
    inputs = [("the kernel's vmcore (the goal)", vmcore)]
    try:
        inputs.append(("  same, free pages holding old data", with_old_free_pages(
            vmcore, real_path(D16))))
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no second row: {e}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="sadump-levels-"))
    print(f"sadump dump -d 31 --format kdump vs zstd -1 -T0 of the same file; median of "
          f"{args.repeat}, {os.cpu_count()} CPUs, outputs fsynced")
    print(f"{'input':<38s} {'sadump s':>9s} {'zstd s':>7s} {'ratio':>6s} {'goal':>6s} "
          f"{'sadump MiB':>10s} {'zstd MiB':>9s} {'RSS MiB':>8s}")
    floor = imports_floor(args.repeat)
    for i, (label, path) in enumerate(inputs):
        r = compare(path, args.repeat, work)
        ratio = r["sadump"] / r["zstd"]
        goal = ("yes" if ratio <= 0.5 else "NO") if i == 0 else "-"
        print(f"{label:<38s} {r['sadump']:9.3f} {r['zstd']:7.3f} {ratio:6.2f} {goal:>6s} "
              f"{r['size'] / 2**20:10.1f} {r['zsize'] / 2**20:9.1f} {r['rss']:8.0f}")
        if i == 0:
            print(f"{'  of which: python + imports':<38s} {floor:9.3f} {r['zstd']:7.3f} "
                  f"{floor / r['zstd']:6.2f}   (python -c 'import {', '.join(FLOOR)}')")
    shutil.rmtree(work)


#: the libraries a -d 31 kdump dump imports before its first page: the command line, the
#: on-disk layouts, the classification, the codec
FLOOR = ("typer", "construct", "numpy", "zstandard")


def imports_floor(repeat: int) -> float:
    """Median seconds of a bare interpreter that only imports FLOOR: the part of sadump's
    time that no work on the pages can take away."""
    cmd = [sys.executable, "-c", f"import {', '.join(FLOOR)}"]
    times = []
    for _ in range(max(repeat, 5)):
        start = time.monotonic()
        subprocess.run(cmd, check=True)
        times.append(time.monotonic() - start)
    return statistics.median(times)


if __name__ == "__main__":
    main()

"""Dump levels: `sadump dump -d 31 --format kdump` of the kernel's real /proc/vmcore against
`zstd -1 -T0` of the same file, side by side in one run (issue 11's goal: at most half of
zstd's time), with the output sizes and sadump's peak RSS.

    python benchmarks/dump_levels.py [--repeat N] [--vmcore PATH]

The vmcore is rimg-kdump.proc-vmcore.elf: from $SADUMP_REAL_CACHE, else decompressed once from
../shared/real into $TMPDIR/sadump-bench. Each command runs as a child, timed from the fork
until its output is fsynced; the runs alternate (sadump, zstd, sadump, ...); medians shown.
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


def vmcore_path(given: str | None) -> Path:
    if given:
        return Path(given)
    cache = os.environ.get("SADUMP_REAL_CACHE")
    if cache and (Path(cache) / NAME).is_file():
        return Path(cache) / NAME
    work = Path(tempfile.gettempdir()) / "sadump-bench"
    work.mkdir(exist_ok=True)
    target = work / NAME
    if not target.is_file():
        src = ROOT.parent / "shared" / "real" / f"{NAME}.zst"
        subprocess.run(["zstd", "-q", "-d", "--long=31", str(src), "-o", str(target)], check=True)
    return target


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vmcore")
    args = ap.parse_args()
    if shutil.which("zstd") is None:
        raise SystemExit("zstd is not installed (apt-get install zstd)")
    vmcore = vmcore_path(args.vmcore)
    work = Path(tempfile.mkdtemp(prefix="sadump-levels-"))
    ours, theirs = work / "d31.kdump", work / "vmcore.zst"
    sadump = [sys.executable, "-m", "sadump", "dump", str(vmcore), "-d", "31", "--format",
              "kdump", "-o", str(ours), "--force"]
    zstd = ["zstd", "-q", "-f", "-1", "-T0", str(vmcore), "-o", str(theirs)]
    timed(sadump, ours), timed(zstd, theirs)  # warm the page cache and the imports
    runs: dict[str, list[tuple[float, int]]] = {"sadump": [], "zstd": []}
    for _ in range(args.repeat):
        runs["sadump"].append(timed(sadump, ours))
        runs["zstd"].append(timed(zstd, theirs))
    t_ours = statistics.median(t for t, _ in runs["sadump"])
    t_zstd = statistics.median(t for t, _ in runs["zstd"])
    rss = max(r for _, r in runs["sadump"]) / 1024
    print(f"input: {vmcore} ({vmcore.stat().st_size / 2**20:.0f} MiB), median of "
          f"{args.repeat}, {os.cpu_count()} CPUs")
    print(f"{'command':<40s} {'seconds':>8s} {'size MiB':>9s} {'peak RSS':>9s}")
    print(f"{'sadump dump -d 31 --format kdump':<40s} {t_ours:8.3f} "
          f"{ours.stat().st_size / 2**20:9.1f} {rss:7.0f} M")
    print(f"{'zstd -1 -T0 (every page)':<40s} {t_zstd:8.3f} "
          f"{theirs.stat().st_size / 2**20:9.1f}")
    print(f"ratio of times (goal <= 0.5): {t_ours / t_zstd:.2f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

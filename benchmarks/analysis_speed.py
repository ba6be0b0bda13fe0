"""Speed figures that used to be timed asserts in tests/ (issue 20): the tests check what is
computed; this script says how long it takes, against each figure's goal.

    python benchmarks/analysis_speed.py [--repeat N] [--real-cache DIR]

Rows:
  kallsyms decode    sadump.kernel.kallsyms.decode of rimg-kdump.proc-vmcore.elf (19365
                     symbols), in process, the image already analysed (goal < 1.0 s)
  backtraces         analysis_backtraces + text_lines of the same vmcore (goal < 1.0 s)
  limits: ...        each hostile input of tests/test_limits.py through the CLI in a child
                     process (goal < 10 s each; the tests' subprocess timeout, 60 s, only
                     catches a hang), beside "sadump CLI floor": the same child start-up
                     with no image (`sadump info no-such-file`), and their ratio

The dump-level classification of the real vmcore (formerly a < 5 s assert in
tests/test_pages.py) is benchmarks/filter_classify.py's "real vmcore" row. The median of
--repeat runs is shown (default 3). Needs a decompressed rimg-kdump.proc-vmcore.elf in
--real-cache (default $SADUMP_REAL_CACHE) for the first two rows; else they say so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def real_rows(vmcore: Path, repeat: int) -> list[tuple[str, float, float | None]]:
    from sadump.analysis import analyse
    from sadump.kernel.kallsyms import decode
    from sadump.render.backtraces import analysis_backtraces, text_lines

    analysis = analyse(str(vmcore))
    try:
        dec = median_seconds(lambda: decode(analysis.vmcoreinfo.info, analysis.kernel_memory),
                             repeat)
    finally:
        analysis.close()

    def bt():
        a = analyse(str(vmcore))
        try:
            text_lines(analysis_backtraces(a))
        finally:
            a.close()

    return [("kallsyms decode (vmcore)", dec, 1.0), ("backtraces (vmcore)", median_seconds(
        bt, repeat), 1.0)]


def cli(*args) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "sadump", *map(str, args)], env=env, cwd=ROOT,
                   capture_output=True, timeout=120, check=False)


def limit_rows(work: Path, repeat: int) -> list[tuple[str, float, float | None]]:
    from tests.fixtures import hostile

    alt = hostile.alternating_kdump(work / "alt.kdump")
    frag = hostile.alternating_kdump(work / "frag.kdump", size=64 << 20, bitmap_bytes=16 << 20)
    ring = hostile.huge_printk_ring(work / "ring.raw")
    far = hostile.elf_load_at(work / "far.elf", 1 << 63)
    cases = [
        ("sadump CLI floor (no image)", ("info", work / "no-such-file")),
        ("limits: alternating bitmap", ("inspect-meminfo", alt)),
        ("limits: too fragmented bitmap", ("inspect-meminfo", frag)),
        ("limits: printk ring of 2^31", ("dmesg", ring)),
        ("limits: ELF load at 2^63", ("dump", "--format", "s390", "-o", "-", far)),
    ]
    return [(name, median_seconds(lambda a=args: cli(*a), repeat),
             10.0 if name.startswith("limits") else None) for name, args in cases]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--real-cache", default=os.environ.get("SADUMP_REAL_CACHE", ""))
    args = ap.parse_args(argv)
    rows = []
    vmcore = Path(args.real_cache) / "rimg-kdump.proc-vmcore.elf"
    if args.real_cache and vmcore.is_file():
        rows += real_rows(vmcore, args.repeat)
    else:
        print(f"no {vmcore}: the kallsyms and backtrace rows are left out")
    with tempfile.TemporaryDirectory(prefix="sadump-speed-") as work:
        rows += limit_rows(Path(work), args.repeat)
    floor = next((s for n, s, _ in rows if n.startswith("sadump CLI floor")), None)
    print(f"{'case':<32} {'seconds':>8} {'goal':>6} {'x floor':>8}")
    for name, secs, goal in rows:
        ratio = f"{secs / floor:.2f}" if floor and name.startswith("limits") else "-"
        mark = "" if goal is None or secs < goal else "  OVER GOAL"
        shown = "-" if goal is None else f"{goal:.1f}"
        print(f"{name:<32} {secs:>8.3f} {shown:>6} {ratio:>8}{mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

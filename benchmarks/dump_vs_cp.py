"""`sadump dump` of the 1 GiB real raw image against `cp` of the same file, in the same run:
both times, their ratio and peak RSS (issue 3: at most 1.5x cp, under 150 MiB).

    python benchmarks/dump_vs_cp.py [IMAGE] [--repeat N] [--work DIR] [--real-cache DIR]

IMAGE defaults to rimg-kdump.raw, taken from --real-cache DIR ($SADUMP_REAL_CACHE) or
decompressed (sparse) from ../shared/real into the work folder; the default run measures it
twice: as that sparse copy (cp copies only its ~50 MiB of data) and fully allocated, every
zero written out, as QEMU's pmemsave leaves it on disk. Both commands run
interleaved, N times each (default 5), median shown; each is timed until its output is on
disk (the benchmark fsyncs the output and its folder after either tool), peak RSS is the
child's ru_maxrss (os.wait4). Also shown: sadump's fixed start-up (interpreter, imports,
argument parsing; `sadump dump` of a missing file), which is most of its time on this image.
benchmarks/run.py has the whole table (dense image, ELF input, compressors, inspect-meminfo).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # benchmarks/run.py, beside this file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", nargs="?", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sadump-bench"))
    ap.add_argument("--real-cache", default=os.environ.get("SADUMP_REAL_CACHE"))
    args = ap.parse_args(argv)
    bench.use_tree(bench.HERE)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    image = Path(args.image).resolve() if args.image else bench.real_file("rimg-kdump.raw", work,
                                                                  args.real_cache)
    if image is None or not image.is_file():
        raise SystemExit("no image: give IMAGE, --real-cache DIR, or have ../shared/real")
    out = work / "dump-vs-cp.out"
    floor = bench.Case("floor", [*bench.SADUMP, "dump", str(work / "no-such-image"), "-o",
                                 str(out)], None, out=False, ok=(4,))
    bench.run_case(floor, out, args.repeat)
    tf = bench.median(floor.runs["sadump"])
    images = [image]
    if not args.image:
        images.append(bench.make_allocated(image, work / "real-1g-alloc.raw"))
    for img in images:
        case = bench.Case("dump vs cp", [*bench.SADUMP, "dump", str(img), "-o", "{out}"],
                          ["cp", str(img), "{out}"])
        bench.run_case(case, out, args.repeat)
        s, r = case.runs["sadump"], case.runs["ref"]
        ts, tr = bench.median(s), bench.median(r)
        rss = max(x.rss_kib for x in s) / 1024
        met = "met" if ts <= 1.5 * tr else "NOT met"
        print(f"image           : {img} ({img.stat().st_size / bench.MiB:.0f} MiB, "
              f"{img.stat().st_blocks * 512 / bench.MiB:.0f} MiB on disk)")
        print(f"cp + fsync      : {tr:.3f} s  (peak RSS "
              f"{max(x.rss_kib for x in r) / 1024:.0f} MiB)")
        print(f"sadump dump     : {ts:.3f} s  (peak RSS {rss:.0f} MiB)")
        print(f"ratio           : {ts / tr:.2f}  (issue 3: <= 1.5 {met}"
              f"; RSS < 150 MiB {'met' if rss < 150 else 'NOT met'})")
        print(f"ratio less the start-up of {tf:.3f} s: {max(ts - tf, 0) / tr:.2f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

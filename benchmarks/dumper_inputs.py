"""The dumper formats as input: `sadump dump --mode full` of the real z/VM VMDUMP
(sa/rimg-kdump.vmdump, 1 GiB guest, 12,414 stored pages) and of an NGDump partition image
holding the kernel's real /proc/vmcore as dump.elf (made here with mkfs.ext4 -d), each
against `cp` of the same input file, in the same run: times, ratio, peak RSS.

    python benchmarks/dumper_inputs.py [--repeat N] [--work DIR] [--real-cache DIR]

sadump reads the stored pages in place ("file" extents: copy_file_range) and, for NGDump,
first checks the dump's sha256 (zgetdump does too): 940 MB hashed, holes included. Runs
interleave (sadump, cp, sadump, ...), each timed until its output is fsynced; medians shown.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # benchmarks/run.py, beside this file


def ngdump_partition(vmcore: Path, work: Path) -> Path | None:
    from tests.fixtures.ngdump import e2fs_tool, ngdump_image

    img = work / "ngdump-proc-vmcore.img"
    if img.is_file():
        return img
    if e2fs_tool("mkfs.ext4") is None:
        print("mkfs.ext4 not installed: no NGDump row", file=sys.stderr)
        return None
    return ngdump_image(work, vmcore, size="128M", name=img.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sadump-bench"))
    ap.add_argument("--real-cache", default=os.environ.get("SADUMP_REAL_CACHE"))
    args = ap.parse_args(argv)
    bench.use_tree(bench.HERE)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    inputs = {}
    vmdump = bench.real_file("sa/rimg-kdump.vmdump", work, args.real_cache)
    if vmdump is not None:
        inputs["vmdump"] = vmdump
    vmcore = bench.real_file("rimg-kdump.proc-vmcore.elf", work, args.real_cache)
    if vmcore is not None:
        part = ngdump_partition(vmcore, work)
        if part is not None:
            inputs["ngdump"] = part
    if not inputs:
        raise SystemExit("no real files: give --real-cache DIR or have ../shared/real")
    out = work / "dumper-inputs.out"
    for name, path in inputs.items():
        case = bench.Case(name, [*bench.SADUMP, "dump", "--mode", "full", str(path), "-o",
                                 "{out}"], ["cp", str(path), "{out}"])
        bench.run_case(case, out, args.repeat)
        s, r = case.runs["sadump"], case.runs["ref"]
        ts, tr = bench.median(s), bench.median(r)
        print(f"{name:7} input : {path} ({path.stat().st_size / bench.MiB:.0f} MiB, "
              f"{path.stat().st_blocks * 512 / bench.MiB:.0f} MiB on disk)")
        print(f"  cp + fsync   : {tr:.3f} s  (peak RSS {max(x.rss_kib for x in r) / 1024:.0f} "
              "MiB)")
        print(f"  sadump dump  : {ts:.3f} s  (peak RSS {max(x.rss_kib for x in s) / 1024:.0f} "
              "MiB)")
        print(f"  ratio        : {ts / tr:.2f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

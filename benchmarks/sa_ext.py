"""Reading compressed s390_ext dumps (zipl -d with zlib): one run, ratios against `cp` and
`pigz -dc` (issue 18).

    python benchmarks/sa_ext.py [--repeat N] [--size-gib G] [--work DIR] [--real-cache DIR]
                                [--keep]

Cases (each command timed until its output is on disk; peak RSS of the child):
  real ext -> ELF / -d 31 kdump   rimg-kdump.ext-zlib.s390 (the 1 GiB real guest, 49 MiB of
                                  non-zero MiBs) against `cp` of the same memory uncompressed
                                  and fully allocated (real-1g-alloc: every zero written out)
                                  target: <= 0.5x cp
  dense ext -> ELF / -d 31 kdump  a dense, compressible G GiB s390_ext (default 4): the real
                                  image's first GiB with its all-zero MiBs filled, then filler;
                                  every MiB a zlib entry, as a DFLTCC dumper writes it. Against
                                  `pigz -dc` of a `pigz -1` file of the same memory (to a file)
                                  target: <= 0.35x pigz -dc
Memory target: peak RSS < 100 MiB. The dense files are made by a streaming generator (one MiB
in memory at a time) under --work (default $TMPDIR/sadump-sa-bench) and deleted afterwards
unless --keep. A peer tool that is missing (pigz) is said so and its rows skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run as bench  # benchmarks/run.py, beside this file

MiB, GiB = 1 << 20, 1 << 30
MAGIC_EXT = 0xA8190173618F23FE
TOD = 0xE3A420355A15B000
MAX_ENTRIES = 1011


def _compress(data: bytes) -> bytes:
    try:
        import deflate

        return deflate.zlib_compress(data, 1)
    except ImportError:
        return zlib.compress(data, 1)


def _header(mem_size: int, prefixes=(0x115A000, 0x115C000)) -> bytes:
    """df_s390_hdr as a zipl -d dumper with zlib writes it (spec sa-dump-formats 3)."""
    h = bytearray(4096)
    struct.pack_into(">QIIIIQQQI", h, 0, MAGIC_EXT, 2, 0x1000, 4, 4096, mem_size, 0, mem_size,
                     mem_size >> 12)
    struct.pack_into(">QQIIIQBHHBI", h, 0x38, TOD, 0x85618000, 2, 0, 2, mem_size, 0,
                     len(prefixes), len(prefixes), 1, MiB)
    for i, p in enumerate(prefixes):
        struct.pack_into(">I", h, 0x800 + 4 * i, p)
    return bytes(h)


def _filler() -> list[bytes]:
    """64 text-like MiBs (compress about 4:1 at level 1, as kernel and page-cache memory)."""
    r = random.Random(18)
    words = [r.randbytes(r.randrange(3, 14)) for _ in range(4096)]
    out = []
    for _ in range(64):
        buf = bytearray()
        while len(buf) < MiB:
            buf += r.choice(words) * r.randrange(1, 4)
        out.append(bytes(buf[:MiB]))
    return out


def make_dense_ext(real: Path, size: int, ext: Path, gz: Path | None) -> None:
    """Stream a dense s390_ext of `size` bytes (and, with gz, a pigz -1 file of the same
    memory): one MiB in memory at a time; each segment header is written back once its
    entries are known."""
    filler = _filler()
    pigz = None
    if gz is not None:
        pigz = subprocess.Popen(["pigz", "-1", "-c"], stdin=subprocess.PIPE,
                                stdout=open(gz, "wb"))  # noqa: SIM115 - the child owns it
    with open(real, "rb") as src, open(ext, "wb") as out:
        out.write(_header(size))
        seg_at, seg_start, offsets, body = None, 0, [], 0

        def close_segment(last: bool) -> None:
            h = bytearray(4096)
            struct.pack_into(">QQQI", h, 0, seg_start, len(offsets) * MiB,
                             (1 << 64) - 1 if last else 0, body // 4096)
            struct.pack_into(">I", h, 0x30, len(offsets))
            struct.pack_into(f">{len(offsets)}I", h, 0x34, *offsets)
            os.pwrite(out.fileno(), bytes(h), seg_at)

        for n, addr in enumerate(range(0, size, MiB)):
            data = src.read(MiB) if addr < GiB else b""
            if len(data) < MiB or data.count(0) == MiB:
                data = bytes(struct.pack(">Q", addr)) + filler[n % 64][8:]
            if pigz is not None:
                pigz.stdin.write(data)
            if addr == 0:  # the first MiB: a raw segment of its own
                out.write(struct.pack(">QQQ", 0, MiB, 0) + bytes(4096 - 24) + data)
                continue
            if seg_at is None or len(offsets) == MAX_ENTRIES:
                if seg_at is not None:
                    close_segment(False)
                seg_at, seg_start, offsets, body = out.tell(), addr, [], 0
                out.write(bytes(4096))
            blob = _compress(data)
            offsets.append(body // 4096)
            blob += bytes(-len(blob) % 4096)
            out.write(blob)
            body += len(blob)
        close_segment(True)
        out.write(b"DUMP_END" + struct.pack(">Q", TOD + (60_000_000 << 12)) + bytes(4096 - 16))
    if pigz is not None:
        pigz.stdin.close()
        if pigz.wait() != 0:
            raise SystemExit("pigz -1 failed")


def row(name: str, case: bench.Case, limit: float) -> str:
    s, r = case.runs["sadump"], case.runs["ref"]
    ts, tr = bench.median(s), bench.median(r)
    rss = max(x.rss_kib for x in s) / 1024
    ratio = ts / tr
    return (f"{name:34s} {ts:7.3f} s  {case.ref_name:10s} {tr:7.3f} s  ratio {ratio:5.2f}  "
            f"(<= {limit}: {'met' if ratio <= limit else 'NOT met'})  RSS {rss:4.0f} MiB "
            f"({'met' if rss < 100 else 'NOT met'}: < 100)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size-gib", type=int, default=4, help="the dense image (0: skip it)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "sadump-sa-bench"))
    ap.add_argument("--real-cache", default=os.environ.get("SADUMP_REAL_CACHE"))
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args(argv)
    bench.use_tree(bench.HERE)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    raw = bench.real_file("rimg-kdump.raw", work, args.real_cache)
    ext = bench.real_file("sa/rimg-kdump.ext-zlib.s390", work, args.real_cache)
    if raw is None or ext is None:
        raise SystemExit("no real files: --real-cache DIR or ../shared/real")
    out = work / "out"
    made: list[Path] = []
    lines = [f"cores: {os.cpu_count()}; repeat {args.repeat}, median shown"]
    try:
        alloc = bench.make_allocated(raw, work / "real-1g-alloc.raw")
        made.append(alloc)
        for name, opts in (("real ext -> ELF (full)", ["--mode", "full"]),
                           ("real ext -> -d 31 kdump", ["-d", "31", "--format", "kdump"])):
            case = bench.Case(name, [*bench.SADUMP, "dump", str(ext), *opts, "-o", "{out}"],
                              ["cp", str(alloc), "{out}"])
            bench.run_case(case, out, args.repeat)
            lines.append(row(name, case, 0.5))
        if args.size_gib <= 0:
            print("\n".join(lines))
            return 0
        size = args.size_gib * GiB
        dense = work / f"dense-{args.size_gib}g.ext"
        gz = work / f"dense-{args.size_gib}g.gz" if shutil.which("pigz") else None
        if gz is None:
            lines.append("pigz is not installed: the pigz -dc rows are skipped")
        made += [dense] + ([gz] if gz else [])
        print(f"making {dense.name} ({args.size_gib} GiB of memory, streamed)", file=sys.stderr)
        make_dense_ext(raw, size, dense, gz)
        lines.append(f"{dense.name}: {dense.stat().st_size / MiB:.0f} MiB"
                     + (f", {gz.name}: {gz.stat().st_size / MiB:.0f} MiB" if gz else ""))
        for name, opts in ((f"dense {args.size_gib} GiB ext -> ELF", ["--mode", "full"]),
                           (f"dense {args.size_gib} GiB ext -> -d 31 kdump",
                            ["--mode", "full", "-d", "31", "--format", "kdump"])):
            if gz is None:
                continue
            case = bench.Case(name, [*bench.SADUMP, "dump", str(dense), *opts, "-o", "{out}"],
                              ["sh", "-c", f"pigz -dc {gz} > {{out}}"],
                              ref_name="pigz -dc")
            bench.run_case(case, out, args.repeat)
            lines.append(row(name, case, 0.35))
    finally:
        if not args.keep:
            for p in made:
                if p.parent == work:
                    p.unlink(missing_ok=True)
                    p.with_name(p.name + ".made-from").unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        if not args.keep and not any(work.iterdir()):
            work.rmdir()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

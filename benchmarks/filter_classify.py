"""Time and peak memory of the dump-level page classification (sadump.kernel.pages).

    python benchmarks/filter_classify.py [--sizes 16,64] [--mix typical|worst] [--level 31]
                                         [--vmcore PATH]

A synthetic machine of N GiB (N/64 GiB of 64-byte struct pages) is served by an in-memory
PhysicalMemory: real DAT tables (region-third, segment, page tables) map the vmemmap at
0x37200000000 onto a physical struct page area whose bytes come from one 4 MiB pattern (one
section of struct pages), so no disk and no N GiB of RAM are needed. Every size runs in its own
child process, so its peak RSS (ru_maxrss) is its own.

Mixes (per 65536-page section):
  typical  60% free order-10 buddy blocks, 20% page cache (order 0, some with PG_private),
           8% anon, one order-9 anon THP folio with its tails, the rest kernel pages
  worst    every page an order-0 page-cache page: one excluded range per pfn
  overlap  damage: every page a free order-1 buddy head, so every range covers the next
           head; half the heads are decided by the bounded Python loop (not in the default
           run: --mix overlap)

Goal (issue 11): under 1.5 s per GiB of struct page, memory flat in the machine's size (wall
time, and CPU time, which a busy machine disturbs less). The
real vmcore (rimg-kdump.proc-vmcore.elf, 14 MiB of struct page) is timed too when found.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

from sadump.formats.memory import PhysicalMemory
from sadump.kernel.mem_section import filter_keys, pfn_ranges
from sadump.kernel.pages import filter_levels, filter_pages
from sadump.kernel.translate import kernel_memory
from sadump.kernel.vmcoreinfo import VmcoreInfo
from tests.fixtures.pagemachine import KEYS_61

GIB, PAGE = 1 << 30, 4096
SECTION = 1 << 16
VMEMMAP = 0x37200000000
PGD, SEG, PT = 0x10000, 0x14000, 0x200000  # region-third, segment table, page tables
MEM_SECTION, SECTIONS, HIGH_MEMORY = 0x20000, 0x21000, 0x30000
STRUCT_PAGES = 0x40000000  # 1 GiB: the vmemmap's physical home

#: the 6.1 machine's VMCOREINFO of the dump-level tests, at this benchmark's addresses
VMCOREINFO = KEYS_61.format(pgd=PGD, ms=MEM_SECTION, hm=HIGH_MEMORY)


def section_pattern(mix: str) -> bytes:
    """One section (65536 struct pages, 4 MiB) of 6.1 struct pages."""
    rec = np.zeros((SECTION, 64), np.uint8)
    flags = np.zeros(SECTION, ">u8")
    mapping = np.zeros(SECTION, ">u8")
    private = np.zeros(SECTION, ">u8")
    chead = np.zeros(SECTION, ">u8")
    mapcount = np.full(SECTION, 0xFFFFFFFF, ">u4")
    order = np.zeros(SECTION, np.uint8)
    if mix == "overlap":  # damage: every pfn a free order-1 head, each range over the next
        mapcount[:] = 0xFFFFFF7F
        private[:] = 1
    elif mix == "worst":
        flags[:] = 1 << 4  # PG_lru: every pfn its own excluded range
        mapping[:] = 0x5000
    else:
        rng = np.random.default_rng(1)
        free_blocks = int(SECTION * 0.6) // 1024
        heads = np.arange(free_blocks) * 1024
        mapcount[heads] = 0xFFFFFF7F
        private[heads] = 10
        cache = np.arange(free_blocks * 1024, free_blocks * 1024 + int(SECTION * 0.2))
        flags[cache] = 1 << 4
        mapping[cache] = 0x5000
        flags[cache[rng.random(cache.size) < 0.1]] |= 1 << 13
        anon = np.arange(cache[-1] + 1, cache[-1] + 1 + int(SECTION * 0.08))
        flags[anon] = 1 << 4
        mapping[anon] = 0x6001
        thp = (anon[-1] + 512) // 512 * 512
        flags[thp] = (1 << 16) | (1 << 4)
        mapping[thp] = 0x6001
        chead[thp + 1:thp + 512] = 0x1001
        order[thp + 1] = 9
        kernel = np.arange(thp + 512, SECTION)
        flags[kernel[::3]] = 1 << 9  # slab
    rec[:, 0:8] = flags.view(np.uint8).reshape(-1, 8)
    rec[:, 8:16] = chead.view(np.uint8).reshape(-1, 8)
    rec[:, 17] = order
    rec[:, 24:32] = mapping.view(np.uint8).reshape(-1, 8)
    rec[:, 40:48] = private.view(np.uint8).reshape(-1, 8)
    rec[:, 48:52] = mapcount.view(np.uint8).reshape(-1, 4)
    return rec.tobytes()


class PatternMachine(PhysicalMemory):
    """gib GiB of RAM: DAT tables and mem_section in a few real pages, struct pages from one
    repeating 4 MiB section pattern at STRUCT_PAGES, zeros elsewhere."""

    format = "synthetic"

    def __init__(self, gib: int, mix: str):
        super().__init__(f"<{gib} GiB pattern machine>")
        self.mem_size = gib * GIB
        npfn = self.mem_size // PAGE
        self.sp_size = npfn * 64
        assert STRUCT_PAGES + self.sp_size <= self.mem_size
        self.pattern = section_pattern(mix)
        self.pages: dict[int, bytearray] = {}
        put = self._put
        put(PGD, 0x20 | 0x04)
        put(PGD + 8 * ((VMEMMAP >> 31) & 0x7FF), SEG | 0x04 | 0x3)
        vm_pages = self.sp_size // PAGE
        for mib in range(vm_pages // 256):
            pt = PT + mib * 2048
            put(SEG + 8 * (((VMEMMAP >> 20) + mib) & 0x7FF), pt)
            table = struct.pack(">256Q", *(STRUCT_PAGES + (mib * 256 + i) * PAGE
                                          for i in range(256)))
            self._write(pt, table)
        put(MEM_SECTION, SECTIONS)
        for nr in range(npfn // SECTION):
            put(SECTIONS + 16 * nr, VMEMMAP | 3)
        put(HIGH_MEMORY, self.mem_size)
        self._set_ranges([(0, self.mem_size)])

    def _write(self, addr: int, data: bytes) -> None:
        for i in range(0, len(data), PAGE):
            pno, off = divmod(addr + i, PAGE)
            page = self.pages.setdefault(pno, bytearray(PAGE))
            chunk = data[i:i + PAGE - off]
            page[off:off + len(chunk)] = chunk

    def _put(self, addr: int, value: int) -> None:
        self._write(addr, struct.pack(">Q", value))

    def _read(self, paddr: int, size: int) -> bytes:
        if STRUCT_PAGES <= paddr and paddr + size <= STRUCT_PAGES + self.sp_size:
            off = (paddr - STRUCT_PAGES) % len(self.pattern)
            if off + size <= len(self.pattern):
                return self.pattern[off:off + size]
        out = bytearray(size)
        pos = 0
        while pos < size:
            pno, off = divmod(paddr + pos, PAGE)
            n = min(PAGE - off, size - pos)
            a = paddr + pos
            if STRUCT_PAGES <= a < STRUCT_PAGES + self.sp_size:
                o = (a - STRUCT_PAGES) % len(self.pattern)
                out[pos:pos + n] = self.pattern[o:o + n]
            elif pno in self.pages:
                out[pos:pos + n] = self.pages[pno][off:off + n]
            pos += n
        return bytes(out)


def measure_one(gib: int, mix: str, level: int) -> dict:
    info = VmcoreInfo(VMCOREINFO)
    mem = PatternMachine(gib, mix)
    kmem = kernel_memory(mem, info)
    keys = filter_keys(info)
    present = pfn_ranges(mem.ranges())
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t, c = time.perf_counter(), time.process_time()
    if level < 0:  # the six reference levels in one pass (filter_levels), as `info` needs
        r = filter_levels(kmem, keys, present, (1, 2, 4, 8, 16, 31))[31]
    else:
        r = filter_pages(kmem, keys, present, level)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sp_gib = mem.sp_size / GIB
    return {"gib": gib, "mix": mix, "level": level, "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu, 3), "cpu_s_per_struct_page_gib": round(cpu / sp_gib, 3),
            "struct_page_gib": sp_gib, "s_per_struct_page_gib": round(seconds / sp_gib, 3),
            "peak_rss_mib": round(rss / 1024, 1), "rss_before_mib": round(rss0 / 1024, 1),
            "dumpable": r.dumpable, "counts": r.counts}


def measure_vmcore(path: str, level: int) -> dict:
    from sadump.analysis import analyse
    a = analyse(path)
    keys = filter_keys(a.vmcoreinfo.info)
    present = pfn_ranges(a.memory.ranges())
    t = time.perf_counter()
    r = filter_pages(a.kernel_memory, keys, present, level)
    seconds = time.perf_counter() - t
    a.close()
    return {"vmcore": path, "level": level, "seconds": round(seconds, 3),
            "dumpable": r.dumpable, "max_mapnr": r.max_mapnr}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,64", help="machine sizes in GiB (multiples of 2)")
    ap.add_argument("--mix", default="typical,worst")
    ap.add_argument("--level", type=int, default=31, help="-1: levels 1,2,4,8,16,31 in one pass")
    ap.add_argument("--vmcore", default=os.path.join(
        os.environ.get("SADUMP_REAL_CACHE", "/work/realcache"), "rimg-kdump.proc-vmcore.elf"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child: "gib,mix"
    args = ap.parse_args(argv)
    if args.one:
        gib, mix = args.one.split(",")
        print(json.dumps(measure_one(int(gib), mix, args.level)))
        return 0
    print(f"{'machine':>8} {'mix':>8} {'struct page':>11} {'seconds':>8} {'s/GiB sp':>9} "
          f"{'CPU s/GiB':>9} {'peak RSS':>9}")
    for mix in args.mix.split(","):
        for gib in (int(s) for s in args.sizes.split(",")):
            out = subprocess.run([sys.executable, __file__, "--one", f"{gib},{mix}",
                                  "--level", str(args.level)], capture_output=True, text=True,
                                 check=True).stdout
            r = json.loads(out)
            print(f"{gib:>5} GiB {mix:>8} {r['struct_page_gib']:>7.2f} GiB {r['seconds']:>8.2f} "
                  f"{r['s_per_struct_page_gib']:>9.2f} {r['cpu_s_per_struct_page_gib']:>9.2f} "
                  f"{r['peak_rss_mib']:>6.0f} MiB"
                  f"   (goal < 1.5 s/GiB; RSS before the walk {r['rss_before_mib']:.0f} MiB)")
    if args.level == 31 and "typical" in args.mix:
        gib = max(int(x) for x in args.sizes.split(","))
        out = subprocess.run([sys.executable, __file__, "--one", f"{gib},typical", "--level",
                              "-1"], capture_output=True, text=True, check=True).stdout
        r = json.loads(out)
        print(f"{gib:>5} GiB typical, levels 1,2,4,8,16,31 in one pass (filter_levels): "
              f"{r['seconds']:.2f} s, CPU {r['cpu_seconds']:.2f} s, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB")
    if os.path.exists(args.vmcore):
        r = measure_vmcore(args.vmcore, args.level)
        print(f"real vmcore {os.path.basename(args.vmcore)}: level {args.level} in "
              f"{r['seconds']:.3f} s ({r['max_mapnr']} pfns, {r['dumpable']} dumpable)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

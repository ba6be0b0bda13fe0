"""Page classification for dump levels, exact to makedumpfile 1.7.9 (spec filtering.md 0, 4, 5).

`filter_pages()` builds makedumpfile's 1st bitmap (present pfns) and 2nd bitmap (pfns dumped at a
dump level) and its exclusion counters, from the crashed kernel's struct pages alone.

How it works, and why it is fast and bounded:
- struct pages are read one block (`BLOCK` pfns, 4 MiB of struct page) at a time through the
  kernel page tables (`KernelMemory.runs`); a vmemmap page that is not mapped or not in the
  image makes only its own struct pages unreadable: those pfns are kept, counted in
  `Filtered.unreadable` (makedumpfile would abort the run; keeping them only dumps more);
- every page of a block is judged at once with numpy: the predicates of spec 0 (isSlab, isAnon,
  isCache, buddy with the bad-order rule, compound heads and their order / hugetlb marker from
  the first tail, the 6.12 page types, PG_slab = 7 on 6.10+) give each pfn a class and a range
  length (1, 2^order or 2^private);
- makedumpfile walks pfns in order and resumes after each excluded range, so a head inside an
  earlier range is never looked at. Among the candidate ranges of a block, one whose start lies
  at or past the end of every earlier candidate is surely visited (vectorised); a candidate
  inside a range that is surely visited is surely skipped (vectorised). Only candidates that lie
  inside ranges of undecided candidates (overlapping ranges: damaged or racing struct pages;
  none in a consistent image) go through a Python loop, at most one step per such candidate, so
  the work stays bounded by the block;
- the walk restarts at each section start as makedumpfile's per-section calls do; a range that
  runs past its block (or section) clears the bits up to its end at once (exclude_range), up to
  max_mapnr;
- counters are makedumpfile's: each visited range counts its whole length up to max_mapnr.
Memory: the two packed bitmaps (max_mapnr / 8 bytes each, the output itself) plus one block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sadump.constants import PAGE_SHIFT, PAGE_SIZE
from sadump.errors import SadumpError
from sadump.kernel.mem_section import (
    DL_CACHE,
    DL_CACHE_PRI,
    DL_FREE,
    DL_USER,
    DL_ZERO,
    U64,
    FilterKeys,
    SectionMap,
    check_level,
    walk_runs,
    walk_sections,
)

#: pfns judged per block: 4 MiB of 64-byte struct pages; a multiple of makedumpfile's 512-page
#: struct page cache (PGMM_CACHED) that divides a 65536-page section
BLOCK = 1 << 16
PGMM_CACHED = 512

# classes (per pfn)
KEEP, CACHE, CACHE_PRI, USER, FREE, HWPOISON, OFFLINE = range(7)
NOT_EXAMINED = 255  # not present, beyond max_mapnr, no mem_map or unreadable struct page
CLASS_NAMES = {CACHE: "NON_PRI_CACHE", CACHE_PRI: "PRI_CACHE", USER: "USER", FREE: "FREE",
               HWPOISON: "HWPOISON", OFFLINE: "OFFLINE"}
#: makedumpfile --mem-usage rows, in its order
MEM_USAGE_NAMES = ("ZERO", "NON_PRI_CACHE", "PRI_CACHE", "USER", "FREE", "KERN_DATA")

IS_HUGETLB = U64  # makedumpfile's (unsigned long)-1 marker for 6.6+ hugetlb heads


# ---- bit helpers (makedumpfile's bitmap order: pfn p is bit p & 7 of byte p >> 3) ----------
def bitmap_bytes(max_mapnr: int) -> int:
    return (max_mapnr + 7) >> 3


def set_bits(bm: np.ndarray, start: int, end: int, value: bool) -> None:
    """Set or clear bits [start, end) of a packed little-bit-order bitmap, in place."""
    if end <= start:
        return
    first, last = start >> 3, (end - 1) >> 3
    lo = (0xFF << (start & 7)) & 0xFF
    hi = 0xFF >> (7 - ((end - 1) & 7))
    if first == last:
        mask = lo & hi
        bm[first] = int(bm[first]) | mask if value else int(bm[first]) & ~mask & 0xFF
        return
    if value:
        bm[first] |= lo
        bm[last] |= hi
        bm[first + 1:last] = 0xFF
    else:
        bm[first] &= ~lo & 0xFF
        bm[last] &= ~hi & 0xFF
        bm[first + 1:last] = 0


def bitmap_from_ranges(pfn_ranges: list[tuple[int, int]], max_mapnr: int) -> np.ndarray:
    """The 1st bitmap: the present pfns below max_mapnr."""
    bm = np.zeros(bitmap_bytes(max_mapnr), dtype=np.uint8)
    for start, end in pfn_ranges:
        set_bits(bm, start, min(end, max_mapnr), True)
    return bm


def count_bits(bm: np.ndarray) -> int:
    return int(np.unpackbits(bm).sum(dtype=np.int64)) if bm.size else 0


# ---- zero pages --------------------------------------------------------------------------
def zero_pages(buf: bytes | memoryview | np.ndarray) -> np.ndarray:
    """One bool per 4 KiB page of buf (a whole number of pages): True where all bytes are 0."""
    a = np.frombuffer(buf, dtype=np.uint64) if not isinstance(buf, np.ndarray) else \
        buf.view(np.uint64)
    return ~a.reshape(-1, PAGE_SIZE // 8).any(axis=1)


#: pages read per step when counting zero pages (16 MiB)
ZERO_BLOCK = 4096


def count_zero_pages(memory, bitmap: np.ndarray, max_mapnr: int) -> int:
    """How many pfns set in `bitmap` (packed, over [0, max_mapnr)) hold only zero bytes,
    read from `memory` (a PhysicalMemory) 16 MiB at a time; pages it cannot read are not
    counted."""
    total = 0
    for b0 in range(0, max_mapnr, ZERO_BLOCK):
        b1 = min(b0 + ZERO_BLOCK, max_mapnr)
        bits = np.unpackbits(bitmap[b0 >> 3:bitmap_bytes(b1)], bitorder="little")[:b1 - b0]
        if not bits.any():
            continue
        edges = np.flatnonzero(np.diff(np.concatenate(([0], bits, [0])).astype(np.int8)))
        for s, e in zip(edges[0::2], edges[1::2]):
            start, n = (b0 + int(s)) << PAGE_SHIFT, int(e - s) << PAGE_SHIFT
            try:
                total += int(zero_pages(memory.read(start, n)).sum())
            except SadumpError:
                for p in range(start, start + n, PAGE_SIZE):  # bounded by the block
                    if memory.is_present(p, PAGE_SIZE):
                        total += int(zero_pages(memory.read(p, PAGE_SIZE))[0])
    return total


# ---- reading struct pages ---------------------------------------------------------------------
def read_struct_pages(kmem, vaddr: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """count struct pages of `size` bytes at kernel virtual vaddr: a (count, size) uint8 array
    (zeros where unreadable) and one bool per struct page, True when all its bytes were read.
    A vmemmap page that is unmapped or absent spoils only the struct pages on it."""
    total = count * size
    buf = np.zeros(total, dtype=np.uint8)
    memory = kmem.memory
    try:
        pos = 0
        for _, paddr, n in kmem.runs(vaddr, total):
            buf[pos:pos + n] = np.frombuffer(memory.read(paddr, n), dtype=np.uint8)
            pos += n
        return buf.reshape(count, size), np.ones(count, dtype=bool)
    except SadumpError:
        pass
    # slow path, bounded by the block: one vmemmap page at a time
    first = vaddr - vaddr % PAGE_SIZE
    npages = (vaddr + total - first + PAGE_SIZE - 1) // PAGE_SIZE
    ok = np.zeros(npages, dtype=bool)
    for i in range(npages):
        page = first + i * PAGE_SIZE
        lo, hi = max(page, vaddr), min(page + PAGE_SIZE, vaddr + total)
        try:
            parts = [memory.read(p, n) for _, p, n in kmem.runs(lo, hi - lo)]
        except SadumpError:
            continue
        buf[lo - vaddr:hi - vaddr] = np.frombuffer(b"".join(parts), dtype=np.uint8)
        ok[i] = True
    off = vaddr - first + np.arange(count, dtype=np.int64) * size
    valid = ok[off // PAGE_SIZE] & ok[(off + size - 1) // PAGE_SIZE]
    return buf.reshape(count, size), valid


def _field(raw: np.ndarray, off: int, width: int) -> np.ndarray:
    """A big-endian unsigned field of every record of raw (n, size) as native uint64."""
    cols = np.ascontiguousarray(raw[:, off:off + width])
    return cols.view(f">u{width}").reshape(-1).astype(np.uint64)


# ---- judging one block -----------------------------------------------------------------------
def _test_bit(flags: np.ndarray, nr: int) -> np.ndarray:
    """makedumpfile's test_bit: an int mask 1 << (nr & 31); bit 31 sign-extends over 31..63."""
    nr &= 31
    mask = 0xFFFFFFFF80000000 if nr == 31 else 1 << nr
    return (flags & np.uint64(mask)) != 0


def judge(raw: np.ndarray, pfn0: int, keys: FilterKeys, level: int,
          has_next: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Spec 0 for the struct pages raw (n, SIZE(page)) of pfns pfn0 .. pfn0+n-1.

    Returns (class per page: KEEP or an exclusion class, order per page: the range to exclude
    is [pfn, pfn + 2^order)). Tails, kept pages and pages with a bad buddy order are KEEP.
    raw[n-1]'s first tail is raw[n] when has_next (raw then holds n+1 records)."""
    n = raw.shape[0] - (1 if has_next else 0)
    rec = raw[:n]
    flags = _field(rec, keys.off_flags, 8)
    mapping = _field(rec, keys.off_mapping, 8)
    mapcount = _field(rec, keys.off_mapcount, 4) if keys.off_mapcount is not None else \
        np.zeros(n, np.uint64)
    private = _field(rec, keys.off_private, 8) if keys.off_private is not None else \
        np.zeros(n, np.uint64)
    chead = _field(rec, keys.off_compound_head, 8) if keys.off_compound_head is not None else \
        np.zeros(n, np.uint64)
    pfns = np.arange(pfn0, pfn0 + n, dtype=np.int64)

    def mc(value: int | None) -> np.ndarray | None:
        return None if value is None else mapcount == np.uint64(value & 0xFFFFFFFF)

    slab = ((flags >> np.uint64(keys.pg_slab & 63)) & np.uint64(1)) != 0
    if keys.slab_mapcount is not None:
        slab |= mc(keys.slab_mapcount)
    anon = ((mapping & np.uint64(1)) != 0) & ~slab
    cache = _test_bit(flags, keys.pg_lru)
    swapcache = _test_bit(flags, keys.pg_swapcache)
    if keys.pg_swapbacked is not None:
        swapcache &= _test_bit(flags, keys.pg_swapbacked)
    cache |= swapcache
    private_flag = _test_bit(flags, keys.pg_private)

    # compound heads: order and hugetlb from the first tail (compound_info, spec 4.2)
    head = (flags & np.uint64(keys.pg_head_mask)) != 0
    head &= (pfns % PGMM_CACHED) != PGMM_CACHED - 1
    if not has_next:
        head[-1:] = False  # its first tail is not in this block (the block ends early)
    order = np.zeros(n, np.uint64)
    dtor = np.zeros(n, np.uint64)
    if head.any():
        nxt = raw[1:n + 1] if has_next else np.concatenate((raw[1:n], raw[:1]))
        if keys.hugetlb_mapcount is not None or keys.pg_hugetlb is not None:
            flags1 = _field(nxt, keys.off_flags, 8)
            order = np.where(head, flags1 & np.uint64(0xFF), 0).astype(np.uint64)
            if keys.hugetlb_mapcount is not None:
                huge = mc(keys.hugetlb_mapcount)
            else:
                huge = (flags1 >> np.uint64(keys.pg_hugetlb & 63)) & np.uint64(1) != 0
            dtor = np.where(head & huge, np.uint64(IS_HUGETLB), np.uint64(0))
        else:
            width = 1 if keys.version >= (4, 16, 0) else 2 if keys.version >= (4, 4, 0) else 8
            if keys.compound_order_offset:
                order = np.where(head, _field(nxt, keys.compound_order_offset, width), 0)
            if keys.compound_dtor_offset:
                dtor = np.where(head, _field(nxt, keys.compound_dtor_offset, width), 0)
            order = order.astype(np.uint64)
            dtor = dtor.astype(np.uint64)
        # check_order: an order >= 64 or a head not aligned to its order is order 0
        bad = order >= np.uint64(64)
        o = np.where(bad, 0, order).astype(np.int64)
        bad |= (pfns & ((np.int64(1) << np.minimum(o, 62)) - 1)) != 0
        order = np.where(bad, 0, o).astype(np.int64)
    else:
        order = order.astype(np.int64)
    hugetlb = dtor == np.uint64(IS_HUGETLB)
    if keys.hugetlb_page_dtor is not None:
        hugetlb |= dtor == np.uint64(keys.hugetlb_page_dtor & U64)
    if keys.free_huge_page is not None:
        hugetlb |= dtor == np.uint64(keys.free_huge_page)

    tail = (chead & np.uint64(1)) != 0
    false = np.zeros(n, dtype=bool)
    buddy = bad_order = unaccepted = false
    buddy_order = np.zeros(n, np.int64)
    if level & DL_FREE and keys.page_is_buddy:
        buddy = mc(keys.buddy_mapcount) & ~slab
        if keys.free_area_length is not None:
            bad_order = buddy & (private >= np.uint64(keys.free_area_length & U64))
        # 1 << private is an int shift in makedumpfile: an order >= 63 is kept here
        bad_order = bad_order | (buddy & (private >= np.uint64(63)))
        buddy_order = np.where(buddy & ~bad_order, private, 0).astype(np.int64)
        if keys.unaccepted_mapcount is not None:
            unaccepted = mc(keys.unaccepted_mapcount)
    cache_np = (level & DL_CACHE != 0) & cache & ~private_flag & ~anon
    cache_any = (level & DL_CACHE_PRI != 0) & cache & ~anon
    user = (level & DL_USER != 0) & (anon | hugetlb)
    hwpoison = _test_bit(flags, keys.pg_hwpoison) if keys.pg_hwpoison is not None else false
    offline = mc(keys.offline_mapcount) & ~slab if keys.offline_mapcount is not None else false

    cls = np.select(
        [tail, buddy & bad_order, buddy, unaccepted, cache_np, cache_any, user, hwpoison, offline],
        [KEEP, KEEP, FREE, FREE, CACHE, np.where(private_flag, CACHE_PRI, CACHE), USER,
         HWPOISON, OFFLINE], KEEP).astype(np.uint8)
    fal = keys.free_area_length
    unacc_order = min(max((fal or 1) - 1, 0), 62)
    orders = np.select([buddy & ~bad_order, unaccepted], [buddy_order, unacc_order], order)
    return cls, np.where(cls == KEEP, 0, orders).astype(np.int64)


def _visited(starts: np.ndarray, ends: np.ndarray, skip_until: int) -> np.ndarray:
    """Which candidate ranges makedumpfile's walk visits: it resumes after each visited range,
    so a candidate is visited iff it starts at or past the end of the last visited one."""
    n = starts.size
    prev = np.empty(n, np.int64)
    if n:
        prev[0] = skip_until
        np.maximum(np.maximum.accumulate(ends)[:-1], skip_until, out=prev[1:])
    sure = starts >= prev  # nothing before reaches it
    if sure.all():
        return sure
    sure_end = np.empty(n, np.int64)  # end of the last surely visited range before each
    if n:
        sure_end[0] = skip_until
        np.maximum(np.maximum.accumulate(np.where(sure, ends, 0))[:-1], skip_until,
                   out=sure_end[1:])
    visited = sure.copy()
    undecided = np.flatnonzero(~sure & (starts >= sure_end))
    last = skip_until
    for i in undecided:  # only inside ranges of undecided candidates: bounded by the block
        i = int(i)
        if starts[i] >= max(last, int(sure_end[i])):
            visited[i] = True
            last = int(ends[i])
        # candidates before i that are surely visited are reflected in sure_end[i]
    return visited


# ---- the whole walk --------------------------------------------------------------------------
@dataclass
class Filtered:
    """makedumpfile's bitmaps and counters for one dump level."""

    level: int
    max_mapnr: int
    bitmap1: np.ndarray  # packed, little bit order, bitmap_bytes(max_mapnr) bytes
    bitmap2: np.ndarray
    #: exclusion counters by makedumpfile's names (a range counts its whole length)
    counts: dict[str, int]
    #: pfns set in the 1st bitmap
    present: int
    #: present pfns whose struct page could not be read (kept), and bad buddy orders (kept)
    unreadable: int = 0
    bad_buddy_orders: int = 0
    walked: bool = False
    sections: SectionMap | None = None
    warnings: list[str] = field(default_factory=list)
    #: per pfn class (only when asked for): KEEP, an exclusion class or NOT_EXAMINED
    classes: np.ndarray | None = None

    @property
    def dumpable(self) -> int:
        return count_bits(self.bitmap2)

    def mem_usage(self, zero: int) -> dict[str, int]:
        """makedumpfile's --mem-usage rows (run at level 31) given the zero-page count of the
        pages still dumpable: KERN_DATA = present - every excluded counter."""
        c = self.counts
        excluded = zero + sum(c.values())
        return {"ZERO": zero, "NON_PRI_CACHE": c["NON_PRI_CACHE"], "PRI_CACHE": c["PRI_CACHE"],
                "USER": c["USER"], "FREE": c["FREE"], "KERN_DATA": self.present - excluded}


def _spans(present: list[tuple[int, int]], start: int, end: int):
    """Present pfn spans inside [start, end), in order."""
    for s, e in present:
        s, e = max(s, start), min(e, end)
        if s < e:
            yield s, e


def filter_pages(kmem, keys: FilterKeys, present: list[tuple[int, int]], level: int,
                 sections: SectionMap | None = None, want_classes: bool = False,
                 progress: Callable[[int], None] | None = None) -> Filtered:
    """makedumpfile's 1st and 2nd bitmaps and exclusion counters at `level`.

    kmem: KernelMemory of the crashed kernel; keys: filter_keys(VmcoreInfo); present: the pfn
    ranges the dump holds (pfn_ranges(memory.ranges(), crashkernel) on the kdump path).
    Raises MissingKeyError when the level needs a key VMCOREINFO lacks, MemSectionError when
    no section has a mem_map. Zero pages stay set (kdump-compressed semantics): count them
    with count_zero_pages() for --mem-usage or ELF output.
    """
    check_level(keys, level)
    walk = walk_runs(keys, level)
    if sections is None and (walk or keys.mem_section is not None):
        try:
            sections = walk_sections(kmem, keys, present)
        except SadumpError:
            if walk:
                raise
            sections = None  # level 0/1: max_mapnr from the present memory alone
    max_mapnr = sections.max_mapnr if sections is not None else \
        max((e for _, e in present), default=0)
    bm1 = bitmap_from_ranges(present, max_mapnr)
    bm2 = bm1.copy()
    counts = dict.fromkeys(CLASS_NAMES.values(), 0)
    result = Filtered(level, max_mapnr, bm1, bm2, counts, count_bits(bm1), walked=walk,
                      sections=sections)
    if sections is not None:
        result.warnings.extend(sections.warnings)
    classes = None
    if want_classes:
        classes = np.full(max_mapnr, NOT_EXAMINED, np.uint8)
        for s, e in present:
            classes[s:min(e, max_mapnr)] = KEEP
        result.classes = classes
    if not walk:
        return result
    size = keys.size_page
    tally = np.zeros(7, np.int64)
    for sec in sections.sections:
        skip_until = sec.start_pfn  # each section is its own call in makedumpfile
        for span_s, span_e in _spans(present, sec.start_pfn, sec.end_pfn):
            b0 = span_s - span_s % PGMM_CACHED
            while b0 < span_e:
                b1 = min(b0 - b0 % BLOCK + BLOCK, span_e)
                # one extra struct page: the first tail of a head at b1 - 1
                extra = 1 if b1 < sec.end_pfn and b1 % PGMM_CACHED else 0
                raw, ok = read_struct_pages(kmem, sec.mem_map + (b0 - sec.start_pfn) * size,
                                            b1 - b0 + extra, size)
                if extra:
                    ok = ok[:-1]
                cls, order = judge(raw, b0, keys, level, has_next=bool(extra))
                pfns = np.arange(b0, b1, dtype=np.int64)
                examined = ok & (pfns >= span_s)
                result.unreadable += int((~ok & (pfns >= span_s)).sum())
                cand = np.flatnonzero(examined & (cls != KEEP))
                if classes is not None:
                    classes[b0:b1][(pfns >= span_s) & ~ok] = NOT_EXAMINED
                if cand.size:
                    starts = pfns[cand]
                    ends = np.minimum(starts + (np.int64(1) << np.minimum(order[cand], 62)),
                                      max_mapnr)
                    vis = _visited(starts, ends, skip_until)
                    s, e, c = starts[vis], ends[vis], cls[cand][vis]
                    np.add.at(tally, c, e - s)
                    if s.size:
                        skip_until = max(skip_until, int(e[-1]))
                    # clear the visited ranges inside this block, then any spill past it
                    idx = np.searchsorted(s, pfns, side="right") - 1
                    inside = (idx >= 0) & (pfns < e[np.maximum(idx, 0)])
                    if inside.any():
                        seg = bm2[b0 >> 3:bitmap_bytes(b1)]  # b0 is a multiple of 8
                        bits = np.unpackbits(seg, bitorder="little")
                        bits[:b1 - b0][inside] = 0
                        seg[:] = np.packbits(bits, bitorder="little")
                        if classes is not None:
                            classes[b0:b1][inside] = c[idx[inside]]
                    if e.size and int(e[-1]) > b1:
                        set_bits(bm2, b1, int(e[-1]), False)
                        if classes is not None:  # holes stay NOT_EXAMINED
                            tail = classes[b1:int(e[-1])]
                            tail[tail != NOT_EXAMINED] = c[-1]
                result.bad_buddy_orders += _bad_orders(raw[:b1 - b0], keys, level, examined)
                if progress is not None:
                    progress(b1 - b0)
                b0 = b1
    for i in range(1, 7):
        counts[CLASS_NAMES[i]] = int(tally[i])
    if result.unreadable:
        result.warnings.append(f"{result.unreadable} present pages have struct pages that are "
                               "not in the image or not mapped: they are kept")
    if result.bad_buddy_orders:
        result.warnings.append(f"{result.bad_buddy_orders} free pages with an invalid order "
                               "are kept (makedumpfile: Invalid free page order)")
    return result


def _bad_orders(raw: np.ndarray, keys: FilterKeys, level: int, examined: np.ndarray) -> int:
    """How many examined, non-tail buddy heads have an order >= LENGTH(zone.free_area)."""
    if not (level & DL_FREE and keys.page_is_buddy and keys.free_area_length is not None):
        return 0
    mapcount = _field(raw, keys.off_mapcount, 4)
    flags = _field(raw, keys.off_flags, 8)
    private = _field(raw, keys.off_private, 8)
    slab = ((flags >> np.uint64(keys.pg_slab & 63)) & np.uint64(1)) != 0
    if keys.slab_mapcount is not None:
        slab |= mapcount == np.uint64(keys.slab_mapcount & 0xFFFFFFFF)
    tail = np.zeros(raw.shape[0], bool) if keys.off_compound_head is None else \
        (_field(raw, keys.off_compound_head, 8) & np.uint64(1)) != 0
    bad = (mapcount == np.uint64(keys.buddy_mapcount & 0xFFFFFFFF)) & ~slab & ~tail & \
        (private >= np.uint64(keys.free_area_length & U64)) & examined
    return int(bad.sum())


__all__ = [
    "BLOCK",
    "CLASS_NAMES",
    "DL_ZERO",
    "MEM_USAGE_NAMES",
    "Filtered",
    "bitmap_from_ranges",
    "count_bits",
    "count_zero_pages",
    "filter_pages",
    "judge",
    "read_struct_pages",
    "set_bits",
    "zero_pages",
]

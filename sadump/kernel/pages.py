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

import bisect
import sys
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
from sadump.kernel.translate import TranslationError
from sadump.zero_pages import nonzero_runs

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
    """One bool per 4 KiB page of buf (a whole number of pages): True where all bytes are 0
    (found by sadump.zero_pages, the one detector)."""
    if isinstance(buf, np.ndarray):
        buf = buf.tobytes()
    zero = np.ones(len(buf) // PAGE_SIZE, dtype=bool)
    for a, b in nonzero_runs(buf):
        zero[a // PAGE_SIZE:-(-b // PAGE_SIZE)] = False
    return zero


#: pages read per step when counting zero pages (16 MiB)
ZERO_BLOCK = 4096


def count_zero_pages(memory, bitmap: np.ndarray, max_mapnr: int, clear: bool = False) -> int:
    """How many pfns set in `bitmap` (packed, over [0, max_mapnr)) hold only zero bytes,
    read from `memory` (a PhysicalMemory) 16 MiB at a time; pages it cannot read are not
    counted. clear=True also clears them from `bitmap` (ELF output at a level with bit 1)."""
    total = 0
    for b0 in range(0, max_mapnr, ZERO_BLOCK):
        b1 = min(b0 + ZERO_BLOCK, max_mapnr)
        bits = np.unpackbits(bitmap[b0 >> 3:bitmap_bytes(b1)], bitorder="little")[:b1 - b0]
        if not bits.any():
            continue
        zero = np.zeros(b1 - b0, dtype=bool)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], bits, [0])).astype(np.int8)))
        for s, e in zip(edges[0::2], edges[1::2]):
            start, n = (b0 + int(s)) << PAGE_SHIFT, int(e - s) << PAGE_SHIFT
            try:
                zero[s:e] = zero_pages(memory.read(start, n))
            except SadumpError:
                for k in range(s, e):  # bounded by the block
                    p = (b0 + int(k)) << PAGE_SHIFT
                    if memory.is_present(p, PAGE_SIZE):
                        zero[k] = zero_pages(memory.read(p, PAGE_SIZE))[0]
        total += int(zero.sum())
        if clear and zero.any():
            bits[zero] = 0
            bitmap[b0 >> 3:bitmap_bytes(b1)] = np.packbits(bits, bitorder="little")
    return total


# ---- reading struct pages ---------------------------------------------------------------------
SEGMENT = 1 << 20


def _frames(kmem, vaddr: int, size: int) -> np.ndarray:
    """The physical frame (address >> PAGE_SHIFT) of each page of kernel virtual [vaddr,
    vaddr + size), both page-aligned; TranslationError (a SadumpError) at an unmapped page,
    SadumpError where a linear rule does not keep pages whole.

    For page-table-mapped memory (the vmemmap) it takes each 1 MiB segment's page table
    (KernelMemory.segment_table) and turns its 256 PTEs into frames with numpy, instead of
    one Python step per 4 KiB page."""
    segment, layout = kmem.segment_table, kmem.layout
    parts: list[np.ndarray] = []
    v, end = vaddr, vaddr + size
    while v < end:
        seg_end = min(end, (v | (SEGMENT - 1)) + 1)
        if layout.linear(v) is not None or layout.linear_end(v) < seg_end:
            for _, p, n in kmem.runs(v, seg_end - v):
                if p % PAGE_SIZE or n % PAGE_SIZE:
                    raise SadumpError(f"virtual {v:#x} maps to {p:#x}: not whole pages")
                parts.append(np.arange(p >> PAGE_SHIFT, (p + n) >> PAGE_SHIFT, dtype=np.int64))
            v = seg_end
            continue
        kind, value = segment(v)
        first, last = (v >> PAGE_SHIFT) & 0xFF, ((seg_end - 1) >> PAGE_SHIFT) & 0xFF
        if kind == "frame":
            parts.append((value >> PAGE_SHIFT) + np.arange(first, last + 1, dtype=np.int64))
            v = seg_end
            continue
        ptes = np.array(value[first:last + 1], dtype=np.uint64)
        if (ptes & np.uint64(0x400)).any():
            bad = v + int(np.flatnonzero(ptes & np.uint64(0x400))[0]) * PAGE_SIZE
            raise TranslationError(f"virtual {bad:#x} is not mapped (invalid page-table "
                                   "entry)")
        parts.append((ptes >> np.uint64(PAGE_SHIFT)).astype(np.int64))
        v = seg_end
    return np.concatenate(parts)


#: pages between two frames of struct pages that are read (and dropped) rather than split
#: the read: at most this many times the wanted bytes are read
GATHER_GAP = 2
#: pages of one read: 128 KiB stays under glibc's mmap threshold, so each read reuses freed
#: heap memory instead of a fresh mapping whose pages the kernel must fault in one by one
GATHER_PAGES = 32


def _gather(memory, frames: np.ndarray, out: np.ndarray) -> None:
    """Fill out with the pages of physical memory at these frames, one after the other.

    The vmemmap's frames come from memblock, top-down: consecutive struct pages sit on
    frames that descend. Sorted, the frames make a few long stretches (gaps of up to
    GATHER_GAP pages included); each is read GATHER_PAGES at a time and its pages go to
    their places in one numpy gather, instead of one read per 4 KiB."""
    order = np.argsort(frames, kind="stable")
    frames = frames[order]
    cuts = np.flatnonzero((np.diff(frames) > GATHER_GAP + 1)
                          | (np.diff(frames // GATHER_PAGES) != 0)) + 1
    pages = out.reshape(-1, PAGE_SIZE)
    for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [frames.size])),
                    strict=True):
        lo, hi = int(frames[a]), int(frames[b - 1]) + 1
        read = memory.read(lo * PAGE_SIZE, (hi - lo) * PAGE_SIZE)
        pages[order[a:b]] = np.frombuffer(read, np.uint8).reshape(-1, PAGE_SIZE)[
            frames[a:b] - lo]


def read_struct_pages(kmem, vaddr: int, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """count struct pages of `size` bytes at kernel virtual vaddr: a (count, size) uint8 array
    (zeros where unreadable) and one bool per struct page, True when all its bytes were read.
    A vmemmap page that is unmapped or absent spoils only the struct pages on it."""
    total = count * size
    memory = kmem.memory
    skip = vaddr % PAGE_SIZE  # whole pages: the page tables map nothing smaller
    try:
        frames = _frames(kmem, vaddr - skip, -(-(skip + total) // PAGE_SIZE) * PAGE_SIZE)
        if (np.diff(frames) == 1).all():  # one run: the reader's bytes as they are, no copy
            data = memory.read(int(frames[0]) * PAGE_SIZE + skip, total)
            return np.frombuffer(data, np.uint8).reshape(count, size), np.ones(count, bool)
        data = np.empty(frames.size * PAGE_SIZE, dtype=np.uint8)
        _gather(memory, frames, data)
        return data[skip:skip + total].reshape(count, size), np.ones(count, bool)
    except SadumpError:
        pass
    buf = np.zeros(total, dtype=np.uint8)
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


class _Records:
    """Fields of a block of struct pages (raw: (rows, SIZE(page)) bytes, big-endian).

    Tests over every row (a flag bit, a mapcount value) need no byte swap: when SIZE(page) is
    a multiple of 8 (every 64-bit kernel) they run on the native-order u64 view of the bytes
    with the constant swapped instead. Numeric values (orders, buddy orders) are read, swapped,
    only for the few rows that need them."""

    def __init__(self, raw: np.ndarray, n: int):
        self.raw, self.n = raw, n
        self.fast = raw.shape[1] % 8 == 0
        if self.fast:
            self.native = raw.view(np.uint64)  # the big-endian words as this host reads them
            self.be = raw.view(">u8")
            self._cols: dict[int, np.ndarray] = {}

    def _col(self, k: int) -> np.ndarray:
        """Word k of every row, contiguous (one pass over the block; the tests that follow
        then run on a small array)."""
        col = self._cols.get(k)
        if col is None:
            col = self._cols[k] = np.ascontiguousarray(self.native[:self.n, k])
        return col

    @staticmethod
    def _enc(value: int) -> np.uint64:
        """A big-endian word's value as the native view sees its bytes."""
        return np.uint64(int.from_bytes((value & U64).to_bytes(8, "big"), sys.byteorder))

    def _word(self, off: int, width: int) -> tuple[int, int] | None:
        if self.fast and off % 8 + width <= 8:
            return off // 8, 8 * (8 - off % 8 - width)  # word, shift of the field in it
        return None

    def test(self, off: int, width: int, mask: int) -> np.ndarray:
        """field & mask != 0, for every row."""
        mask &= (1 << 8 * width) - 1
        w = self._word(off, width)
        if w is None:
            return (self.field(off, width, slice(0, self.n)) & np.uint64(mask)) != 0
        return (self._col(w[0]) & self._enc(mask << w[1])) != 0

    def equals(self, off: int, width: int, value: int) -> np.ndarray:
        """field == value (as an unsigned field of that width), for every row."""
        value &= (1 << 8 * width) - 1
        w = self._word(off, width)
        if w is None:
            return self.field(off, width, slice(0, self.n)) == np.uint64(value)
        col = self._col(w[0])
        if width < 8:
            col = col & self._enc(((1 << 8 * width) - 1) << w[1])
        return col == self._enc(value << w[1])

    def field(self, off: int, width: int, rows) -> np.ndarray:
        """The unsigned values of a field for some rows, as native uint64."""
        w = self._word(off, width)
        if w is None:
            return _field(self.raw[rows], off, width)
        v = self.be[rows, w[0]].astype(np.uint64)
        if w[1]:
            v >>= np.uint64(w[1])
        return v & np.uint64((1 << 8 * width) - 1) if width < 8 else v


# ---- judging one block -----------------------------------------------------------------------
@dataclass
class Judged:
    """The pages of a block that a branch of spec 0 excludes (sparse, ascending)."""

    index: np.ndarray  # row in the block
    cls: np.ndarray  # exclusion class
    order: np.ndarray  # the range is [pfn, pfn + 2^order)
    bad_order: np.ndarray  # rows of buddy heads with an invalid order (kept)


@dataclass
class Predicates:
    """Spec 0's tests for every page of a block, independent of the dump level."""

    tail: np.ndarray
    anon: np.ndarray
    hugetlb: np.ndarray
    cache: np.ndarray  # isCache && !isAnon
    private: np.ndarray  # PG_private
    hwpoison: np.ndarray | None
    offline: np.ndarray | None  # OFFLINE && !isSlab
    order: np.ndarray  # compound order (0 unless a valid head)
    unaccepted: np.ndarray | None
    buddy: np.ndarray | None  # rows: buddy heads (not tails, not slab)
    buddy_bad: np.ndarray | None  # per buddy row: order >= LENGTH(zone.free_area)
    buddy_order: np.ndarray | None  # per buddy row
    unaccepted_order: int = 0


def predicates(raw: np.ndarray, pfn0: int, keys: FilterKeys, has_next: bool = False,
               free: bool = True) -> Predicates:
    """Spec 0's tests for the struct pages raw (n, SIZE(page)) of pfns pfn0 .. pfn0+n-1, all at
    once; raw[n-1]'s first tail is raw[n] when has_next (raw then holds n+1 records). free:
    also the buddy tests (level bit 16)."""
    n = raw.shape[0] - (1 if has_next else 0)
    recs = _Records(raw, n)
    false = np.zeros(n, bool)

    def flag(nr: int) -> np.ndarray:
        """makedumpfile's test_bit: an int mask 1 << (nr & 31); bit 31 sign-extends."""
        nr &= 31
        return recs.test(keys.off_flags, 8, 0xFFFFFFFF80000000 if nr == 31 else 1 << nr)

    def mc(value: int) -> np.ndarray:
        if keys.off_mapcount is None:  # makedumpfile's _mapcount stays 0
            return false | (value & 0xFFFFFFFF == 0)
        return recs.equals(keys.off_mapcount, 4, value)

    slab = recs.test(keys.off_flags, 8, 1 << (keys.pg_slab & 63))
    if keys.slab_mapcount is not None:
        slab |= mc(keys.slab_mapcount)
    tail = recs.test(keys.off_compound_head, 8, 1) if keys.off_compound_head is not None \
        else false

    # compound heads (spec 4.2): order and hugetlb from the first tail, for the few heads
    hidx = np.flatnonzero(recs.test(keys.off_flags, 8, keys.pg_head_mask) & ~tail)
    hidx = hidx[((pfn0 + hidx) % PGMM_CACHED != PGMM_CACHED - 1)
                & (has_next | (hidx < n - 1))]
    order = np.zeros(n, np.int64)
    hugetlb = np.zeros(n, bool)
    hpd = keys.hugetlb_page_dtor
    if hpd is not None and hpd & U64 == 0:
        hugetlb[:] = True  # isHugetlb(0): every page that is not a head has dtor 0
    if hidx.size:
        nxt = hidx + 1
        if keys.hugetlb_mapcount is not None or keys.pg_hugetlb is not None:
            flags1 = recs.field(keys.off_flags, 8, nxt)
            horder = flags1 & np.uint64(0xFF)
            if keys.hugetlb_mapcount is not None:
                huge = mc(keys.hugetlb_mapcount)[hidx]
            else:
                huge = (flags1 >> np.uint64(keys.pg_hugetlb & 63)) & np.uint64(1) != 0
            dtor = np.where(huge, np.uint64(IS_HUGETLB), np.uint64(0))
        else:
            width = 1 if keys.version >= (4, 16, 0) else 2 if keys.version >= (4, 4, 0) else 8
            horder = recs.field(keys.compound_order_offset, width, nxt) \
                if keys.compound_order_offset else np.zeros(hidx.size, np.uint64)
            dtor = recs.field(keys.compound_dtor_offset, width, nxt) \
                if keys.compound_dtor_offset else np.zeros(hidx.size, np.uint64)
        # check_order: an order >= 64, or a head not aligned to its order, is order 0
        o = np.where(horder >= np.uint64(64), 0, horder).astype(np.int64)
        o = np.where(((pfn0 + hidx) & ((np.int64(1) << np.minimum(o, 62)) - 1)) != 0, 0, o)
        order[hidx] = o
        h = dtor == np.uint64(IS_HUGETLB)
        if hpd is not None:
            h |= dtor == np.uint64(hpd & U64)
        if keys.free_huge_page is not None:
            h |= dtor == np.uint64(keys.free_huge_page)
        hugetlb[hidx] = h

    anon = recs.test(keys.off_mapping, 8, 1) & ~slab
    swapcache = flag(keys.pg_swapcache)
    if keys.pg_swapbacked is not None:
        swapcache &= flag(keys.pg_swapbacked)
    p = Predicates(
        tail=tail, anon=anon, hugetlb=hugetlb,
        cache=(flag(keys.pg_lru) | swapcache) & ~anon, private=flag(keys.pg_private),
        hwpoison=flag(keys.pg_hwpoison) if keys.pg_hwpoison is not None else None,
        offline=mc(keys.offline_mapcount) & ~slab if keys.offline_mapcount is not None
        else None,
        order=order, unaccepted=None, buddy=None, buddy_bad=None, buddy_order=None)
    if free and keys.page_is_buddy:
        fal = keys.free_area_length
        if keys.unaccepted_mapcount is not None:
            p.unaccepted = mc(keys.unaccepted_mapcount)
            p.unaccepted_order = min(max((fal or 1) - 1, 0), 62)
        p.buddy = np.flatnonzero(mc(keys.buddy_mapcount) & ~slab & ~tail)
        private = recs.field(keys.off_private, 8, p.buddy)
        # an order >= LENGTH(zone.free_area) keeps the page outright; 1 << private is an int
        # shift in makedumpfile, so an order >= 63 (only without LENGTH) is kept here too
        p.buddy_bad = private >= np.uint64(63)
        if fal is not None:
            p.buddy_bad |= private >= np.uint64(fal & U64)
        p.buddy_order = np.where(p.buddy_bad, 0, private).astype(np.int64)
    return p


def classify(p: Predicates, level: int) -> Judged:
    """The first matching branch of spec 0 at `level`, for every page of a block."""
    cls = np.zeros(p.tail.size, np.uint8)  # from the last branch to the first: the first wins
    order = p.order
    if p.offline is not None:
        cls[p.offline] = OFFLINE
    if p.hwpoison is not None:
        cls[p.hwpoison] = HWPOISON
    if level & DL_USER:
        cls[p.anon | p.hugetlb] = USER
    if level & DL_CACHE_PRI:
        cls[p.cache & p.private] = CACHE_PRI
    if level & (DL_CACHE | DL_CACHE_PRI):
        cls[p.cache & ~p.private] = CACHE
    bad_rows = np.zeros(0, np.int64)
    if level & DL_FREE and p.buddy is not None:
        order = order.copy()
        if p.unaccepted is not None:
            cls[p.unaccepted] = FREE
            order[p.unaccepted] = p.unaccepted_order
        cls[p.buddy] = np.where(p.buddy_bad, KEEP, FREE)
        order[p.buddy] = p.buddy_order
        bad_rows = p.buddy[p.buddy_bad]
    cls[p.tail] = KEEP
    index = np.flatnonzero(cls)
    return Judged(index, cls[index], order[index], bad_rows)


def judge(raw: np.ndarray, pfn0: int, keys: FilterKeys, level: int,
          has_next: bool = False) -> Judged:
    """Spec 0 for the struct pages raw (n, SIZE(page)) of pfns pfn0 .. pfn0+n-1 at `level`:
    the pages a branch excludes, with their class and order. Tails, kept pages and buddy
    pages with a bad order are not among them."""
    return classify(predicates(raw, pfn0, keys, has_next, bool(level & DL_FREE)), level)


#: undecided candidates above which _visited follows the chain by pointer doubling
CHAIN_MIN = 64


def _chain(starts: np.ndarray, ends: np.ndarray, skip_until: int) -> np.ndarray:
    """The walk as a chain: the first candidate at or past skip_until, then from each visited
    one the first candidate at or past its end. Followed by pointer doubling: round k adds
    the candidates 2^k .. 2^(k+1)-1 steps along, so about log2(n) vectorised rounds."""
    n = starts.size
    up = np.append(np.searchsorted(starts, ends, side="left"), n)  # n: the end, a sink
    on = np.zeros(n + 1, bool)
    on[np.searchsorted(starts, skip_until, side="left")] = True
    count = 1
    while True:
        on[up[np.flatnonzero(on)]] = True
        new = int(on.sum())
        if new == count:
            return on[:n]
        count = new
        up = up[up]


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
    undecided = np.flatnonzero(~sure & (starts >= sure_end))
    if undecided.size > CHAIN_MIN:
        return _chain(starts, ends, skip_until)
    visited = sure.copy()
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


#: present spans of a section closer than this (pfns) are judged in the same blocks, so that
#: a fragmented input (many small ranges) costs no more than a whole one
JOIN_GAP = 8192


def _groups(present: list[tuple[int, int]], starts: list[int], start: int, end: int):
    """Present pfn spans inside [start, end), grouped where the gaps are short: yields
    (group start, group end, spans)."""
    i = max(bisect.bisect_right(starts, start) - 1, 0)
    group: list[tuple[int, int]] = []
    for s, e in present[i:]:
        if s >= end:
            break
        s, e = max(s, start), min(e, end)
        if s >= e:
            continue
        if group and s - group[-1][1] > JOIN_GAP:
            yield group[0][0], group[-1][1], group
            group = []
        group.append((s, e))
    if group:
        yield group[0][0], group[-1][1], group


def _present_mask(spans: list[tuple[int, int]], b0: int, b1: int) -> np.ndarray:
    mask = np.zeros(b1 - b0, bool)
    for s, e in spans:
        if s < b1 and e > b0:
            mask[max(s, b0) - b0:min(e, b1) - b0] = True
    return mask


class _LevelWalk:
    """makedumpfile's walk at one level: the 2nd bitmap, the counters, where to resume."""

    def __init__(self, result: Filtered, classes: np.ndarray | None):
        self.result = result
        self.bm2 = result.bitmap2
        self.classes = classes
        self.tally = np.zeros(7, np.int64)
        self.skip_until = 0

    def block(self, j: Judged, b0: int, b1: int, pfns: np.ndarray, here: np.ndarray,
              examined: np.ndarray) -> None:
        """Apply one block's judgement: visit the candidate ranges in walk order, clear their
        bits (a range past the block clears on at once, up to max_mapnr), count them."""
        take = examined[j.index]
        cand, ccls, corder = j.index[take], j.cls[take], j.order[take]
        self.result.bad_buddy_orders += int(examined[j.bad_order].sum())
        if not cand.size:
            return
        max_mapnr, classes = self.result.max_mapnr, self.classes
        starts = cand + b0
        ends = np.minimum(starts + (np.int64(1) << np.minimum(corder, 62)), max_mapnr)
        vis = _visited(starts, ends, self.skip_until)
        s, e, c = starts[vis], ends[vis], ccls[vis]
        np.add.at(self.tally, c, e - s)
        self.skip_until = max(self.skip_until, int(e[-1]))
        # the visited ranges are disjoint and ascending: mark them with a running sum
        edge = np.zeros(b1 - b0 + 1, np.int8)
        edge[s - b0] += 1
        edge[np.minimum(e, b1) - b0] -= 1
        inside = np.cumsum(edge[:-1], dtype=np.int8) > 0
        seg = self.bm2[b0 >> 3:bitmap_bytes(b1)]  # b0 is a multiple of 8
        bits = np.unpackbits(seg, bitorder="little")
        bits[:b1 - b0][inside] = 0
        seg[:] = np.packbits(bits, bitorder="little")
        if classes is not None:
            mark = inside & here  # holes stay NOT_EXAMINED
            idx = np.searchsorted(s, pfns[mark], side="right") - 1
            classes[b0:b1][mark] = c[idx]
        if int(e[-1]) > b1:
            set_bits(self.bm2, b1, int(e[-1]), False)
            if classes is not None:
                tail = classes[b1:int(e[-1])]
                tail[tail != NOT_EXAMINED] = c[-1]

    def finish(self) -> None:
        r = self.result
        for i in range(1, 7):
            r.counts[CLASS_NAMES[i]] = int(self.tally[i])
        if r.unreadable:
            r.warnings.append(f"{r.unreadable} present pages have struct pages that are not in "
                              "the image or not mapped: they are kept")
        if r.bad_buddy_orders:
            r.warnings.append(f"{r.bad_buddy_orders} free pages with an invalid order are kept "
                              "(makedumpfile: Invalid free page order)")


def filter_levels(kmem, keys: FilterKeys, present: list[tuple[int, int]], levels,
                  sections: SectionMap | None = None, want_classes: bool = False,
                  progress: Callable[[int], None] | None = None) -> dict[int, Filtered]:
    """filter_pages() for several levels at once: each block of struct pages is read and
    tested once, then classified per level (for `info`'s "what each level writes")."""
    levels = list(dict.fromkeys(levels))
    for level in levels:
        check_level(keys, level)
    walking = [level for level in levels if walk_runs(keys, level)]
    if sections is None and (walking or keys.mem_section is not None):
        try:
            sections = walk_sections(kmem, keys, present)
        except SadumpError:
            if walking:
                raise
            sections = None  # level 0/1: max_mapnr from the present memory alone
    max_mapnr = sections.max_mapnr if sections is not None else \
        max((e for _, e in present), default=0)
    bm1 = bitmap_from_ranges(present, max_mapnr)
    n_present = count_bits(bm1)
    results: dict[int, Filtered] = {}
    walks: dict[int, _LevelWalk] = {}
    for level in levels:
        r = Filtered(level, max_mapnr, bm1, bm1.copy(), dict.fromkeys(CLASS_NAMES.values(), 0),
                     n_present, walked=level in walking, sections=sections,
                     warnings=list(sections.warnings) if sections is not None else [])
        classes = None
        if want_classes:
            classes = np.full(max_mapnr, NOT_EXAMINED, np.uint8)
            for s, e in present:
                classes[s:min(e, max_mapnr)] = KEEP
            r.classes = classes
        results[level] = r
        if level in walking:
            walks[level] = _LevelWalk(r, classes)
    if not walks:
        return results
    size = keys.size_page
    free = any(level & DL_FREE for level in walks)
    starts_of = [s for s, _ in present]
    for sec in sections.sections:
        for w in walks.values():
            w.skip_until = sec.start_pfn  # each section is its own call in makedumpfile
        for span_s, span_e, spans in _groups(present, starts_of, sec.start_pfn, sec.end_pfn):
            b0 = span_s - span_s % PGMM_CACHED
            while b0 < span_e:
                b1 = min(b0 - b0 % BLOCK + BLOCK, span_e)
                # one extra struct page: the first tail of a head at b1 - 1
                extra = 1 if b1 < sec.end_pfn and b1 % PGMM_CACHED else 0
                raw, ok = read_struct_pages(kmem, sec.mem_map + (b0 - sec.start_pfn) * size,
                                            b1 - b0 + extra, size)
                if extra:
                    ok = ok[:-1]
                pred = predicates(raw, b0, keys, has_next=bool(extra), free=free)
                pfns = np.arange(b0, b1, dtype=np.int64)
                here = _present_mask(spans, b0, b1) if len(spans) > 1 else pfns >= span_s
                examined = ok & here
                unreadable = int((~ok & here).sum())
                for level, w in walks.items():
                    w.result.unreadable += unreadable
                    if w.classes is not None and unreadable:
                        w.classes[b0:b1][here & ~ok] = NOT_EXAMINED
                    w.block(classify(pred, level), b0, b1, pfns, here, examined)
                if progress is not None:
                    progress(b1 - b0)
                b0 = b1
    for w in walks.values():
        w.finish()
    return results


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
    return filter_levels(kmem, keys, present, [level], sections, want_classes,
                         progress)[level]


__all__ = [
    "BLOCK",
    "CLASS_NAMES",
    "DL_ZERO",
    "MEM_USAGE_NAMES",
    "Filtered",
    "bitmap_from_ranges",
    "classify",
    "count_bits",
    "count_zero_pages",
    "filter_levels",
    "filter_pages",
    "judge",
    "predicates",
    "read_struct_pages",
    "set_bits",
    "zero_pages",
]

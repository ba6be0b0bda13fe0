"""The one way writers read memory: blocks of at most 1 MiB over a PhysicalMemory, and the one
zero-page detector.

`memory_blocks` turns the reader's extents into Blocks in address order: "zero" (the reader
knows these bytes are zero: input holes, excluded pages; any length), "data" (the bytes,
read) and, where the writer asks for them, "file" (plain bytes of the input file, not read
yet: the sink lets the kernel copy them, the kdump writer reads them in its workers); data
and file blocks are at most 1 MiB and never cross a MiB boundary of the address. `page_blocks` groups them into whole pages for page-based formats (kdump). Zero pages are
found by sadump.zero_pages, the one detector.
A dump-level page filter (to come) belongs here: it would turn excluded pages into "zero".
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from sadump.constants import MIB, PAGE_SIZE
from sadump.formats.memory import PhysicalMemory, pread_exact
from sadump.libc import reuse_block_memory
from sadump.zero_pages import ZERO_BLOCK, ZERO_PAGE, nonzero_pages, nonzero_runs

BLOCK = MIB
__all__ = ["BLOCK", "ZERO_BLOCK", "ZERO_PAGE", "nonzero_pages", "nonzero_runs"]


# ---- blocks of memory ----------------------------------------------------------------------

@dataclass(slots=True)
class Block:
    paddr: int
    size: int
    kind: str  # "zero" | "data" | "file"
    data: bytes | bytearray | None = None  # "data": the bytes
    fileno: int = -1  # "file": where the bytes are
    file_offset: int = 0

    @property
    def end(self) -> int:
        return self.paddr + self.size


def _cuts(start: int, stop: int, patches: list[tuple[int, bytes]]):
    """Split [start, stop) at patch edges: (a, b, patches overlapping [a, b))."""
    points = {start, stop}
    for pa, pd in patches:
        for p in (pa, pa + len(pd)):
            if start < p < stop:
                points.add(p)
    for a, b in itertools.pairwise(sorted(points)):
        yield a, b, [(pa, pd) for pa, pd in patches if pa < b and pa + len(pd) > a]


def memory_blocks(mem: PhysicalMemory, start: int, end: int,
                  patches: list[tuple[int, bytes]] = (), *, files: bool = False,
                  split_files: bool = True, zero_span: int | None = None) -> Iterator[Block]:
    """Present memory [start, end) as Blocks in address order. `patches` (paddr, bytes)
    replace memory (their blocks are "data"); files=True leaves plain file bytes unread
    ("file" blocks; split_files=False: one per extent, any length); zero_span splits
    "zero" blocks at multiples of it."""
    reuse_block_memory()
    patches = [p for p in patches if p[0] < end and p[0] + len(p[1]) > start]
    for ext in mem.ahead(mem.extents(start, end)):  # every "data" extent is read below
        lo, hi = max(ext.paddr, start), min(ext.paddr + ext.size, end)
        for a, b, over in _cuts(lo, hi, patches):
            if ext.kind == "zero" and not over:
                while a < b:
                    step = b if zero_span is None else min(b, (a // zero_span + 1) * zero_span)
                    yield Block(a, step - a, "zero")
                    a = step
                continue
            if ext.kind == "file" and not over and files:
                while a < b:  # at most 1 MiB each, at MiB boundaries of the address
                    n = min(BLOCK - a % BLOCK, b - a) if split_files else b - a
                    yield Block(a, n, "file", None, ext.fileno, ext.file_offset + a - ext.paddr)
                    a += n
                continue
            pos = a
            while pos < b:
                n = min(BLOCK - pos % BLOCK, b - pos)
                if ext.kind == "zero":
                    buf = bytes(n)
                elif ext.kind == "file":
                    buf = pread_exact(ext.fileno, n, ext.file_offset + pos - ext.paddr)
                else:
                    buf = mem.read(pos, n)
                if over:
                    buf = bytearray(buf)
                    for pa, pd in over:
                        lo2, hi2 = max(pa, pos), min(pa + len(pd), pos + n)
                        if lo2 < hi2:
                            buf[lo2 - pos:hi2 - pos] = pd[lo2 - pa:hi2 - pa]
                    buf = bytes(buf)
                yield Block(pos, n, "data", buf)
                pos += n


def known_zero_bytes(mem: PhysicalMemory, start: int, end: int) -> int:
    """Bytes of [start, end) the reader already knows are zero (holes, excluded pages)."""
    return sum(min(e.paddr + e.size, end) - max(e.paddr, start)
               for e in mem.extents(start, end) if e.kind == "zero")


# ---- whole pages (page-based formats) ------------------------------------------------------

#: pages of known zeros given as one page block (16 MiB)
ZERO_SPAN = 4096
#: pages of data in one page block (1 MiB)
BLOCK_PAGES = BLOCK // PAGE_SIZE


def page_blocks(mem: PhysicalMemory, segments,
                lazy: bool = False) -> Iterator[tuple[int, int, object]]:
    """(first pfn, pages, bytes) in pfn order over the segments (sorted, disjoint): at most
    1 MiB, inside one MiB of addresses; bytes None: all zero as the reader already knows
    (at most ZERO_SPAN pages). Bytes of a page outside the segments (unaligned edges) read
    as zeros. lazy=True: instead of bytes, a PageBlock whose read() (thread-safe: pread of
    plain file bytes; other memory was read here) gives them, so that workers can read."""
    cur: list | None = None  # [pfn0, pfn1, zero only, blocks]
    for seg in segments:
        for blk in memory_blocks(mem, seg.paddr, seg.end, files=True,
                                 zero_span=ZERO_SPAN * PAGE_SIZE):
            zero = blk.kind == "zero"
            a, b = blk.paddr // PAGE_SIZE, -(-blk.end // PAGE_SIZE)
            if cur is not None and a < cur[1]:  # shares its first page with the block before
                if zero:
                    a = cur[1]  # zero bytes: that page is in the block before already
                    if a >= b:
                        continue
                elif cur[2]:
                    cur[1] = a  # a zero-only block gives the page up to data
                    if cur[1] == cur[0]:
                        cur = None
            if cur is not None and a <= cur[1] and (
                    b - cur[0] <= ZERO_SPAN if zero and cur[2]
                    else cur[0] // BLOCK_PAGES == (b - 1) // BLOCK_PAGES):
                cur[1] = b
                cur[2] = cur[2] and zero
                cur[3].append(blk)
                continue
            if cur is not None:
                yield _page_block(*cur, lazy)
            cur = [a, b, zero, [blk]]
    if cur is not None:
        yield _page_block(*cur, lazy)


@dataclass(slots=True)
class PageBlock:
    """Whole pages [pfn0 * PAGE_SIZE, +size) made of Blocks; read() gives their bytes."""

    pfn0: int
    size: int
    blocks: list

    def read(self):
        base = self.pfn0 * PAGE_SIZE
        first = self.blocks[0]
        if len(self.blocks) == 1 and (first.paddr, first.size) == (base, self.size):
            return _bytes_of(first)
        buf = bytearray(self.size)
        for blk in self.blocks:
            if blk.kind != "zero":
                buf[blk.paddr - base:blk.end - base] = _bytes_of(blk)
        return buf


def _bytes_of(blk: Block):
    if blk.kind == "file":
        return pread_exact(blk.fileno, blk.size, blk.file_offset)
    return blk.data


def _page_block(pfn0: int, pfn1: int, zero: bool, blocks: list[Block], lazy: bool):
    if zero:
        return pfn0, pfn1 - pfn0, None
    block = PageBlock(pfn0, (pfn1 - pfn0) * PAGE_SIZE, blocks)
    return pfn0, pfn1 - pfn0, block if lazy else block.read()

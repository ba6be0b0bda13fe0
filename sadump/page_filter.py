"""Dump levels in a plan: makedumpfile's bitmaps for the memory a dump holds, and what that
leaves of the plan's segments.

The kernel layer (sadump.kernel.pages) decides page by page as makedumpfile 1.7.9 does; here
the decision meets the plan: the pfns the plan would write (its memory segments), the level
asked for (or the highest one VMCOREINFO allows, with --dump-level-fallback), zero pages
(kept in the 2nd bitmap of a kdump-compressed file, where they share one zero page; left out
of an ELF dump, as makedumpfile -E does) and, for ELF, the PT_LOADs that remain.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sadump.constants import PAGE_SIZE
from sadump.formats.memory import PhysicalMemory
from sadump.kernel.mem_section import DL_ZERO, FilterError, MissingKeyError, filter_keys
from sadump.kernel.pages import (
    CLASS_NAMES,
    Filtered,
    bitmap_bytes,
    bitmap_from_ranges,
    count_bits,
    count_zero_pages,
    filter_pages,
)
from sadump.kernel.translate import KernelMemory
from sadump.kernel.vmcoreinfo import VmcoreInfo

#: an excluded run shorter than this stays in an ELF dump (makedumpfile's PFN_EXCLUDED): a
#: PT_LOAD for every short gap would cost more headers than it saves bytes
PFN_EXCLUDED = 256
#: pfns unpacked from a bitmap at a time (1 MiB of bools)
CHUNK = 1 << 20
#: the bitmaps span [0, highest present pfn): sparse memory far up the address space would
#: make them large for the memory they describe; above this they may take at most
#: BITMAP_SPREAD times the bits of the present pages
BITMAP_FREE = 64 << 20
BITMAP_SPREAD = 64


def check_bitmap_size(present: list[tuple[int, int]]) -> None:
    """Refuse bitmaps sized by an address far above the memory present (a wild PT_LOAD or
    mem_section): each bitmap takes one bit per pfn below the highest present one."""
    pages = sum(e - s for s, e in present)
    top = max((e for _, e in present), default=0)
    if top // 8 > max(BITMAP_FREE, BITMAP_SPREAD * pages // 8):
        raise FilterError(f"memory reaches pfn {top:#x} with only {pages} pages present: the "
                          f"dump-level bitmaps would take {top // 8 >> 20} MiB each")


@dataclass
class PageFilter:
    """The dump level a plan applies and makedumpfile's two bitmaps over [0, max_mapnr)."""

    level: int  # the level applied
    asked: int  # the level asked for (lower than level only with --dump-level-fallback)
    result: Filtered
    zero_pages: int = 0  # zero pages found (ELF: left out; kdump: kept, sharing one page)
    warnings: list[str] = field(default_factory=list)

    @property
    def max_mapnr(self) -> int:
        return self.result.max_mapnr

    @property
    def bitmap1(self) -> np.ndarray:
        return self.result.bitmap1

    @property
    def bitmap2(self) -> np.ndarray:
        return self.result.bitmap2

    def summary(self) -> dict:
        return {"level": self.level, "asked": self.asked, "max_mapnr": self.max_mapnr,
                "present_pages": self.result.present, "dumped_pages": self.result.dumpable,
                "excluded": dict(self.result.counts), "zero_pages": self.zero_pages}


def bit_runs(bitmap: np.ndarray, max_mapnr: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Runs of set bits as (starts, ends) pfn arrays, CHUNK pfns at a time (memory flat in
    the machine's size); a run that crosses a chunk's end is reported once, whole."""
    carried = -1  # start of a run still open at the end of the previous chunk
    prev = np.int8(0)
    for b0 in range(0, max_mapnr, CHUNK):
        b1 = min(b0 + CHUNK, max_mapnr)
        bits = np.unpackbits(bitmap[b0 >> 3:bitmap_bytes(b1)], bitorder="little")[:b1 - b0]
        d = np.diff(bits.astype(np.int8), prepend=prev)
        starts = b0 + np.flatnonzero(d > 0)
        ends = b0 + np.flatnonzero(d < 0)
        if carried >= 0 and ends.size:
            starts = np.concatenate(([carried], starts))
            carried = -1
        if starts.size > ends.size:  # the last run goes on past this chunk
            if carried < 0:
                carried = int(starts[-1])
            starts = starts[:-1]
        if starts.size:
            yield starts, ends
        prev = np.int8(bits[-1])
    if carried >= 0:
        yield np.array([carried]), np.array([max_mapnr])


def plan_page_filter(memory: PhysicalMemory, kmem: KernelMemory, info: VmcoreInfo | None,
                     present: list[tuple[int, int]], level: int, fallback: bool,
                     drop_zero_pages: bool) -> PageFilter:
    """makedumpfile's bitmaps at `level` for the pfn ranges `present` (the plan's memory).

    Raises MissingKeyError (naming the keys) when VMCOREINFO lacks what the level needs and
    `fallback` is not set; FilterError when the memory model cannot be read."""
    if info is None:
        raise FilterError(f"dump level {level} needs VMCOREINFO, and none was found")
    check_bitmap_size(present)
    keys = filter_keys(info)
    warnings: list[str] = []
    asked = level
    try:
        result = filter_pages(kmem, keys, present, level)
    except MissingKeyError as e:
        if not fallback:
            raise
        level = e.allowed
        warnings.append(f"{e}: writing dump level {level} instead (--dump-level-fallback)")
        result = filter_pages(kmem, keys, present, level)
    except FilterError as e:
        if not fallback or level == level & DL_ZERO:
            raise
        level &= DL_ZERO
        warnings.append(f"{e}: writing dump level {level} instead (--dump-level-fallback)")
        result = filter_pages(kmem, keys, present, level)
    pf = PageFilter(level, asked, result, warnings=warnings + result.warnings)
    if level & DL_ZERO and drop_zero_pages:
        pf.zero_pages = count_zero_pages(memory, result.bitmap2, result.max_mapnr, clear=True)
    return pf


def kept_runs(pf: PageFilter, gap: int = PFN_EXCLUDED) -> list[tuple[int, int]]:
    """The byte ranges an ELF dump keeps: runs of the 2nd bitmap, excluded gaps shorter than
    `gap` pages closed (their pages stay, with the input's bytes)."""
    out: list[list[int]] = []
    for starts, ends in bit_runs(pf.bitmap2, pf.max_mapnr):
        # close the short gaps inside this chunk's runs with numpy, then join to the last run
        keep = np.concatenate(([True], starts[1:] - ends[:-1] >= gap))
        firsts, lasts = starts[keep], np.append(ends[np.flatnonzero(keep)[1:] - 1], ends[-1])
        for s, e in zip(firsts.tolist(), lasts.tolist(), strict=True):
            if out and s - out[-1][1] < gap:
                out[-1][1] = e
            else:
                out.append([s, e])
    return [(s * PAGE_SIZE, e * PAGE_SIZE) for s, e in out]


# ---- a dump given as input that was filtered before -----------------------------------------

def keep_recorded(pf: PageFilter, recorded: list[tuple[int, int]], input_level: int) -> None:
    """A kdump file filtered before (makedumpfile -d, sadump -d) records in its 1st bitmap the
    memory the system had, dumped or not: keep that in the 1st bitmap (readers then say
    "excluded", not "not in the dump", for the pages the first filter left out), and the
    level it was filtered at in the level (makedumpfile ORs them when it refilters)."""
    wider = bitmap_from_ranges(recorded, pf.max_mapnr)
    pf.result.bitmap1 = np.bitwise_or(pf.result.bitmap1, wider)
    pf.result.present = count_bits(pf.result.bitmap1)
    pf.level |= input_level


def recorded_filter(present: list[tuple[int, int]], recorded: list[tuple[int, int]],
                    input_level: int) -> PageFilter:
    """No dump level asked for, a filtered kdump file as input: its two bitmaps as they are
    (the pages it holds are all written) and its level."""
    max_mapnr = max((e for _, e in [*present, *recorded]), default=0)
    second = bitmap_from_ranges(present, max_mapnr)
    first = np.bitwise_or(bitmap_from_ranges(recorded, max_mapnr), second)
    result = Filtered(input_level, max_mapnr, first, second,
                      dict.fromkeys(CLASS_NAMES.values(), 0), count_bits(first))
    return PageFilter(input_level, input_level, result)

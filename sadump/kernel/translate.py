"""Kernel virtual -> physical on s390x: the linear rules, then the DAT page-table walk.

Linux up to 6.9 runs on the identity map (virtual == physical) below `*high_memory`; above it
(vmemmap, vmalloc, vmap'ed stacks, modules) only the page tables say where a page lives.
From 6.10 the kernel image is mapped at KERNELOFFSET apart from the identity map at
IDENTITYBASE (spec backtrace.md 4.1). Everything the rules do not cover goes through the
kernel's own DAT tables from `swapper_pg_dir` (spec backtrace.md 4.4), one segment (1 MiB)
at a time: a whole page table (256 entries) is read in one go and kept in a small cache.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from sadump.constants import PAGE_SIZE
from sadump.errors import SadumpError
from sadump.formats.memory import MAX_READ, PhysicalMemory
from sadump.kernel.vmcoreinfo import VmcoreInfo

LOWCORE_END = 0x2000  # virtual addresses below this are prefix-relative lowcore

# DAT table entries (z/Architecture; asm/pgtable.h)
INVALID = 0x20  # region and segment entries
PTE_INVALID = 0x400
FC_LARGE = 0x400  # format control in region-third (2 GiB) and segment (1 MiB) entries
SEGMENT_SHIFT, REGION3_SHIFT = 20, 31
SEGMENT_MASK = (1 << SEGMENT_SHIFT) - 1
PTES = 256
_PAGE_TABLE = struct.Struct(f">{PTES}Q")
_U64 = struct.Struct(">Q")
#: page tables kept (one per MiB of virtual space: 2 KiB each)
CACHED_SEGMENTS = 256


class TranslationError(SadumpError):
    """A kernel virtual address that neither a linear rule nor the page tables map."""


@dataclass(frozen=True)
class KernelLayout:
    """Where the kernel's linear mappings are (spec backtrace.md 4.1).

    identity_end: the virtual end of the identity map (`*high_memory`); None when unknown,
    then every address the other rules leave is taken as identity-mapped.
    """

    identity_base: int = 0
    kaslr_offset: int = 0
    kaslr_offset_phys: int = 0
    amode31_start: int = 0
    amode31_end: int = 0
    identity_end: int | None = None

    @property
    def separate_image(self) -> bool:
        """6.10+: the image is mapped at KERNELOFFSET, apart from the identity map."""
        return self.kaslr_offset != 0

    def linear(self, vaddr: int) -> int | None:
        """The physical address by the linear rules, or None when the page tables decide."""
        if not self.separate_image:
            return vaddr if self.identity_end is None or vaddr < self.identity_end else None
        if vaddr < LOWCORE_END or self.amode31_start <= vaddr < self.amode31_end:
            return vaddr
        if vaddr >= self.kaslr_offset:
            return vaddr - self.kaslr_offset + self.kaslr_offset_phys
        if vaddr >= self.identity_base and (self.identity_end is None
                                             or vaddr < self.identity_end):
            return vaddr - self.identity_base
        return None

    def linear_end(self, vaddr: int) -> int:
        """The first virtual address above vaddr where another rule may apply."""
        cuts = [LOWCORE_END, self.amode31_start, self.amode31_end, self.kaslr_offset,
                self.identity_base]
        if self.identity_end is not None:
            cuts.append(self.identity_end)
        return min((c for c in cuts if c > vaddr), default=1 << 64)

    def with_identity_end(self, end: int | None) -> KernelLayout:
        return KernelLayout(self.identity_base, self.kaslr_offset, self.kaslr_offset_phys,
                            self.amode31_start, self.amode31_end, end)

    @classmethod
    def from_vmcoreinfo(cls, info: VmcoreInfo) -> KernelLayout:
        def h(key: str) -> int:
            return info.hex(key) or 0

        return cls(h("IDENTITYBASE"), h("KERNELOFFSET"), h("KERNELOFFPHYS"),
                   h("SAMODE31"), h("EAMODE31"))


def dat_walk(read_u64, asce: int, vaddr: int) -> tuple[str, int]:
    """Walk the region and segment tables for vaddr (spec backtrace.md 4.4).

    Returns ("frame", physical address) for a large (2 GiB or 1 MiB) frame, or ("table",
    origin of the page table of vaddr's segment). read_u64(paddr) reads one physical word.
    Raises TranslationError for an invalid, out-of-range or mistyped entry.
    """
    level, tl, tf, table = (asce >> 2) & 3, asce & 3, 0, asce & ~0xFFF
    if level < 3 and vaddr >> (31 + 11 * level):
        raise TranslationError(f"virtual {vaddr:#x} is beyond the reach of the top DAT table")
    for _ in range(4):  # at most region-first, -second, -third, segment
        idx = (vaddr >> (SEGMENT_SHIFT + 11 * level)) & 0x7FF
        if not tf * 512 <= idx < (tl + 1) * 512:
            raise TranslationError(f"virtual {vaddr:#x}: index {idx} outside the table length")
        entry = read_u64(table + 8 * idx)
        if entry & INVALID:
            raise TranslationError(f"virtual {vaddr:#x} is not mapped (invalid "
                                   f"{('segment', 'region-third', 'region-second', 'region-first')[level]} entry)")
        if (entry >> 2) & 3 != level:
            raise TranslationError(f"virtual {vaddr:#x}: DAT entry {entry:#x} has the wrong "
                                   "table type")
        if level == 1 and entry & FC_LARGE:
            return "frame", (entry & ~((1 << REGION3_SHIFT) - 1)) | (vaddr & ((1 << REGION3_SHIFT) - 1))
        if level == 0:
            if entry & FC_LARGE:
                return "frame", (entry & ~SEGMENT_MASK) | (vaddr & SEGMENT_MASK)
            return "table", entry & ~0x7FF
        tf, tl, table, level = (entry >> 6) & 3, entry & 3, entry & ~0xFFF, level - 1
    raise TranslationError(f"virtual {vaddr:#x}: DAT walk does not end")  # pragma: no cover


class KernelMemory:
    """The crashed kernel's virtual address space over its physical memory."""

    def __init__(self, memory: PhysicalMemory, layout: KernelLayout, asce: int | None = None):
        self.memory = memory
        self.layout = layout
        #: the kernel's address-space-control element (swapper_pg_dir), None: no page tables
        self.asce = asce
        self._segments: OrderedDict[int, tuple[str, object]] = OrderedDict()

    # ---- translation --------------------------------------------------------------------
    def _read_u64(self, paddr: int) -> int:
        try:
            return _U64.unpack(self.memory.read(paddr, 8))[0]
        except SadumpError as e:
            raise TranslationError(f"DAT table entry at {paddr:#x} is not readable: {e}") \
                from None

    def segment_table(self, vaddr: int) -> tuple[str, object]:
        """How the page tables map vaddr's MiB: ("frame", physical base of a large 1 MiB
        frame) or ("ptes", its 256 page-table entries), cached; TranslationError when the
        region or segment tables do not map it. Bulk readers (the vmemmap walk of the dump
        levels) turn the entries into runs themselves."""
        key = vaddr >> SEGMENT_SHIFT
        hit = self._segments.get(key)
        if hit is not None:
            self._segments.move_to_end(key)
            return hit
        if self.asce is None:
            raise TranslationError(f"virtual {vaddr:#x} needs the kernel page tables, and "
                                   "none were found (no SYMBOL(swapper_pg_dir))")
        kind, value = dat_walk(self._read_u64, self.asce, vaddr)
        if kind == "frame":
            result = ("frame", value & ~SEGMENT_MASK)
        else:
            try:
                ptes = _PAGE_TABLE.unpack(self.memory.read(value, 8 * PTES))
            except SadumpError as e:
                raise TranslationError(f"page table at {value:#x} for virtual {vaddr:#x} is "
                                       f"not readable: {e}") from None
            result = ("ptes", ptes)
        self._segments[key] = result
        if len(self._segments) > CACHED_SEGMENTS:
            self._segments.popitem(last=False)
        return result

    def _walk(self, vaddr: int) -> int:
        kind, value = self.segment_table(vaddr)
        if kind == "frame":
            return value | (vaddr & SEGMENT_MASK)
        pte = value[(vaddr >> 12) & 0xFF]
        if pte & PTE_INVALID:
            raise TranslationError(f"virtual {vaddr:#x} is not mapped (invalid page-table "
                                   "entry)")
        return (pte & ~0xFFF) | (vaddr & 0xFFF)

    def to_physical(self, vaddr: int) -> int:
        if not 0 <= vaddr < 1 << 64:
            raise TranslationError(f"{vaddr:#x} is not a 64-bit address")
        paddr = self.layout.linear(vaddr)
        return self._walk(vaddr) if paddr is None else paddr

    def runs(self, vaddr: int, size: int) -> Iterator[tuple[int, int, int]]:
        """(virtual, physical, length) pieces of [vaddr, vaddr + size), physically contiguous
        each; raises TranslationError at the first unmapped byte."""
        end = vaddr + size
        if vaddr < 0 or end > 1 << 64:
            # past the top no rule ends (linear_end is 2^64): the loop would not advance
            raise TranslationError(f"[{vaddr:#x}, +{size:#x}) runs past the 64-bit address "
                                   "space")
        cur: list[int] | None = None
        while vaddr < end:
            paddr = self.layout.linear(vaddr)
            if paddr is not None:
                n = min(end, self.layout.linear_end(vaddr)) - vaddr
            else:
                paddr = self._walk(vaddr)
                n = min(end - vaddr, PAGE_SIZE - vaddr % PAGE_SIZE)
            if cur is not None and cur[1] + cur[2] == paddr:
                cur[2] += n
            else:
                if cur is not None:
                    yield tuple(cur)
                cur = [vaddr, paddr, n]
            vaddr += n
        if cur is not None:
            yield tuple(cur)

    # ---- reading ------------------------------------------------------------------------
    def read(self, vaddr: int, size: int) -> bytes:
        """Bytes at a kernel virtual address; TranslationError or AbsentMemoryError when the
        address is not mapped or its memory is not in the image."""
        if size < 0 or size > MAX_READ:
            raise SadumpError(f"refusing a read of {size:#x} bytes at virtual {vaddr:#x}")
        parts = [self.memory.read(p, n) for _, p, n in self.runs(vaddr, size)]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "big")

    def read_u32(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 4), "big")

    def is_readable(self, vaddr: int, size: int = 1) -> bool:
        try:
            return all(self.memory.is_present(p, n) for _, p, n in self.runs(vaddr, size))
        except SadumpError:
            return False


def kernel_asce(memory: PhysicalMemory, layout: KernelLayout, info: VmcoreInfo | None) -> int | None:
    """The kernel ASCE from SYMBOL(swapper_pg_dir): its table type from the TT bits of its
    first entry, table length 3 (as crash and drgn take it); None when not readable."""
    sym = info.symbol("swapper_pg_dir") if info is not None else None
    if sym is None:
        return None
    origin = layout.linear(sym)
    if origin is None or origin % PAGE_SIZE:
        return None
    try:
        first = _U64.unpack(memory.read(origin, 8))[0]
    except SadumpError:
        return None
    return origin | ((first >> 2) & 3) << 2 | 3


def kernel_memory(memory: PhysicalMemory, info: VmcoreInfo | None,
                  layout: KernelLayout | None = None) -> KernelMemory:
    """The kernel's address space: layout (from os_info or VMCOREINFO), the identity map's
    end from `*high_memory`, the page tables from `swapper_pg_dir`."""
    if layout is None:
        layout = KernelLayout.from_vmcoreinfo(info) if info is not None else KernelLayout()
    sym = info.symbol("high_memory") if info is not None else None
    if sym is not None:
        where = layout.linear(sym)
        try:
            end = _U64.unpack(memory.read(where, 8))[0] if where is not None else 0
        except SadumpError:
            end = 0
        if end > layout.identity_base:
            layout = layout.with_identity_end(end)
    return KernelMemory(memory, layout, kernel_asce(memory, layout, info))

"""The s390 kdump swap rule as a memory layer (spec 5.5).

After the hand-off the kdump kernel runs in [0, S) and the crashed system's [0, S) lives
at [B, B+S). Wrapping the image in this layer makes every later step read the crashed
system's memory without knowing about the swap.
"""

from __future__ import annotations

from collections.abc import Iterator

from sadump.formats.memory import Extent, PhysicalMemory


class SwappedMemory(PhysicalMemory):
    """Old-system view of an image taken while (or after) a kdump kernel ran."""

    def __init__(self, base: PhysicalMemory, oldmem_base: int, oldmem_size: int):
        super().__init__(base.path)
        self.base = base
        self.format = base.format
        self.oldmem_base = oldmem_base
        self.oldmem_size = oldmem_size
        self.notes = base.notes
        self.warnings = base.warnings
        self.incomplete = base.incomplete
        self.cpu_prefixes = base.cpu_prefixes
        self.dump_level = base.dump_level
        self._set_ranges(base.ranges())

    def translate(self, addr: int) -> int:
        b, s = self.oldmem_base, self.oldmem_size
        if b <= addr < b + s:
            return addr - b
        if addr < s:
            return addr + b
        return addr

    def _pieces(self, paddr: int, size: int) -> Iterator[tuple[int, int]]:
        """Split [paddr, paddr+size) at the swap boundaries: (old address, length)."""
        b, s = self.oldmem_base, self.oldmem_size
        cuts = sorted({s, b, b + s})
        end = paddr + size
        while paddr < end:
            nxt = min([c for c in cuts if c > paddr] + [end])
            yield paddr, nxt - paddr
            paddr = nxt

    def _read(self, paddr: int, size: int) -> bytes:
        return b"".join(self.base.read(self.translate(a), n) for a, n in self._pieces(paddr, size))

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        for old, n in self._pieces(start, end - start):
            delta = self.translate(old) - old
            for e in self.base.extents(old + delta, old + delta + n):
                yield Extent(e.paddr - delta, e.size, e.kind, e.fileno, e.file_offset)

    @property
    def stored_bytes(self) -> int | None:
        return self.base.stored_bytes

    def close(self) -> None:
        self.base.close()

"""The one adapter from the fixtures' byte images to sadump's PhysicalMemory interface.

The fixtures (tests/fixtures/) build bytes from the spec and import nothing of sadump; the
tests hand those bytes to the code under test through this adapter, as a file reader would.
"""

from __future__ import annotations

from sadump.formats.memory import PhysicalMemory
from tests.fixtures.builder import Memory


class SyntheticMemory(PhysicalMemory):
    """A builder Memory as physical memory: the given present byte ranges (default [0, size)),
    unwritten pages read zero."""

    format = "synthetic"

    def __init__(self, mem: Memory, size: int | None = None,
                 ranges: list[tuple[int, int]] | None = None):
        super().__init__("<synthetic>")
        self.mem = mem
        self._set_ranges(ranges if ranges is not None else [(0, size)])

    def _read(self, paddr: int, size: int) -> bytes:
        return self.mem.read(paddr, size)

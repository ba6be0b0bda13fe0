"""The output formats: one writer module per format, found through WRITERS.

A writer module has `layout(plan, options) -> Layout` (every offset and size decided before
the first byte, from the format-neutral DumpPlan; the plan is not changed) and
`write(plan, layout, sink)` (the bytes, in increasing offset order for a stream). Memory is
read through `sadump.writers.blocks` only; output goes to `sadump.writers.sink.Sink`.
A new output format: a module here and a line in WRITERS.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from sadump.errors import SadumpError

#: format name -> module (imported when that format is used: start-up stays small)
WRITERS = {"elf": "sadump.writers.elf", "s390": "sadump.writers.s390",
           "kdump": "sadump.writers.kdump"}


@dataclass
class Layout:
    """What every format's layout says: the file's length, the bytes of it that may not be
    zero (the free-space check), where each segment's memory starts (-1: no fixed place),
    warnings found while laying out, and extra --json fields."""

    size: int
    need: int
    segments: list  # [(Segment, file offset)]
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {}


def writer(fmt: str) -> ModuleType:
    """The writer module of an output format."""
    try:
        name = WRITERS[fmt]
    except KeyError:
        raise SadumpError(f"unknown output format {fmt!r}: {', '.join(WRITERS)}") from None
    return importlib.import_module(name)


def need_bytes(plan, segments, size: int, fixed: int) -> int:
    """Disk space a file of `size` bytes may take: `fixed` bytes of metadata plus every byte
    of memory not known to be zero (zero memory and padding become holes)."""
    from sadump.writers.blocks import known_zero_bytes

    data = sum(s.size - known_zero_bytes(plan.memory, s.paddr, s.end) for s in segments)
    return size - max(0, size - fixed - data)

"""The s390 stand-alone dump format writer (zgetdump -f s390): header with the CPUs'
prefixes, memory [0, end of the last range) at file offset 0x1000 + address, end marker.

The format has no holes: absent memory (range gaps, and the crashkernel on the kdump path)
is written as zeros, as zgetdump does. When CPU state came from the input's notes, each
CPU's lowcore save area (and vector save area) is patched from it, as zgetdump's
dfo_s390 does, so that the registers survive in a format that has no notes.
"""

from __future__ import annotations

import time

from sadump.formats.s390 import EM_SIZE, HDR_SIZE, build_end_marker, build_header, unix_to_tod
from sadump.ipl.lowcore import (
    MCESAD_ADDR_MASK,
    MCESAD_OFFSET,
    SAVE_AREA_OFFSET,
    SAVE_AREA_SIZE,
    VX_SAVE_AREA_SIZE,
)
from sadump.writing import Sink, copy_memory


def _patches(plan) -> list[tuple[int, bytes]]:
    """(paddr, bytes) for each CPU's save area and vector area, when state came from notes."""
    if plan.cpus.source != "notes":
        return []  # save areas are already in memory, as they are
    mem, out = plan.memory, []
    present = [(s.paddr, s.end) for s in plan.segments]

    def inside(addr: int, n: int) -> bool:
        return any(s <= addr and addr + n <= e for s, e in present)

    for cpu in plan.cpus.cpus:
        at = cpu.prefix + SAVE_AREA_OFFSET
        if not inside(at, SAVE_AREA_SIZE):
            plan.warnings.append(f"CPU lowcore {cpu.prefix:#x} is outside the dumped memory: "
                                 "its registers are only in the header's prefix list")
            continue
        out.append((at, cpu.save_area(mem.read(at, SAVE_AREA_SIZE))))
        if cpu.vxrs is None:
            continue
        vx = mem.read_u64(cpu.prefix + MCESAD_OFFSET) & MCESAD_ADDR_MASK \
            if inside(cpu.prefix + MCESAD_OFFSET, 8) else 0
        if vx and inside(vx, VX_SAVE_AREA_SIZE):
            out.append((vx, cpu.vx_area()))
        else:
            plan.warnings.append(f"CPU {cpu.prefix:#x}: no vector save area in its lowcore "
                                 "(0x11B0): its vector registers are not in the s390 dump")
    return sorted(out)


def layout(plan) -> None:
    """Memory segments only (no kernel-image PT_LOAD: the format is physical memory)."""
    plan.segments = [s for s in plan.segments if s.what == "memory"]
    mem_size = max(s.end for s in plan.segments)
    for seg in plan.segments:
        seg.offset = HDR_SIZE + seg.paddr
    plan.patches = _patches(plan)
    prefixes = [c.prefix for c in plan.cpus.cpus]
    plan.header = build_header(mem_size, 0, prefixes)  # TOD filled in when writing
    plan.trailer = EM_SIZE
    plan.size = HDR_SIZE + mem_size + EM_SIZE


def write(plan, sink: Sink) -> None:
    mem_size = plan.size - HDR_SIZE - EM_SIZE
    tod = unix_to_tod(time.time())
    prefixes = [c.prefix for c in plan.cpus.cpus]
    sink.data(0, build_header(mem_size, tod, prefixes))
    pos = 0
    for seg in sorted(plan.segments, key=lambda s: s.paddr):
        if seg.paddr > pos:
            sink.zeros(HDR_SIZE + pos, seg.paddr - pos)
        copy_memory(plan.memory, seg.paddr, seg.end, sink, seg.offset, plan.patches)
        pos = seg.end
    sink.data(HDR_SIZE + mem_size, build_end_marker(max(tod, unix_to_tod(time.time()))))

"""The s390 stand-alone dump format writer (zgetdump -f s390): header with the CPUs'
prefixes, memory [0, end of the last range) at file offset 0x1000 + address, end marker.

The format has no holes: absent memory (range gaps, and the crashkernel on the kdump path)
is written as zeros, as zgetdump does. When CPU state came from the input's notes, each
CPU's lowcore save area (and vector save area) is patched from it, as zgetdump's
dfo_s390 does, so that the registers survive in a format that has no notes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sadump.formats.s390 import EM_SIZE, HDR_SIZE, build_end_marker, build_header, unix_to_tod
from sadump.ipl.lowcore import (
    MCESAD_ADDR_MASK,
    MCESAD_OFFSET,
    SAVE_AREA_OFFSET,
    SAVE_AREA_SIZE,
    VX_SAVE_AREA_SIZE,
)
from sadump.writers import Layout, need_bytes
from sadump.writers.sink import Sink, write_memory


@dataclass
class S390Layout(Layout):
    mem_size: int = 0  # memory [0, mem_size) follows the header
    patches: list[tuple[int, bytes]] = field(default_factory=list)  # lowcore save areas


def _patches(plan, segments, warnings: list[str]) -> list[tuple[int, bytes]]:
    """(paddr, bytes) for each CPU's save area and vector area, when state came from notes."""
    if plan.cpus.source != "notes":
        return []  # save areas are already in memory, as they are
    mem, out = plan.memory, []
    present = [(s.paddr, s.end) for s in segments]

    def inside(addr: int, n: int) -> bool:
        return any(s <= addr and addr + n <= e for s, e in present)

    for cpu in plan.cpus.cpus:
        at = cpu.prefix + SAVE_AREA_OFFSET
        if not inside(at, SAVE_AREA_SIZE):
            warnings.append(f"CPU lowcore {cpu.prefix:#x} is outside the dumped memory: "
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
            warnings.append(f"CPU {cpu.prefix:#x}: no vector save area in its lowcore "
                            "(0x11B0): its vector registers are not in the s390 dump")
    return sorted(out)


def _unreadable_vx(plan, segments, warnings: list[str]) -> None:
    """A reader of the s390 format (zgetdump, sadump) takes the vector registers only through
    a 1 KiB aligned lowcore 0x11B0, as the stand-alone dumper stores them; the kernel's own
    store status uses the area with Linux's length bits set (machines with guarded storage),
    and those registers would be silently lost: say so."""
    mem = plan.memory
    for cpu in plan.cpus.cpus:
        at = cpu.prefix + MCESAD_OFFSET
        if cpu.vxrs is None or not any(s.paddr <= at and at + 8 <= s.end for s in segments):
            continue
        mcesad = mem.read_u64(at)
        if mcesad & ~MCESAD_ADDR_MASK:
            warnings.append(f"CPU {cpu.prefix:#x}: lowcore 0x11B0 is {mcesad:#x}, not 1 KiB "
                            "aligned: readers of the s390 format (zgetdump, sadump) take no "
                            "vector registers from it; the ELF and kdump formats keep them")


def layout(plan, options=None) -> S390Layout:
    """Memory segments only (no kernel-image PT_LOAD: the format is physical memory)."""
    segments = [s for s in plan.segments if s.what == "memory"]
    mem_size = max(s.end for s in segments)
    warnings: list[str] = []
    patches = _patches(plan, segments, warnings)
    _unreadable_vx(plan, segments, warnings)
    em = 0 if plan.analysis.image.incomplete else EM_SIZE  # no end marker: incomplete
    size = HDR_SIZE + mem_size + em
    return S390Layout(size, need_bytes(plan, segments, size, HDR_SIZE + em),
                      [(s, HDR_SIZE + s.paddr) for s in segments], warnings,
                      mem_size=mem_size, patches=patches)


def write(plan, lay: S390Layout, sink: Sink) -> None:
    """The dump's own moment when its dumper recorded one (the header's TOD, end-marker TOD
    and dumping CPU of a stand-alone dump, z/VM's TOD: as `zgetdump -f s390` keeps them),
    else now."""
    facts = plan.memory.dumper
    start = facts.start_tod if facts else None
    tod = start if start else unix_to_tod(time.time())
    end = (facts.end_tod or start) if start else None  # VMDUMP records no end
    prefixes = [c.prefix for c in plan.cpus.cpus]
    sink.data(0, build_header(lay.mem_size, tod, prefixes,
                              cpu_id=(facts.cpu_id or 0) if facts else 0))
    sink.stream_from(HDR_SIZE)
    pos = 0
    for seg, off in sorted(lay.segments, key=lambda p: p[0].paddr):
        if seg.paddr > pos:
            sink.zeros(HDR_SIZE + pos, seg.paddr - pos)
        write_memory(sink, plan.memory, seg.paddr, seg.end, off, lay.patches)
        pos = seg.end
    if not plan.analysis.image.incomplete:  # an incomplete input's dump has no end marker either
        sink.data(HDR_SIZE + lay.mem_size,
                  build_end_marker(max(tod, end or unix_to_tod(time.time()))))

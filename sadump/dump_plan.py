"""What a dump will hold, decided completely before its first byte is written (so that
`-o -` can stream): the notes, the memory segments and their places in the file.

kdump path: the old system's memory less the crashkernel range, as the kdump kernel's
/proc/vmcore shows it (spec 5.4); full path: all present memory. All memory is read
through `analysis.memory`, so an image taken after the hand-off shows the crashed system.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from construct import Bytes, Default, Int8sb, Int8ub, Int32ub, Int64ub, Padding, Struct

from sadump.analysis import Analysis
from sadump.errors import SadumpError
from sadump.formats.elf import NT_PRPSINFO
from sadump.formats.memory import Note, PhysicalMemory
from sadump.kernel.cpus import CpuFinding, cpu_notes
from sadump.kernel.mem_section import pfn_ranges
from sadump.page_filter import PageFilter, kept_runs, plan_page_filter
from sadump.trigger.decision import DUMPED
from sadump.writing import WriteResult, known_zero_bytes, write_output

#: s390x struct elf_prpsinfo, 136 bytes (as the reference /proc/vmcore has it)
PrPsInfo = Struct(
    "pr_state" / Default(Int8ub, 0),
    "pr_sname" / Default(Bytes(1), b"R"),
    "pr_zomb" / Default(Int8ub, 0),
    "pr_nice" / Default(Int8sb, 0),
    Padding(4),
    "pr_flag" / Default(Int64ub, 0),
    "pr_uid" / Default(Int32ub, 0),
    "pr_gid" / Default(Int32ub, 0),
    "pr_pid" / Default(Int32ub, 0),
    "pr_ppid" / Default(Int32ub, 0),
    "pr_pgrp" / Default(Int32ub, 0),
    "pr_sid" / Default(Int32ub, 0),
    "pr_fname" / Default(Bytes(16), b"vmlinux".ljust(16, b"\0")),
    "pr_psargs" / Default(Bytes(80), bytes(80)),
)
assert PrPsInfo.sizeof() == 136

# os_info value entries of 6.10+ kernels (spec 2.3)
IDENTITY_BASE, KASLR_OFFSET, IMAGE_START, IMAGE_END, IMAGE_PHYS = 4, 5, 10, 11, 12


@dataclass
class Segment:
    """One PT_LOAD (or, in the s390 format, one stretch of memory) and where it goes."""

    paddr: int
    vaddr: int
    size: int
    offset: int = 0  # file offset, set by the format's layout
    what: str = "memory"  # memory | kernel image

    @property
    def end(self) -> int:
        return self.paddr + self.size


@dataclass
class DumpPlan:
    analysis: Analysis
    path: str  # "kdump" | "full"
    format: str  # "elf" | "s390"
    reason_code: int
    reason: str
    notes: list[Note]
    segments: list[Segment]
    cpus: CpuFinding
    excluded: tuple[int, int] | None  # the crashkernel range left out (kdump path)
    warnings: list[str] = field(default_factory=list)
    size: int = 0  # bytes of the output
    header: bytes = b""  # everything before the first segment's data (ELF) / the header
    patches: list[tuple[int, bytes]] = field(default_factory=list)  # s390: lowcore patches
    note_offset: int = 0  # ELF: where the PT_NOTE data starts
    note_size: int = 0
    trailer: int = 0  # bytes after the last segment (s390 end marker; kdump: metadata)
    known_zero: int = 0  # output bytes the reader already knows are zero
    kdump: object = None  # --format kdump: its kdump_writer.KdumpLayout
    page_filter: PageFilter | None = None  # a dump level: makedumpfile's bitmaps

    def describe(self) -> str:
        """One line before writing: what is written and why."""
        what = "kdump vmcore" if self.path == "kdump" else "full dump"
        code = f" ({self.reason_code:#x})" if self.reason_code else ""
        if self.analysis.decision.path == DUMPED and self.path == "kdump":
            return f"converting the input ({self.format}): {self.reason}"
        return f"writing a {what} ({self.format}): {self.reason}{code}"

    @property
    def memory(self) -> PhysicalMemory:
        return self.analysis.memory

    @property
    def need(self) -> int:
        """Disk space the output may take: every byte not known to be zero."""
        return self.size - self.known_zero


def subtract(ranges: list[tuple[int, int]], cut: tuple[int, int]) -> list[tuple[int, int]]:
    lo, hi = cut
    out = []
    for s, e in ranges:
        if e <= lo or s >= hi:
            out.append((s, e))
            continue
        if s < lo:
            out.append((s, lo))
        if e > hi:
            out.append((hi, e))
    return out


def prpsinfo_note() -> Note:
    return Note("CORE", NT_PRPSINFO, PrPsInfo.build({}))


def vmcoreinfo_note(analysis: Analysis) -> Note | None:
    info = analysis.vmcoreinfo.info
    if info is None or not info.text:
        return None
    return Note("VMCOREINFO", 0, info.text.encode("ascii", "replace"))


def memory_segments(analysis: Analysis, path: str) -> tuple[list[Segment], tuple | None, list]:
    """PT_LOAD ranges with p_vaddr per spec 5.4; the kernel-image segment first (6.10+)."""
    mem, m = analysis.memory, analysis.os_info
    ranges = mem.ranges()
    excluded, warnings = None, []
    if path == "kdump":
        base, size = m.crashkernel_addr, m.crashkernel_size
        if analysis.handoff and not size:
            base, size = analysis.handoff.oldmem_base, analysis.handoff.oldmem_size
        if size:
            excluded = (base, base + size)
            ranges = subtract(ranges, excluded)
    identity = m.value(IDENTITY_BASE) if m.valid and m.value(KASLR_OFFSET) else None
    segs = [Segment(s, s if identity is None else identity + s, e - s) for s, e in ranges]
    if identity is not None:
        start, end, phys = m.value(IMAGE_START), m.value(IMAGE_END), m.value(IMAGE_PHYS)
        if end > start and mem.is_present(phys, end - start):
            segs.insert(0, Segment(phys, start, end - start, what="kernel image"))
        elif end or start or phys:
            warnings.append(f"os_info kernel image [{start:#x}, {end:#x}) at {phys:#x} is not "
                            "in the image: no kernel-image PT_LOAD")
    return segs, excluded, warnings


def filter_segments(analysis: Analysis, segs: list[Segment], level: int, fallback: bool,
                    fmt: str) -> tuple[list[Segment], PageFilter]:
    """Apply a dump level: makedumpfile's bitmaps over the plan's memory; for ELF the memory
    segments become the runs that the 2nd bitmap keeps (zero pages left out too)."""
    memory = [s for s in segs if s.what == "memory"]
    present = pfn_ranges([(s.paddr, s.end) for s in memory])
    pf = plan_page_filter(analysis.memory, analysis.kernel_memory, analysis.vmcoreinfo.info,
                          present, level, fallback, drop_zero_pages=fmt == "elf")
    if fmt != "elf":
        return segs, pf
    shift = memory[0].vaddr - memory[0].paddr  # the identity map's base, as memory_segments
    kept = [Segment(s, s + shift, e - s) for s, e in kept_runs(pf)]
    return [s for s in segs if s.what != "memory"] + kept, pf


def plan_dump(analysis: Analysis, path: str, fmt: str = "elf", kdump=None,
              dump_level: int = 0, fallback: bool = False) -> DumpPlan:
    """Decide notes, segments and layout. path: "kdump" | "full"; fmt: "elf" | "s390" |
    "kdump" (kdump: its kdump_writer.KdumpOptions, None for the defaults); dump_level:
    makedumpfile's -d (0: every page), fallback: --dump-level-fallback."""
    from sadump.formats import elf_writer, s390_writer

    if path not in ("kdump", "full"):
        raise ValueError(path)
    if analysis.image.incomplete:
        # a vmcore has no way to say it is incomplete: refuse rather than write one that lies
        raise SadumpError(f"the image is incomplete ({analysis.image.incomplete})")
    segs, excluded, warnings = memory_segments(analysis, path)
    if not [s for s in segs if s.what == "memory"]:
        raise SadumpError("the image holds no memory to dump")
    page_filter = None
    if dump_level:
        segs, page_filter = filter_segments(analysis, segs, dump_level, fallback, fmt)
        warnings += page_filter.warnings
        if not segs:
            raise SadumpError(f"dump level {page_filter.level} leaves no page to dump")
    cpus = analysis.cpus()
    notes = [prpsinfo_note(), *cpu_notes(cpus.cpus)]
    vmci = vmcoreinfo_note(analysis)
    if vmci is not None:
        notes.append(vmci)
    else:
        warnings.append(f"no VMCOREINFO found ({analysis.vmcoreinfo.error or 'none'}): "
                        "the dump has no VMCOREINFO note, drgn will not take it for a kernel")
    d = analysis.decision
    if path == d.path:
        code, reason = d.reason_code, d.reason
    elif path == "full":
        code, reason = d.reason_code, "full dump asked for (--mode full)"
    else:
        code, reason = d.reason_code, d.reason
    plan = DumpPlan(analysis, path, fmt, code, reason, notes, segs, cpus, excluded,
                    warnings=[*cpus.warnings, *warnings], page_filter=page_filter)
    if fmt == "elf":
        elf_writer.layout(plan)
    elif fmt == "s390":
        s390_writer.layout(plan)
    elif fmt == "kdump":
        from sadump.formats import kdump_writer

        kdump_writer.layout(plan, kdump)
    else:
        raise SadumpError(f"unknown output format {fmt!r}: elf, s390 or kdump")
    data = sum(s.size - known_zero_bytes(plan.memory, s.paddr, s.end) for s in plan.segments)
    plan.known_zero = max(0, plan.size - len(plan.header) - plan.trailer - data)
    return plan


def write_dump(plan: DumpPlan, target: str, force: bool = False,
               progress: bool | None = None) -> WriteResult:
    """Write the planned dump to target ("-" = stdout) safely (see sadump.writing)."""
    from sadump.formats import elf_writer, s390_writer

    writer = elf_writer.write if plan.format == "elf" else s390_writer.write
    if plan.format == "kdump":
        from sadump.formats import kdump_writer

        writer = kdump_writer.write
    label = f"{plan.path} dump"
    return write_output(target, plan.size, plan.need, force, lambda sink: writer(plan, sink),
                        progress, label)


def summary_json(plan: DumpPlan, result: WriteResult) -> dict:
    """The --json summary: inspect-meminfo's decision object, the path taken, the output."""
    return {
        "decision": plan.analysis.decision.json(),
        "path": plan.path,
        "reason_code": plan.reason_code,
        "reason": plan.reason,
        "output": {
            "path": result.path,
            "format": plan.format,
            "bytes_written": result.size,
            "data_bytes": result.data_bytes,
            "sparse": result.sparse,
            "seconds": round(result.seconds, 3),
            "segments": [{"paddr": s.paddr, "vaddr": s.vaddr, "size": s.size,
                          "offset": s.offset, "what": s.what} for s in plan.segments],
            "excluded": None if plan.excluded is None else list(plan.excluded),
            **({"kdump": plan.kdump.summary()} if plan.kdump is not None else {}),
            "dump_level": None if plan.page_filter is None else plan.page_filter.summary(),
        },
        "cpus": {"count": len(plan.cpus.cpus), "source": plan.cpus.source},
        "vmcoreinfo": any(n.name == "VMCOREINFO" for n in plan.notes),
        "warnings": [*plan.analysis.warnings, *plan.warnings],
    }


def summary_line(plan: DumpPlan, result: WriteResult) -> str:
    """The final line: bytes, rate, the path taken and why."""
    where = "stdout" if result.path == "-" else result.path
    return (f"wrote {where}: {result.size} bytes ({result.size / (1 << 20):.1f} MiB, "
            f"{result.data_bytes / (1 << 20):.1f} MiB of data) in {result.seconds:.1f} s, "
            f"{result.rate:.0f} MiB/s; {plan.path}: {plan.reason}")

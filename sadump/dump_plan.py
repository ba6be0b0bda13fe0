"""What a dump will hold, decided completely before its first byte is written (so that
`-o -` can stream): the notes, the memory segments, the kernel facts a header needs; then
the output format's writer lays the file out (sadump.writers: its own Layout object).

kdump path: the old system's memory less the crashkernel range, as the kdump kernel's
/proc/vmcore shows it (spec 5.4); full path: all present memory. All memory is read
through `analysis.memory`, so an image taken after the hand-off shows the crashed system.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from construct import Bytes, Default, Int8sb, Int8ub, Int32ub, Int64ub, Padding, Struct

from sadump.analysis import Analysis
from sadump.constants import GIB, MIB
from sadump.errors import SadumpError
from sadump.formats.elf import NT_PRPSINFO
from sadump.formats.memory import Note, PhysicalMemory
from sadump.kernel.cpus import CpuFinding, cpu_notes
from sadump.trigger.decision import DUMPED
from sadump.writers import Layout, writer
from sadump.writers.sink import WriteResult, write_output

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
    """One PT_LOAD (or, in the s390 format, one stretch of memory)."""

    paddr: int
    vaddr: int
    size: int
    what: str = "memory"  # memory | kernel image

    @property
    def end(self) -> int:
        return self.paddr + self.size


if TYPE_CHECKING:  # numpy is imported only when a dump level asks for it
    from sadump.page_filter import PageFilter


@dataclass
class KernelFacts:
    """What a dump header may say about the crashed kernel (the kdump header does)."""

    release: str | None  # OSRELEASE of VMCOREINFO
    utsname: dict | None  # init_uts_ns.name: sysname, nodename, release, ...; None: unread
    crash_time: int | None  # CRASHTIME (seconds since the epoch); None: not known


@dataclass
class DumpPlan:
    """Format-neutral: what is dumped and why. The writer's Layout says where it goes."""

    analysis: Analysis
    path: str  # "kdump" | "full"
    format: str  # "elf" | "s390" | "kdump"
    reason_code: int
    reason: str
    notes: list[Note]
    segments: list[Segment]
    cpus: CpuFinding
    excluded: tuple[int, int] | None  # the crashkernel range left out (kdump path)
    kernel: KernelFacts
    warnings: list[str] = field(default_factory=list)
    #: a dump level's bitmaps (None: every page); writers consult it
    page_filter: PageFilter | None = None
    layout: Layout | None = None  # set by plan_dump from the format's writer

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


def kernel_facts(analysis: Analysis, warnings: list[str]) -> KernelFacts:
    """OSRELEASE, init_uts_ns.name (as makedumpfile copies it) and CRASHTIME."""
    info = analysis.vmcoreinfo.info
    release = info.osrelease if info else None
    return KernelFacts(release, _utsname(analysis, release, warnings), analysis.crash_time())


def _utsname(analysis: Analysis, release: str | None, warnings: list[str]) -> dict | None:
    from sadump.formats.kdump import DISK_DUMP_HEADER

    info = analysis.vmcoreinfo.info
    sym = info.symbol("init_uts_ns") if info else None
    off = info.offset("uts_namespace.name") if info else None
    if sym is None or off is None:
        return None
    uts_struct = next(sc for sc in DISK_DUMP_HEADER["big"].subcons if sc.name == "utsname")
    try:
        raw = analysis.kernel_memory.read(sym + off, uts_struct.sizeof())
    except SadumpError as e:
        warnings.append(f"init_uts_ns unreadable ({e}): kdump header utsname from OSRELEASE")
        return None
    uts = {k: v for k, v in uts_struct.parse(raw).items() if not k.startswith("_")}
    if uts["sysname"] != "Linux" or (release and uts["release"] != release):
        warnings.append(f"init_uts_ns holds sysname {uts['sysname']!r}, release "
                        f"{uts['release']!r}: kdump header utsname from OSRELEASE")
        return None
    return uts


#: bytes of memory a dump may hold per byte of its input file: a kdump-compressed file keeps
#: 24 bytes of descriptor for each (even zero) 4 KiB page, 1 : 170; memory beyond this is a
#: header's claim (an ELF p_memsz far past p_filesz), not memory, and is not written out
CLAIM_FACTOR = 256


def check_claim(analysis: Analysis, segs: list[Segment], fmt: str) -> None:
    """Refuse a dump sized by a header field instead of by what the file holds."""
    file_size = analysis.image.stored_bytes
    if file_size is None or analysis.image.records_skipped_memory:
        return  # memory that no file describes, or that the format says was all zero
    memory = [s for s in segs if s.what == "memory"]
    claimed = max(s.end for s in memory) if fmt == "s390" else sum(s.size for s in memory)
    limit = CLAIM_FACTOR * file_size + GIB
    if claimed > limit:
        raise SadumpError(f"the image's headers claim {claimed:#x} bytes of memory, more than "
                          f"{CLAIM_FACTOR} times its {file_size} bytes could hold: not memory "
                          "to dump")


def recorded_pfns(analysis: Analysis, excluded: tuple | None) -> list | None:
    """The pfn ranges a filtered kdump input recorded in its 1st bitmap (the crashkernel left
    out on the kdump path), when they hold more than the pages it dumped; else None."""
    from sadump.kernel.mem_section import pfn_ranges

    recorded = analysis.memory.recorded_ranges()
    if recorded is None or list(recorded) == list(analysis.memory.ranges()):
        return None
    leave_out = (excluded[0], excluded[1] - excluded[0]) if excluded else None
    return pfn_ranges(recorded, leave_out)


def filter_segments(analysis: Analysis, segs: list[Segment], level: int, fallback: bool,
                    fmt: str, excluded: tuple | None = None) -> tuple[list[Segment], PageFilter]:
    """Apply a dump level: makedumpfile's bitmaps over the plan's memory; for ELF the memory
    segments become the runs that the 2nd bitmap keeps (zero pages left out too)."""
    from sadump.kernel.mem_section import pfn_ranges
    from sadump.page_filter import keep_recorded, kept_runs, plan_page_filter

    memory = [s for s in segs if s.what == "memory"]
    present = pfn_ranges([(s.paddr, s.end) for s in memory])
    pf = plan_page_filter(analysis.memory, analysis.kernel_memory, analysis.vmcoreinfo.info,
                          present, level, fallback, drop_zero_pages=fmt == "elf")
    if fmt != "elf":
        recorded = recorded_pfns(analysis, excluded)
        if recorded is not None:
            keep_recorded(pf, recorded, analysis.memory.dump_level or 0)
        return segs, pf
    shift = memory[0].vaddr - memory[0].paddr  # the identity map's base, as memory_segments
    kept = [Segment(s, s + shift, e - s) for s, e in kept_runs(pf)]
    return [s for s in segs if s.what != "memory"] + kept, pf


def plan_dump(analysis: Analysis, path: str, fmt: str = "elf", options=None,
              dump_level: int = 0, fallback: bool = False) -> DumpPlan:
    """Decide notes, segments and the format's layout. path: "kdump" | "full"; fmt: "elf" |
    "s390" | "kdump"; options: the format's options (kdump: writers.kdump.KdumpOptions);
    dump_level: makedumpfile's -d (0: every page), fallback: --dump-level-fallback."""
    if path not in ("kdump", "full"):
        raise ValueError(path)
    fmt_writer = writer(fmt)  # an unknown format fails before any work
    segs, excluded, warnings = memory_segments(analysis, path)
    if analysis.image.incomplete:
        # what the input holds is written; the output says it is incomplete where its format
        # can (kdump: the header's INCOMPLETE flag; s390: no end marker); ELF has no such flag
        warnings.append("the input is incomplete: written as far as it goes" + (
            ", and an ELF core cannot say so: keep this message" if fmt == "elf"
            else ", marked incomplete"))
    if not [s for s in segs if s.what == "memory"]:
        raise SadumpError("the image holds no memory to dump")
    check_claim(analysis, segs, fmt)
    page_filter = None
    if dump_level:
        segs, page_filter = filter_segments(analysis, segs, dump_level, fallback, fmt,
                                            excluded)
        warnings += page_filter.warnings
        if not segs:
            raise SadumpError(f"dump level {page_filter.level} leaves no page to dump")
    elif fmt == "kdump" and (recorded := recorded_pfns(analysis, excluded)) is not None:
        from sadump.kernel.mem_section import pfn_ranges
        from sadump.page_filter import recorded_filter

        present = pfn_ranges([(s.paddr, s.end) for s in segs if s.what == "memory"])
        page_filter = recorded_filter(present, recorded, analysis.memory.dump_level or 0)
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
    facts_warnings: list[str] = []
    facts = kernel_facts(analysis, facts_warnings) if fmt == "kdump" else \
        KernelFacts(None, None, None)
    plan = DumpPlan(analysis, path, fmt, code, reason, notes, segs, cpus, excluded, facts,
                    warnings=[*cpus.warnings, *warnings], page_filter=page_filter)
    plan.layout = fmt_writer.layout(plan, options)
    plan.warnings.extend(facts_warnings)
    plan.warnings.extend(plan.layout.warnings)
    return plan


def write_dump(plan: DumpPlan, target: str, force: bool = False,
               progress: bool | None = None) -> WriteResult:
    """Write the planned dump to target ("-" = stdout) safely (see sadump.writers.sink)."""
    fmt_writer, lay = writer(plan.format), plan.layout
    return write_output(target, lay.size, lay.need, force,
                        lambda sink: fmt_writer.write(plan, lay, sink), progress,
                        f"{plan.path} dump")


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
                          "offset": off, "what": s.what} for s, off in plan.layout.segments],
            "excluded": None if plan.excluded is None else list(plan.excluded),
            **plan.layout.summary(),
            "dump_level": None if plan.page_filter is None else plan.page_filter.summary(),
        },
        "cpus": {"count": len(plan.cpus.cpus), "source": plan.cpus.source},
        "vmcoreinfo": any(n.name == "VMCOREINFO" for n in plan.notes),
        "incomplete": plan.analysis.image.incomplete,
        "warnings": [*plan.analysis.warnings, *plan.warnings],
    }


def summary_line(plan: DumpPlan, result: WriteResult) -> str:
    """The final line: bytes, rate, the path taken and why."""
    where = "stdout" if result.path == "-" else result.path
    return (f"wrote {where}: {result.size} bytes ({result.size / MIB:.1f} MiB, "
            f"{result.data_bytes / MIB:.1f} MiB of data) in {result.seconds:.1f} s, "
            f"{result.rate:.0f} MiB/s; {plan.path}: {plan.reason}")

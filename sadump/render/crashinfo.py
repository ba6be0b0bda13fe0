"""What crashed: one screen of facts for `sadump info` (kernel release, crash time, CPUs and
their PSWs, memory, crashkernel, os_info, the trigger's decision, the kernel's last words),
and the JSON shapes of `info` and `dmesg`. Pure: takes an Analysis, returns data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sadump.analysis import Analysis
from sadump.constants import MIB, PAGE_SIZE, mib
from sadump.errors import SadumpError
from sadump.kernel.printk import KernelLog, LogError, Record, read_kernel_log
from sadump.kernel.vmcoreinfo import utc
from sadump.render import report
from sadump.render.backtraces import backtraces_json as bt_json
from sadump.render.backtraces import info_lines as bt_lines
from sadump.render.tasks import summary_json, summary_lines

#: a record that starts a panic or oops report
CRASH_MARK = re.compile(r"^(Kernel panic|Oops|BUG:)")
#: markers at most this many records apart belong to one report (an oops, then its panic)
CRASH_SPAN = 100
TAIL_LINES = 10


@dataclass
class Cpu:
    number: int
    prefix: int
    psw_mask: int
    psw_addr: int


@dataclass
class CrashInfo:
    osrelease: str | None
    crashtime: int | None
    cpus: list[Cpu] | None  # None: the CPU state could not be read
    cpu_source: str
    log: KernelLog | None
    log_error: str | None
    tail: list[Record]
    tail_kind: str  # "crash report" | "last lines" | ""
    warnings: list[str] = field(default_factory=list)
    classes: MemoryClasses | None = None  # the memory by makedumpfile's classes
    classes_error: str | None = None
    backtrace: Any = None  # render.backtraces: the panicking CPU's (or every CPU's)
    tasks: Any = None  # render.tasks.TaskSummary: hung tasks, states, modules
    tasks_error: str | None = None



def log_tail(records: list[Record]) -> tuple[str, list[Record]]:
    """The crash report when there is one: from the first of the last run of "Kernel panic",
    "Oops" and "BUG:" records (markers at most CRASH_SPAN records apart, so an oops and the
    panic it caused stay together) to the end; else the last TAIL_LINES records."""
    marks = [i for i, r in enumerate(records) if CRASH_MARK.match(r.text)]
    if not marks:
        return ("last lines" if records else ""), records[-TAIL_LINES:]
    start = marks[-1]
    for i in reversed(marks[:-1]):
        if start - i > CRASH_SPAN:
            break
        start = i
    return "crash report", records[start:]


def _cpus(analysis: Analysis) -> tuple[list[Cpu] | None, str, list[str]]:
    try:
        found = analysis.cpus()
    except SadumpError as e:
        return None, "none", [f"CPU state not readable: {e}"]
    cpus = [Cpu(i, c.prefix, c.psw_mask, c.psw_addr) for i, c in enumerate(found.cpus)]
    # "no CPU has a stored status" is the report's own CPUs line, not a warning
    warnings = [w for w in found.warnings if not w.startswith("no CPU has a stored status")]
    return cpus, found.source, warnings


def crash_info(analysis: Analysis) -> CrashInfo:
    info = analysis.vmcoreinfo.info
    cpus, cpu_source, warnings = _cpus(analysis)
    log, log_error = None, None
    try:
        log = read_kernel_log(analysis.kernel_memory, analysis.vmcoreinfo.info)
    except LogError as e:
        log_error = str(e)
    kind, tail = log_tail(log.records) if log else ("", [])
    classes, classes_error = memory_classes(analysis)
    from sadump.render.backtraces import panic_backtraces
    from sadump.render.tasks import task_summary

    tasks, tasks_error = task_summary(analysis)
    return CrashInfo(info.osrelease if info else None, analysis.crash_time(), cpus, cpu_source,
                     log, log_error, tail, kind, warnings + (log.warnings if log else [])
                     + (tasks.warnings if tasks else []),
                     classes, classes_error, backtrace=panic_backtraces(analysis),
                     tasks=tasks, tasks_error=tasks_error)


# ---- memory by class (makedumpfile --mem-usage) ----------------------------------------

SHOWN_LEVELS = (0, 1, 2, 4, 8, 16, 31)


@dataclass
class MemoryClasses:
    """Present pages by makedumpfile's --mem-usage classes, and what each level writes."""

    pages: dict[str, int]  # ZERO, NON_PRI_CACHE, PRI_CACHE, USER, FREE, KERN_DATA
    present: int
    always_out: int  # hwpoison and offline pages: left out at every level that walks
    #: dump level -> pages it writes: its 2nd bitmap less, with bit 1, the zero pages that
    #: level 31 keeps (as --mem-usage counts ZERO): exact at 31 and without bit 1, an upper
    #: bound below 31 with bit 1 (zero pages among the cache, user or free ones are not read)
    levels: dict[int, int]


def memory_classes(analysis: Analysis) -> tuple[MemoryClasses | None, str | None]:
    """Classify the crashed system's memory (the crashkernel left out) by the rules of
    makedumpfile -d 31; (None, why) when VMCOREINFO does not allow it."""
    from sadump.kernel.mem_section import FilterError, filter_keys, pfn_ranges
    from sadump.kernel.pages import count_zero_pages, filter_levels

    info = analysis.vmcoreinfo.info
    if info is None:
        return None, "no VMCOREINFO"
    m = analysis.os_info
    leave_out = (m.crashkernel_addr, m.crashkernel_size) if m.valid else None
    present = pfn_ranges(analysis.memory.ranges(), leave_out)
    from sadump.page_filter import check_bitmap_size

    try:
        check_bitmap_size(present)
        results = filter_levels(analysis.kernel_memory, filter_keys(info), present,
                                SHOWN_LEVELS)
    except FilterError as e:
        return None, str(e)
    result = results[31]
    zero = count_zero_pages(analysis.memory, result.bitmap2, result.max_mapnr)
    pages = result.mem_usage(zero)
    always = result.counts.get("HWPOISON", 0) + result.counts.get("OFFLINE", 0)
    levels = {lv: r.dumpable - (zero if lv & 1 else 0) for lv, r in results.items()}
    return MemoryClasses(pages, result.present, always, levels), None


def classes_json(mc: MemoryClasses | None, error: str | None) -> dict[str, Any]:
    if mc is None:
        return {"error": error}
    return {"pages": mc.pages,
            "mib": {k: round(v * PAGE_SIZE / MIB, 1) for k, v in mc.pages.items()},
            "present_pages": mc.present,
            "dump_levels": {str(lv): {"pages": n, "mib": round(n * PAGE_SIZE / MIB, 1)}
                            for lv, n in mc.levels.items()},
            "error": None}


def classes_lines(mc: MemoryClasses | None, error: str | None) -> list[str]:
    """The classes in one line of plain text (the bars and the table of every level are for
    a terminal, see render_classes, and for --json)."""
    if mc is None:
        return [f"memory class not available: {error}"]
    classes = ", ".join(f"{name} {n} ({mib(n * PAGE_SIZE)})" for name, n in mc.pages.items())
    d31 = mc.levels[31]
    return [f"memory class {classes}; -d 31 writes {d31} pages ({mib(d31 * PAGE_SIZE)})"]


def render_classes(mc: MemoryClasses | None, error: str | None, console) -> None:
    """The class table on a terminal: one rich bar per class."""
    if mc is None:
        console.print(f"memory by class  not available: {error}")
        return
    from rich.bar import Bar
    from rich.table import Table

    table = Table(title="memory by class (makedumpfile --mem-usage, the rules of -d 31)")
    for col, justify in (("class", "left"), ("pages", "right"), ("MiB", "right"),
                         ("share", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    for name, n in mc.pages.items():
        share = n / mc.present if mc.present else 0.0
        table.add_row(name, str(n), f"{n * PAGE_SIZE / MIB:.1f}", f"{share:.1%}",
                      Bar(1.0, 0.0, share, width=30))
    console.print(table)
    console.print("dump levels (pages written; with bit 1 below 31 at most): " + ", ".join(
        f"{lv}: {n} ({mib(n * PAGE_SIZE)})" for lv, n in mc.levels.items()))


# ---- JSON ------------------------------------------------------------------------------

def source_json(analysis: Analysis) -> dict[str, Any]:
    v = analysis.vmcoreinfo
    return {"path": analysis.image.path, "format": analysis.image.format,
            "vmcoreinfo": v.source or None,
            "osrelease": v.info.osrelease if v.info else None}


def dmesg_json(analysis: Analysis, log: KernelLog, records: list[Record]) -> dict[str, Any]:
    return {"records": [r.json() for r in records],
            "source": source_json(analysis) | {"log_format": log.format},
            "warnings": analysis.warnings + log.warnings}


def info_json(analysis: Analysis, ci: CrashInfo) -> dict[str, Any]:
    m = analysis.os_info
    mem = analysis.memory
    return {
        "source": source_json(analysis),
        "dumper": report.dumper_json(analysis.image),
        "incomplete": analysis.image.incomplete,
        "osrelease": ci.osrelease,
        "crashtime": ci.crashtime,
        "crashtime_utc": utc(ci.crashtime),
        "cpus": None if ci.cpus is None else [
            {"number": c.number, "prefix": c.prefix, "psw": [c.psw_mask, c.psw_addr]}
            for c in ci.cpus],
        "cpu_source": ci.cpu_source,
        "memory": {"size": mem.size, "ranges": [[s, e] for s, e in mem.ranges()]},
        "crashkernel": {"addr": m.crashkernel_addr, "size": m.crashkernel_size},
        "os_info": {"pointer": m.pointer, "valid": m.valid, "error": m.error or None},
        "decision": report.decision_json(analysis),
        "trigger": report.trigger_sentence(analysis),
        "log": {"format": ci.log.format if ci.log else None, "error": ci.log_error,
                "records": len(ci.log.records) if ci.log else 0, "tail_kind": ci.tail_kind or None,
                "tail": [r.line() for r in ci.tail]},
        "memory_classes": classes_json(ci.classes, ci.classes_error),
        "backtrace": bt_json(ci.backtrace) if ci.backtrace is not None else None,
        "tasks": summary_json(ci.tasks, ci.tasks_error),
        "warnings": analysis.warnings + ci.warnings,
    }


# ---- text ------------------------------------------------------------------------------

def info_lines(analysis: Analysis, ci: CrashInfo, with_classes: bool = True,
               with_tasks: bool = True) -> list[str]:
    """The one-screen report, plain text (kernel log lines hold brackets: no markup)."""
    m, mem = analysis.os_info, analysis.memory
    v = analysis.vmcoreinfo
    out = [f"{analysis.image.path}: {analysis.image.format}"]
    out += report.dumper_lines(analysis.image)
    if v.info:
        out.append(f"kernel       {ci.osrelease or '-'} (VMCOREINFO from {v.source})")
    else:
        out.append(f"kernel       unknown: no VMCOREINFO ({v.error or 'not found'})")
    out.append("crash time   " + (f"{utc(ci.crashtime)} (CRASHTIME={ci.crashtime})"
                                  if ci.crashtime is not None else
                                  "not recorded (no CRASHTIME: taken before a kernel crash "
                                  "was recorded)"))
    if ci.cpus is None:
        out.append("CPU state    not available")
    elif not ci.cpus:
        out.append("CPUs         none with a stored status")
    else:
        out.append(f"CPUs         {len(ci.cpus)} with a stored status (from {ci.cpu_source})")
        out += [f"  CPU {c.number:<3d}    prefix {c.prefix:#010x}  PSW {c.psw_mask:016x} "
                f"{c.psw_addr:016x}" for c in ci.cpus]
    ranges = mem.ranges()
    shown = ", ".join(f"[{s:#x}, {e:#x})" for s, e in ranges[:4]) + (" ..." if len(ranges) > 4
                                                                      else "")
    out.append(f"memory       {mib(mem.size)} in {len(ranges)} range(s): {shown}")
    out.append("crashkernel  " + (f"{m.crashkernel_addr:#x}, {mib(m.crashkernel_size)}"
                                  if m.crashkernel_addr or m.crashkernel_size else "none"))
    if m.valid:
        out.append(f"os_info      valid at {m.pointer:#x} (version {m.version[0]}.{m.version[1]})")
    else:
        out.append(f"os_info      not valid: {m.error or 'not found'}")
    out.append(f"decision     {analysis.decision.path}: {report.trigger_sentence(analysis)}")
    if ci.log is None:
        out.append(f"kernel log   not readable: {ci.log_error}")
    else:
        what = "the crash report" if ci.tail_kind == "crash report" else \
            f"the last {len(ci.tail)} lines"
        out.append(f"kernel log   {len(ci.log.records)} records ({ci.log.format}); {what}:")
        out += ["  " + line for r in ci.tail for line in r.line().split("\n")]
    out += bt_lines(ci.backtrace)
    if with_tasks:
        out += summary_lines(ci.tasks, ci.tasks_error)
    if with_classes:
        out += classes_lines(ci.classes, ci.classes_error)
    return out

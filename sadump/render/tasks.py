"""`sadump ps` and the task side of `sadump bt` (--pid, --state, --all): every task of the
image, and each task's frames as the kernel's sysrq-t prints them. A task that is not
running is unwound from its last switch (thread.ksp); a running one from its CPU's
registers when the image has them. Frames in modules are symbolized from the module's
own symbol table (`symbol+0xoff/0xsize [module]`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sadump.errors import SadumpError
from sadump.kernel.tasks import STATE_LETTERS, Task, TaskList, blocked
from sadump.kernel.unwind import (
    PSW_MASK_PSTATE,
    Frame,
    Stack,
    StackReader,
    Walk,
    thread_size,
    walk_task,
)
from sadump.render.symbols import Symbol, Symbolizer, symbolizer


@dataclass
class TaskTrace:
    task: Task
    walk: Walk | None
    #: where the frames come from: "saved" (thread.ksp), "cpu" (its CPU's registers),
    #: "saved, running" (running, but the image has no registers for its CPU)
    source: str
    problem: str | None = None  # why there are no frames


@dataclass
class TaskTraces:
    traces: list[TaskTrace]
    symbolize: Symbolizer
    warnings: list[str] = field(default_factory=list)


# ---- gathering -----------------------------------------------------------------------------
def analysis_tasks(analysis, btf_file: str | None = None) -> TaskList:
    """Every task of an Analysis; NoBtfError / BtfError / TaskError / KallsymsError when the
    walk cannot start."""
    from sadump.kernel.kallsyms import KallsymsError
    from sadump.kernel.tasks import walk_tasks

    btf = analysis.kernel_btf(btf_file)
    try:
        syms = analysis.symbols()
    except KallsymsError:
        syms = None
    return walk_tasks(analysis.kernel_memory, btf, syms, analysis.vmcoreinfo.info)


def select(tasks: list[Task], pid: int | None = None, states: str | None = None,
           everything: bool = False, sysrq: bool = True) -> list[Task]:
    """--pid N (the task's own id), --state LETTERS, --all. With sysrq (bt), D is what
    sysrq-w lists: uninterruptible without TASK_NOLOAD (a frozen task shows D but is not
    listed); without (ps), every letter is the one the task shows."""
    if everything:
        return list(tasks)
    out = tasks
    if pid is not None:
        out = [t for t in out if t.pid == pid]
    if states:
        out = [t for t in out if any(_matches(t, c, sysrq) for c in states)]
    return out


def _matches(t: Task, letter: str, sysrq: bool) -> bool:
    if letter == "D" and sysrq:
        return blocked(t.raw_state) and not t.idle
    return t.state == letter


def bad_states(states: str) -> str:
    """The letters of states that are no task state."""
    return "".join(c for c in states if c not in STATE_LETTERS)


def task_traces(analysis, tasks: list[Task], sym: Symbolizer) -> TaskTraces:
    """The frames of each task: from thread.ksp, or from its CPU's registers when it runs."""
    from sadump.render.backtraces import analysis_backtraces

    warnings: list[str] = []
    size = thread_size(sym.syms)
    reader = StackReader(analysis.kernel_memory)
    cpu_walks = {}
    if any(t.running for t in tasks):
        try:
            bt = analysis_backtraces(analysis)
            cpu_walks = {c.cpu: c for c in bt.cpus if c.walk is not None}
        except SadumpError as e:
            warnings.append(f"CPU registers not read: {e}")
    out = []
    for t in tasks:
        if t.running and t.running_cpu in cpu_walks:
            c = cpu_walks[t.running_cpu]
            user = c.regs is not None and bool(c.regs.psw_mask & PSW_MASK_PSTATE)
            frames = [f for f in c.walk.frames if not (f.kind == "psw" and user)]
            w = Walk(frames, c.walk.end, c.walk.normal, c.walk.end_regs)
            out.append(TaskTrace(t, w, "cpu"))
            continue
        if not t.stack:
            out.append(TaskTrace(t, None, "saved", "no kernel stack (the task has exited)"))
            continue
        stack = Stack("task", t.stack, t.stack + size)
        w = walk_task(reader.u64, t.ksp, stack, sym.is_text)
        out.append(TaskTrace(t, w, "saved, running" if t.running else "saved"))
    return TaskTraces(out, sym, warnings)


# ---- ps ---------------------------------------------------------------------------------------
def ps_order(tasks: list[Task]) -> list[Task]:
    """As ps -eL lists them: by process, then thread; the idle tasks (pid 0) first."""
    return sorted(tasks, key=lambda t: (not t.idle, t.tgid, t.pid))


def ps_lines(tl: TaskList, tasks: list[Task]) -> list[str]:
    out = [f"  {'PID':>7} {'TID':>7} {'PPID':>7} S {'CPU':>3} COMMAND"]
    for t in ps_order(tasks):
        name = f"[{t.name}]" if t.kthread else t.name
        mark = ">" if t.running else " "
        cpu = "-" if t.cpu is None else str(t.cpu)
        out.append(f"{mark} {t.tgid:>7} {t.pid:>7} {t.ppid:>7} {t.state} {cpu:>3} {name}")
    counts = state_counts(tl.tasks)
    running = [t for t in tasks if t.running]
    out.append(f"{len(tasks)} tasks shown of {len(tl.tasks)} ("
               + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")"
               + (f"; > running on a CPU: {len(running)}" if running else ""))
    return out


def state_counts(tasks: list[Task]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: STATE_LETTERS.index(kv[0])))


def task_json(t: Task) -> dict[str, Any]:
    return {"pid": t.pid, "tgid": t.tgid, "ppid": t.ppid, "state": t.state, "cpu": t.cpu,
            "running": t.running, "comm": t.name, "kthread": t.kthread}


def ps_json(tasks: list[Task]) -> dict[str, Any]:
    return {"tasks": [task_json(t) for t in ps_order(tasks)]}


# ---- bt ---------------------------------------------------------------------------------------
def header(t: Task) -> str:
    """sched_show_task()'s first line (comm cut to 15 as the kernel does), with the CPU."""
    line = f"task:{t.comm[:15]:<15} state:{t.state}"
    if t.state == "R":
        line += "  running task    "
    line += f" pid:{t.pid:<5} tgid:{t.tgid:<5} ppid:{t.parent_pid:<6}"
    if t.cpu is not None:
        line += f" cpu:{t.cpu}"
    return line


def trace_lines(tt: TaskTraces, tr: TaskTrace) -> list[str]:
    t = tr.task
    out = [header(t)]
    if tr.source == "cpu":
        out.append(f"  running on CPU {t.running_cpu}: frames from its registers")
    elif tr.source == "saved, running":
        out.append(f"  running on CPU {t.running_cpu}, whose registers the image lacks: "
                   "frames from its last switch (stale)")
    if tr.walk is None:
        out.append(f"  {tr.problem}")
        return out
    out.append("Call Trace:")
    for f in tr.walk.frames:
        text = f"[<{f.pc:016x}>] {tt.symbolize(f.pc)}"
        out.append(f" {text} " if f.reliable else f"({text})")
    if not tr.walk.frames and tr.source == "cpu":
        out.append("  (in user mode: no kernel frames)")
    if not tr.walk.normal:
        out.append(f"  walk stopped: {tr.walk.end}")
    return out


def text_lines(tt: TaskTraces) -> list[str]:
    out: list[str] = []
    for tr in tt.traces:
        out += trace_lines(tt, tr)
    if not tt.traces:
        out.append("no task matches")
    return out


def frame_json(tt: TaskTraces, f: Frame) -> dict[str, Any]:
    s = tt.symbolize(f.pc)
    return {"pc": f.pc, "symbol": s.name, "offset": s.offset, "size": s.size, "sp": f.sp,
            "stack": f.stack, "reliable": f.reliable, "module": s.module}


def traces_json(tt: TaskTraces) -> dict[str, Any]:
    return {"tasks": [{
        "pid": tr.task.pid, "tgid": tr.task.tgid, "comm": tr.task.comm,
        "state": tr.task.state, "cpu": tr.task.cpu, "running": tr.task.running,
        "frames": [] if tr.walk is None else [frame_json(tt, f) for f in tr.walk.frames],
    } for tr in tt.traces]}


def waiting_in(tt: TaskTraces, tr: TaskTrace) -> Symbol | None:
    """The first frame outside the scheduler's own functions: where the task waits."""
    if tr.walk is None:
        return None
    for f in tr.walk.frames:
        if f.reliable and not tt.symbolize.sched(f.pc):
            return tt.symbolize(f.pc)
    return None


# ---- for `sadump info` -------------------------------------------------------------------------
@dataclass
class TaskSummary:
    """The hung-task facts of one image: tasks per state, the blocked (D) tasks with where
    they wait and how long ago they last ran, the loaded modules."""

    counts: dict[str, int]
    total: int
    blocked: list[tuple[Task, Symbol | None]]
    modules: list | None  # sadump.kernel.modules.Module, in /proc/modules order
    warnings: list[str] = field(default_factory=list)


def task_summary(analysis) -> tuple[TaskSummary | None, str | None]:
    """(summary, None), or (None, why) when the image gives no task list (no BTF, ...)."""
    try:
        tl = analysis_tasks(analysis)
        btf = analysis.kernel_btf()
    except SadumpError as e:
        return None, str(e)
    sym, warnings = symbolizer(analysis, btf)
    chosen = select(tl.tasks, states="D")
    traces = task_traces(analysis, chosen, sym)
    blocked_at = [(tr.task, waiting_in(traces, tr)) for tr in traces.traces]
    return TaskSummary(state_counts(tl.tasks), len(tl.tasks), blocked_at, sym.modules,
                       tl.warnings + warnings + traces.warnings), None


def _ago(t: Task) -> str:
    if t.last_ran_ns is None:
        return "-"
    return f"{t.last_ran_ns / 1e9:.1f} s"


def summary_lines(s: TaskSummary | None, error: str | None, width: int = 100) -> list[str]:
    if s is None:
        return [f"tasks        not available: {error}"]
    counts = ", ".join(f"{k} {v}" for k, v in s.counts.items())
    out = [f"tasks        {s.total} ({counts}); {len(s.blocked)} blocked (D, as sysrq-w "
           "lists them)" + (":" if s.blocked else "")]
    for t, where in s.blocked:
        out.append(f"  {t.pid:>7} {t.comm:<16} waits in {where or '?'}; last ran "
                   f"{_ago(t)} ago (CPU {t.cpu}'s runqueue clock)")
    if s.modules is None:
        out.append("modules      not read")
    else:
        line = f"modules      {len(s.modules)}:"
        for m in s.modules:
            if len(line) + 1 + len(m.name) > width:
                out.append(line)
                line = "            "
            line += " " + m.name
        out.append(line)
    return out


def summary_json(s: TaskSummary | None, error: str | None) -> dict[str, Any]:
    if s is None:
        return {"error": error, "counts": None, "total": None, "blocked": None,
                "modules": None}
    return {
        "error": None, "counts": s.counts, "total": s.total,
        "blocked": [{"pid": t.pid, "tgid": t.tgid, "comm": t.comm, "cpu": t.cpu,
                     "waiting_in": None if w is None else {
                         "symbol": w.name, "offset": w.offset, "size": w.size,
                         "module": w.module},
                     "last_ran_seconds": None if t.last_ran_ns is None
                     else round(t.last_ran_ns / 1e9, 3)} for t, w in s.blocked],
        "modules": None if s.modules is None else [m.name for m in s.modules],
    }


def render_summary(s: TaskSummary | None, error: str | None, console) -> None:
    """The blocked tasks as a rich table on a terminal."""
    if s is None or not s.blocked:
        for line in summary_lines(s, error, console.width):
            console.print(line, markup=False)
        return
    from rich.table import Table

    counts = ", ".join(f"{k} {v}" for k, v in s.counts.items())
    table = Table(title=f"tasks blocked in D ({s.total} tasks: {counts})")
    for col, justify in (("pid", "right"), ("comm", "left"), ("waits in", "left"),
                         ("last ran", "right"), ("CPU", "right")):
        table.add_column(col, justify=justify)
    for t, where in s.blocked:
        table.add_row(str(t.pid), t.comm, str(where or "?"), _ago(t) + " ago", str(t.cpu))
    console.print(table)
    for line in summary_lines(s, error, console.width)[1 + len(s.blocked):]:
        console.print(line, markup=False)

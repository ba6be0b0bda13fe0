"""`sadump bt`: every CPU's backtrace as text (laid out like the kernel's own Call Trace) and
as JSON. Pure: takes the Backtraces of sadump.kernel.unwind, returns lines or data."""

from __future__ import annotations

from typing import Any

from sadump.kernel.unwind import PSW_MASK_PSTATE, PSW_MASK_WAIT, Backtraces, CpuTrace, Frame
from sadump.render.symbols import MODULES_NOT_READ, Symbol, symbolizer

#: entry code that builds a pt_regs, and what it means (arch/s390/kernel/entry.S)
HANDLERS = {
    "restart_int_handler": "a restart interrupt",
    "ext_int_handler": "an external interrupt",
    "io_int_handler": "an I/O interrupt",
    "mcck_int_handler": "a machine check",
    "pgm_check_handler": "a program check",
    "system_call": "a system call",
}
IDLE = {"psw_idle", "psw_idle_exit", "arch_cpu_idle", "default_idle_call", "do_idle",
        "cpu_startup_entry"}
SYMBOL_COLUMN = 64


def _name(bt: Backtraces, pc: int) -> str | None:
    return bt.symbols.lookup(pc).name if bt.symbols is not None else None


def _symbol(bt: Backtraces, pc: int):
    """kallsyms' symbol, or a module's (`name+0xoff/0xsize [module]`) through the symbolizer
    of the tasks' backtraces (render.symbols) when bt has one; else kallsyms' own (raw, or
    `[module] 0x…`), as before modules were read."""
    if bt.symbols is None:
        return None
    sym = bt.symbols.lookup(pc)
    if sym.name is None and bt.symbolize is not None:
        named = bt.symbolize(pc)
        if named.name is not None:
            return named
    return sym


def doing(bt: Backtraces, t: CpuTrace) -> str | None:
    """What the CPU was doing, in one line, when the frames show it (else None)."""
    if t.regs is None or t.walk is None or bt.symbols is None:
        return None
    if t.regs.psw_mask & PSW_MASK_PSTATE:
        return "running a user program"
    frames = t.walk.frames
    names = [_name(bt, f.pc) for f in frames]
    parts = []
    if "panic" in names:
        parts.append("in panic" + (", starting kdump (__crash_kexec)" if "__crash_kexec" in names
                                   else ""))
    elif names[0] == "__do_machine_kdump":
        parts.append("in the kdump entry")
    elif t.regs.psw_mask & PSW_MASK_WAIT or names[0] in IDLE:
        parts.append("idle")
    # each pt_regs was built by the entry code of the frame before it
    entries = [names[i - 1] for i, f in enumerate(frames) if f.kind == "pt_regs" and i > 0]
    if t.walk.normal and t.walk.end_regs is not None and names[-1] != "restart_int_handler":
        entries.append(names[-1])  # from user space (secondary CPUs start in a restart)
    for entry in entries:
        what = HANDLERS.get(entry or "")
        if what:
            parts.append(f"in {what}")
    if IDLE & set(names) and (not parts or parts[0] != "idle"):
        parts.append("interrupting the idle loop")
    return ", ".join(parts) or None


def _psw_marks(mask: int) -> str:
    marks = []
    if mask & PSW_MASK_PSTATE:
        marks.append("user mode")
    if mask & PSW_MASK_WAIT:
        marks.append("wait")
    return f" ({', '.join(marks)})" if marks else ""


def _frame_line(bt: Backtraces, f: Frame) -> str:
    sym = _symbol(bt, f.pc)
    text = f"[<{f.pc:016x}>] {sym if sym is not None else f'{f.pc:#x}'}"
    text = f" {text} " if f.reliable else f"({text})"
    note = ""
    if bt.symbols is not None and f.kind in ("return", "r14"):
        caller = bt.symbols.caller_note(f.pc)
        if caller is not None:
            note = f"  (called from {caller.name}+{caller.offset:#x}/{caller.size:#x}: " \
                   "a noreturn call)"
    return f"  {text:<{SYMBOL_COLUMN}} {f.stack or '?'}{note}"


def cpu_lines(bt: Backtraces, t: CpuTrace) -> list[str]:
    head = f"CPU {t.cpu}  prefix {t.prefix:#x}" if t.prefix is not None else f"CPU {t.cpu}"
    head += f"  PID {t.pid}" if t.pid is not None else "  PID ?"
    if t.regs is None:
        return [head, f"  {t.problem}"]
    r = t.regs
    head += f"  PSW {r.psw_mask:016x} {r.psw_addr:016x}{_psw_marks(r.psw_mask)}"
    out = [head]
    if t.walk is None:
        out.append(f"  {t.problem}")
        return out
    what = doing(bt, t)
    if what:
        out.append(f"  doing: {what}")
    prev = None
    for i, f in enumerate(t.walk.frames):
        if f.kind == "pt_regs":
            out.append(f"  -- pt_regs at {f.regs_at:#x}: PSW {f.regs_mask:016x} "
                       f"{f.pc:016x}, r15 {f.sp:#x}")
        elif i and f.stack != prev:
            out.append(f"  -- backchain to the {f.stack} stack")
        out.append(_frame_line(bt, f))
        prev = f.stack
    end = t.walk.end
    if end == "task pt_regs":
        end = f"end: the task's pt_regs at {t.walk.end_regs:#x} (task stack top - 200)"
    elif end == "user pt_regs":
        end = f"end: user-mode pt_regs at {t.walk.end_regs:#x}"
    elif t.walk.normal:
        end = f"end: {end}"
    else:
        end = f"walk stopped: {end}"
    out.append(f"  {end}")
    return out


def symbols_line(bt: Backtraces) -> str:
    if bt.symbols is None:
        return f"symbols: none, addresses are raw ({bt.symbols_error})"
    return f"symbols: {len(bt.symbols)} from kallsyms ({bt.symbols.encoding} offsets)"


def text_lines(bt: Backtraces) -> list[str]:
    out = [symbols_line(bt)]
    if not bt.cpus:
        out.append("no CPUs found")
    for t in bt.cpus:
        out.append("")
        out += cpu_lines(bt, t)
    return out


# ---- JSON ------------------------------------------------------------------------------------
def frame_json(bt: Backtraces, f: Frame) -> dict[str, Any]:
    sym = _symbol(bt, f.pc)
    named = sym is not None and sym.name is not None
    # a module's Symbol names its module; kallsyms' own has module False (or True: unnamed)
    module = sym.module if named and isinstance(sym, Symbol) else None
    return {"pc": f.pc, "symbol": sym.name if named else None,
            "offset": sym.offset if named else None, "size": sym.size if named else None,
            "sp": f.sp, "stack": f.stack, "reliable": f.reliable, "module": module}


def cpu_json(bt: Backtraces, t: CpuTrace) -> dict[str, Any]:
    """Issue 13's shape exactly; psw is null for a CPU without registers."""
    return {
        "cpu": t.cpu,
        "prefix": t.prefix,
        "pid": t.pid,
        "psw": None if t.regs is None else {"mask": t.regs.psw_mask, "addr": t.regs.psw_addr},
        "frames": [] if t.walk is None else [frame_json(bt, f) for f in t.walk.frames],
    }


def backtraces_json(bt: Backtraces) -> dict[str, Any]:
    return {"cpus": [cpu_json(bt, t) for t in bt.cpus]}


def ending(t: CpuTrace) -> str:
    """Why the frames end: the walk's end, or why there is no walk."""
    return t.walk.end if t.walk is not None else t.problem or ""


def in_panic(bt: Backtraces, t: CpuTrace) -> bool:
    return t.walk is not None and bt.symbols is not None and \
        bool({"panic", "__crash_kexec"} & {_name(bt, f.pc) for f in t.walk.frames})


def panicking(bt: Backtraces) -> list[CpuTrace]:
    """The CPU whose chain runs through panic or __crash_kexec; every CPU when none does."""
    return [t for t in bt.cpus if in_panic(bt, t)] or bt.cpus


def analysis_backtraces(analysis, cpu: int | None = None) -> Backtraces:
    """Every CPU's backtrace (or CPU `cpu`'s) of an Analysis (sadump.analysis)."""
    from sadump.kernel.unwind import backtraces

    return backtraces(analysis.memory, analysis.kernel_memory, analysis.vmcoreinfo.info,
                      analysis.cpus, cpu, analysis.symbols)


def _kernel_pcs(bt: Backtraces):
    """The frames' addresses less those in user space (a PSW in the problem state)."""
    for t in bt.cpus:
        for f in t.walk.frames if t.walk is not None else []:
            mask = f.regs_mask if f.kind == "pt_regs" else \
                t.regs.psw_mask if f.kind == "psw" and t.regs is not None else 0
            if not (mask or 0) & PSW_MASK_PSTATE:
                yield f.pc


def name_module_frames(analysis, bt: Backtraces, btf_file: str | None = None) -> None:
    """Let bt name its frames in modules as the tasks' backtraces do (the same symbolizer),
    when a frame is one kallsyms cannot name and the kernel's BTF lets the module list be
    read. A kernel without BTF keeps its frames as they were (`[module] 0x…`), with no
    warning: BTF is no requirement of `sadump bt`."""
    from sadump.errors import NoBtfError, SadumpError

    if bt.symbols is None or not any(bt.symbols.lookup(pc).name is None
                                     for pc in _kernel_pcs(bt)):
        return
    try:
        btf = analysis.kernel_btf(btf_file)
    except NoBtfError:
        return
    except SadumpError as e:
        bt.warnings.append(f"{MODULES_NOT_READ}: {e}")
        return
    sym, warnings = symbolizer(analysis, btf)
    bt.symbolize = sym
    bt.warnings += warnings


# ---- for `sadump info` -----------------------------------------------------------------------
def panic_backtraces(analysis) -> Backtraces | None:
    """The backtrace of the CPU that panicked, or of every CPU when none did; None when the
    image gives no CPUs at all."""
    from sadump.errors import SadumpError

    try:
        bt = analysis_backtraces(analysis)
    except SadumpError:
        return None
    if not bt.cpus:
        return None
    bt.cpus = panicking(bt)
    return bt


def info_lines(bt: Backtraces | None, width: int = 100) -> list[str]:
    """Compact, for one screen: per CPU a header (what it was doing), then its reliable
    frames as one chain, innermost first, wrapped; `sadump bt` prints them in full."""
    if bt is None:
        return ["backtrace    none: no CPUs found"]
    out = []
    if bt.symbols is None:
        out.append(f"backtrace    raw addresses: {bt.symbols_error}")
    for t in bt.cpus:
        head = f"backtrace    CPU {t.cpu}" + (" (panicked)" if in_panic(bt, t) else "") + \
            (f", PID {t.pid}" if t.pid is not None else "")
        if t.walk is None:
            out.append(f"{head}: {t.problem}")
            continue
        out.append(f"{head}: {doing(bt, t) or 'running'}")
        chain = [_short(bt, f.pc) for f in t.walk.frames if f.reliable]
        line = " "
        for i, name in enumerate(chain):
            item = name + (" <" if i < len(chain) - 1 else "")
            if len(line) + 1 + len(item) > width:
                out.append(line)
                line = " "
            line += " " + item
        out.append(line)
        if not t.walk.normal:
            out.append(f"  walk stopped: {t.walk.end}")
    return out


def _short(bt: Backtraces, pc: int) -> str:
    sym = _symbol(bt, pc)
    if sym is None or sym.name is None:
        return f"{pc:#x}"
    return f"{sym.name}+{sym.offset:#x}"

"""s390x backchain unwinding from memory alone (spec backtrace.md 3.2-3.7).

The kernel is built with -mpacked-stack -mbackchain: every frame keeps its caller's frame
address at sp + 152 and the saved r14 (the return address into the caller) at sp + 136; an
interrupt, program check, system call or restart builds a pt_regs at sp + 160 and clears the
backchain above it. The walk here is the kernel's own (arch/s390/kernel/unwind_bc.c), made
strict for damaged images:

- frame 0 is the PSW address (reliable); after the start registers and after every pt_regs
  one "unreliable" frame is the r14 slot of the frame r15 points at, kept only when it is
  kernel text and differs from the PSW address;
- a backchain must go up within the stack, or into another of the CPU's stacks not yet
  visited (task, irq, nodat, restart, mcck: each at most once), and a frame must fit;
- a zero backchain means a pt_regs at sp + 160: the end when it is the task stack's own
  (task_pt_regs, top - 200) or a user-mode PSW, else the walk goes on at its PSW and r15;
- it stops at a misaligned sp, a loop, an unreadable word, and after a bounded number of
  frames per stack and in total.

Every word is read through KernelMemory (linear rules, then the DAT walk for vmalloc'ed
stacks), one page at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sadump.errors import SadumpError
from sadump.formats.memory import PhysicalMemory
from sadump.kernel.cpus import CpuFinding
from sadump.kernel.translate import KernelMemory
from sadump.kernel.vmcoreinfo import VmcoreInfo

KIB = 1 << 10
PAGE = 4096
STACK_FRAME_OVERHEAD = 160  # sizeof(struct stack_frame)
PT_REGS_SIZE = 200  # sizeof(struct pt_regs)
STACK_INIT_OFFSET_DELTA = STACK_FRAME_OVERHEAD + PT_REGS_SIZE  # top = lowcore field + 360
SF_R14 = 136  # stack_frame.gprs[8]
SF_BACKCHAIN = 152
PT_PSW_MASK, PT_PSW_ADDR, PT_GPRS = 8, 16, 24
PSW_MASK_PSTATE = 0x0001000000000000  # user mode
PSW_MASK_WAIT = 0x0002000000000000
THREAD_SIZE = 16 * KIB
THREAD_SIZE_KASAN = 64 * KIB

#: lowcore fields (asm/lowcore.h, 6.1 = 6.12)
LC_CURRENT_TASK = 0x340
LC_CURRENT_PID = 0x39C
STACK_FIELDS = (("task", 0x348), ("irq", 0x350), ("nodat", 0x358), ("restart", 0x360),
                ("mcck", 0x368))
LC_FIELDS_START, LC_FIELDS_END = 0x340, 0x3A4

#: bounds: a 16 KiB stack holds at most ~100 packed frames of 160 bytes
MAX_FRAMES_PER_STACK = 128
MAX_FRAMES = 256


@dataclass(frozen=True)
class Stack:
    name: str  # task | irq | nodat | restart | mcck
    bottom: int
    top: int

    def holds(self, addr: int, size: int) -> bool:
        return self.bottom <= addr and addr + size <= self.top


@dataclass(frozen=True)
class Registers:
    """What a walk starts from: the PSW and r14/r15 (r14 only shown)."""

    psw_mask: int
    psw_addr: int
    gprs: tuple[int, ...]


@dataclass
class Frame:
    pc: int
    sp: int
    stack: str | None  # the stack sp is on; None when on none of the CPU's stacks
    reliable: bool
    #: "psw": the start PSW; "r14": the unreliable r14 slot; "return": a return address
    #: through a backchain; "pt_regs": the PSW saved in a pt_regs
    kind: str
    regs_at: int | None = None  # pt_regs address for kind "pt_regs"
    regs_mask: int | None = None  # that PSW's mask


@dataclass
class Walk:
    frames: list[Frame] = field(default_factory=list)
    #: why the walk stopped: "task pt_regs", "user pt_regs" (normal ends) or a problem
    end: str = ""
    normal: bool = False  # the walk reached a natural end
    end_regs: int | None = None  # the final pt_regs address


class StackReader:
    """u64 reads at kernel virtual addresses, one cached page per read."""

    def __init__(self, kmem, max_pages: int = 64):
        self.kmem = kmem
        self.pages: dict[int, bytes] = {}
        self.max_pages = max_pages

    def u64(self, vaddr: int) -> int:
        if vaddr % 8:
            raise SadumpError(f"misaligned read at {vaddr:#x}")
        page = vaddr & ~(PAGE - 1)
        data = self.pages.get(page)
        if data is None:
            data = self.kmem.read(page, PAGE)
            if len(self.pages) >= self.max_pages:
                self.pages.clear()
            self.pages[page] = data
        off = vaddr - page
        return int.from_bytes(data[off:off + 8], "big")


def thread_size(syms) -> int:
    """16 KiB; 64 KiB when kallsyms shows a KASAN kernel (kasan_* / __asan_* symbols)."""
    if syms is not None and any(n.startswith(("kasan_", "__asan_")) for n in syms.names):
        return THREAD_SIZE_KASAN
    return THREAD_SIZE


def cpu_stacks(fields: dict[str, int], size: int) -> list[Stack]:
    """The stacks of one CPU from its lowcore stack fields (base + STACK_INIT_OFFSET each)."""
    out: list[Stack] = []
    for name, value in fields.items():
        top = value + STACK_INIT_OFFSET_DELTA
        if not value or top > 1 << 64 or top < size:
            continue
        if any(s.top == top for s in out):
            continue  # one stack in two fields (the kdump CPU's restart stack is its nodat)
        out.append(Stack(name, top - size, top))
    return out


def walk(read_u64, regs: Registers, stacks: list[Stack], is_text) -> Walk:
    """The frames of one CPU from its registers (spec 3.7). read_u64(vaddr) may raise
    SadumpError; is_text(addr) is the kernel's __kernel_text_address."""
    w = Walk()
    sp = regs.gprs[15]
    stack = _stack_for(stacks, sp, set())
    w.frames.append(Frame(regs.psw_addr, sp, stack.name if stack else None, True, "psw"))
    if regs.psw_mask & PSW_MASK_PSTATE:
        w.end, w.normal = "user mode: the CPU was running a user program", True
        return w
    if stack is None:
        w.end = f"r15 {sp:#x} is on none of this CPU's stacks"
        return w
    if sp % 8:
        w.end = f"r15 {sp:#x} is not 8-byte aligned"
        return w
    visited = {stack.name}
    per_stack = 0
    last_ip = regs.psw_addr
    pending_regs = True
    try:
        while True:
            if len(w.frames) >= MAX_FRAMES or per_stack >= MAX_FRAMES_PER_STACK:
                w.end = f"stopped after {len(w.frames)} frames ({per_stack} on the " \
                        f"{stack.name} stack)"
                return w
            if pending_regs:
                pending_regs = False
                ip = read_u64(sp + SF_R14)
                if is_text(ip) and ip != last_ip:
                    w.frames.append(Frame(ip, sp, stack.name, False, "r14"))
                    per_stack += 1
                    last_ip = ip
                continue
            bc = read_u64(sp + SF_BACKCHAIN)
            if bc:
                if bc % 8:
                    w.end = f"backchain {bc:#x} at {sp + SF_BACKCHAIN:#x} is not 8-byte aligned"
                    return w
                if not (bc > sp and stack.holds(bc, STACK_FRAME_OVERHEAD)):
                    new = _stack_for(stacks, bc, visited)
                    if new is None:
                        w.end = _off_stack("backchain", bc, sp, stack, stacks, visited)
                        return w
                    stack, per_stack = new, 0
                    visited.add(new.name)
                sp = bc
                ip = read_u64(sp + SF_R14)
                w.frames.append(Frame(ip, sp, stack.name, True, "return"))
                per_stack += 1
                last_ip = ip
                continue
            at = sp + STACK_FRAME_OVERHEAD
            if not stack.holds(at, PT_REGS_SIZE):
                w.end = f"zero backchain at {sp:#x}, but no room for a pt_regs above it on " \
                        f"the {stack.name} stack"
                return w
            mask = read_u64(at + PT_PSW_MASK)
            if stack.name == "task" and at == stack.top - PT_REGS_SIZE:
                w.end, w.normal, w.end_regs = "task pt_regs", True, at
                return w
            if mask & PSW_MASK_PSTATE:
                w.end, w.normal, w.end_regs = "user pt_regs", True, at
                return w
            ip = read_u64(at + PT_PSW_ADDR)
            new_sp = read_u64(at + PT_GPRS + 8 * 15)
            w.frames.append(Frame(ip, sp, stack.name, True, "pt_regs", at, mask))
            per_stack += 1
            last_ip = ip
            if new_sp % 8:
                w.end = f"pt_regs at {at:#x}: r15 {new_sp:#x} is not 8-byte aligned"
                return w
            if not (new_sp > sp and stack.holds(new_sp, STACK_FRAME_OVERHEAD)):
                new = _stack_for(stacks, new_sp, visited)
                if new is None:
                    w.end = _off_stack(f"pt_regs at {at:#x}: r15", new_sp, sp, stack, stacks,
                                       visited)
                    return w
                stack, per_stack = new, 0
                visited.add(new.name)
            sp = new_sp
            # the frame is logged at the interrupted sp: the PSW belongs to that frame
            w.frames[-1].sp = sp
            w.frames[-1].stack = stack.name
            pending_regs = True
    except SadumpError as e:
        w.end = f"stack word not readable: {e}"
        return w


def walk_task(read_u64, ksp: int, stack: Stack, is_text) -> Walk:
    """The frames of a task that is not running, as the kernel's show_stack(task) prints
    them (unwind_bc.c for task != current): from its last switch, sp = thread.ksp and
    ip = the r14 that __switch_to saved there; only the task's own stack is valid (a
    backchain or pt_regs r15 that does not go up inside it ends the walk with an error,
    as get_stack_info's visit mask makes it); the end is the task's own pt_regs."""
    w = Walk()
    if ksp % 8 or not stack.holds(ksp, STACK_FRAME_OVERHEAD):
        w.end = f"saved stack pointer {ksp:#x} is outside the task's stack " \
                f"[{stack.bottom:#x}, {stack.top:#x})"
        return w
    sp, regs_pending = ksp, False
    try:
        ip = read_u64(sp + SF_R14)
        w.frames.append(Frame(ip, sp, stack.name, True, "return"))
        last_ip = ip
        while True:
            if len(w.frames) >= MAX_FRAMES_PER_STACK:
                w.end = f"stopped after {len(w.frames)} frames"
                return w
            if regs_pending:  # the r14 slot after a pt_regs: unreliable, often stale
                regs_pending = False
                ip = read_u64(sp + SF_R14)
                if is_text(ip) and ip != last_ip:
                    w.frames.append(Frame(ip, sp, stack.name, False, "r14"))
                    last_ip = ip
                continue
            bc = read_u64(sp + SF_BACKCHAIN)
            if bc:
                if bc <= sp or bc > stack.top - STACK_FRAME_OVERHEAD or bc % 8:
                    w.end = f"backchain {bc:#x} at {sp + SF_BACKCHAIN:#x} does not go up " \
                            "inside the task's stack"
                    return w
                sp = bc
                ip = read_u64(sp + SF_R14)
                w.frames.append(Frame(ip, sp, stack.name, True, "return"))
                last_ip = ip
                continue
            at = sp + STACK_FRAME_OVERHEAD
            if not stack.holds(at, PT_REGS_SIZE):
                w.end = f"zero backchain at {sp:#x}, but no room for a pt_regs above it"
                return w
            if at == stack.top - PT_REGS_SIZE:
                w.end, w.normal, w.end_regs = "task pt_regs", True, at
                return w
            mask = read_u64(at + PT_PSW_MASK)
            ip = read_u64(at + PT_PSW_ADDR)
            new_sp = read_u64(at + PT_GPRS + 8 * 15)
            if new_sp <= sp or new_sp > stack.top - STACK_FRAME_OVERHEAD or new_sp % 8:
                w.end = f"pt_regs at {at:#x}: r15 {new_sp:#x} does not go up inside the " \
                        "task's stack"
                return w
            sp = new_sp
            w.frames.append(Frame(ip, sp, stack.name, True, "pt_regs", at, mask))
            last_ip, regs_pending = ip, True
    except SadumpError as e:
        w.end = f"stack word not readable: {e}"
        return w


def _stack_for(stacks: list[Stack], sp: int, visited: set[str]) -> Stack | None:
    for s in stacks:
        if s.name not in visited and s.holds(sp, STACK_FRAME_OVERHEAD):
            return s
    return None


def _off_stack(what: str, addr: int, sp: int, stack: Stack, stacks: list[Stack],
               visited: set[str]) -> str:
    if stack.holds(addr, STACK_FRAME_OVERHEAD):
        return f"{what} {addr:#x} does not go up from {sp:#x} (a loop)"
    again = [s.name for s in stacks if s.name in visited and s.holds(addr, STACK_FRAME_OVERHEAD)]
    if again:
        return f"{what} {addr:#x} returns to the {again[0]} stack, already walked (a loop)"
    return f"{what} {addr:#x} is on none of this CPU's stacks"


# ---- every CPU of an analysed image --------------------------------------------------------
@dataclass
class CpuTrace:
    cpu: int  # index in lowcore_ptr (the logical CPU number)
    prefix: int | None  # physical lowcore address
    pid: int | None = None  # lowcore current_pid
    task: int | None = None  # lowcore current_task
    regs: Registers | None = None
    regs_source: str | None = None  # "notes" | "save area"
    stacks: list[Stack] = field(default_factory=list)
    walk: Walk | None = None
    problem: str | None = None  # why there is no walk


@dataclass
class Backtraces:
    cpus: list[CpuTrace]
    symbols: object | None  # Kallsyms
    symbols_error: str | None
    warnings: list[str] = field(default_factory=list)
    #: names the addresses kallsyms does not (frames in modules), when a renderer has the
    #: module list: pc -> a symbol, its name None when it knows none either
    symbolize: Callable[[int], object] | None = None


def cpu_registers(found: CpuFinding) -> tuple[list[tuple[int, Registers]], str, list[str]]:
    """The CPUs' registers as kernel/cpus found them (the register notes, else the
    store-status save areas): (prefix, registers), the source, warnings."""
    regs = [(c.prefix, Registers(c.psw_mask, c.psw_addr, tuple(c.gprs))) for c in found.cpus]
    return regs, found.source, [w for w in found.warnings
                                if not w.startswith("no CPU has a stored status")]


def match_registers(lowcores: list[tuple[int, int]], regs: list[tuple[int, Registers]]
                    ) -> tuple[dict[int, Registers], list[str]]:
    """lowcore -> registers by prefix == lowcore. Notes without any prefix (no
    NT_S390_PREFIX) are matched in order when there are as many as lowcores."""
    if regs and not any(p for p, _ in regs):
        if len(regs) == len(lowcores):
            return ({lc: r for (_, lc), (_, r) in zip(lowcores, regs, strict=True)},
                    ["register notes carry no prefix: matched to lowcore_ptr in order"])
        return {}, [(f"{len(regs)} register notes without a prefix for {len(lowcores)} "
                    "lowcores: not matched")]
    by_prefix = dict(regs)
    return by_prefix, [f"registers with prefix {p:#x} match no CPU's lowcore (lowcore_ptr): "
                       "not walked" for p in sorted(set(by_prefix) - {lc for _, lc in lowcores})]


def _save_area_registers(memory, lowcore: int) -> Registers | None:
    """This lowcore's own store-status save area, when it holds a PSW and names this
    lowcore as its prefix."""
    from sadump.ipl.save_area import read_save_area

    try:
        cpu = read_save_area(memory, lowcore, ipl=False)
    except SadumpError:
        return None
    if cpu is None or not (cpu.psw_mask or cpu.psw_addr) or cpu.prefix != lowcore:
        return None
    return Registers(cpu.psw_mask, cpu.psw_addr, tuple(cpu.gprs))


def _lowcore_fields(memory, lowcore: int) -> tuple[bytes | None, str | None]:
    try:
        return memory.read(lowcore + LC_FIELDS_START, LC_FIELDS_END - LC_FIELDS_START), None
    except SadumpError as e:
        return None, f"lowcore at {lowcore:#x} is not readable: {e}"


def _u64(raw: bytes, offset: int) -> int:
    at = offset - LC_FIELDS_START
    return int.from_bytes(raw[at:at + 8], "big")


def trace_cpu(memory: PhysicalMemory, kmem: KernelMemory, cpu: int, lowcore: int, regs: Registers | None, source: str | None,
              syms, size: int) -> CpuTrace:
    t = CpuTrace(cpu, lowcore, regs=regs, regs_source=source)
    raw, t.problem = _lowcore_fields(memory, lowcore)
    if raw is not None:
        t.task = _u64(raw, LC_CURRENT_TASK)
        at = LC_CURRENT_PID - LC_FIELDS_START
        t.pid = int.from_bytes(raw[at:at + 4], "big")
        t.stacks = cpu_stacks({name: _u64(raw, off) for name, off in STACK_FIELDS}, size)
    if regs is None:
        t.problem = "no registers: this CPU stored no status (no register note, empty " \
                    "save area)"
        return t
    if raw is None:
        return t
    reader = StackReader(kmem)
    is_text = syms.is_text if syms is not None else _maybe_text
    t.walk = walk(reader.u64, regs, t.stacks, is_text)
    return t


def _maybe_text(addr: int) -> bool:
    """Without kallsyms: any non-zero, halfword-aligned address may be code."""
    return addr != 0 and addr % 2 == 0


def backtraces(memory: PhysicalMemory, kmem: KernelMemory, info: VmcoreInfo | None,
               cpus: Callable[[], CpuFinding], cpu: int | None = None,
               symbols: Callable[[], object] | None = None) -> Backtraces:
    """Every CPU's backtrace (or only CPU `cpu`): lowcores from lowcore_ptr, registers
    (cpus(): Analysis.cpus) matched to them by prefix, symbols from kallsyms when VMCOREINFO
    has it (symbols(): a decoded Kallsyms kept by the caller, else decoded here)."""
    from sadump.kernel.cpus import lowcore_table
    from sadump.kernel.kallsyms import KallsymsError, decode

    warnings: list[str] = []
    syms, syms_error = None, None
    try:
        syms = symbols() if symbols is not None else decode(info, kmem)
    except KallsymsError as e:
        syms_error = str(e)
    size = thread_size(syms)
    lowcores, w = lowcore_table(kmem, info)
    warnings += w
    try:
        regs, source, w = cpu_registers(cpus())
    except SadumpError as e:
        regs, source, w = [], "none", [f"CPU registers not readable: {e}"]
    warnings += w
    if not lowcores:  # no lowcore_ptr: each register set names its lowcore
        lowcores = list(enumerate(sorted({p for p, _ in regs if p})))
    by_lowcore, w = match_registers(lowcores, regs)
    warnings += w
    traces = []
    for number, lowcore in lowcores:
        if cpu is not None and number != cpu:
            continue
        r, src = by_lowcore.get(lowcore), source
        if r is None:
            r, src = _save_area_registers(memory, lowcore), "save area"
        traces.append(trace_cpu(memory, kmem, number, lowcore, r, src if r else None, syms,
                                size))
    return Backtraces(traces, syms, syms_error, warnings)

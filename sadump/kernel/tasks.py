"""Every task of the crashed kernel, from kallsyms and the kernel's own BTF (spec tasks-btf.md 5).

The walk is the kernel's for_each_process_thread(): from `init_task` (kallsyms; without it
any CPU's `current_task` followed up `real_parent` to pid 0) along `tasks`, and each
process's threads along `signal->thread_head` (`thread_group` on kernels without it). The
per-CPU idle tasks are not on that list: init_task is CPU 0's, the others are each
runqueue's `idle` (or a CPU's current task with pid 0).

Every struct offset comes from BTF, never a number. A damaged list is cut with a warning:
a pointer that is unaligned or unreadable, a task seen twice (a loop), more than MAX_TASKS.
Each task_struct is read once, whole; nothing sized by a field of the image is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sadump.errors import SadumpError
from sadump.kernel.cpus import lowcore_table

#: a cap on the tasks walked: PID_MAX_LIMIT is 4M, real systems run well under this
MAX_TASKS = 1 << 17
#: task_structs kept between reads (a process's leader, the parents)
CACHED_TASKS = 64
#: warnings of one walk shown (a damaged image can make one per task)
MAX_WARNINGS = 20
#: a task_struct is 5-13 KiB in 6.x configurations; BTF claiming more is damage
MAX_TASK_STRUCT = 64 << 10
#: a cap on init_task's search up real_parent from a CPU's current task
MAX_PARENT_HOPS = 64
TASK_COMM_LEN = 16
#: /proc/PID/stat's name buffer (fs/proc/array.c proc_task_name: char tcomm[64])
PROC_COMM_LEN = 64

# task flags (include/linux/sched.h, 6.1 = 6.12)
PF_IDLE = 0x2
PF_WQ_WORKER = 0x20
PF_KTHREAD = 0x00200000
# task states (include/linux/sched.h, 6.1 = 6.12)
TASK_UNINTERRUPTIBLE = 0x2
TASK_NOLOAD = 0x400
TASK_IDLE = TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_RTLOCK_WAIT = 0x1000
TASK_FROZEN = 0x8000
TASK_REPORT = 0x7F
STATE_LETTERS = "RSDTtXZPI"
#: lowcore percpu_offset (asm/lowcore.h, 6.1 = 6.12)
LC_PERCPU_OFFSET = 0x3B8
LC_CURRENT_TASK = 0x340


class TaskError(SadumpError):
    """The task list cannot be walked at all (no init_task, no BTF for task_struct)."""


def state_letter(state: int, exit_state: int) -> str:
    """task_state_to_char(): "RSDTtXZPI"[__task_state_index()]."""
    bits = (state | exit_state) & TASK_REPORT
    if state & TASK_IDLE == TASK_IDLE:
        bits = TASK_REPORT + 1
    if state & (TASK_RTLOCK_WAIT | TASK_FROZEN):
        bits = TASK_UNINTERRUPTIBLE
    return STATE_LETTERS[bits.bit_length()]


def blocked(state: int) -> bool:
    """What sysrq-w lists: show_state_filter(TASK_UNINTERRUPTIBLE) without TASK_NOLOAD."""
    return bool(state & TASK_UNINTERRUPTIBLE) and not state & TASK_NOLOAD


@dataclass
class Task:
    addr: int  # the task_struct's virtual address
    pid: int  # the task's own id (a thread's TID)
    tgid: int
    ppid: int  # the tgid of real_parent (0 for a task whose pid is gone), as /proc says
    parent_pid: int  # real_parent->pid, as sched_show_task prints it
    state: str  # one letter
    raw_state: int  # __state (or state)
    exit_state: int
    flags: int
    cpu: int | None  # the CPU it last ran on (thread_info.cpu)
    comm: str  # task->comm
    name: str  # what /proc/PID/stat shows: workqueue workers and long kthread names in full
    ksp: int  # thread.ksp: the stack pointer of its last switch
    stack: int  # task->stack: the base of its kernel stack
    running: bool = False  # some CPU's current task
    running_cpu: int | None = None  # that CPU (lowcore_ptr index)
    idle: bool = False  # a per-CPU idle task (pid 0)
    alive: bool = True  # pid_alive(): thread_pid set
    exec_start: int | None = None  # se.exec_start (ns, its runqueue's clock_task)
    last_ran_ns: int | None = None  # how long since it last ran, where the runqueue says

    @property
    def kthread(self) -> bool:
        return bool(self.flags & PF_KTHREAD)


@dataclass
class TaskList:
    tasks: list[Task]
    warnings: list[str] = field(default_factory=list)
    init_task: int | None = None
    init_from: str = ""  # "kallsyms" | "CPU n's current task"

    def by_pid(self, pid: int) -> list[Task]:
        return [t for t in self.tasks if t.pid == pid]


class _Layout:
    """Offsets and sizes from BTF: (offset, size) per field, None when the kernel lacks it."""

    def __init__(self, btf):
        self.btf = btf
        self._ids: dict[str, int | None] = {}  # struct name -> type id, looked up once
        if self.opt("task_struct", "pid") is None:
            raise TaskError("BTF has no struct task_struct with a pid")
        self.task_size = btf.sizeof(self._ids["task_struct"])
        if not 0 < self.task_size <= MAX_TASK_STRUCT:
            raise TaskError(f"BTF gives task_struct a size of {self.task_size} bytes "
                            f"(at most {MAX_TASK_STRUCT})")
        need = self.need
        state = "__state" if self.opt("task_struct", "__state") else "state"
        self.state = need("task_struct", state)
        self.exit_state = need("task_struct", "exit_state")
        self.flags = need("task_struct", "flags")
        self.pid = need("task_struct", "pid")
        self.tgid = need("task_struct", "tgid")
        self.real_parent = need("task_struct", "real_parent")
        self.comm = need("task_struct", "comm")
        self.tasks = need("task_struct", "tasks")
        self.signal = need("task_struct", "signal")
        self.ksp = need("task_struct", "thread.ksp")
        self.stack = need("task_struct", "stack")
        self.cpu = self.opt("task_struct", "thread_info.cpu") or self.opt("task_struct", "cpu")
        self.thread_pid = self.opt("task_struct", "thread_pid")
        if self.opt("task_struct", "thread_node") and self.opt("signal_struct", "thread_head"):
            self.thread_node = need("task_struct", "thread_node")
            self.thread_head = need("signal_struct", "thread_head")
            self.thread_group = None
        else:
            self.thread_node = self.thread_head = None
            self.thread_group = need("task_struct", "thread_group")
        self.exec_start = self.opt("task_struct", "se.exec_start")
        self.worker_private = self.opt("task_struct", "worker_private")
        self.kthread_data = self.opt("kthread", "data")
        self.kthread_full_name = self.opt("kthread", "full_name")
        self.rq_idle = self.opt("rq", "idle")
        self.rq_clock_task = self.opt("rq", "clock_task")
        self.worker = {k: self.opt("worker", k) for k in
                       ("current_work", "pool", "id", "desc", "rescue_wq")}
        self.pool = {k: self.opt("worker_pool", k) for k in ("cpu", "id", "attrs")}
        self.attrs_nice = self.opt("workqueue_attrs", "nice")
        self.wq_name = self.opt("workqueue_struct", "name")
        for name in ("state", "exit_state", "flags", "pid", "tgid", "real_parent", "comm",
                     "tasks", "signal", "ksp", "stack"):
            off, size = getattr(self, name)
            if off + size > self.task_size:
                raise TaskError(f"BTF puts task_struct.{name} outside the struct")

    def opt(self, struct: str, path: str) -> tuple[int, int] | None:
        btf = self.btf
        try:
            if struct not in self._ids:
                ids = btf.type_ids(struct)
                self._ids[struct] = ids[0] if ids else None
            tid = self._ids[struct]
            if tid is None or not btf.has_member(tid, path):
                return None
            m = btf.member(tid, path)
            return m.bit_offset // 8, btf.sizeof(m.type_id)
        except SadumpError:
            return None

    def need(self, struct: str, path: str) -> tuple[int, int]:
        got = self.opt(struct, path)
        if got is None:
            raise TaskError(f"BTF has no {struct}.{path}")
        return got


def _u(raw: bytes, f: tuple[int, int] | None, signed: bool = False) -> int:
    if f is None:
        return 0
    off, size = f
    return int.from_bytes(raw[off:off + min(size, 8)], "big", signed=signed)


def _cstr(raw: bytes) -> tuple[str, bool]:
    """A C string of a fixed buffer: the text and whether it had its NUL."""
    end = raw.find(b"\0")
    text = raw if end < 0 else raw[:end]
    return text.decode("utf-8", "replace"), end >= 0


class _Walker:
    def __init__(self, kmem, btf, syms, info):
        self.kmem = kmem
        self.lay = _Layout(btf)
        self.syms = syms
        self.info = info
        self.warnings: list[str] = []
        self.suppressed = 0
        self.raw: dict[int, bytes] = {}  # a few task_structs read (parents, leaders)

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self.suppressed += 1

    def all_warnings(self) -> list[str]:
        more = [f"{self.suppressed} more warnings about damaged tasks not shown"] \
            if self.suppressed else []
        return self.warnings + more

    def read_task(self, addr: int) -> bytes:
        raw = self.raw.get(addr)
        if raw is None:
            if addr % 8 or not addr:
                raise SadumpError(f"task pointer {addr:#x} is " +
                                  ("NULL" if not addr else "not 8-byte aligned"))
            raw = self.kmem.read(addr, self.lay.task_size)
            if len(self.raw) >= CACHED_TASKS:  # memory stays flat however many tasks
                self.raw.clear()
            self.raw[addr] = raw
        return raw

    def ptr(self, vaddr: int) -> int:
        return self.kmem.read_u64(vaddr)

    # ---- the lists ---------------------------------------------------------------------
    def list_entries(self, head: int, member_off: int, what: str, budget: int) -> list[int]:
        """Addresses of the structs on a list_head list (head excluded), cut at damage."""
        out: list[int] = []
        node, seen = head, {head}
        while True:
            try:
                nxt = self.ptr(node)
            except SadumpError as e:
                self.warn(f"{what}: cut after {len(out)}: next pointer at {node:#x} not "
                          f"readable ({e})")
                return out
            if nxt == head:
                return out
            if nxt % 8 or nxt in seen or nxt < member_off:
                why = "not 8-byte aligned" if nxt % 8 else "seen before (a loop)" \
                    if nxt in seen else "NULL or below its struct"
                self.warn(f"{what}: cut after {len(out)}: next pointer {nxt:#x} is {why}")
                return out
            if len(out) >= budget:
                self.warn(f"{what}: cut at {budget} tasks (MAX_TASKS {MAX_TASKS})")
                return out
            seen.add(nxt)
            out.append(nxt - member_off)
            node = nxt

    def find_init_task(self, currents: list[tuple[int, int]]) -> tuple[int, str]:
        addr = self.syms.address("init_task") if self.syms is not None else None
        if addr is not None:
            return addr, "kallsyms"
        lay = self.lay
        for cpu, task in currents:
            # up real_parent to the one task that is its own parent: init_task (pid 0); a
            # secondary CPU's idle task has pid 0 too, but kernel_init as its parent
            for _ in range(MAX_PARENT_HOPS):
                try:
                    raw = self.read_task(task)
                except SadumpError:
                    break
                parent = _u(raw, lay.real_parent)
                if parent == task:
                    if _u(raw, lay.pid) == 0:
                        return task, f"CPU {cpu}'s current task"
                    break
                task = parent
        raise TaskError("init_task is not in kallsyms (CONFIG_KALLSYMS_ALL=n) and no CPU's "
                        "current task leads to it through real_parent")

    def threads(self, leader: int, budget: int) -> list[int]:
        lay = self.lay
        raw = self.read_task(leader)
        if lay.thread_head is not None:
            signal = _u(raw, lay.signal)
            if not signal:
                return [leader]
            head = signal + lay.thread_head[0]
            got = self.list_entries(head, lay.thread_node[0],
                                    f"threads of the task at {leader:#x}", budget)
            return got if leader in got else [leader] + got
        head = leader + lay.thread_group[0]
        return [leader] + self.list_entries(head, lay.thread_group[0],
                                            f"threads of the task at {leader:#x}", budget - 1)

    # ---- per-CPU --------------------------------------------------------------------------
    def cpus(self) -> list[tuple[int, int, int | None, int]]:
        """(cpu, current task, per-CPU offset, physical lowcore) of every CPU."""
        out = []
        try:
            table, warnings = lowcore_table(self.kmem, self.info)
        except SadumpError as e:
            table, warnings = [], [str(e)]
        for text in warnings:
            self.warn(text)
        for cpu, lowcore in table:
            try:
                raw = self.kmem.memory.read(lowcore + LC_CURRENT_TASK, 0x80)
            except SadumpError as e:
                self.warn(f"CPU {cpu}: lowcore not readable: {e}")
                continue
            cur = int.from_bytes(raw[0:8], "big")
            off = LC_PERCPU_OFFSET - LC_CURRENT_TASK
            out.append((cpu, cur, int.from_bytes(raw[off:off + 8], "big"), lowcore))
        return out

    def runqueue(self, percpu_offset: int | None) -> int | None:
        base = self.syms.address("runqueues") if self.syms is not None else None
        if base is None or percpu_offset is None:
            return None
        return (base + percpu_offset) & ((1 << 64) - 1)

    # ---- one task -------------------------------------------------------------------------
    def task(self, addr: int) -> Task:
        lay = self.lay
        raw = self.read_task(addr)
        comm, ended = _cstr(raw[lay.comm[0]:lay.comm[0] + lay.comm[1]])
        if not ended:
            self.warn(f"task at {addr:#x}: comm has no NUL (read as {comm!r})")
        parent = _u(raw, lay.real_parent)
        alive = lay.thread_pid is None or _u(raw, lay.thread_pid) != 0
        ppid = parent_pid = 0
        if parent and parent != addr:
            try:
                praw = self.read_task(parent)
                parent_pid = _u(praw, lay.pid, True)
                ppid = _u(praw, lay.tgid, True) if alive else 0
            except SadumpError as e:
                self.warn(f"task at {addr:#x}: real_parent {parent:#x} not readable ({e})")
        state, exit_state = _u(raw, lay.state), _u(raw, lay.exit_state)
        flags = _u(raw, lay.flags)
        t = Task(addr, _u(raw, lay.pid, True), _u(raw, lay.tgid, True), ppid, parent_pid,
                 state_letter(state, exit_state), state, exit_state, flags,
                 _u(raw, lay.cpu) if lay.cpu else None, comm, comm, _u(raw, lay.ksp),
                 _u(raw, lay.stack), alive=alive,
                 exec_start=_u(raw, lay.exec_start) if lay.exec_start else None)
        try:
            t.name = self.proc_name(t, raw)
        except SadumpError:
            pass  # the name of a worker whose structures are unreadable stays its comm
        return t

    def proc_name(self, t: Task, raw: bytes) -> str:
        """fs/proc/array.c proc_task_name(): wq_worker_comm() for workqueue workers, the
        kthread's full_name for long kernel-thread names, else comm."""
        lay = self.lay
        if not t.flags & (PF_WQ_WORKER | PF_KTHREAD) or lay.worker_private is None:
            return t.comm
        kthread = _u(raw, lay.worker_private)
        if not kthread:
            return t.comm
        if not t.flags & PF_WQ_WORKER:
            if lay.kthread_full_name is None:
                return t.comm
            name = self.ptr(kthread + lay.kthread_full_name[0])
            return self.cstring(name) if name else t.comm
        w = lay.worker
        if lay.kthread_data is None or None in w.values() or None in lay.pool.values() \
                or lay.attrs_nice is None or lay.wq_name is None:
            return t.comm
        worker = self.ptr(kthread + lay.kthread_data[0])
        raw_w = self.kmem.read(worker, max(o + s for o, s in w.values()))
        pool = _u(raw_w, w["pool"])
        rescue = _u(raw_w, w["rescue_wq"])
        wid = _u(raw_w, w["id"], True)
        if rescue:
            name = "kworker/R-" + self.cstring(rescue + lay.wq_name[0], lay.wq_name[1])
        elif pool:
            raw_p = self.kmem.read(pool, max(o + s for o, s in lay.pool.values()))
            cpu = _u(raw_p, lay.pool["cpu"], True)
            if cpu >= 0:
                attrs = _u(raw_p, lay.pool["attrs"])
                nice = int.from_bytes(self.kmem.read(attrs + lay.attrs_nice[0], 4), "big",
                                      signed=True) if attrs else 0
                name = f"kworker/{cpu}:{wid}{'H' if nice < 0 else ''}"
            else:
                name = f"kworker/u{_u(raw_p, lay.pool['id'], True)}:{wid}"
        else:
            name = "kworker/dying"
        if pool:
            off, size = w["desc"]
            desc, _ = _cstr(raw_w[off:off + size])
            if desc:
                name += ("+" if _u(raw_w, w["current_work"]) else "-") + desc
        return name[:PROC_COMM_LEN - 1]

    def cstring(self, vaddr: int, size: int = PROC_COMM_LEN) -> str:
        raw = self.kmem.read(vaddr, size)
        return _cstr(raw)[0]


def walk_tasks(kmem, btf, syms, info) -> TaskList:
    """Every task: the per-CPU idle tasks first (CPU order), then every process and its
    threads in the kernel's list order."""
    w = _Walker(kmem, btf, syms, info)
    cpus = w.cpus()
    init, init_from = w.find_init_task([(c, cur) for c, cur, _, _ in cpus if cur])
    try:
        raw = w.read_task(init)
    except SadumpError as e:
        raise TaskError(f"init_task at {init:#x} is not readable: {e}") from None
    lay = w.lay
    comm, _ = _cstr(raw[lay.comm[0]:lay.comm[0] + lay.comm[1]])
    if _u(raw, lay.pid) != 0 or not comm.startswith("swapper"):
        raise TaskError(f"the BTF does not describe this kernel: init_task reads pid "
                        f"{_u(raw, lay.pid, True)}, comm {comm!r} (pid 0, swapper expected)")
    order: list[int] = []
    idle: set[int] = set()
    placed: set[int] = set()
    # idle tasks: CPU 0's is init_task; the others are each runqueue's idle (or a CPU's
    # current task with pid 0)
    for cpu, cur, pcpu, _ in cpus:
        rq = w.runqueue(pcpu)
        cand = None
        if rq is not None and lay.rq_idle is not None:
            try:
                cand = w.ptr(rq + lay.rq_idle[0])
            except SadumpError as e:
                w.warn(f"CPU {cpu}: runqueue at {rq:#x} not readable ({e})")
        if not cand and cur:
            try:
                if _u(w.read_task(cur), lay.pid) == 0:
                    cand = cur
            except SadumpError:
                pass
        if cand and cand not in idle:
            idle.add(cand)
            order.append(cand)
    if init not in idle:
        idle.add(init)
        order.insert(0, init)
    placed |= idle
    leaders = w.list_entries(init + lay.tasks[0], lay.tasks[0], "task list", MAX_TASKS)
    for leader in leaders:
        if len(order) >= MAX_TASKS:
            w.warn(f"task list: cut at MAX_TASKS {MAX_TASKS}")
            break
        try:
            members = w.threads(leader, MAX_TASKS - len(order))
        except SadumpError as e:
            w.warn(f"task at {leader:#x} is not readable: {e}")
            continue
        for t in members:
            if t in placed:
                w.warn(f"task at {t:#x} is on the list twice: skipped")
                continue
            placed.add(t)
            order.append(t)
    tasks: list[Task] = []
    currents = {cur: cpu for cpu, cur, _, _ in cpus if cur}
    clocks = {}
    for cpu, _, pcpu, _ in cpus:
        rq = w.runqueue(pcpu)
        if rq is not None and lay.rq_clock_task is not None:
            try:
                clocks[cpu] = w.kmem.read_u64(rq + lay.rq_clock_task[0])
            except SadumpError:
                pass
    for addr in order:
        try:
            t = w.task(addr)
        except SadumpError as e:
            w.warn(f"task at {addr:#x} is not readable: {e}")
            continue
        t.idle = addr in idle
        if addr in currents:
            t.running, t.running_cpu = True, currents[addr]
        clock = clocks.get(t.cpu) if t.cpu is not None else None
        if clock is not None and t.exec_start is not None and 0 < t.exec_start <= clock:
            t.last_ran_ns = clock - t.exec_start
        tasks.append(t)
    return TaskList(tasks, w.all_warnings(), init, init_from)

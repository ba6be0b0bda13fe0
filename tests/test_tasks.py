"""The task walk and the task unwinder on crafted memory (tests/fixtures/tasks.py,
tests/fixtures/kstack.py): the kernel's lists as they should be, and damaged: a loop, a wild
pointer, a comm without NUL, more tasks than the cap, a stack pointer outside the stack."""

from __future__ import annotations

import pytest

from sadump.errors import SadumpError
from sadump.kernel import tasks as tasks_mod
from sadump.kernel.btf import Btf
from sadump.kernel.tasks import TaskError, blocked, state_letter, walk_tasks
from sadump.kernel.unwind import Stack, walk_task
from tests.fixtures.kstack import Words
from tests.fixtures.tasks import OFF, PAGE, PF_KTHREAD, Kernel, kernel_btf


class FakeKernelMemory:
    """KernelMemory's reading interface over the fixture's sparse pages."""

    def __init__(self, pages):
        self.pages = pages
        self.memory = None

    def read(self, vaddr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            page = self.pages.get(vaddr & ~(PAGE - 1))
            if page is None:
                raise SadumpError(f"virtual {vaddr:#x} is not mapped")
            n = min(size, PAGE - vaddr % PAGE)
            out += page[vaddr % PAGE:vaddr % PAGE + n]
            vaddr, size = vaddr + n, size - n
        return bytes(out)

    def read_u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "big")


class Syms:
    def __init__(self, **addresses):
        self.addresses = addresses

    def address(self, name):
        return self.addresses.get(name)


BTF = Btf.from_bytes(kernel_btf())


def walk(k: Kernel):
    return walk_tasks(FakeKernelMemory(k.mem.pages), BTF, Syms(init_task=k.INIT), None)


def small_kernel() -> Kernel:
    k = Kernel()
    k.task(0x20000, 1, 1, k.INIT, 0x1, b"init")
    k.task(0x21000, 2, 2, k.INIT, 0x1, b"kthreadd", PF_KTHREAD)
    k.task(0x22000, 10, 10, 0x20000, 0x2, b"writer", cpu=1)
    k.task(0x23000, 11, 10, 0x20000, 0x2001, b"writer-t2")
    k.task(0x24000, 12, 12, 0x21000, 0x402, b"kworker/0:1", PF_KTHREAD)
    k.task(0x25000, 13, 13, 0x22000, 0x80, b"zombie", exit_state=0x20)
    return k


def test_walk_every_task_and_thread():
    k = small_kernel()
    k.link()
    tl = walk(k)
    got = [(t.pid, t.tgid, t.ppid, t.state, t.comm, t.kthread, t.cpu) for t in tl.tasks]
    assert got == [(0, 0, 0, "R", "swapper/0", True, 0), (1, 1, 0, "S", "init", False, 0),
                   (2, 2, 0, "S", "kthreadd", True, 0), (10, 10, 1, "D", "writer", False, 1),
                   (11, 10, 1, "S", "writer-t2", False, 0),
                   (12, 12, 2, "I", "kworker/0:1", True, 0),
                   (13, 13, 10, "Z", "zombie", False, 0)]
    assert tl.tasks[0].idle and tl.init_from == "kallsyms"
    assert not [w for w in tl.warnings if "lowcore" not in w]


def test_state_letters_and_blocked():
    # include/linux/sched.h: stopped 0x104, traced 0x108, parked 0x40, idle 0x402,
    # frozen D, killable 0x102 is D and blocked
    assert [state_letter(s, e) for s, e in ((0, 0), (1, 0), (2, 0), (0x104, 0), (0x108, 0),
                                            (0x80, 0x10), (0x80, 0x20), (0x40, 0), (0x402, 0),
                                            (0x8000, 0), (0x102, 0))] == \
        list("RSDTtXZPIDD")
    assert blocked(0x2) and blocked(0x102) and not blocked(0x402) and not blocked(0x1)


def test_a_looping_task_list_is_cut():
    k = small_kernel()
    k.link()
    # the fourth process points back at the second instead of going on
    k.set_next(0x24000, "tasks", 0x21000 + OFF["tasks"])
    tl = walk(k)
    assert [t.pid for t in tl.tasks] == [0, 1, 2, 10, 11, 12]
    assert any("task list: cut after 4" in w and "loop" in w for w in tl.warnings)


def test_a_wild_pointer_is_cut():
    k = small_kernel()
    k.link()
    k.set_next(0x22000, "tasks", 0xDEAD0000)  # into nowhere
    tl = walk(k)
    assert [t.pid for t in tl.tasks] == [0, 1, 2, 10, 11]
    assert any("0xdead0000" in w and "not readable" in w for w in tl.warnings)
    k.set_next(0x22000, "tasks", 0x24000 + OFF["tasks"] + 3)  # unaligned
    tl = walk(k)
    assert any("not 8-byte aligned" in w for w in tl.warnings)


def test_a_thread_list_loop_is_cut():
    k = small_kernel()
    k.link()
    k.set_next(0x23000, "thread_node", 0x23000 + OFF["thread_node"])  # points at itself
    tl = walk(k)
    assert [t.pid for t in tl.tasks] == [0, 1, 2, 10, 11, 12, 13]
    assert any("threads of the task at 0x22000" in w and "loop" in w for w in tl.warnings)


def test_comm_without_nul():
    k = small_kernel()
    k.task(0x26000, 14, 14, k.INIT, 0x1, b"sixteen-chars-xy")
    k.link()
    tl = walk(k)
    (t,) = tl.by_pid(14)
    assert t.comm == "sixteen-chars-xy"
    assert any("comm has no NUL" in w for w in tl.warnings)


def test_more_tasks_than_the_cap(monkeypatch):
    """A list that claims more tasks than MAX_TASKS is walked to the cap, with a warning."""
    monkeypatch.setattr(tasks_mod, "MAX_TASKS", 4)
    k = small_kernel()
    k.link()
    tl = walk(k)
    assert len(tl.tasks) <= 5
    assert any("MAX_TASKS" in w for w in tl.warnings)


def test_no_init_task():
    k = small_kernel()
    k.link()
    with pytest.raises(TaskError, match="init_task"):
        walk_tasks(FakeKernelMemory(k.mem.pages), BTF, Syms(), None)
    with pytest.raises(TaskError, match="not readable"):
        walk_tasks(FakeKernelMemory(k.mem.pages), BTF,
                   Syms(init_task=0x900000), None)


# ---- the unwinder of a task that is not running -----------------------------------------------
TOP = 0x104000
STACK = Stack("task", TOP - 0x4000, TOP)


def text(addr: int) -> bool:
    return 0x1000 <= addr < 0x9000


def sleeping_stack() -> Words:
    """__switch_to's frame at ksp, three callers, a syscall pt_regs, user-mode end."""
    w = Words()
    ksp = TOP - 0x1000
    w.frame(ksp, 0x1100, ksp + 0x100)  # r14 into __schedule
    w.frame(ksp + 0x100, 0x1200, ksp + 0x200)
    w.frame(ksp + 0x200, 0x1300, TOP - 360)
    w.frame(TOP - 360, 0x1400, 0)  # system_call's frame: backchain 0 -> task pt_regs
    return w


def test_walk_task_to_its_pt_regs():
    w = sleeping_stack()
    out = walk_task(w.read_u64, TOP - 0x1000, STACK, text)
    assert [f.pc for f in out.frames] == [0x1100, 0x1200, 0x1300, 0x1400]
    assert out.normal and out.end == "task pt_regs" and out.end_regs == TOP - 200
    assert all(f.reliable for f in out.frames)


def test_walk_task_through_an_interrupt():
    w = sleeping_stack()
    ksp = TOP - 0x2000
    w.frame(ksp, 0x1050, 0)  # zero backchain: a pt_regs at ksp + 160
    w.pt_regs(ksp + 160, 0x0704000180000000, 0x1060, TOP - 0x1000)
    out = walk_task(w.read_u64, ksp, STACK, text)
    assert [(f.pc, f.kind, f.reliable) for f in out.frames][:4] == [
        (0x1050, "return", True), (0x1060, "pt_regs", True), (0x1100, "r14", False),
        (0x1200, "return", True)]
    assert out.normal


def test_ksp_outside_the_stack():
    w = sleeping_stack()
    for ksp in (TOP + 0x1000, STACK.bottom - 8, TOP - 0x1000 + 4, TOP - 100):
        out = walk_task(w.read_u64, ksp, STACK, text)
        assert out.frames == [] and not out.normal
        assert "outside the task's stack" in out.end


def test_backchain_that_leaves_or_loops():
    w = sleeping_stack()
    ksp = TOP - 0x1000
    w.frame(ksp + 0x100, 0x1200, ksp)  # goes down: a loop
    out = walk_task(w.read_u64, ksp, STACK, text)
    assert [f.pc for f in out.frames] == [0x1100, 0x1200] and not out.normal
    assert "does not go up" in out.end
    w.frame(ksp + 0x100, 0x1200, TOP + 0x10000)  # off the stack
    out = walk_task(w.read_u64, ksp, STACK, text)
    assert not out.normal and "does not go up" in out.end


def test_unreadable_stack_word():
    def read(addr):
        raise SadumpError("not mapped")

    out = walk_task(read, TOP - 0x1000, STACK, text)
    assert out.frames == [] and "not readable" in out.end


def test_init_task_up_real_parent_past_a_secondary_idle_task():
    """A secondary CPU's idle task has pid 0 but kernel_init (pid 1) as its parent; only
    init_task is its own parent."""
    k = small_kernel()
    k.task(0x30000, 0, 0, 0x20000, 0, b"swapper/1", PF_KTHREAD)
    k.link()
    w = tasks_mod._Walker(FakeKernelMemory(k.mem.pages), BTF, Syms(), None)
    assert w.find_init_task([(1, 0x30000)]) == (k.INIT, "CPU 1's current task")
    assert w.find_init_task([(0, 0x22000)]) == (k.INIT, "CPU 0's current task")
    k.set_next(0x20000, "real_parent", 0x20000)  # init claims to be its own parent
    w = tasks_mod._Walker(FakeKernelMemory(k.mem.pages), BTF, Syms(), None)
    with pytest.raises(TaskError):
        w.find_init_task([(1, 0x22000)])


def test_btf_with_an_absurd_task_struct_size():
    from tests.fixtures.btf import BtfBuilder

    b = BtfBuilder(">")
    u32 = b.int("unsigned int", 4)
    b.struct("task_struct", 0xFFFFFFF0, [("pid", u32, 0)])
    with pytest.raises(TaskError, match="size"):
        walk_tasks(FakeKernelMemory({}), Btf.from_bytes(b.blob()), Syms(init_task=0x1000), None)


def test_select_d_as_sysrq_w_or_as_the_letter():
    from sadump.render.tasks import select

    k = small_kernel()
    k.task(0x27000, 15, 15, k.INIT, 0x8000, b"frozen")  # TASK_FROZEN: shows D
    k.link()
    tl = walk(k)
    assert tl.by_pid(15)[0].state == "D"
    assert [t.pid for t in select(tl.tasks, states="D")] == [10]
    assert [t.pid for t in select(tl.tasks, states="D", sysrq=False)] == [10, 15]
    assert [t.pid for t in select(tl.tasks, states="IZ")] == [12, 13]
    assert [t.pid for t in select(tl.tasks, pid=11)] == [11]


def test_btf_of_another_kernel():
    """Offsets that do not fit: init_task does not read as pid 0, swapper."""
    k = small_kernel()
    k.link()
    k.mem.put(k.INIT + OFF["comm"], b"garbage\0")
    with pytest.raises(TaskError, match="does not describe this kernel"):
        walk(k)


def test_null_next_pointer():
    k = small_kernel()
    k.link()
    k.set_next(0x21000, "tasks", 0)
    tl = walk(k)
    assert [t.pid for t in tl.tasks] == [0, 1, 2]
    assert any("NULL" in w for w in tl.warnings)


def test_a_million_claimed_tasks_is_a_bounded_walk(monkeypatch):
    """A chain of 10^6 list nodes 16 bytes apart (tasks overlapping, every field garbage):
    the walk stops at the cap, and the warnings about the garbage stay a few lines."""
    monkeypatch.setattr(tasks_mod, "MAX_TASKS", 3000)
    k = Kernel()
    n, base = 1_000_000, 0x1000000
    chain = bytearray()
    for i in range(n):
        chain += (base + 16 * (i + 1)).to_bytes(8, "big") + bytes(8)
    k.mem.put(base, bytes(chain[:16 * 4096]))  # the first pages by the fixture's writer
    for off in range(16 * 4096, len(chain), PAGE):  # the rest a page at a time
        k.mem.pages[base + off] = bytearray(chain[off:off + PAGE])
    k.mem.u64(k.INIT + OFF["tasks"], base)
    tl = walk(k)
    assert len(tl.tasks) <= 3001
    assert any("MAX_TASKS" in w for w in tl.warnings)
    assert len(tl.warnings) <= tasks_mod.MAX_WARNINGS + 1

"""The backchain walk on stacks built from the spec (frames, pt_regs, DAT tables), healthy
and damaged (tests/fixtures/kstack.py)."""

from __future__ import annotations

import pytest

from sadump.errors import SadumpError
from sadump.kernel import unwind
from sadump.kernel.translate import KernelLayout, KernelMemory
from sadump.kernel.unwind import Registers, Stack, StackReader, cpu_stacks, thread_size, walk
from tests.fixtures.builder import Memory
from tests.fixtures.kstack import Dat, Words
from tests.synthetic_memory import SyntheticMemory

KERNEL_PSW = 0x0704C00180000000
USER_PSW = 0x0705C00180000000
WAIT_PSW = 0x0706C00180000000
TASK = Stack("task", 0x200000, 0x204000)
IRQ = Stack("irq", 0x210000, 0x214000)
NODAT = Stack("nodat", 0x220000, 0x224000)
STACKS = [TASK, IRQ, NODAT]


def is_text(addr: int) -> bool:
    return 0x10000 <= addr < 0x11000


def regs(addr: int, r15: int, mask: int = KERNEL_PSW, r14: int = 0) -> Registers:
    gprs = [0] * 16
    gprs[14], gprs[15] = r14, r15
    return Registers(mask, addr, tuple(gprs))


def chain(words: Words, stack: Stack, ips: list[int], first_r14: int = 0x10F00,
          end: int = 0) -> list[int]:
    """Frames from the stack's first frame (top - 360) down: frame k's backchain is frame
    k+1 (the caller's), whose r14 slot holds ips[k]. Returns the sps, innermost first."""
    n = len(ips) + 1
    sps = [stack.top - 360 - 160 * (n - 1 - k) for k in range(n)]
    for k in range(n):
        r14 = first_r14 if k == 0 else ips[k - 1]
        words.frame(sps[k], r14, sps[k + 1] if k + 1 < n else end)
    return sps


def shape(w) -> list[tuple]:
    return [(f.pc, f.kind, f.stack, f.reliable) for f in w.frames]


def test_task_stack_to_task_pt_regs():
    words = Words()
    sps = chain(words, TASK, [0x10110, 0x10220, 0x10330], first_r14=0x1023A)
    w = walk(words.read_u64, regs(0x10300, sps[0]), STACKS, is_text)
    assert shape(w) == [(0x10300, "psw", "task", True), (0x1023A, "r14", "task", False),
                        (0x10110, "return", "task", True), (0x10220, "return", "task", True),
                        (0x10330, "return", "task", True)]
    assert [f.sp for f in w.frames] == [sps[0], sps[0], *sps[1:]]
    assert w.normal and w.end == "task pt_regs" and w.end_regs == TASK.top - 200


@pytest.mark.parametrize("r14", [0, 0x3FFE0000, 0x10300])  # zero, not text, = PSW address
def test_unreliable_r14_slot_dropped(r14):
    words = Words()
    sps = chain(words, TASK, [0x10110], first_r14=r14)
    w = walk(words.read_u64, regs(0x10300, sps[0]), STACKS, is_text)
    assert [f.kind for f in w.frames] == ["psw", "return"]
    assert w.normal


def test_crossing_nodat_pt_regs_irq_backchain_task():
    """kdump entry on the nodat stack -> restart pt_regs (PSW on the irq stack) ->
    call_on_stack's backchain to the task stack -> an interrupt's pt_regs -> the idle loop."""
    words = Words()
    # task stack: the idle loop, at its bottom; above it an interrupt frame
    idle = chain(words, TASK, [0x10120, 0x10130], first_r14=0x1023A)
    irq_entry = idle[0] - 160 - 200 - 160  # ext_int_handler's frame, pt_regs above it
    words.frame(irq_entry, 0x10F00, 0)
    words.pt_regs(irq_entry + 160, WAIT_PSW, 0x10300, idle[0])
    do_ext_irq = irq_entry - 160
    words.frame(do_ext_irq, 0x10F00, irq_entry)
    words.words[irq_entry + 136] = 0x10810  # return into ext_int_handler
    # irq stack: handler frames; the first frame's backchain goes to the task stack
    irq = chain(words, IRQ, [0x10550, 0x10560], end=do_ext_irq)
    words.words[do_ext_irq + 136] = 0x10890  # return into do_ext_irq (read at the new sp)
    # nodat stack: kdump entry frames, then the restart pt_regs pointing at the irq stack
    nodat = chain(words, NODAT, [0x10710], first_r14=0x10444)
    words.pt_regs(nodat[-1] + 160, KERNEL_PSW, 0x10540, irq[0])
    w = walk(words.read_u64, regs(0x10400, nodat[0]), STACKS, is_text)
    assert shape(w) == [
        (0x10400, "psw", "nodat", True), (0x10444, "r14", "nodat", False),
        (0x10710, "return", "nodat", True),
        (0x10540, "pt_regs", "irq", True), (0x10F00, "r14", "irq", False),
        (0x10550, "return", "irq", True), (0x10560, "return", "irq", True),
        (0x10890, "return", "task", True), (0x10810, "return", "task", True),
        (0x10300, "pt_regs", "task", True), (0x1023A, "r14", "task", False),
        (0x10120, "return", "task", True), (0x10130, "return", "task", True)]
    assert w.frames[3].regs_at == nodat[-1] + 160 and w.frames[3].sp == irq[0]
    assert w.frames[9].regs_mask == WAIT_PSW
    assert w.normal and w.end == "task pt_regs"


def test_user_pt_regs_ends_the_walk():
    """A system call: the pt_regs at the task stack's top holds a user PSW."""
    words = Words()
    sps = chain(words, TASK, [0x10610])
    words.pt_regs(TASK.top - 200, USER_PSW, 0x3FFF0000, 0x3FFFFF00)
    w = walk(words.read_u64, regs(0x10400, sps[0]), STACKS, is_text)
    assert w.normal and w.end == "task pt_regs"
    # a user PSW in a pt_regs that is not the task's own: also an end
    words = Words()
    sps = chain(words, IRQ, [0x10550])
    words.pt_regs(IRQ.top - 200, USER_PSW, 0x3FFF0000, 0x3FFFFF00)
    w = walk(words.read_u64, regs(0x10400, sps[0]), STACKS, is_text)
    assert w.normal and w.end == "user pt_regs" and w.end_regs == IRQ.top - 200


def test_user_mode_psw_is_not_walked():
    w = walk(Words().read_u64, regs(0x3FFF0000, 0x3FFFFF00, USER_PSW), STACKS, is_text)
    assert len(w.frames) == 1 and w.normal and "user" in w.end


@pytest.mark.parametrize("r15, reason", [(0x300000, "none of this CPU's stacks"),
                                         (TASK.top - 100, "none of this CPU's stacks"),
                                         (TASK.top - 1000 + 4, "not 8-byte aligned")])
def test_bad_start_sp(r15, reason):
    w = walk(Words().read_u64, regs(0x10400, r15), STACKS, is_text)
    assert len(w.frames) == 1 and not w.normal and reason in w.end


def test_backchain_loop_to_itself():
    words = Words()
    sp = TASK.top - 1000
    words.frame(sp, 0x10110, sp)
    w = walk(words.read_u64, regs(0x10400, sp), STACKS, is_text)
    assert not w.normal and "loop" in w.end and len(w.frames) == 2


def test_backchain_going_down():
    words = Words()
    a, b = TASK.top - 1000, TASK.top - 800
    words.frame(a, 0x10110, b)
    words.frame(b, 0x10120, a)
    w = walk(words.read_u64, regs(0x10400, a), STACKS, is_text)
    assert not w.normal and "does not go up" in w.end
    assert [f.pc for f in w.frames] == [0x10400, 0x10110, 0x10120]


def test_backchain_back_to_a_walked_stack():
    words = Words()
    t = TASK.top - 2000
    i = IRQ.top - 2000
    words.frame(t, 0x10110, i)
    words.frame(i, 0x10120, t + 320)  # back into the task stack: already walked
    w = walk(words.read_u64, regs(0x10400, t), STACKS, is_text)
    assert not w.normal and "already walked" in w.end


@pytest.mark.parametrize("bc, reason", [(TASK.top - 600 + 4, "not 8-byte aligned"),
                                        (0x500000, "none of this CPU's stacks"),
                                        (TASK.top - 80, "none of this CPU's stacks")])
def test_backchain_damaged(bc, reason):
    words = Words()
    sp = TASK.top - 1000
    words.frame(sp, 0x10110, bc)
    w = walk(words.read_u64, regs(0x10400, sp), STACKS, is_text)
    assert not w.normal and reason in w.end


def test_pt_regs_damaged():
    words = Words()
    sp = TASK.top - 1000
    words.frame(sp, 0, 0)
    words.pt_regs(sp + 160, KERNEL_PSW, 0x10300, TASK.top - 500 + 2)
    w = walk(words.read_u64, regs(0x10400, sp), STACKS, is_text)
    assert not w.normal and "not 8-byte aligned" in w.end
    # a zero backchain too close to the top for a pt_regs
    words = Words()
    sp = TASK.top - 304
    words.frame(sp, 0, 0)
    w = walk(words.read_u64, regs(0x10400, sp), STACKS, is_text)
    assert not w.normal and "no room for a pt_regs" in w.end
    # a pt_regs whose r15 goes back down on the same stack
    words = Words()
    sp = TASK.top - 1000
    words.frame(sp, 0, 0)
    words.pt_regs(sp + 160, KERNEL_PSW, 0x10300, sp - 160)
    w = walk(words.read_u64, regs(0x10400, sp), STACKS, is_text)
    assert not w.normal and "loop" in w.end


def test_frames_are_bounded(monkeypatch):
    words = Words()
    sps = chain(words, TASK, [0x10100 + i for i in range(40)])
    monkeypatch.setattr(unwind, "MAX_FRAMES_PER_STACK", 10)
    w = walk(words.read_u64, regs(0x10400, sps[0]), STACKS, is_text)
    assert not w.normal and "stopped after" in w.end and len(w.frames) == 11
    monkeypatch.setattr(unwind, "MAX_FRAMES_PER_STACK", 128)
    monkeypatch.setattr(unwind, "MAX_FRAMES", 20)
    w = walk(words.read_u64, regs(0x10400, sps[0]), STACKS, is_text)
    assert not w.normal and len(w.frames) == 20


def test_unreadable_word_stops_the_walk():
    def read(vaddr: int) -> int:
        raise SadumpError(f"memory at {vaddr:#x} is not in the image")

    w = walk(read, regs(0x10400, TASK.top - 1000), STACKS, is_text)
    assert not w.normal and "not readable" in w.end and len(w.frames) == 1


# ---- stacks from lowcore fields ------------------------------------------------------------

def test_cpu_stacks_from_lowcore_fields():
    fields = {"task": 0x1198000 + 16384 - 360, "irq": 0x11CC000 + 16384 - 360, "nodat": 0,
              "restart": 0x11CC000 + 16384 - 360, "mcck": 0x11D0000 + 16384 - 360}
    assert cpu_stacks(fields, 16384) == [Stack("task", 0x1198000, 0x119C000),
                                         Stack("irq", 0x11CC000, 0x11D0000),
                                         Stack("mcck", 0x11D0000, 0x11D4000)]


def test_thread_size_kasan():
    from types import SimpleNamespace

    assert thread_size(None) == 16384
    assert thread_size(SimpleNamespace(names=["_stext", "kasan_report"])) == 65536
    assert thread_size(SimpleNamespace(names=["_stext", "__asan_load8"])) == 65536
    assert thread_size(SimpleNamespace(names=["_stext", "do_idle"])) == 16384


# ---- a vmalloc'ed stack through the DAT tables -----------------------------------------------

VSTACK = 0x8000000000  # 512 GiB: region-third index 256, above the identity map
R3, POOL = 0x100000, 0x120000


def dat_kmem(mem: Memory, dat: Dat) -> KernelMemory:
    return KernelMemory(SyntheticMemory(mem, 0x1000000), KernelLayout(identity_end=0x1000000),
                        dat.asce)


def vmalloc_stack_image(frames: int = 100):
    """A 16 KiB stack at VSTACK whose 4 pages sit at scattered physical pages, in reverse;
    returns the memory (the stack not yet written), the tables, the frames' words and sps,
    and a function that writes the stack and walks it."""
    mem = Memory()
    dat = Dat(mem, R3, POOL)
    phys = {}
    for i in range(4):
        va, pa = VSTACK + i * 4096, 0x800000 - i * 0x3000
        dat.map_page(va, pa)
        phys[va] = pa
    words = Words()
    stack = Stack("task", VSTACK, VSTACK + 16384)
    sps = chain(words, stack, [0x10100 + i for i in range(frames)], first_r14=0x1023A)

    def run():
        for va, data in words.pages().items():
            mem.write(phys[va], data)
        reader = StackReader(dat_kmem(mem, dat))
        return walk(reader.u64, regs(0x10400, sps[0]), [stack], is_text)

    return dat, sps, run


def test_vmalloc_stack_through_page_tables():
    _, _, run = vmalloc_stack_image()
    w = run()
    assert w.normal and w.end == "task pt_regs"
    assert [f.pc for f in w.frames] == [0x10400, 0x1023A] + [0x10100 + i for i in range(100)]
    assert len({f.sp >> 12 for f in w.frames}) == 4  # the walk crossed every page


def test_vmalloc_stack_with_an_invalid_page():
    dat, sps, run = vmalloc_stack_image()
    dat.invalidate_page(VSTACK + 0x2000)
    w = run()
    assert sps[0] < VSTACK + 0x1000
    assert not w.normal and "not mapped" in w.end
    assert all(f.sp < VSTACK + 0x2000 for f in w.frames)


def test_vmalloc_stack_in_a_one_mib_segment_frame():
    mem = Memory()
    dat = Dat(mem, R3, POOL)
    dat.map_segment(VSTACK, 0x600000)
    words = Words()
    stack = Stack("task", VSTACK, VSTACK + 16384)
    sps = chain(words, stack, [0x10100, 0x10200])
    for va, data in words.pages().items():
        mem.write(0x600000 + va - VSTACK, data)
    kmem = dat_kmem(mem, dat)
    w = walk(StackReader(kmem).u64, regs(0x10400, sps[0]), [stack], is_text)
    assert w.normal and [f.pc for f in w.frames] == [0x10400, 0x10F00, 0x10100, 0x10200]


def test_vmalloc_stack_behind_an_invalid_region_entry():
    mem = Memory()
    dat = Dat(mem, R3, POOL)
    mem.put_u64(R3 + 8 * 256, 0x20 | 0x04 | 3)  # invalid region-third entry
    kmem = dat_kmem(mem, dat)
    stack = Stack("task", VSTACK, VSTACK + 16384)
    w = walk(StackReader(kmem).u64, regs(0x10400, VSTACK + 1000), [stack], is_text)
    assert not w.normal and "not mapped" in w.end and len(w.frames) == 1


# ---- registers to lowcores ---------------------------------------------------------------------

def test_match_registers_by_prefix():
    a, b = regs(0x10400, 0x1000), regs(0x10500, 0x2000)
    got, warnings = unwind.match_registers([(0, 0x20000), (1, 0x22000)],
                                           [(0x22000, b), (0x30000, a)])
    assert got == {0x22000: b, 0x30000: a}
    assert warnings == [("registers with prefix 0x30000 match no CPU's lowcore (lowcore_ptr): "
                        "not walked")]


def test_match_registers_without_prefixes():
    a, b = regs(0x10400, 0x1000), regs(0x10500, 0x2000)
    got, warnings = unwind.match_registers([(0, 0x20000), (1, 0x22000)], [(0, a), (0, b)])
    assert got == {0x20000: a, 0x22000: b} and "in order" in warnings[0]
    got, warnings = unwind.match_registers([(0, 0x20000)], [(0, a), (0, b)])
    assert got == {} and "not matched" in warnings[0]


# ---- random damage: the walk always ends, within its bounds ---------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_random_stack_words(seed):
    import random

    rnd = random.Random(seed)
    words = Words()
    candidates = [0, 1, 0x10100, TASK.top - 360, TASK.top - 200, IRQ.top - 360, NODAT.top - 600,
                  (1 << 64) - 8, 0x0001000000000000, 0x0706C00180000000]
    for stack in STACKS:
        for addr in range(stack.bottom + 0x3000, stack.top, 8):
            r = rnd.random()
            if r < 0.3:
                words.words[addr] = rnd.choice(candidates)
            elif r < 0.5:
                words.words[addr] = rnd.randrange(stack.bottom, stack.top) & ~rnd.choice([0, 7])
    sp = rnd.randrange(TASK.bottom + 0x3000, TASK.top - 160) & ~7
    w = walk(words.read_u64, regs(0x10400, sp), STACKS, is_text)
    assert w.end and 1 <= len(w.frames) <= unwind.MAX_FRAMES

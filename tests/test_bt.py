"""`sadump bt` (and the backtrace in `sadump info`) on the real 6.1 images and on synthetic
raw images built from the spec.

The expected real frames were checked independently of sadump, once:
- drgn 0.3.0 with vmlinux-6.1.192-rimg (DWARF CFI unwinding, not the backchain) gives the same
  pc and sp for every reliable frame of both CPUs of the kernel's /proc/vmcore (CPU 0 up to
  do_irq_async, where drgn cannot follow call_on_stack; from the ext interrupt's pt_regs at
  0x1093cd8 on, drgn again agrees), and of both idle CPUs of the QEMU ELF (through sadump's
  kdump copy, as drgn refuses the QEMU ELF for want of NT_AUXV);
- the rest by hand from the stack words (pyelftools reads of the ELF) and System.map:
  do_ext_irq+0xc2 and ext_int_handler+0xd6 (backchain 0x10f7e98 -> 0x1093be8 -> 0x1093c38,
  then a zero backchain and the pt_regs at 0x1093cd8), and the unreliable r14 slots;
- the kernel itself printed sysrq_handle_crash+0x22/0x28 ... system_call+0x82/0xb0 in its
  panic's Call Trace (the dmesg file).
"""

from __future__ import annotations

import json
import struct

import pytest
from typer.testing import CliRunner

from sadump.analysis import analyse
from sadump.cli import Exit, app
from sadump.render.backtraces import analysis_backtraces, doing, ending, text_lines
from tests.fixtures.builder import (
    IDENTITY_BASE,
    KASLR_OFFSET,
    LOWCORE_SIZE,
    PREFIX_AREAS,
    SWAPPER_PG_DIR,
    Cpu,
    ImageSpec,
    MiB,
    write_elf,
    write_s390,
)
from tests.fixtures.kstack import (
    SYMBOLS,
    Dat,
    Words,
    kallsyms_tables,
    lowcore_stacks,
    write_raw_image,
)

runner = CliRunner()

KDUMP_CPU0 = [  # the IPL CPU, stopped by the crashing CPU for kdump: (pc, %pSR, sp, stack, ok)
    (0x10EDC0, "__do_machine_kdump+0x0/0x98", 0x10F3DF0, "nodat", True),
    (0x10EF36, "__machine_kdump+0xde/0x108", 0x10F3DF0, "nodat", False),
    (0x10EF92, "__machine_kexec+0x32/0x98", 0x10F3E58, "nodat", True),
    (0x35B81E, "restart_int_handler+0x6e/0x90", 0x10F3E98, "nodat", True),
    (0x11197E, "smp_handle_ext_call+0x76/0xd0", 0x10F7D20, "irq", True),
    (0x10969C, "do_ext_interrupt+0xac/0xb8", 0x10F7D60, "irq", True),
    (0x19238E, "__handle_irq_event_percpu+0x56/0x100", 0x10F7DB0, "irq", True),
    (0x192458, "handle_irq_event_percpu+0x20/0x58", 0x10F7E10, "irq", True),
    (0x196E2E, "handle_percpu_irq+0x46/0x70", 0x10F7E48, "irq", True),
    (0x191B9C, "handle_irq_desc+0x4c/0x70", 0x10F7E80, "irq", True),
    (0x1095DA, "do_irq_async+0x5a/0x70", 0x10F7E98, "irq", True),
    (0x3519DA, "do_ext_irq+0xc2/0x100", 0x1093BE8, "task", True),
    (0x35B916, "ext_int_handler+0xd6/0x110", 0x1093C38, "task", True),
    (0x35B526, "psw_idle_exit+0x0/0xa", 0x1093DA0, "task", True),
    (0x351592, "arch_cpu_idle+0x3a/0xd0", 0x1093DA0, "task", False),
    (0x35B166, "default_idle_call+0x46/0x58", 0x1093DD8, "task", True),
    (0x17FCC0, "do_idle+0xc0/0xd8", 0x1093DF8, "task", True),
    (0x17FE42, "cpu_startup_entry+0x3a/0x40", 0x1093E38, "task", True),
    (0x35206E, "rest_init+0xc6/0xc8", 0x1093E68, "task", True),
    (0x4AA05A, "arch_call_rest_init+0x6a/0x70", 0x1093E98, "task", True),
]
KDUMP_CPU1 = [  # the crashing CPU: echo c > /proc/sysrq-trigger
    (0x11152C, "pcpu_delegate+0x124/0x168", 0x119BA08, "task", True),
    (0x1114EA, "pcpu_delegate+0xe2/0x168", 0x119BA08, "task", False),
    (0x112144, "smp_call_ipl_cpu+0x54/0x58", 0x119BA88, "task", True),
    (0x1BBFE4, "__crash_kexec+0x64/0x90", 0x119BAA8, "task", True),
    (0x34D580, "panic+0x248/0x2f0", 0x119BBA0, "task", True),
    (0x2D8D2A, "sysrq_handle_crash+0x22/0x28", 0x119BC40, "task", True),
    (0x2D91D2, "__handle_sysrq+0xea/0x170", 0x119BC58, "task", True),
    (0x2D92A6, "write_sysrq_trigger+0x4e/0x68", 0x119BCB0, "task", True),
    (0x262A12, "proc_reg_write+0x9a/0xb8", 0x119BCE8, "task", True),
    (0x219282, "vfs_write+0x9a/0x180", 0x119BD38, "task", True),
    (0x2194DA, "ksys_write+0x7a/0xc8", 0x119BDE8, "task", True),
    (0x3517A2, "__do_syscall+0x17a/0x1d0", 0x119BE50, "task", True),
    (0x35B342, "system_call+0x82/0xb0", 0x119BE98, "task", True),
]
IDLE_TAIL = [
    (0x35B526, "psw_idle_exit+0x0/0xa", "task", True),
    (0x351592, "arch_cpu_idle+0x3a/0xd0", "task", False),
    (0x35B166, "default_idle_call+0x46/0x58", "task", True),
    (0x17FCC0, "do_idle+0xc0/0xd8", "task", True),
    (0x17FE42, "cpu_startup_entry+0x3a/0x40", "task", True),
]
QEMU_CPU0 = [(pc, s, 0x1093DA0 if i < 2 else sp, st, ok) for i, ((pc, s, st, ok), sp) in
             enumerate(zip(IDLE_TAIL, [0, 0, 0x1093DD8, 0x1093DF8, 0x1093E38], strict=True))] + [
    (0x35206E, "rest_init+0xc6/0xc8", 0x1093E68, "task", True),
    (0x4AA05A, "arch_call_rest_init+0x6a/0x70", 0x1093E98, "task", True),
]
QEMU_CPU1 = [(pc, s, 0x11ABD88 if i < 2 else sp, st, ok) for i, ((pc, s, st, ok), sp) in
             enumerate(zip(IDLE_TAIL, [0, 0, 0x11ABDC0, 0x11ABDE0, 0x11ABE20], strict=True))] + [
    (0x1117E0, "smp_add_present_cpu+0x0/0xb0", 0x11ABE50, "task", True),
    (0x35B81E, "restart_int_handler+0x6e/0x90", 0x11ABE98, "task", True),
]
KDUMP = {0: KDUMP_CPU0, 1: KDUMP_CPU1}
QEMU = {0: QEMU_CPU0, 1: QEMU_CPU1}
LOWCORES = {0: 0x115A000, 1: 0x115C000}


def bt_json(path, *args) -> dict:
    res = runner.invoke(app, ["bt", "--json", *args, str(path)])
    assert res.exit_code == Exit.OK, res.stderr
    return json.loads(res.stdout)


def details(path) -> list[tuple[str | None, str]]:
    """(what the CPU was doing, why its frames end) per CPU: the text form's lines."""
    analysis = analyse(str(path))
    try:
        bt = analysis_backtraces(analysis)
    finally:
        analysis.close()
    return [(doing(bt, t), ending(t)) for t in bt.cpus]


def frames_of(doc: dict) -> dict[int, list[tuple]]:
    return {c["cpu"]: [(f["pc"], f"{f['symbol']}+{f['offset']:#x}/{f['size']:#x}", f["sp"],
                        f["stack"], f["reliable"]) for f in c["frames"]] for c in doc["cpus"]}


def system_map_lookup(real_text):
    """name+offset of the last System.map symbol at or below an address (no kallsyms)."""
    entries = sorted((int(a, 16), n) for a, t, n in
                     (line.split() for line in real_text("System.map-6.1.192-rimg").splitlines())
                     if t in "tTW")

    def look(addr: int) -> tuple[int, set[str]]:
        best = max(a for a, _ in entries if a <= addr)
        return addr - best, {n for a, n in entries if a == best}

    return look


# ---- the real images ----------------------------------------------------------------------------

def test_proc_vmcore(real_file, real_text):
    doc = bt_json(real_file("rimg-kdump.proc-vmcore.elf"))
    assert frames_of(doc) == KDUMP
    assert [(c["prefix"], c["pid"]) for c in doc["cpus"]] == [(0x115A000, 0), (0x115C000, 1)]
    assert [c["psw"] for c in doc["cpus"]] == [
        {"mask": 0x0400C00180000000, "addr": 0x10EDC0},
        {"mask": 0x0400C00180000000, "addr": 0x11152C}]
    # the JSON shape, exactly
    assert list(doc) == ["sadump_version", "cpus"]  # every --json leads with it (issue 18)
    assert all(list(c) == ["cpu", "prefix", "pid", "psw", "frames"] for c in doc["cpus"])
    # + "module" as the tasks' frames have it (null: 6.1 without BTF, so no module list)
    assert all(list(f) == ["pc", "symbol", "offset", "size", "sp", "stack", "reliable",
                           "module"] and f["module"] is None
               for c in doc["cpus"] for f in c["frames"])
    (doing0, end0), (doing1, end1) = details(real_file("rimg-kdump.proc-vmcore.elf"))
    assert end0 == end1 == "task pt_regs"
    assert "panic" in doing1 and "system call" in doing1
    assert doing0.startswith("in the kdump entry")
    look = system_map_lookup(real_text)
    for cpu in KDUMP.values():
        for pc, printed, *_ in cpu:
            offset, names = look(pc)
            assert printed.split("/")[0] in {f"{n}+{offset:#x}" for n in names}


def test_proc_vmcore_text(real_file):
    res = runner.invoke(app, ["bt", str(real_file("rimg-kdump.proc-vmcore.elf"))])
    assert res.exit_code == Exit.OK
    lines = res.stdout.splitlines()
    assert lines[0] == "symbols: 19365 from kallsyms (relative-base offsets)"
    assert "CPU 1  prefix 0x115c000  PID 1  PSW 0400c00180000000 000000000011152c" in lines
    assert "  doing: in panic, starting kdump (__crash_kexec), in a system call" in lines
    text = res.stdout
    # the kernel's own format: reliable " [<ip>] %pSR ", unreliable "([<ip>] %pSR)"
    assert "   [<000000000035b342>] system_call+0x82/0xb0 " in text
    assert "  ([<00000000001114ea>] pcpu_delegate+0xe2/0x168)" in text
    assert ("  -- pt_regs at 0x10f3f38: PSW 0404c00180000000 000000000011197e, "
            "r15 0x10f7d20") in lines
    assert "  -- backchain to the task stack" in lines
    assert "  end: the task's pt_regs at 0x119bf38 (task stack top - 200)" in lines


def test_proc_vmcore_one_cpu(real_file):
    doc = bt_json(real_file("rimg-kdump.proc-vmcore.elf"), "--cpu", "1")
    assert frames_of(doc) == {1: KDUMP_CPU1}
    res = runner.invoke(app, ["bt", "--cpu", "7", str(real_file("rimg-kdump.proc-vmcore.elf"))])
    assert res.exit_code == Exit.USAGE and "no such CPU" in res.stderr


@pytest.mark.parametrize("name", ["rimg-kdump.qemu.elf", "rimg-kdump.qemu-kdump-zlib.flat"])
def test_qemu_copies_both_idle(real_file, name):
    doc = bt_json(real_file(name))
    assert frames_of(doc) == QEMU
    assert details(real_file(name)) == [("idle", "task pt_regs")] * 2
    assert [c["pid"] for c in doc["cpus"]] == [0, 0]


def test_qemu_text_notes_the_noreturn_caller(real_file):
    res = runner.invoke(app, ["bt", str(real_file("rimg-kdump.qemu.elf"))])
    line = next(t for t in res.stdout.splitlines() if "smp_add_present_cpu" in t)
    assert line.startswith("   [<00000000001117e0>] smp_add_present_cpu+0x0/0xb0 ")
    assert "(called from smp_start_secondary+0xe8/0xe8: a noreturn call)" in line
    assert "PSW 0706c00180000000 000000000035b526 (wait)" in res.stdout


def test_makedumpfile_kdump(real_file):
    assert frames_of(bt_json(real_file("rimg-kdump.makedumpfile-c-d31.kdump"))) == KDUMP


def test_raw_image_has_no_registers(real_file):
    doc = bt_json(real_file("rimg-kdump.raw"))
    assert [(c["cpu"], c["prefix"], c["pid"], c["psw"], c["frames"]) for c in doc["cpus"]] == [
        (0, 0x115A000, 0, None, []), (1, 0x115C000, 0, None, [])]
    assert all(end.startswith("no registers") for _, end in
               details(real_file("rimg-kdump.raw")))
    res = runner.invoke(app, ["bt", str(real_file("rimg-kdump.raw"))])
    assert res.stdout.count("no registers: this CPU stored no status") == 2


@pytest.fixture(scope="module")
def sadump_outputs(real_file, tmp_path_factory) -> dict:
    """sadump's own ELF and kdump output of the raw image, the QEMU ELF and /proc/vmcore."""
    folder = tmp_path_factory.mktemp("bt-dumps")
    out = {}
    for name, fmt in [("rimg-kdump.raw", "elf"), ("rimg-kdump.raw", "kdump"),
                      ("rimg-kdump.qemu.elf", "elf"), ("rimg-kdump.qemu.elf", "kdump"),
                      ("rimg-kdump.proc-vmcore.elf", "kdump")]:
        path = folder / f"{name}.{fmt}"
        res = runner.invoke(app, ["dump", "--format", fmt, "-o", str(path),
                                  str(real_file(name))])
        assert res.exit_code == Exit.OK, res.stderr  # kdump path, or a dump converted as is
        out[(name, fmt)] = path
    return out


@pytest.mark.parametrize("fmt", ["elf", "kdump"])
def test_sadump_output_of_the_qemu_elf(sadump_outputs, fmt):
    assert frames_of(bt_json(sadump_outputs[("rimg-kdump.qemu.elf", fmt)])) == QEMU


def test_sadump_kdump_output_of_proc_vmcore(sadump_outputs):
    assert frames_of(bt_json(sadump_outputs[("rimg-kdump.proc-vmcore.elf", "kdump")])) == KDUMP


@pytest.mark.parametrize("fmt", ["elf", "kdump"])
def test_sadump_output_of_the_raw_image(sadump_outputs, fmt):
    doc = bt_json(sadump_outputs[("rimg-kdump.raw", fmt)])
    assert [(c["cpu"], c["prefix"], c["frames"]) for c in doc["cpus"]] == [
        (0, 0x115A000, []), (1, 0x115C000, [])]


def test_backtraces_of_the_vmcore_in_process(real_file):
    """The library call behind `bt` (its time is benchmarks/analysis_speed.py's figure)."""
    analysis = analyse(str(real_file("rimg-kdump.proc-vmcore.elf")))
    try:
        bt = analysis_backtraces(analysis)
        lines = text_lines(bt)
    finally:
        analysis.close()
    assert len(bt.symbols) == 19365 and len(bt.cpus) == 2
    text = "\n".join(lines)
    assert all(sym in text for cpu in KDUMP.values() for _, sym, *_ in cpu)


def test_info_shows_the_panicking_cpu(real_file):
    res = runner.invoke(app, ["info", "--json", str(real_file("rimg-kdump.proc-vmcore.elf"))])
    doc = json.loads(res.stdout)
    assert frames_of(doc["backtrace"]) == {1: KDUMP_CPU1}
    res = runner.invoke(app, ["info", str(real_file("rimg-kdump.proc-vmcore.elf"))])
    assert "backtrace    CPU 1 (panicked), PID 1: in panic" in res.stdout
    # compact: the reliable frames as one wrapped chain, innermost first
    assert "  pcpu_delegate+0x124 < smp_call_ipl_cpu+0x54 < __crash_kexec+0x64 < panic+0x248 <" \
        in res.stdout
    assert "< __do_syscall+0x17a < system_call+0x82\n" in res.stdout
    res = runner.invoke(app, ["info", "--json", str(real_file("rimg-kdump.qemu.elf"))])
    assert frames_of(json.loads(res.stdout)["backtrace"]) == QEMU  # none panicked: every CPU


# ---- synthetic raw images -----------------------------------------------------------------------

VSTACK = 0x8000000000  # vmalloc'ed task stack of CPU 0 (region-third index 256)
VSTACK_PAGES = [0x700000, 0x6F0000, 0x6E3000, 0x6D5000]  # its 4 pages, scattered
IRQ0 = 0x400000  # CPU 0's irq stack (identity-mapped)
TASK1 = 0x410000  # CPU 1's task stack
TABLES = 0x100000  # kallsyms
DAT_POOL = 0x180000
KERNEL_PSW, USER_PSW = 0x0704C00180000000, 0x0705C00180000000
CPU0_FRAMES = [  # (pc, %pSR, reliable) of CPU 0: panic from a system call, noreturn note
    (0x10424, "panic+0x24/0x100", True),
    (0x10410, "panic+0x10/0x100", False),
    (0x10A00, "after_noreturn+0x0/0x100", True),
    (0x10522, "sysrq_handle_crash+0x22/0x100", True),
    (0x10682, "system_call+0x82/0x100", True),
]


def synthetic(tmp_path, *, kallsyms: bool = True, swapped: bool = False, fmt: str = "raw",
              kernel: str = "6.1"):
    """CPU 0 in panic on a vmalloc'ed task stack (frames spread over its pages), CPU 1 with
    no stored status. The builder's image with kallsyms, DAT tables and stacks; kernel "6.1"
    (identity map), "6.12" (image at KERNELOFFSET, identity base) or "7.0" (6.12's layout,
    place-relative kallsyms offsets)."""
    new = kernel != "6.1"
    text = KASLR_OFFSET - 0x10000 if new else 0  # text addresses: SYMBOLS + text
    ident = IDENTITY_BASE if new else 0  # identity map base

    cpu0 = Cpu(prefix=PREFIX_AREAS, psw=(KERNEL_PSW, text + 0x10424))
    top = VSTACK + 16384
    sps = [top - 360 - d for d in (14000, 9000, 4000, 0)]
    cpu0.gprs = [0] * 14 + [text + 0x10410, sps[0]]
    spec = ImageSpec(mem_size=64 * MiB, cpus=[cpu0, Cpu()], swapped=swapped, new_layout=new,
                     entries={0} if new else set())
    tables = kallsyms_tables([(a + text, t, n) for a, t, n in SYMBOLS], TABLES + text,
                             relative_base=text + 0x10000, place_relative=kernel == "7.0")
    words = Words()
    words.frame(sps[0], text + 0x10410, sps[1])  # r14 slot: a stale address in panic
    words.frame(sps[1], text + 0x10A00, sps[2])  # return after a noreturn call
    words.frame(sps[2], text + 0x10522, sps[3])
    words.frame(sps[3], text + 0x10682, 0)
    words.pt_regs(top - 200, USER_PSW, 0x3FFF1000, 0x3FFFFF00)

    def edit(mem, image):
        def put(old: int, data: bytes) -> None:
            mem.write(spec.where(old), data)

        class Mapped:  # Dat writes through put (the old system's addresses)
            def put_u64(self, addr, value):
                put(addr, struct.pack(">Q", value))

        put(TABLES, tables.blob)
        dat = Dat(Mapped(), SWAPPER_PG_DIR, DAT_POOL)
        put(SWAPPER_PG_DIR, struct.pack(">Q", 0x20 | 0x04 | 3))  # entry 0: TT region-third
        for i, pa in enumerate(VSTACK_PAGES):
            dat.map_page(VSTACK + 4096 * i, pa)
        for va, data in words.pages().items():
            put(VSTACK_PAGES[(va - VSTACK) // 4096], data)
        for lowcore, pid, stacks in [
                (PREFIX_AREAS, 1, {"task": VSTACK, "irq": ident + IRQ0}),
                (PREFIX_AREAS + LOWCORE_SIZE, 0, {"task": ident + TASK1})]:
            scratch = type(mem)()
            lowcore_stacks(scratch, lowcore, pid, **stacks)
            for addr, data in scratch.runs():
                put(addr, data)

    extra = tables.lines if kallsyms else []
    if new:
        extra = [f"OSRELEASE={kernel}.0-synthetic", *extra]
    path = write_raw_image(spec, tmp_path / "synthetic.raw", extra, edit)
    if fmt == "s390":  # the same memory in the s390 dump format
        spec.build().memory.pages = _pages_of(path)
        return write_s390(spec, tmp_path / "synthetic.s390")
    if fmt == "elf":  # an ELF core whose only register note is CPU 1's, in user mode
        spec.build().memory.pages = _pages_of(path)
        prstatus = bytearray(336)
        struct.pack_into(">QQ", prstatus, 0x70, USER_PSW, 0x3FFF2000)
        struct.pack_into(">Q", prstatus, 0x80 + 15 * 8, 0x3FFFFE00)
        notes = [("CORE", 1, bytes(prstatus)),
                 ("LINUX", 0x305, struct.pack(">I", PREFIX_AREAS + LOWCORE_SIZE))]
        return write_elf(spec, tmp_path / "synthetic.elf", notes)
    return path


def _pages_of(path) -> dict:
    data = path.read_bytes()
    return {i // 4096: bytearray(data[i:i + 4096]) for i in range(0, len(data), 4096)
            if data[i:i + 4096].strip(b"\0")}


def synthetic_frames(doc) -> list[tuple]:
    return [(f["pc"], f"{f['symbol']}+{f['offset']:#x}/{f['size']:#x}", f["reliable"])
            for f in doc["cpus"][0]["frames"]]


@pytest.mark.parametrize("swapped", [False, True])
def test_synthetic_vmalloc_stack(tmp_path, swapped):
    path = synthetic(tmp_path, swapped=swapped)
    doc = bt_json(path)
    assert synthetic_frames(doc) == CPU0_FRAMES
    (doing0, end0), (_, end1) = details(path)
    cpu0, cpu1 = doc["cpus"]
    assert [f["stack"] for f in cpu0["frames"]] == ["task"] * 5
    assert {f["sp"] >> 12 for f in cpu0["frames"]} == {(VSTACK >> 12) + i for i in range(4)}
    assert (cpu0["cpu"], cpu0["prefix"], cpu0["pid"]) == (0, PREFIX_AREAS, 1)
    assert cpu0["psw"] == {"mask": KERNEL_PSW, "addr": 0x10424}
    assert end0 == "task pt_regs" and doing0 == "in panic, in a system call"
    assert (cpu1["cpu"], cpu1["prefix"], cpu1["psw"], cpu1["frames"]) == (
        1, PREFIX_AREAS + LOWCORE_SIZE, None, [])
    assert end1.startswith("no registers")


@pytest.mark.parametrize("kernel", ["6.12", "7.0"])
def test_synthetic_new_layouts(tmp_path, kernel):
    """6.10+: text at KERNELOFFSET, identity base for lowcores and stacks; 7.0: place-relative
    offsets (no kallsyms_relative_base line): the formula that gives SYMBOL(_stext) wins."""
    path = synthetic(tmp_path, kernel=kernel)
    shift = KASLR_OFFSET - 0x10000
    doc = bt_json(path)
    assert [(f["pc"] - shift, f"{f['symbol']}+{f['offset']:#x}/{f['size']:#x}", f["reliable"])
            for f in doc["cpus"][0]["frames"]] == CPU0_FRAMES
    analysis = analyse(str(path))
    try:
        bt = analysis_backtraces(analysis)
    finally:
        analysis.close()
    assert bt.symbols.encoding == ("place-relative" if kernel == "7.0" else "relative-base")
    # modules: [round_down(KERNELOFFSET, 1 MiB) - 2 GiB, round_down(KERNELOFFSET, 1 MiB))
    end = KASLR_OFFSET & ~0xFFFFF
    assert bt.symbols.module_range == (end - (1 << 31), end)
    assert str(bt.symbols.lookup(end - 0x1000)) == f"[module] {end - 0x1000:#x}"
    assert bt.symbols.is_text(end - 0x1000)


def test_synthetic_text(tmp_path):
    res = runner.invoke(app, ["bt", str(synthetic(tmp_path))])
    assert res.exit_code == Exit.OK, res.stderr
    out = res.stdout
    assert "symbols: 22 from kallsyms (relative-base offsets)" in out
    assert "(called from noreturn_caller+0x100/0x100: a noreturn call)" in out
    assert "  ([<0000000000010410>] panic+0x10/0x100)" in out
    assert "CPU 1  prefix 0x22000  PID 0\n  no registers" in out


def test_synthetic_s390_dump(tmp_path):
    assert synthetic_frames(bt_json(synthetic(tmp_path, fmt="s390"))) == CPU0_FRAMES


def test_synthetic_elf_note_for_one_cpu(tmp_path):
    """CPU 1's registers from its note (user mode: nothing to walk), CPU 0's from its own
    lowcore's save area, as no note names it."""
    path = synthetic(tmp_path, fmt="elf")
    doc = bt_json(path)
    assert synthetic_frames(doc) == CPU0_FRAMES
    cpu1 = doc["cpus"][1]
    assert cpu1["psw"] == {"mask": USER_PSW, "addr": 0x3FFF2000}
    assert [f["pc"] for f in cpu1["frames"]] == [0x3FFF2000]
    doing1, end1 = details(path)[1]
    assert doing1 == "running a user program" and "user mode" in end1


def test_synthetic_without_kallsyms(tmp_path):
    """A kernel before 6.0: raw addresses and one line saying why; the walk is the same."""
    doc = bt_json(synthetic(tmp_path, kallsyms=False))
    frames = doc["cpus"][0]["frames"]
    assert [(f["pc"], f["symbol"], f["offset"], f["size"]) for f in frames] == [
        (pc, None, None, None) for pc, _, _ in CPU0_FRAMES]
    res = runner.invoke(app, ["bt", str(synthetic(tmp_path, kallsyms=False))])
    assert res.stdout.splitlines()[0] == (
        "symbols: none, addresses are raw (VMCOREINFO has no SYMBOL(kallsyms_names) "
        "(kallsyms lines came with Linux 6.0))")
    assert "   [<0000000000010424>] 0x10424 " in res.stdout


def test_synthetic_damaged_page_table(tmp_path):
    """The page holding the outer frames is unmapped: the walk stops, saying where."""
    path = synthetic(tmp_path)
    data = bytearray(path.read_bytes())
    # CPU 0's page table: the entry for VSTACK's last page, found by its value
    pte = struct.pack(">Q", VSTACK_PAGES[3])
    at = data.find(pte, DAT_POOL)
    assert at > 0
    data[at:at + 8] = struct.pack(">Q", 0x400)
    path.write_bytes(bytes(data))
    doc = bt_json(path)
    assert len(doc["cpus"][0]["frames"]) < len(CPU0_FRAMES)
    assert "not mapped" in details(path)[0][1]


def test_no_vmcoreinfo_no_cpus(tmp_path):
    path = tmp_path / "zeros.raw"
    path.write_bytes(bytes(1 << 20))
    res = runner.invoke(app, ["bt", "--json", str(path)])
    assert res.exit_code == Exit.IMAGE_ERROR and res.stdout == ""
    assert "no CPUs found: no VMCOREINFO" in res.stderr


# ---- the "doing" line ---------------------------------------------------------------------------

def _trace(frames, mask=KERNEL_PSW, end="task pt_regs", end_regs=0x1000):
    from sadump.kernel.unwind import CpuTrace, Frame, Registers, Walk

    fs = [Frame(pc, 0, "task", True, kind) for pc, kind in frames]
    walk = Walk(fs, end, end == "task pt_regs", end_regs if end == "task pt_regs" else None)
    return CpuTrace(0, 0x20000, 0, regs=Registers(mask, frames[0][0], (0,) * 16), walk=walk)


@pytest.fixture(scope="module")
def small_kernel():
    from sadump.kernel.kallsyms import Kallsyms

    return Kallsyms([a for a, _, _ in SYMBOLS], "".join(t for _, t, _ in SYMBOLS),
                    [n for _, _, n in SYMBOLS], "relative-base")


@pytest.mark.parametrize("frames, mask, expected", [
    ([(0x10300, "psw"), (0x10310, "return"), (0x10100, "return")], 0x0706C00180000000,
     "idle"),
    ([(0x10504, "psw"), (0x10890, "return"), (0x10810, "return"), (0x10300, "pt_regs"),
      (0x10100, "return")], KERNEL_PSW, "in an external interrupt, interrupting the idle loop"),
    ([(0x10404, "psw"), (0x10524, "return"), (0x10610, "return")], KERNEL_PSW,
     "in panic, in a system call"),
    ([(0x10404, "psw")], USER_PSW, "running a user program"),
    ([(0x10904, "psw"), (0x10A10, "return")], KERNEL_PSW, None),
])
def test_doing(small_kernel, frames, mask, expected):
    from sadump.kernel.unwind import Backtraces

    bt = Backtraces([], small_kernel, None)
    assert doing(bt, _trace(frames, mask)) == expected
    assert doing(Backtraces([], None, "no kallsyms"), _trace(frames, mask)) is None

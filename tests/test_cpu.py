"""CPU state: save areas and register notes in, the kernel's notes out (spec 5.2, 5.3, 6)."""

from __future__ import annotations

import struct

import pytest

from sadump.analysis import analyse
from sadump.formats.memory import Note
from sadump.ipl.save_area import CpuState
from sadump.kernel.cpus import cpu_notes, from_notes, notes_for
from tests.fixtures.builder import Cpu, ImageSpec, MiB, write_raw, write_s390

NT = {"PRSTATUS": 1, "FPREGSET": 2, "PRPSINFO": 3, "TIMER": 0x301, "TODCMP": 0x302,
      "TODPREG": 0x303, "CTRS": 0x304, "PREFIX": 0x305, "VXRS_LOW": 0x309, "VXRS_HIGH": 0x30A,
      "GS_CB": 0x30B}
#: the kernel's per-CPU order, names and sizes as the reference /proc/vmcore (6.1.192) has them
KERNEL_ORDER = [("CORE", 1, 336), ("CORE", 2, 136), ("LINUX", 0x301, 8), ("LINUX", 0x302, 8),
                ("LINUX", 0x303, 4), ("LINUX", 0x304, 128), ("LINUX", 0x305, 4),
                ("LINUX", 0x30A, 256), ("LINUX", 0x309, 128)]


def state_of(cpu: Cpu) -> CpuState:
    """A builder CPU (spec values) read back through its save area bytes."""
    return CpuState.from_save_area(cpu.save_area(), cpu.vx_area() if cpu.vx else None)


def check_notes_hold(notes: list[Note], cpu: Cpu, pid: int) -> None:
    """Every register at the offset spec 5.2/5.3 gives, unpacked independently of sadump."""
    by_type = {n.type: n.desc for n in notes}
    pr = by_type[NT["PRSTATUS"]]
    assert struct.unpack_from(">I", pr, 0x20)[0] == pid
    assert struct.unpack_from(">QQ", pr, 0x70) == cpu.psw
    assert list(struct.unpack_from(">16Q", pr, 0x80)) == cpu.gprs
    assert list(struct.unpack_from(">16I", pr, 0x100)) == cpu.acrs
    fp = by_type[NT["FPREGSET"]]
    assert struct.unpack_from(">I", fp, 0)[0] == cpu.fpc
    assert list(struct.unpack_from(">16Q", fp, 8)) == cpu.fprs
    assert struct.unpack(">Q", by_type[NT["TIMER"]])[0] == cpu.timer
    assert struct.unpack(">Q", by_type[NT["TODCMP"]])[0] == cpu.todcmp
    assert struct.unpack(">I", by_type[NT["TODPREG"]])[0] == cpu.todpreg
    assert list(struct.unpack(">16Q", by_type[NT["CTRS"]])) == cpu.ctrs
    assert struct.unpack(">I", by_type[NT["PREFIX"]])[0] == cpu.prefix
    if cpu.vx:
        assert by_type[NT["VXRS_HIGH"]] == b"".join(cpu.vx[16:])
        assert by_type[NT["VXRS_LOW"]] == b"".join(v[8:] for v in cpu.vx[:16])
    else:
        assert NT["VXRS_HIGH"] not in by_type and NT["VXRS_LOW"] not in by_type


def test_notes_for_puts_each_register_at_its_offset():
    cpu = Cpu.distinct(3)
    notes = notes_for(state_of(cpu), 7)
    assert [(n.name, n.type, len(n.desc)) for n in notes] == KERNEL_ORDER
    check_notes_hold(notes, cpu, 7)


def test_no_vector_registers_no_vector_notes():
    cpu = Cpu.distinct(1)
    cpu.vx = None
    notes = notes_for(state_of(cpu), 1)
    assert [(n.name, n.type, len(n.desc)) for n in notes] == KERNEL_ORDER[:7]
    check_notes_hold(notes, cpu, 1)


def test_cpu_notes_number_pids_in_order():
    cpus = [Cpu.distinct(i) for i in range(3)]
    notes = cpu_notes([state_of(c) for c in cpus])
    assert len(notes) == 3 * len(KERNEL_ORDER)
    for i, cpu in enumerate(cpus):
        check_notes_hold(notes[i * 9:(i + 1) * 9], cpu, i + 1)


def qemu_notes(cpu: Cpu, pid: int) -> list[Note]:
    """A CPU as QEMU 7.2 writes it: its order, little-endian pr_pid, raw clock comparator."""
    pr = bytearray(336)
    struct.pack_into("<I", pr, 0x20, pid)
    struct.pack_into(">QQ16Q16I", pr, 0x70, *cpu.psw, *cpu.gprs, *cpu.acrs)
    fp = struct.pack(">I4x16Q", cpu.fpc, *cpu.fprs)
    return [
        Note("CORE", 1, bytes(pr)), Note("CORE", 2, fp),
        Note("LINUX", NT["PREFIX"], struct.pack(">I", cpu.prefix)),
        Note("LINUX", NT["CTRS"], struct.pack(">16Q", *cpu.ctrs)),
        Note("LINUX", NT["TIMER"], struct.pack(">Q", cpu.timer)),
        Note("LINUX", NT["TODCMP"], struct.pack(">Q", cpu.todcmp << 8 & (1 << 64) - 1)),
        Note("LINUX", NT["TODPREG"], struct.pack(">I", cpu.todpreg)),
        Note("LINUX", NT["VXRS_LOW"], b"".join(v[8:] for v in cpu.vx[:16])),
        Note("LINUX", NT["VXRS_HIGH"], b"".join(cpu.vx[16:])),
        Note("LINUX", NT["GS_CB"], bytes(32)),
    ]


def test_qemu_notes_map_to_the_kernels():
    cpus = [Cpu.distinct(0), Cpu.distinct(1)]
    for c in cpus:
        c.todcmp &= (1 << 56) - 1  # store status keeps 56 bits of the comparator
    found, warnings = from_notes([n for i, c in enumerate(cpus) for n in qemu_notes(c, i + 1)])
    assert len(found) == 2 and any("QEMU" in w for w in warnings)
    notes = cpu_notes(found)
    for i, cpu in enumerate(cpus):
        check_notes_hold(notes[i * 9:(i + 1) * 9], cpu, i + 1)


def test_notes_grouped_by_prstatus_and_prefix_zero_skipped():
    a, b = Cpu.distinct(0), Cpu.distinct(1)
    b.prefix = 0
    notes = [Note("CORE", 3, bytes(136))]  # PRPSINFO before the first CPU is not a CPU
    notes += notes_for(state_of(a), 1) + notes_for(state_of(b), 2)
    notes.append(Note("VMCOREINFO", 0, b"OSRELEASE=x\n"))
    found, warnings = from_notes(notes)
    assert [c.prefix for c in found] == [a.prefix]
    assert any("prefix 0" in w for w in warnings)


def test_short_prstatus_is_a_warning_not_a_crash():
    found, warnings = from_notes([Note("CORE", 1, bytes(40)), Note("CORE", 2, bytes(136))])
    assert found == [] and warnings


def test_save_area_round_trip_keeps_other_bytes():
    cpu = Cpu.distinct(2)
    original = bytearray(cpu.save_area())
    original[0x138:0x140] = b"BREAKADR"  # last-break field: not a register note
    state = CpuState.from_save_area(bytes(original))
    assert state.save_area(bytes(original)) == bytes(original)
    assert state.vx_area() is None


# ---- find_cpus on synthetic images ---------------------------------------------------------
def _cpus(tmp_path, **kw):
    spec = ImageSpec(**kw)
    a = analyse(str(write_raw(spec, tmp_path / "mem.raw")))
    try:
        return spec, a.cpus()
    finally:
        a.close()


@pytest.mark.parametrize("kw", [{}, {"new_layout": True}, {"swapped": True},
                                {"ranges": [(0, 16 * MiB), (32 * MiB, 64 * MiB)]}],
                         ids=["6.1", "6.10-layout", "after-swap", "holes"])
def test_save_areas_of_several_cpus(tmp_path, kw):
    cpus = [Cpu.distinct(i) for i in range(4)]
    cpus[2].vx = None
    _, found = _cpus(tmp_path, cpus=cpus, **kw)
    assert found.source == "save areas"
    assert [c.prefix for c in found.cpus] == [c.prefix for c in cpus]  # boot CPU first
    for state, cpu in zip(found.cpus, cpus, strict=True):
        check_notes_hold(notes_for(state, 1), cpu, 1)


def test_cpu_without_stored_status_is_skipped(tmp_path):
    cpus = [Cpu.distinct(0), Cpu(), Cpu.distinct(2)]
    _, found = _cpus(tmp_path, cpus=cpus)
    assert [c.prefix for c in found.cpus] == [cpus[0].prefix, cpus[2].prefix]


def test_no_stored_status_anywhere(tmp_path):
    _, found = _cpus(tmp_path, cpus=[Cpu(), Cpu()])
    assert found.source == "none" and found.cpus == []
    assert any("no CPU has a stored status" in w for w in found.warnings)


def test_s390_dump_cpus_from_header_prefixes(tmp_path):
    cpus = [Cpu.distinct(0), Cpu.distinct(1), Cpu.distinct(2)]
    spec = ImageSpec(cpus=cpus)
    a = analyse(str(write_s390(spec, tmp_path / "d.s390")))
    try:
        found = a.cpus()
    finally:
        a.close()
    assert [c.prefix for c in found.cpus] == [c.prefix for c in cpus]


# ---- real images --------------------------------------------------------------------------
def test_reference_notes_round_trip(real_file):
    """The kernel's own notes parse into CPU states that give the same notes back, byte
    for byte: order, names, sizes and every field."""
    ref = analyse(str(real_file("rimg-kdump.proc-vmcore.elf")))
    try:
        notes = ref.image.notes
        found, warnings = from_notes(notes)
        assert warnings == []
        per_cpu = [n for n in notes if n.type not in (0, NT["PRPSINFO"])]
        assert cpu_notes(found) == per_cpu
    finally:
        ref.close()


@pytest.mark.parametrize("name", ["rimg-kdump.qemu.elf", "rimg-kdump.qemu-kdump-zlib.flat"])
def test_qemu_real_notes_give_the_references_shape(real_file, name):
    ref = analyse(str(real_file("rimg-kdump.proc-vmcore.elf")))
    a = analyse(str(real_file(name)))
    try:
        found = a.cpus()
        assert found.source == "notes"
        ref_cpu = [n for n in ref.image.notes if n.type not in (0, NT["PRPSINFO"])]
        got = cpu_notes(found.cpus)
        assert [(n.name, n.type, len(n.desc)) for n in got] == \
            [(n.name, n.type, len(n.desc)) for n in ref_cpu]
        # the same CPUs (the prefix registers do not change between the two moments)
        assert [n.desc for n in got if n.type == NT["PREFIX"]] == \
            [n.desc for n in ref_cpu if n.type == NT["PREFIX"]]
        # the clock comparator in the kernel's (store-status) format: top byte zero
        assert all(n.desc[0] == 0 for n in got if n.type == NT["TODCMP"])
    finally:
        a.close()
        ref.close()


def test_raw_real_image_has_no_stored_status(real_file):
    a = analyse(str(real_file("rimg-kdump.raw")))
    try:
        found = a.cpus()
    finally:
        a.close()
    assert found.source == "none" and found.cpus == []

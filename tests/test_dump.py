"""`sadump dump` on synthetic images: vmcore shape (spec 5), CPUs, holes, crashkernel,
after-swap images, the 6.10+ layout, s390 output, stdout, modes and exit statuses."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.formats.memory import Note
from sadump.formats.s390 import S390Dump
from tests.fixtures.builder import (
    IMAGE_END_PHYS,
    IMAGE_PHYS,
    KASLR_OFFSET,
    Cpu,
    ImageSpec,
    MiB,
    write_elf,
    write_raw,
    write_s390,
)
from tests.test_cpu import KERNEL_ORDER, check_notes_hold

runner = CliRunner()
PAGE = 4096


# ---- an ELF reader written from the ELF spec, independent of sadump ------------------------------
def read_elf(path: Path) -> dict:
    data = path.read_bytes() if path.stat().st_size < 256 * MiB else None
    with open(path, "rb") as f:
        head = f.read(64)
        assert head[:6] == b"\x7fELF\x02\x02"  # ELFCLASS64, big-endian
        (e_type, e_machine, _, _, e_phoff, _, _, e_ehsize, e_phentsize, e_phnum) = \
            struct.unpack(">HHIQQQIHHH", head[16:58])
        assert (e_type, e_machine, e_ehsize, e_phentsize, e_phoff) == (4, 22, 64, 56, 64)
        f.seek(e_phoff)
        phdrs = [dict(zip(("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz",
                           "align"), struct.unpack(">IIQQQQQQ", f.read(56)), strict=True))
                 for _ in range(e_phnum)]
        note = phdrs[0]
        assert note["type"] == 4
        f.seek(note["offset"])
        raw = f.read(note["filesz"])
    notes, off = [], 0
    while off + 12 <= len(raw):
        namesz, descsz, ntype = struct.unpack_from(">III", raw, off)
        name = raw[off + 12:off + 12 + namesz].rstrip(b"\0").decode()
        desc_at = off + 12 + (namesz + 3) // 4 * 4
        notes.append((name, ntype, raw[desc_at:desc_at + descsz]))
        off = desc_at + (descsz + 3) // 4 * 4
    return {"phdrs": phdrs, "loads": phdrs[1:], "notes": notes, "data": data}


def segment_bytes(path: Path, ph: dict, paddr: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(ph["offset"] + paddr - ph["paddr"])
        return f.read(size)


def dump(image: Path, out: Path | str, *args: str):
    return runner.invoke(app, ["dump", str(image), "-o", str(out), *args])


def check_loads_equal_memory(vmcore: Path, elf: dict, spec: ImageSpec) -> None:
    """Every PT_LOAD holds the crashed system's bytes at its physical addresses."""
    mem = spec.build().memory
    for ph in elf["loads"]:
        assert ph["filesz"] == ph["memsz"] and ph["offset"] % PAGE == 0
        assert ph["flags"] == 7 and ph["align"] == PAGE
        with open(vmcore, "rb") as f:
            f.seek(ph["offset"])
            for pos in range(0, ph["filesz"], MiB):
                n = min(MiB, ph["filesz"] - pos)
                where = spec.where(ph["paddr"] + pos)
                assert f.read(n) == mem.read(where, n), hex(ph["paddr"] + pos)


def ranges_of(elf: dict) -> list[tuple[int, int]]:
    return [(p["paddr"], p["paddr"] + p["memsz"]) for p in elf["loads"]]


# ---- the kdump vmcore ----------------------------------------------------------------------------
def test_several_cpus_land_in_their_notes(tmp_path):
    cpus = [Cpu.distinct(i) for i in range(3)]
    spec = ImageSpec(cpus=cpus)
    image = write_raw(spec, tmp_path / "mem.raw")
    res = dump(image, tmp_path / "vmcore")
    assert res.exit_code == Exit.OK, res.output
    elf = read_elf(tmp_path / "vmcore")
    names = [(n, t, len(d)) for n, t, d in elf["notes"]]
    assert names[0] == ("CORE", 3, 136)  # NT_PRPSINFO first
    prpsinfo = elf["notes"][0][2]
    assert prpsinfo[1:2] == b"R" and prpsinfo[40:48] == b"vmlinux\0"
    assert names[1:28] == KERNEL_ORDER * 3
    for i, cpu in enumerate(cpus):
        check_notes_hold([Note(*n) for n in elf["notes"][1 + 9 * i:10 + 9 * i]], cpu, i + 1)
    assert names[28][:2] == ("VMCOREINFO", 0)
    assert elf["notes"][28][2] == spec.build().vmcoreinfo
    assert len(names) == 29  # no terminating empty note, as in the kernel's /proc/vmcore
    assert elf["phdrs"][0]["offset"] == 0x1000
    crash = spec.crash
    assert ranges_of(elf) == [(0, crash[0])]
    assert all(p["vaddr"] == p["paddr"] for p in elf["loads"])
    check_loads_equal_memory(tmp_path / "vmcore", elf, spec)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_crashkernel_is_left_out(tmp_path, where):
    base = {"start": 1 * MiB, "middle": 24 * MiB, "end": 48 * MiB}[where]
    spec = ImageSpec(crashkernel=(base, 16 * MiB))
    res = dump(write_raw(spec, tmp_path / "mem.raw"), tmp_path / "vmcore")
    assert res.exit_code == Exit.OK, res.output
    elf = read_elf(tmp_path / "vmcore")
    expected = [(s, e) for s, e in [(0, base), (base + 16 * MiB, 64 * MiB)] if e > s]
    assert ranges_of(elf) == expected
    check_loads_equal_memory(tmp_path / "vmcore", elf, spec)


def test_memory_with_holes(tmp_path):
    ranges = [(0, 8 * MiB), (12 * MiB, 20 * MiB), (24 * MiB + 64 * 1024, 64 * MiB)]
    spec = ImageSpec(ranges=ranges, crashkernel=(40 * MiB, 16 * MiB))
    image = write_elf(spec, tmp_path / "mem.elf")
    res = dump(image, tmp_path / "vmcore")
    assert res.exit_code == Exit.OK, res.output
    elf = read_elf(tmp_path / "vmcore")
    assert ranges_of(elf) == [(0, 8 * MiB), (12 * MiB, 20 * MiB), (24 * MiB + 65536, 40 * MiB),
                              (56 * MiB, 64 * MiB)]
    check_loads_equal_memory(tmp_path / "vmcore", elf, spec)


def test_image_taken_after_the_swap(tmp_path):
    cpus = [Cpu.distinct(0), Cpu.distinct(1)]
    spec = ImageSpec(cpus=cpus, swapped=True, crashtime=1714564000)
    res = dump(write_raw(spec, tmp_path / "mem.raw"), tmp_path / "vmcore", "--json")
    assert res.exit_code == Exit.OK, res.output
    elf = read_elf(tmp_path / "vmcore")
    assert ranges_of(elf) == [(0, spec.crash[0])]
    check_loads_equal_memory(tmp_path / "vmcore", elf, spec)  # spec.where applies the swap
    vmci = [d for n, t, d in elf["notes"] if n == "VMCOREINFO"]
    assert vmci == [spec.build().vmcoreinfo]  # the crashed kernel's, with its CRASHTIME
    assert b"CRASHTIME=1714564000" in vmci[0]
    assert sum(1 for n in elf["notes"] if n[1] == 1) == 2  # the crashed system's CPUs


def test_kernel_610_layout(tmp_path):
    spec = ImageSpec(new_layout=True, cpus=[Cpu.distinct(0)])
    res = dump(write_raw(spec, tmp_path / "mem.raw"), tmp_path / "vmcore")
    assert res.exit_code == Exit.OK, res.output
    elf = read_elf(tmp_path / "vmcore")
    image, *identity = elf["loads"]
    assert (image["vaddr"], image["paddr"], image["memsz"]) == \
        (KASLR_OFFSET, IMAGE_PHYS, IMAGE_END_PHYS - IMAGE_PHYS)
    assert all(p["vaddr"] == spec.identity_base + p["paddr"] for p in identity)
    assert [(p["paddr"], p["paddr"] + p["memsz"]) for p in identity] == [(0, spec.crash[0])]
    check_loads_equal_memory(tmp_path / "vmcore", elf, spec)
    # the image's bytes appear twice: in its own PT_LOAD and in the identity one
    assert segment_bytes(tmp_path / "vmcore", image, IMAGE_PHYS, 0x100) == \
        segment_bytes(tmp_path / "vmcore", identity[0], IMAGE_PHYS, 0x100)
    # the lowcore pointers were virtual (identity map): the CPU was still found
    assert [t for _, t, _ in elf["notes"]].count(1) == 1


def test_sparse_output_and_stdout_stream_agree(tmp_path):
    spec = ImageSpec()
    image = write_raw(spec, tmp_path / "mem.raw")
    assert dump(image, tmp_path / "vmcore").exit_code == Exit.OK
    out = tmp_path / "vmcore"
    assert out.stat().st_blocks * 512 < out.stat().st_size // 4  # zeros are holes
    streamed = runner.invoke(app, ["dump", str(image), "-o", "-"])
    assert streamed.exit_code == Exit.OK
    assert streamed.stdout_bytes == out.read_bytes()
    assert b"wrote stdout" in streamed.stderr_bytes


def test_s390_stream_agrees_with_the_file(tmp_path):
    image = write_raw(ImageSpec(), tmp_path / "mem.raw")
    res = dump(image, tmp_path / "d.s390", "--format", "s390")
    assert res.exit_code == Exit.OK
    streamed = runner.invoke(app, ["dump", str(image), "-o", "-", "--format", "s390"])
    assert streamed.exit_code == Exit.OK
    on_disk = (tmp_path / "d.s390").read_bytes()
    assert len(streamed.stdout_bytes) == len(on_disk)
    # equal but for the TOD clock of the header (0x38) and of the end marker
    assert streamed.stdout_bytes[:0x38] == on_disk[:0x38]
    assert streamed.stdout_bytes[0x40:-8] == on_disk[0x40:-8]


def test_json_summary(tmp_path):
    spec = ImageSpec(cpus=[Cpu(), Cpu()])
    res = dump(write_raw(spec, tmp_path / "mem.raw"), tmp_path / "vmcore", "--json")
    assert res.exit_code == Exit.OK
    summary = json.loads(res.stdout)
    assert summary["decision"]["path"] == "kdump" and summary["path"] == "kdump"
    out = summary["output"]
    assert out["format"] == "elf" and out["bytes_written"] == (tmp_path / "vmcore").stat().st_size
    assert out["segments"] == [{"paddr": 0, "vaddr": 0, "size": spec.crash[0], "offset": 0x2000,
                                "what": "memory"}]
    assert summary["cpus"] == {"count": 0, "source": "none"}
    assert any("no CPU has a stored status" in w for w in summary["warnings"])


# ---- full dump, modes, exit statuses ---------------------------------------------------------------
def test_no_crashkernel_falls_back_to_full_dump(tmp_path):
    spec = ImageSpec(crashkernel=None)
    res = dump(write_raw(spec, tmp_path / "mem.raw"), tmp_path / "vmcore", "--json")
    assert res.exit_code == Exit.FULL_DUMP
    summary = json.loads(res.stdout)
    assert summary["path"] == "full" and summary["decision"]["reason_code"] == 0x4523
    elf = read_elf(tmp_path / "vmcore")
    assert ranges_of(elf) == spec.present
    assert any(n == "VMCOREINFO" for n, _, _ in elf["notes"])
    check_loads_equal_memory(tmp_path / "vmcore", elf, spec)


def test_mode_full_includes_the_crashkernel_and_exits_ok(tmp_path):
    spec = ImageSpec()
    res = dump(write_raw(spec, tmp_path / "mem.raw"), tmp_path / "vmcore", "--mode", "full")
    assert res.exit_code == Exit.OK
    assert ranges_of(read_elf(tmp_path / "vmcore")) == [(0, 64 * MiB)]


def test_mode_kdump_refused_writes_nothing(tmp_path):
    image = write_raw(ImageSpec(damage={"no_kdump_kernel"}), tmp_path / "mem.raw")
    res = dump(image, tmp_path / "vmcore", "--mode", "kdump")
    assert res.exit_code == Exit.KDUMP_REFUSED
    assert not (tmp_path / "vmcore").exists()
    assert "kdump is not possible" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_full_dump_keeps_vmcoreinfo_when_os_info_is_bad(tmp_path):
    image = write_raw(ImageSpec(damage={"checksum_off_by_one_bit"}), tmp_path / "mem.raw")
    res = dump(image, tmp_path / "vmcore")
    assert res.exit_code == Exit.FULL_DUMP
    assert any(n == "VMCOREINFO" for n, _, _ in read_elf(tmp_path / "vmcore")["notes"])


def test_bad_options(tmp_path):
    image = write_raw(ImageSpec(), tmp_path / "mem.raw")
    res = dump(image, tmp_path / "v", "--mode", "fast")
    assert res.exit_code == Exit.USAGE and "'fast' is not one of" in res.stderr
    res = dump(image, tmp_path / "v", "--format", "lkcd")
    assert res.exit_code == Exit.USAGE and "'lkcd' is not one of" in res.stderr
    assert not (tmp_path / "v").exists()


# ---- s390 format ---------------------------------------------------------------------------------
def test_s390_output_reads_back(tmp_path):
    cpus = [Cpu.distinct(0), Cpu.distinct(1)]
    spec = ImageSpec(cpus=cpus, ranges=[(0, 16 * MiB), (20 * MiB, 64 * MiB)])
    res = dump(write_raw(spec, tmp_path / "mem.raw"), tmp_path / "d.s390", "--format", "s390",
               "--mode", "full")
    assert res.exit_code == Exit.OK, res.output
    mem = spec.build().memory
    with S390Dump(str(tmp_path / "d.s390")) as back:
        assert back.incomplete is None
        assert back.ranges() == [(0, 64 * MiB)]
        assert back.cpu_prefixes == [c.prefix for c in cpus]
        for pos in range(0, 64 * MiB, MiB):
            assert back.read(pos, MiB) == mem.read(pos, MiB)  # the gap reads as zeros


def test_s390_output_carries_cpus_from_notes(tmp_path):
    """CPU state from an ELF input's notes is patched into the lowcores (zgetdump does)."""
    cpus = [Cpu.distinct(0), Cpu.distinct(1)]
    spec = ImageSpec(cpus=[Cpu(), Cpu()])  # memory holds no stored status at all
    notes = []
    for i, c in enumerate(cpus):
        pr = bytearray(336)
        struct.pack_into(">I", pr, 0x20, i + 1)
        struct.pack_into(">QQ16Q16I", pr, 0x70, *c.psw, *c.gprs, *c.acrs)
        notes += [("CORE", 1, bytes(pr)), ("CORE", 2, struct.pack(">I4x16Q", c.fpc, *c.fprs)),
                  ("LINUX", 0x301, struct.pack(">Q", c.timer)),
                  ("LINUX", 0x302, struct.pack(">Q", c.todcmp)),
                  ("LINUX", 0x303, struct.pack(">I", c.todpreg)),
                  ("LINUX", 0x304, struct.pack(">16Q", *c.ctrs)),
                  ("LINUX", 0x305, struct.pack(">I", c.prefix))]
    image = write_elf(spec, tmp_path / "mem.elf", notes)
    res = dump(image, tmp_path / "d.s390", "--format", "s390", "--mode", "full")
    assert res.exit_code == Exit.OK, res.output
    with S390Dump(str(tmp_path / "d.s390")) as back:
        assert back.cpu_prefixes == [c.prefix for c in cpus]
        for c in cpus:
            assert back.read(c.prefix + 0x1200, 0x200) == c.save_area()
    # and an ELF written from that s390 dump has the CPUs again
    res = dump(tmp_path / "d.s390", tmp_path / "vmcore", "--mode", "full")
    assert res.exit_code == Exit.OK
    elf = read_elf(tmp_path / "vmcore")
    for i, c in enumerate(cpus):
        c.vx = None
        group = elf["notes"][1 + 7 * i:8 + 7 * i]
        check_notes_hold([Note(*n) for n in group], c, i + 1)


def test_s390_input_round_trip_to_s390(tmp_path):
    spec = ImageSpec(cpus=[Cpu.distinct(0), Cpu.distinct(1)])
    image = write_s390(spec, tmp_path / "in.s390")
    res = dump(image, tmp_path / "out.s390", "--format", "s390", "--mode", "full")
    assert res.exit_code == Exit.OK, res.output
    with S390Dump(str(image)) as a, S390Dump(str(tmp_path / "out.s390")) as b:
        assert a.ranges() == b.ranges() and a.cpu_prefixes == b.cpu_prefixes
        for pos in range(0, 64 * MiB, MiB):
            assert a.read(pos, MiB) == b.read(pos, MiB)


def test_s390_output_names_vector_registers_it_cannot_carry(tmp_path):
    """The kernel stored status with lowcore 0x11B0 = area | 11 (Linux's length bits on a
    machine with guarded storage): the raw image's CPUs have vector registers (kernel rule),
    the s390 format's readers take none (dumper rule, as zgetdump): the s390 dump says so,
    and its read-back indeed has none."""
    from sadump.analysis import analyse

    cpus = [Cpu.distinct(0), Cpu.distinct(1)]
    spec = ImageSpec(cpus=cpus)
    raw = write_raw(spec, tmp_path / "mem.raw")
    with open(raw, "r+b") as f:  # raw image: address = file offset
        for i in range(2):
            f.seek(0x20000 + 0x2000 * i + 0x11B0)
            f.write((0x40000 + 0x400 * i | 11).to_bytes(8, "big"))
    res = dump(raw, tmp_path / "d.s390", "--format", "s390", "--mode", "full")
    assert res.exit_code == Exit.OK, res.output
    assert res.stderr.count("not 1 KiB aligned") == 2
    for path, has_vx in ((raw, True), (tmp_path / "d.s390", False)):
        a = analyse(str(path))
        try:
            assert [c.vxrs is not None for c in a.cpus().cpus] == [has_vx, has_vx], path
        finally:
            a.close()

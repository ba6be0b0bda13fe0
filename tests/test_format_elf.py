"""ElfCore: the real QEMU and /proc/vmcore files, plus small synthetic cores good and bad
(packed from the ELF64 layout by tests/fixtures/elfcore.py, not with sadump's records)."""

from __future__ import annotations

import os
import random
import re
import struct
from pathlib import Path

import pytest

from sadump.errors import AbsentMemoryError, ImageError
from sadump.formats.elf import (
    NT_PRFPREG,
    NT_PRPSINFO,
    NT_PRSTATUS,
    NT_S390_CTRS,
    NT_S390_GS_CB,
    NT_S390_PREFIX,
    NT_S390_TIMER,
    NT_S390_TODCMP,
    NT_S390_TODPREG,
    NT_S390_VXRS_HIGH,
    NT_S390_VXRS_LOW,
    PT_LOAD,
    PT_NOTE,
    STRUCTS,
    ElfCore,
    _fast,
    build_note,
    parse_notes,
    prstatus_pid,
)
from sadump.formats.memory import Note
from sadump.formats.raw import RawImage
from tests.fixtures import elfcore
from tests.fixtures.kdump import elf_note

QUIRKS = ("e_ehsize is 8", "section headers at 0x40", "section header 1 is written", "pr_pid")


# ---- helpers --------------------------------------------------------------------------
def prstatus(pid: int, order: str = "big") -> bytes:
    desc = bytearray(336)
    desc[0x20:0x24] = pid.to_bytes(4, order)
    return bytes(desc)


def load(paddr, offset, filesz, memsz=None, **kw):
    return dict(
        p_type=PT_LOAD,
        p_offset=offset,
        p_paddr=paddr,
        p_vaddr=paddr,
        p_filesz=filesz,
        p_memsz=filesz if memsz is None else memsz,
        **kw,
    )


def note_seg(offset, size):
    return {"p_type": PT_NOTE, "p_offset": offset, "p_filesz": size, "p_memsz": size}


def write_elf(path, phdrs, blobs=(), size=None, order="big", shdrs=None, **ehdr):
    """Header, program headers at e_phoff (64), blobs at their offsets, optional sections;
    packed from the ELF64 layout (tests/fixtures/elfcore.py), not with sadump's records."""
    fields = {"e_phnum": len(phdrs), **ehdr}
    if shdrs is not None:
        fields.setdefault("e_shoff", 0x800)
        fields.setdefault("e_shnum", len(shdrs))
    buf = bytearray(elfcore.ehdr(order, **fields))
    parts = [(fields.get("e_phoff", 64), b"".join(elfcore.phdr(order, **p) for p in phdrs)),
             *blobs]
    if shdrs is not None:
        parts.append((fields["e_shoff"], b"".join(elfcore.shdr(order, **s) for s in shdrs)))
    for off, data in parts:
        if len(buf) < off + len(data):
            buf.extend(bytes(off + len(data) - len(buf)))
        buf[off : off + len(data)] = data
    if size is not None:
        buf = buf[:size] + bytes(max(0, size - len(buf)))
    path.write_bytes(bytes(buf))
    return str(path)


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture
def small_core(tmp_path):
    """Notes for one CPU and 16 KiB of memory at 0x10000."""
    notes = elf_note("CORE", NT_PRSTATUS, prstatus(1)) + elf_note(
        "LINUX", NT_S390_PREFIX, b"\0\0\x20\0"
    )
    mem = pattern(0x4000, 1)
    path = write_elf(
        tmp_path / "core.elf",
        [note_seg(0x1000, len(notes)), load(0x10000, 0x2000, len(mem))],
        [(0x1000, notes), (0x2000, mem)],
    )
    return path, mem


def one_line_error(path, match):
    with pytest.raises(ImageError, match=match) as ei:
        ElfCore(path)
    assert "\n" not in str(ei.value)
    assert str(path) in str(ei.value)
    return str(ei.value)


# ---- notes ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "C", "CORE", "LINUX", "VMCOREINFO", "ABCDEFG"])
@pytest.mark.parametrize("desc_len", range(10))
def test_note_round_trip(name, desc_len):
    note = Note(name, 0x300 + desc_len, bytes(range(1, desc_len + 1)))
    raw = build_note(note)
    assert raw == elf_note(name, note.type, note.desc)  # the layout packed from the spec
    assert len(raw) % 4 == 0
    namesz, descsz, ntype = struct.unpack(">III", raw[:12])
    assert namesz == (len(name) + 1 if name else 0)
    assert (descsz, ntype) == (desc_len, note.type)
    assert parse_notes(raw + build_note(note)) == [note, note]


def test_kernel_note_layout():
    # spec 5.2: n_namesz includes the NUL, name and desc padded to 4
    raw = build_note(Note("CORE", NT_PRSTATUS, prstatus(1)))
    assert raw[:12] == struct.pack(">III", 5, 336, 1)
    assert raw[12:20] == b"CORE\0\0\0\0"
    assert len(raw) == 12 + 8 + 336
    vmci = build_note(Note("VMCOREINFO", 0, b"ABCDE"))
    assert vmci[:12] == struct.pack(">III", 11, 5, 0)
    assert vmci[12:24] == b"VMCOREINFO\0\0"
    assert vmci[24:] == b"ABCDE\0\0\0"


def test_terminating_note():
    assert build_note(Note("", 0, b"")) == bytes(12)
    raw = elf_note("CORE", 1, b"x") + bytes(12) + elf_note("LINUX", 2, b"y")
    assert parse_notes(raw) == [Note("CORE", 1, b"x")]  # nothing after the empty note


def test_little_endian_notes():
    note = Note("CORE", NT_PRSTATUS, b"abcd")
    raw = build_note(note, "little")
    spec = elf_note("CORE", NT_PRSTATUS, b"abcd", "little")
    assert raw == spec and raw[:12] == struct.pack("<III", 5, 4, 1)
    assert parse_notes(spec, "little") == [note]


@pytest.mark.parametrize("namesz,descsz", [(5, 0xFFFFFFFF), (0xFFFFFFFF, 4), (5, 400)])
def test_note_running_past_buffer(namesz, descsz):
    good = elf_note("CORE", 1, b"1234")
    bad = struct.pack(">III", namesz, descsz, 1) + b"CORE\0\0\0\0" + bytes(16)
    with pytest.raises(ImageError, match="run past the end"):
        parse_notes(good + bad)
    warnings: list[str] = []
    assert parse_notes(good + bad, warnings=warnings) == [Note("CORE", 1, b"1234")]
    assert len(warnings) == 1 and "note 1" in warnings[0]


def test_too_many_notes():
    raw = elf_note("X", 1, b"") * 10
    assert len(parse_notes(raw, max_notes=10)) == 10
    with pytest.raises(ImageError, match="more than 9 notes"):
        parse_notes(raw, max_notes=9)


def test_prstatus_pid():
    assert prstatus_pid(prstatus(1)) == (1, False)
    assert prstatus_pid(prstatus(1, "little")) == (1, True)
    assert prstatus_pid(prstatus(300, "little")) == (300, True)
    assert prstatus_pid(prstatus(0x12345678)) == (0x12345678, False)  # swap not small
    assert prstatus_pid(prstatus(0)) == (0, False)
    with pytest.raises(ImageError):
        prstatus_pid(bytes(0x22))


@pytest.mark.parametrize("order", ["big", "little"])
def test_fast_phdr_matches_construct(order):
    """The struct.Struct used for the program header table is the construct record's layout."""
    fields = {"p_type": 1, "p_flags": 7, "p_offset": 0x1122334455667788, "p_vaddr": 2}
    fields |= {"p_paddr": 3, "p_filesz": 4, "p_memsz": 5, "p_align": 0x1000}
    unpack, record = _fast(order, 1)
    raw = STRUCTS[order][1].build(fields)
    assert raw == elfcore.phdr(order, **fields)  # the ELF64 layout, packed independently
    assert unpack.size == len(raw) == 56
    assert record._make(unpack.unpack(raw))._asdict() == fields


# ---- real files -------------------------------------------------------------------------
def test_structs_match_pyelftools(real_file):
    from elftools.elf.elffile import ELFFile  # a dependency: missing is a failure

    path = real_file("rimg-kdump.proc-vmcore.elf")
    with open(path, "rb") as f:
        ref = ELFFile(f)
        ref_hdr = dict(ref.header)
        ref_phdrs = [dict(seg.header) for seg in ref.iter_segments()]
    with ElfCore(str(path)) as core:
        for key in ("e_phoff", "e_shoff", "e_ehsize", "e_phentsize", "e_phnum", "e_entry"):
            assert core.ehdr[key] == ref_hdr[key]
        assert core.ehdr.e_machine == 22 and ref_hdr["e_machine"] == "EM_S390"
        assert len(core.phdrs) == len(ref_phdrs)
        for mine, theirs in zip(core.phdrs, ref_phdrs, strict=True):
            for key in ("p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align"):
                assert getattr(mine, key) == theirs[key]


def test_qemu_elf_quirks_and_notes(real_file):
    with ElfCore(str(real_file("rimg-kdump.qemu.elf"))) as core:
        assert core.byteorder == "big"
        for quirk in QUIRKS:
            assert any(quirk in w and w.startswith("QEMU quirk") for w in core.warnings), quirk
        assert core.ranges() == [(0, 1 << 30)]  # -m 1024
        assert core.ehdr.e_ehsize == 8 and core.ehdr.e_phoff == 0xC0
        assert core.shdrs[1].sh_type == 3  # read little-endian: SHT_STRTAB
        # real-images.md: per CPU PRSTATUS, FPREGSET, PREFIX, CTRS, TIMER, TODCMP, TODPREG,
        # VXRS_LOW, VXRS_HIGH, GS_CB; no VMCOREINFO; -smp 2
        per_cpu = [NT_PRSTATUS, NT_PRFPREG, NT_S390_PREFIX, NT_S390_CTRS, NT_S390_TIMER,
                   NT_S390_TODCMP, NT_S390_TODPREG, NT_S390_VXRS_LOW, NT_S390_VXRS_HIGH,
                   NT_S390_GS_CB]  # fmt: skip
        assert [n.type for n in core.notes] == per_cpu * 2
        assert all(n.name != "VMCOREINFO" for n in core.notes)
        pids = [prstatus_pid(n.desc) for n in core.notes if n.type == NT_PRSTATUS]
        assert all(little for _, little in pids)
        assert sorted(pid for pid, _ in pids) == [1, 2]
        # the notes are left as the file has them: pr_pid still reads little-endian
        first_pid = core.notes[0].desc[0x20:0x24]
        assert first_pid in ((1).to_bytes(4, "little"), (2).to_bytes(4, "little"))


def test_qemu_elf_memory_equals_raw(real_file):
    """real-images.md: QEMU's ELF memory equals the pmemsave raw image byte for byte."""
    rng = random.Random(7)
    pages = [0, 0x409000] + [rng.randrange(1 << 18) << 12 for _ in range(400)]
    with ElfCore(str(real_file("rimg-kdump.qemu.elf"))) as core:
        with RawImage(str(real_file("rimg-kdump.raw"))) as raw:
            assert core.read(0x409000, 8) == b"OSINFOSZ"
            for paddr in pages:
                assert core.read(paddr, 4096) == raw.read(paddr, 4096), hex(paddr)
            # a read across many pages, not page aligned
            assert core.read(0x3FF123, 0x20000) == raw.read(0x3FF123, 0x20000)
        exts = list(core.extents(0, 1 << 30))  # split at the sparse file's holes
        assert_tiles(exts, 0, 1 << 30)
        [ext] = [e for e in exts if e.paddr <= 0x409000 < e.paddr + e.size]
        assert ext.kind == "file"
        at = ext.file_offset + 0x409000 - ext.paddr
        assert os.pread(ext.fileno, 4096, at) == core.read(0x409000, 4096)


def test_proc_vmcore(real_file, real_text):
    with ElfCore(str(real_file("rimg-kdump.proc-vmcore.elf"))) as core:
        assert core.warnings == []
        assert [p.p_type for p in core.phdrs] == [PT_NOTE, PT_LOAD]
        assert core.ranges() == [(0, 0x38000000)]  # the crashkernel is left out
        per_cpu = [NT_PRSTATUS, NT_PRFPREG, NT_S390_TIMER, NT_S390_TODCMP, NT_S390_TODPREG,
                   NT_S390_CTRS, NT_S390_PREFIX, NT_S390_VXRS_HIGH, NT_S390_VXRS_LOW]  # fmt: skip
        assert [n.type for n in core.notes] == [NT_PRPSINFO, *per_cpu, *per_cpu, 0]
        names = {n.type: n.name for n in core.notes}
        assert names[NT_PRSTATUS] == names[NT_PRFPREG] == names[NT_PRPSINFO] == "CORE"
        assert names[NT_S390_TIMER] == names[NT_S390_VXRS_LOW] == "LINUX"
        vmci = core.notes[-1]
        assert vmci.name == "VMCOREINFO"
        text = vmci.desc.decode()
        assert "OSRELEASE=6.1.192-rimg\n" in text
        assert "BUILD-ID=60cfc241eb1c3e39b6c63ac1500450e96b8ad7e9\n" in text
        # the guest's /sys/kernel/vmcoreinfo text, plus the CRASHTIME line the kdump kernel adds
        guest = real_text("rimg-kdump.vmcoreinfo.txt")
        assert text.startswith(guest)
        assert re.fullmatch(r"CRASHTIME=\d+\n", text[len(guest) :])
        pids = [prstatus_pid(n.desc) for n in core.notes if n.type == NT_PRSTATUS]
        assert pids == [(1, False), (2, False)]  # spec 5.2: pr_pid 1, 2, ... big-endian
        assert core.read(0x409000, 8) == b"OSINFOSZ"
        with pytest.raises(AbsentMemoryError):
            core.read(0x38000000, 8)
        exts = list(core.extents(0, 0x38000000))
        assert_tiles(exts, 0, 0x38000000)
        assert exts[0].kind == "file" and exts[0].file_offset == core.phdrs[1].p_offset


def assert_tiles(exts, start: int, end: int) -> None:
    """Extents cover [start, end) in order, without gaps; file holes may be "zero" ones."""
    pos = start
    for e in exts:
        assert e.paddr == pos and e.size > 0 and e.kind in ("file", "zero")
        pos += e.size
    assert pos == end


# ---- synthetic good cores ---------------------------------------------------------------
def test_small_core(small_core):
    path, mem = small_core
    with ElfCore(path) as core:
        assert core.warnings == []
        assert core.ranges() == [(0x10000, 0x14000)]
        assert core.read(0x10000, len(mem)) == mem
        assert core.read(0x12345, 7) == mem[0x2345 : 0x2345 + 7]
        assert core.notes == [
            Note("CORE", NT_PRSTATUS, prstatus(1)),
            Note("LINUX", NT_S390_PREFIX, b"\0\0\x20\0"),
        ]
        with pytest.raises(AbsentMemoryError):
            core.read(0xFFFF, 2)
        with pytest.raises(AbsentMemoryError):
            core.read(0x13FFF, 2)


def test_overlapping_loads_kernel_image_twice(tmp_path):
    """6.10+: the kernel image PT_LOAD first, then identity PT_LOADs covering it again."""
    mem = pattern(0x6000, 2)
    path = write_elf(
        tmp_path / "c.elf",
        [
            load(0x1000, 0x8000, 0x2000),  # image: [0x1000, 0x3000), same bytes
            load(0, 0x2000, 0x4000),  # identity [0, 0x4000)
            load(0x3000, 0x9000, 0x3000),  # overlaps the identity tail, extends to 0x6000
        ],
        [(0x2000, mem[:0x4000]), (0x8000, mem[0x1000:0x3000]), (0x9000, mem[0x3000:0x6000])],
    )
    with ElfCore(path) as core:
        assert core.ranges() == [(0, 0x6000)]
        assert core.read(0, 0x6000) == mem
        exts = list(core.extents(0, 0x6000))
        assert all(e.kind == "file" for e in exts)
        assert [(e.paddr, e.size) for e in exts] == [(0, 0x4000), (0x4000, 0x2000)]
        for e in exts:
            assert os.pread(e.fileno, e.size, e.file_offset) == mem[e.paddr : e.paddr + e.size]


def test_zero_tail_and_extents(tmp_path):
    mem = pattern(0x2000, 3)
    path = write_elf(
        tmp_path / "c.elf",
        [load(0, 0x1000, 0x1000, 0x3000), load(0x2000, 0x2000, 0x1000)],
        [(0x1000, mem[:0x1000]), (0x2000, mem[0x1000:])],
    )
    with ElfCore(path) as core:
        assert core.ranges() == [(0, 0x3000)]
        assert core.read(0, 0x3000) == mem[:0x1000] + bytes(0x1000) + mem[0x1000:]
        got = [(e.paddr, e.size, e.kind) for e in core.extents(0, 0x3000)]
        assert got == [(0, 0x1000, "file"), (0x1000, 0x1000, "zero"), (0x2000, 0x1000, "file")]
        assert [(e.paddr, e.size) for e in core.extents(0x800, 0x2800)] == [
            (0x800, 0x800), (0x1000, 0x1000), (0x2000, 0x800)
        ]  # fmt: skip


def test_unsorted_segments_with_gap(tmp_path):
    a, b = pattern(0x1000, 4), pattern(0x1000, 5)
    path = write_elf(
        tmp_path / "c.elf",
        [
            load(0x100000, 0x2000, 0x1000),
            load(0x1000, 0x1000, 0x1000),
            load(0x2000, 0x2000, 0x1000),
        ],
        [(0x1000, a), (0x2000, b)],
    )
    with ElfCore(path) as core:
        assert core.ranges() == [(0x1000, 0x3000), (0x100000, 0x101000)]
        assert core.read(0x1800, 0x1000) == a[0x800:] + b[:0x800]  # across two segments
        assert core.read(0x100000, 0x1000) == b
        with pytest.raises(AbsentMemoryError):
            core.read(0x2800, 0x1000)


def test_little_endian_core(tmp_path):
    mem = pattern(0x1000, 6)
    notes = elf_note("CORE", NT_PRSTATUS, prstatus(1, "little"), "little")
    path = write_elf(
        tmp_path / "le.elf",
        [note_seg(0x800, len(notes)), load(0x5000, 0x1000, 0x1000)],
        [(0x800, notes), (0x1000, mem)],
        order="little",
        e_machine=62,
    )
    with ElfCore(path) as core:
        assert core.byteorder == "little"
        assert core.read(0x5000, 0x1000) == mem
        assert core.notes == [Note("CORE", NT_PRSTATUS, prstatus(1, "little"))]
        assert not any("pr_pid" in w for w in core.warnings)
        assert any("e_machine is 62" in w for w in core.warnings)


def test_pn_xnum(tmp_path):
    mem = pattern(0x1000, 8)
    path = write_elf(
        tmp_path / "x.elf",
        [load(0, 0x1000, 0x1000), load(0x1000, 0x1000, 0x1000)],
        [(0x1000, mem)],
        shdrs=[{"sh_info": 2}],
        e_phnum=0xFFFF,
        e_shnum=0,
    )
    with ElfCore(path) as core:
        assert len(core.phdrs) == 2
        assert core.ranges() == [(0, 0x2000)]
        assert core.warnings == []


def test_no_physical_address_and_no_loads(tmp_path):
    path = write_elf(tmp_path / "n.elf", [load((1 << 64) - 1, 0x1000, 0x1000)], size=0x2000)
    with ElfCore(path) as core:
        assert core.ranges() == []
        assert any("p_paddr -1" in w for w in core.warnings)
        assert any("no PT_LOAD" in w for w in core.warnings)


def test_bad_note_inside_segment_is_a_warning(tmp_path):
    notes = elf_note("CORE", 1, prstatus(1)) + struct.pack(">III", 5, 9999, 1)
    path = write_elf(
        tmp_path / "c.elf",
        [note_seg(0x800, len(notes) + 8), load(0, 0x1000, 0x1000)],
        [(0x800, notes), (0x1000, bytes(0x1000))],
    )
    with ElfCore(path) as core:
        assert core.notes == [Note("CORE", 1, prstatus(1))]
        assert any("note segment 0" in w and "run past" in w for w in core.warnings)
        assert core.read(0, 16) == bytes(16)


# ---- synthetic bad cores ----------------------------------------------------------------
def test_short_file(tmp_path):
    p = tmp_path / "s.elf"
    p.write_bytes(b"\x7fELF\x02\x02\x01" + bytes(20))
    one_line_error(p, "too short")


@pytest.mark.parametrize(
    "patch,match",
    [
        ({4: 1}, "ELFCLASS64"),  # ELFCLASS32
        ({5: 3}, "neither little- nor big-endian"),
        ({17: 2}, "e_type is 2"),  # ET_EXEC
    ],
)
def test_bad_ident(small_core, tmp_path, patch, match):
    data = bytearray(Path(small_core[0]).read_bytes())
    for off, val in patch.items():
        data[off] = val
    p = tmp_path / "bad.elf"
    p.write_bytes(bytes(data))
    one_line_error(p, match)


def test_program_headers_beyond_eof(tmp_path):
    path = write_elf(tmp_path / "b.elf", [load(0, 0x1000, 0x1000)], size=0x2000, e_phoff=0x10000)
    one_line_error(path, r"program headers \[0x10000, 0x10038\) lie beyond the end")


def test_phnum_absurd(tmp_path):
    path = write_elf(tmp_path / "b.elf", [load(0, 0x1000, 0x1000)], size=0x2000, e_phnum=60000)
    one_line_error(path, "lie beyond the end of the file")
    path = write_elf(
        tmp_path / "x.elf", [], size=0x2000, shdrs=[{"sh_info": 0xFFFFFFFF}], e_phnum=0xFFFF
    )
    one_line_error(path, "4294967295 program headers is more than sadump accepts")
    path = write_elf(tmp_path / "y.elf", [], size=0x2000, e_phnum=0xFFFF)
    one_line_error(path, "PN_XNUM")


def test_phentsize_wrong(tmp_path):
    path = write_elf(tmp_path / "b.elf", [load(0, 0x1000, 0x1000)], size=0x2000, e_phentsize=32)
    one_line_error(path, "e_phentsize is 32, expected 56")


def test_phoff_inside_header(small_core, tmp_path):
    data = bytearray(Path(small_core[0]).read_bytes())
    data[0x20:0x28] = (8).to_bytes(8, "big")  # e_phoff
    p = tmp_path / "b.elf"
    p.write_bytes(bytes(data))
    one_line_error(p, "overlap the ELF header")


def test_load_past_eof(tmp_path):
    path = write_elf(
        tmp_path / "b.elf", [load(0, 0x1000, 0x1000), load(0x1000, 0x2000, 0x3000)], size=0x3000
    )
    one_line_error(
        path,
        "image is shorter than its header claims: segment 1 needs 20480 bytes, file has 12288",
    )


def test_filesz_over_memsz(tmp_path):
    path = write_elf(tmp_path / "b.elf", [load(0, 0x1000, 0x1000, 0x800)], size=0x2000)
    one_line_error(path, "segment 0: p_filesz 0x1000 is larger than p_memsz 0x800")


def test_address_overflow(tmp_path):
    path = write_elf(tmp_path / "b.elf", [load((1 << 64) - 0x1000, 0x1000, 0x1000, 0x2000)],
                     size=0x2000)  # fmt: skip
    one_line_error(path, "64-bit address space")


def test_note_segment_past_eof(tmp_path):
    path = write_elf(tmp_path / "b.elf", [note_seg(0x1000, 0x5000)], size=0x2000)
    one_line_error(path, r"note segment 0 \[0x1000, 0x6000\) runs past the end")


def test_note_segment_too_big(tmp_path):
    path = write_elf(tmp_path / "b.elf", [note_seg(0x1000, 32 << 20)], size=0x1000)
    with open(path, "r+b") as f:
        f.truncate(40 << 20)  # sparse: the size check, not the read, must stop it
    one_line_error(path, "more than sadump reads")


def test_note_segments_too_big_together(tmp_path):
    path = write_elf(tmp_path / "b.elf", [note_seg(0x1000, 12 << 20)] * 2, size=0x1000)
    with open(path, "r+b") as f:
        f.truncate(14 << 20)
    one_line_error(path, "note segment 1: the notes reach")


def test_mutated_headers_never_crash(small_core, tmp_path):
    """Random byte flips in the headers give a core or one ImageError, nothing else."""
    good = Path(small_core[0]).read_bytes()
    rng = random.Random(11)
    p = tmp_path / "m.elf"
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(4, 0x100)] = rng.randrange(256)
        p.write_bytes(bytes(data))
        try:
            core = ElfCore(str(p))
        except ImageError as e:
            assert "\n" not in str(e)
            continue
        with core:
            for start, end in core.ranges()[:4]:
                core.read(start, min(end - start, 4096))
                list(core.extents(start, min(end, start + (1 << 20))))

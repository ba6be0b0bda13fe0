"""Tests of the synthetic image builder itself, checked against the spec, not against sadump."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
from pathlib import Path

import pytest
import zstandard
from elftools.elf.elffile import ELFFile

from sadump.checksum import cksm
from tests.fixtures import decompress_zst_sparse
from tests.fixtures.builder import (
    DAMAGES,
    Cpu,
    ImageSpec,
    MiB,
    sample_spec,
    write_elf,
    write_raw,
    write_s390,
    write_sample,
)

OSINFOSZ = b"OSINFOSZ"
OS = 0x9000  # the builder's default os_info address (ImageSpec.os_info_addr)
ROOT = Path(__file__).resolve().parents[1]


def u64(spec: ImageSpec, addr: int) -> int:
    return struct.unpack(">Q", spec.expected(addr, 8))[0]


def os_info(spec: ImageSpec, old_addr: int | None = None) -> dict:
    """Decode os_info by the spec 2.2 offsets, found through lowcore 0xE18."""
    addr = spec.where(u64(spec, spec.where(0xE18))) if old_addr is None else old_addr
    page = spec.expected(addr, 4096)
    magic, csum, major, minor, ck_addr, ck_size = struct.unpack(">8sIHHQQ", page[:0x20])
    entries = [struct.unpack(">QQI", page[0x20 + 20 * n : 0x34 + 20 * n]) for n in range(13)]
    return {
        "magic": magic,
        "csum": csum,
        "csum_ok": csum == cksm(page[0xC:]),
        "version": (major, minor),
        "crashkernel": (ck_addr, ck_size),
        "entries": entries,
    }


def vmcoreinfo(spec: ImageSpec, where=lambda a: a) -> tuple[tuple[int, int, int], str, bytes]:
    """(namesz, descsz, type), desc text and name of the note lowcore 0xE0C points to."""
    note = where(u64(spec, where(0xE0C)))
    namesz, descsz, type_ = struct.unpack(">III", spec.expected(note, 12))
    name = spec.expected(note + 12, 12)
    return (namesz, descsz, type_), spec.expected(note + 24, descsz).decode(), name


def lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


# -- os_info checksum: the worked examples of spec 2.5 and real-images ---------------------------


@pytest.mark.parametrize(
    ("mem_size", "crashkernel", "csum"),
    [
        (64 * MiB, None, 0x00010001),  # spec 2.5: fresh v1.1, all else zero
        (512 * MiB, (0x10000000, 0x10000000), 0x20010001),  # spec 2.5
        (1024 * MiB, (0x38000000, 0x8000000), 0x40010001),  # real-images: 6.1 with crashkernel
        (2048 * MiB, (0x70000000, 0x10000000), 0x80010001),  # real-images
    ],
)
def test_os_info_checksum_worked_examples(mem_size, crashkernel, csum):
    spec = ImageSpec(mem_size=mem_size, crashkernel=crashkernel)
    info = os_info(spec)
    assert info["magic"] == OSINFOSZ
    assert info["version"] == (1, 1)
    assert info["crashkernel"] == (crashkernel or (0, 0))
    assert info["csum"] == csum
    assert all(e == (0, 0, 0) for e in info["entries"])


def test_default_crashkernel_is_upper_16_mib_and_os_info_at_0x9000():
    spec = ImageSpec()
    assert u64(spec, 0xE18) == OS
    assert os_info(spec)["crashkernel"] == (48 * MiB, 16 * MiB)
    assert ImageSpec(mem_size=4 * MiB).crash == (2 * MiB, 2 * MiB)


# -- damage --------------------------------------------------------------------------------------

BRIEF_DAMAGES = [
    "zero_pointer",
    "unaligned_pointer",
    "pointer_past_end",
    "pointer_into_hole",
    "bad_magic",
    "checksum_off_by_one_bit",
    "version_2",
    "no_crashkernel",
    "entry_size_huge",
    "entry_addr_outside",
    "vmcoreinfo_huge_descsz",
    "vmcoreinfo_bad_name",
    "no_kdump_kernel",
    "entry_checksum_wrong",
    "truncated",
]

B, S = 48 * MiB, 16 * MiB
NOTE = 0x16000  # builder.VMCOREINFO_NOTE; checked below through lowcore 0xE0C


def damage_base() -> ImageSpec:
    """One healthy spec that every damage applies to: a range gap, entry 0, kexec segments."""
    return ImageSpec(ranges=[(0, 32 * MiB), (40 * MiB, 64 * MiB)], entries={0}, kexec_segments=True)


ALLOWED = {  # damage -> the byte ranges it may change
    "zero_pointer": [(0xE18, 0xE20)],
    "unaligned_pointer": [(0xE18, 0xE20)],
    "pointer_past_end": [(0xE18, 0xE20)],
    "pointer_into_hole": [(0xE18, 0xE20)],
    "bad_magic": [(OS, OS + 8)],
    "checksum_off_by_one_bit": [(OS + 8, OS + 12)],
    "version_2": [(OS + 8, OS + 12), (OS + 12, OS + 14)],
    "no_crashkernel": [(OS + 8, OS + 12), (OS + 0x10, OS + 0x20)],
    "entry_size_huge": [(OS + 8, OS + 12), (OS + 0x28, OS + 0x30)],
    "entry_addr_outside": [(OS + 8, OS + 12), (OS + 0x20, OS + 0x28)],
    "entry_checksum_wrong": [(OS + 8, OS + 12), (OS + 0x30, OS + 0x34)],
    "vmcoreinfo_huge_descsz": [(NOTE + 4, NOTE + 8)],
    "vmcoreinfo_bad_name": [(NOTE + 12, NOTE + 22)],
    "no_kdump_kernel": [(B, B + S)],
    "kdump_kernel_corrupt": [(B + 0x10000, B + 0x14000)],
    "truncated": [],
}


def check_damage(name: str, spec: ImageSpec) -> None:
    info = os_info(spec, OS)
    pointer = u64(spec, 0xE18)
    if name == "zero_pointer":
        assert pointer == 0
    elif name == "unaligned_pointer":
        assert pointer % 4096 and OS < pointer < OS + 4096
    elif name == "pointer_past_end":
        assert pointer >= spec.mem_size and pointer % 4096 == 0
    elif name == "pointer_into_hole":
        assert 32 * MiB <= pointer < 40 * MiB
    elif name == "bad_magic":
        assert info["magic"] != OSINFOSZ and info["csum_ok"]
    elif name == "checksum_off_by_one_bit":
        good = cksm(spec.expected(OS + 0xC, 4096 - 0xC))
        assert (info["csum"] ^ good).bit_count() == 1
    elif name == "version_2":
        assert info["version"][0] == 2 and info["csum_ok"]
    elif name == "no_crashkernel":
        assert info["crashkernel"] == (0, 0) and info["csum_ok"]
    elif name == "entry_size_huge":
        assert info["entries"][0][1] == 2**64 - 1 and info["csum_ok"]
    elif name == "entry_addr_outside":
        assert info["entries"][0][0] >= spec.mem_size and info["csum_ok"]
    elif name == "entry_checksum_wrong":
        addr, size, csum = info["entries"][0]
        assert csum != cksm(spec.expected(addr, size)) and info["csum_ok"]
    elif name == "vmcoreinfo_huge_descsz":
        assert spec.expected(NOTE + 4, 4) == b"\xff\xff\xff\xff"
    elif name == "vmcoreinfo_bad_name":
        assert spec.expected(NOTE + 12, 11) != b"VMCOREINFO\0"
    elif name == "no_kdump_kernel":
        assert info["crashkernel"] == (B, S)
        assert spec.expected(B + 0x10008, 6) != b"S390EP"
    elif name == "kdump_kernel_corrupt":
        image = spec.build()
        data = b"".join(spec.expected(a, n) for a, n in image.kexec_segments)
        assert hashlib.sha256(data).digest() != image.kexec_digest


def test_damage_names_cover_the_brief_and_are_documented():
    assert set(BRIEF_DAMAGES) <= set(DAMAGES)
    assert set(ALLOWED) == set(DAMAGES)
    assert all(DAMAGES[name].strip() for name in DAMAGES)


def test_healthy_base_passes_every_damage_check_negatively():
    spec = damage_base()
    info = os_info(spec)
    assert info["csum_ok"] and info["magic"] == OSINFOSZ and info["version"] == (1, 1)
    addr, size, csum = info["entries"][0]
    assert csum == cksm(spec.expected(addr, size))
    assert u64(spec, 0xE0C) == NOTE
    assert vmcoreinfo(spec)[2] == b"VMCOREINFO\0\0"


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_each_damage_changes_exactly_what_it_names(name):
    healthy = damage_base()
    damaged = damage_base()
    damaged.damage = {name}
    changed = damaged.build().memory.changed(healthy.build().memory)
    allowed = ALLOWED[name]
    for start, end in changed:
        assert any(a <= start and end <= b for a, b in allowed), (name, hex(start), hex(end))
    if name == "truncated":
        assert changed == []  # only the writers cut the file
    else:
        assert changed
        check_damage(name, damaged)
    if name == "kdump_kernel_corrupt":
        assert sum(e - s for s, e in changed) == 1


def test_unknown_or_impossible_damage_is_refused():
    with pytest.raises(ValueError, match="unknown damage"):
        ImageSpec(damage={"nonsense"}).build()
    with pytest.raises(ValueError, match="gap"):
        ImageSpec(damage={"pointer_into_hole"}).build()


# -- writers ------------------------------------------------------------------------------------


def gap_spec() -> ImageSpec:
    return ImageSpec(
        ranges=[(0, 32 * MiB), (40 * MiB, 64 * MiB)], kexec_segments=True, entries={0, 1, 2}
    )


def probe_addresses(spec: ImageSpec) -> list[tuple[int, int]]:
    """Every non-zero run of the image plus zero spots at range edges."""
    runs = [(a, len(d)) for a, d in spec.build().memory.runs()]
    edges = [(s, 64) for s, _ in spec.present] + [(e - 64, 64) for _, e in spec.present]
    return runs + edges


def elf_read(elf: ELFFile, paddr: int, size: int) -> bytes:
    for seg in elf.iter_segments():
        h = seg.header
        if h.p_type == "PT_LOAD" and h.p_paddr <= paddr and paddr + size <= h.p_paddr + h.p_filesz:
            elf.stream.seek(h.p_offset + paddr - h.p_paddr)
            return elf.stream.read(size)
    raise AssertionError(f"{paddr:#x} not in a PT_LOAD")


def test_raw_elf_s390_hold_the_same_bytes(tmp_path):
    spec = gap_spec()
    raw = write_raw(spec, tmp_path / "m.raw")
    notes = [("CORE", 1, b"\x01" * 336), ("VMCOREINFO", 0, b"OSRELEASE=x\n")]
    elf_path = write_elf(spec, tmp_path / "m.elf", notes=notes)
    s390 = write_s390(spec, tmp_path / "m.s390")
    probes = probe_addresses(spec)
    assert len(probes) > 10
    with open(raw, "rb") as r, open(elf_path, "rb") as e, open(s390, "rb") as s:
        elf = ELFFile(e)
        for addr, size in probes:
            want = spec.expected(addr, size)
            r.seek(addr)
            assert r.read(size) == want, hex(addr)
            s.seek(0x1000 + addr)
            assert s.read(size) == want, hex(addr)
            assert elf_read(elf, addr, size) == want, hex(addr)
    assert os.path.getsize(raw) == 64 * MiB


def test_elf_layout(tmp_path):
    spec = gap_spec()
    notes = [("CORE", 1, b"\x01" * 336), ("VMCOREINFO", 0, b"OSRELEASE=x\n")]
    with open(write_elf(spec, tmp_path / "m.elf", notes=notes), "rb") as f:
        elf = ELFFile(f)
        assert elf.header.e_type == "ET_CORE" and elf.header.e_machine == "EM_S390"
        assert not elf.little_endian and elf.elfclass == 64
        segs = [s.header for s in elf.iter_segments()]
        assert segs[0].p_type == "PT_NOTE"
        loads = [(h.p_paddr, h.p_paddr + h.p_memsz) for h in segs[1:]]
        assert loads == spec.present
        assert all(h.p_vaddr == h.p_paddr and h.p_offset % 4096 == 0 for h in segs[1:])
        got = [(n.n_name, n.n_type, n.n_desc) for n in elf.get_segment(0).iter_notes()]
        assert got[0][0] == "CORE" and got[0][1] == "NT_PRSTATUS"
        assert got[1][0] == "VMCOREINFO" and got[1][2] == b"OSRELEASE=x\n"


def test_s390_header_and_end_marker(tmp_path):
    spec = ImageSpec()
    data = write_s390(spec, tmp_path / "m.s390").read_bytes()
    magic, version, hdr_size = struct.unpack(">QII", data[:16])
    assert (magic, version, hdr_size) == (0xA8190173618F23FD, 5, 0x1000)
    mem_size, mem_start, mem_end = struct.unpack(">QQQ", data[0x18:0x30])
    assert (mem_size, mem_start, mem_end) == (64 * MiB, 0, 64 * MiB - 1)
    tod = struct.unpack(">Q", data[0x38:0x40])[0]
    cpu_cnt = struct.unpack(">H", data[0x5D:0x5F])[0]
    prefixes = struct.unpack(f">{cpu_cnt}I", data[0x800 : 0x800 + 4 * cpu_cnt])
    assert list(prefixes) == [c.prefix for c in spec.cpus]
    assert len(data) == 0x1000 + mem_size + 16
    end = data[0x1000 + mem_size :]
    assert end[:8] == b"DUMP_END" and struct.unpack(">Q", end[8:])[0] >= tod
    assert (tod - 0x7D91048BCA000000) >> 12 == 1714564800 * 10**6  # 2024-05-01 12:00 UTC


def test_sparse_files_use_little_disk(tmp_path):
    spec = ImageSpec(mem_size=1024 * MiB)
    for path in [
        write_raw(spec, tmp_path / "m.raw"),
        write_elf(spec, tmp_path / "m.elf"),
        write_s390(spec, tmp_path / "m.s390"),
    ]:
        st = os.stat(path)
        assert st.st_size >= 1024 * MiB
        assert st.st_blocks * 512 < 4 * MiB, path.name


def test_truncated_cuts_every_writer_in_the_middle(tmp_path):
    full, cut = ImageSpec(), ImageSpec(damage={"truncated"})
    assert os.path.getsize(write_raw(cut, tmp_path / "c.raw")) == 32 * MiB
    full_elf = os.path.getsize(write_elf(full, tmp_path / "f.elf"))
    assert 30 * MiB < os.path.getsize(write_elf(cut, tmp_path / "c.elf")) < full_elf - 30 * MiB
    data = write_s390(cut, tmp_path / "c.s390").read_bytes()
    assert len(data) == 0x1000 + 32 * MiB and b"DUMP_END" not in data[-16:]


# -- CPUs ---------------------------------------------------------------------------------------


def test_cpu_save_areas_by_spec_offsets():
    cpus = [Cpu.distinct(0), Cpu.distinct(1), Cpu.distinct(2)]
    spec = ImageSpec(cpus=cpus)
    for cpu in cpus:
        p = cpu.prefix
        assert p % 0x2000 == 0
        assert struct.unpack(">16Q", spec.expected(p + 0x1200, 128)) == tuple(cpu.fprs)
        assert struct.unpack(">16Q", spec.expected(p + 0x1280, 128)) == tuple(cpu.gprs)
        assert struct.unpack(">QQ", spec.expected(p + 0x1300, 16)) == cpu.psw
        assert struct.unpack(">I", spec.expected(p + 0x1318, 4))[0] == p
        assert struct.unpack(">I", spec.expected(p + 0x131C, 4))[0] == cpu.fpc
        assert struct.unpack(">I", spec.expected(p + 0x1324, 4))[0] == cpu.todpreg
        assert struct.unpack(">QQ", spec.expected(p + 0x1328, 16)) == (cpu.timer, cpu.todcmp)
        assert struct.unpack(">16I", spec.expected(p + 0x1340, 64)) == tuple(cpu.acrs)
        assert struct.unpack(">16Q", spec.expected(p + 0x1380, 128)) == tuple(cpu.ctrs)
        vx = u64(spec, p + 0x11B0)
        assert vx and vx % 1024 == 0
        assert spec.expected(vx, 512) == b"".join(cpu.vx)
        assert spec.expected(vx, 8) == cpu.fprs[0].to_bytes(8, "big")  # VR0 high = FPR0
    # the boot CPU's save area is also at absolute 0x1200
    assert spec.expected(0x1200, 512) == spec.expected(cpus[0].prefix + 0x1200, 512)


def test_distinct_cpus_differ_everywhere():
    a, b = Cpu.distinct(0), Cpu.distinct(1)
    values = a.gprs + a.fprs + a.ctrs + [a.timer, a.todcmp]
    assert len(set(values)) == len(values) and 0 not in values
    assert not set(values) & set(b.gprs + b.fprs + b.ctrs + [b.timer, b.todcmp])
    assert a.prefix != b.prefix and a.psw != b.psw and a.vx != b.vx
    assert len(a.vx) == 32 and all(len(v) == 16 for v in a.vx)


def test_cpu_without_stored_status_has_a_zero_save_area():
    spec = ImageSpec(cpus=[Cpu.distinct(0), Cpu()])
    lowcore = spec.build().lowcores[1]
    assert lowcore % 0x2000 == 0 and lowcore != spec.cpus[0].prefix
    assert spec.expected(lowcore + 0x1200, 512) == bytes(512)
    text = vmcoreinfo(spec)[1]
    array = int(lines(text)["SYMBOL(lowcore_ptr)"], 16)
    assert u64(spec, array + 8) == lowcore


# -- VMCOREINFO, lowcore_ptr, entries, IPIB ------------------------------------------------------


def test_vmcoreinfo_note_and_lowcore_ptr():
    spec = ImageSpec(crashtime=1714564800)
    (namesz, descsz, type_), text, name = vmcoreinfo(spec)
    assert (namesz, type_, name) == (11, 0, b"VMCOREINFO\0\0")
    assert descsz == len(text) and text.endswith("CRASHTIME=1714564800\n")
    keys = lines(text)
    assert keys["OSRELEASE"] == "6.1.0-synthetic" and keys["PAGESIZE"] == "4096"
    assert keys["KERNELOFFSET"] == "0" and "SYMBOL(swapper_pg_dir)" in keys
    n = int(keys["LENGTH(lowcore_ptr)"])
    array = int(keys["SYMBOL(lowcore_ptr)"], 16)
    ptrs = struct.unpack(f">{n}Q", spec.expected(array, 8 * n))
    assert list(ptrs[:2]) == [c.prefix for c in spec.cpus] and not any(ptrs[2:])
    uts = int(keys["SYMBOL(init_uts_ns)"], 16)
    assert spec.expected(uts + 130, 65).rstrip(b"\0") == b"6.1.0-synthetic"


def test_data_entries_and_ipib():
    spec = ImageSpec(entries={0, 1, 2})
    info = os_info(spec)
    assert info["csum_ok"]
    text = vmcoreinfo(spec)[1].encode()
    for nr in (0, 1, 2):
        addr, size, csum = info["entries"][nr]
        assert addr and size and csum == cksm(spec.expected(addr, size))
    addr, size, _ = info["entries"][0]
    assert spec.expected(addr, size) == text
    ipib, ipib_csum = struct.unpack(">QI", spec.expected(0xE00, 12))
    assert ipib == info["entries"][1][0]
    hdr_len = struct.unpack(">I", spec.expected(ipib, 4))[0]
    assert hdr_len == info["entries"][1][1] and ipib_csum == cksm(spec.expected(ipib, hdr_len))
    assert u64(spec, info["entries"][2][0]) == 1  # OS_INFO_FLAG_REIPL_CLEAR


def test_no_ipib_means_zero_lowcore_fields():
    assert ImageSpec().expected(0xE00, 12) == bytes(12)


def test_new_layout_value_entries_and_virtual_symbols():
    spec = ImageSpec(new_layout=True)
    info = os_info(spec)
    assert info["csum_ok"] and info["version"] == (1, 1)
    values = [e[0] for e in info["entries"]]
    assert all(e[1] == 0 and e[2] == 0 for e in info["entries"][4:13])
    ident, kaslr, kaslr_phys = values[4], values[5], values[6]
    amode31 = values[8], values[9]
    assert ident and kaslr and values[7]  # identity base, kaslr offset, vmemmap
    assert values[10] < values[11]  # image start < end
    keys = lines(vmcoreinfo(spec)[1])
    assert int(keys["IDENTITYBASE"], 16) == ident
    assert int(keys["KERNELOFFSET"], 16) == kaslr
    assert int(keys["KERNELOFFPHYS"], 16) == kaslr_phys
    assert (int(keys["SAMODE31"], 16), int(keys["EAMODE31"], 16)) == amode31

    def phys(v: int) -> int:  # spec 7.4
        if v < 0x2000 or amode31[0] <= v < amode31[1]:
            return v
        return v - ident if v < kaslr else v - kaslr + kaslr_phys

    array_v = int(keys["SYMBOL(lowcore_ptr)"], 16)
    assert array_v >= kaslr  # a kernel-image symbol
    array = phys(array_v)
    ptrs = struct.unpack(">2Q", spec.expected(array, 16))
    assert [phys(p) for p in ptrs] == [c.prefix for c in spec.cpus]
    assert all(p > ident for p in ptrs)
    # the vector save area designation is a real address: untranslated
    vx = u64(spec, spec.cpus[0].prefix + 0x11B0)
    assert vx < spec.mem_size and spec.expected(vx, 16) == spec.cpus[0].vx[0]
    # the image's physical place holds the kernel entry table
    assert spec.expected(values[12] + 8, 6) == b"S390EP"


# -- the loaded kdump kernel and the swapped picture ---------------------------------------------


def test_kdump_kernel_and_kexec_segments():
    spec = ImageSpec(kexec_segments=True)
    assert spec.expected(B + 0x10008, 8) == b"S390EP\x00\x01"
    assert struct.unpack(">QQ", spec.expected(B + 0x10418, 16)) == (B, S)
    assert spec.expected(B + 0x10480, 16).startswith(b"console=")
    block = spec.expected(B + 0xC160, 0x120)
    pairs = [struct.unpack(">QQ", block[16 * i : 16 * i + 16]) for i in range(16)]
    segs = [p for p in pairs if p != (0, 0)]
    assert len(segs) == 2 and segs[0][0] == B + 0x10000
    assert all(B <= s and s + n <= B + S for s, n in segs)
    data = b"".join(spec.expected(s, n) for s, n in segs)
    assert hashlib.sha256(data).digest() == block[0x100:0x120]
    assert ImageSpec().expected(B + 0xC160, 0x120) == bytes(0x120)  # off by default


def test_no_kdump_kernel_loaded_leaves_crashkernel_empty():
    spec = ImageSpec(kdump_kernel_loaded=False)
    assert os_info(spec)["crashkernel"] == (B, S)
    assert not any(spec.build().memory.runs(B, B + S))


def test_swapped_image_after_the_hand_off():
    healthy = ImageSpec(kexec_segments=True)
    spec = ImageSpec(kexec_segments=True, swapped=True)
    # the kdump kernel runs at 0: its own os_info without crashkernel, its parmarea has oldmem
    own = os_info(spec, u64(spec, 0xE18))
    assert own["csum_ok"] and own["crashkernel"] == (0, 0)
    assert spec.expected(0x10008, 6) == b"S390EP"
    assert struct.unpack(">QQ", spec.expected(0x10418, 16)) == (B, S)
    assert vmcoreinfo(spec)[0][2] == 0
    # the crashed system's [0, S) is at [B, B+S)
    assert u64(spec, B + 0xE18) == OS
    old = os_info(spec, B + OS)
    assert old["csum_ok"] and old["crashkernel"] == (B, S)
    assert spec.where(0xE18) == B + 0xE18 and spec.where(B + 5) == 5 and spec.where(S) == S
    (_, _, _), text, _ = vmcoreinfo(spec, where=spec.where)
    assert text == vmcoreinfo(healthy)[1]
    for cpu in healthy.cpus:
        assert spec.expected(B + cpu.prefix + 0x1200, 512) == cpu.save_area()
    # memory above S and outside the crashkernel is unmoved
    assert spec.expected(S, 4096) == healthy.expected(S, 4096)


def test_swapped_needs_a_kdump_kernel():
    with pytest.raises(ValueError):
        ImageSpec(swapped=True, kdump_kernel_loaded=False).build()


def test_expected_refuses_absent_memory():
    spec = gap_spec()
    with pytest.raises(ValueError):
        spec.expected(33 * MiB, 16)
    assert spec.expected(40 * MiB, 16) == bytes(16)


# -- the shipped sample --------------------------------------------------------------------------


def check_sample(data: bytes) -> None:
    assert len(data) == 4 * MiB
    os_addr = struct.unpack(">Q", data[0xE18:0xE20])[0]
    page = data[os_addr : os_addr + 4096]
    assert page[:8] == OSINFOSZ and struct.unpack(">I", page[8:12])[0] == cksm(page[0xC:])
    base, size = struct.unpack(">QQ", page[0x10:0x20])
    assert base >= 2 * MiB and base + size <= 4 * MiB
    assert data[base + 0x10008 : base + 0x1000E] == b"S390EP"
    lc_ptrs = [0x14000 + 8 * i for i in range(2)]  # found via VMCOREINFO in other tests
    for p in (struct.unpack(">Q", data[a : a + 8])[0] for a in lc_ptrs):
        assert struct.unpack(">I", data[p + 0x1318 : p + 0x131C])[0] == p  # status stored
    note = struct.unpack(">Q", data[0xE0C:0xE14])[0]
    assert data[note + 12 : note + 22] == b"VMCOREINFO"


def test_sample_is_small_and_valid(tmp_path):
    path = write_sample(tmp_path / "sample.img.gz")
    assert path.stat().st_size < 16 * 1024
    data = gzip.decompress(path.read_bytes())
    check_sample(data)
    assert data == sample_spec().build().memory.read(0, 4 * MiB)


def test_shipped_sample_is_current():
    shipped = ROOT / "sadump" / "data" / "sample.img.gz"
    assert shipped.stat().st_size < 16 * 1024
    data = gzip.decompress(shipped.read_bytes())
    check_sample(data)
    assert data == sample_spec().build().memory.read(0, 4 * MiB), "re-run --sample"


# -- the real-file fixtures ----------------------------------------------------------------------


@pytest.mark.parametrize("use_cli", [False, True])
def test_decompress_zst_sparse(tmp_path, use_cli):
    if use_cli and not __import__("shutil").which("zstd"):
        pytest.skip("no zstd tool on PATH")
    content = b"head" + bytes(3 * MiB) + b"\x01" * 70000 + bytes(MiB + 5)
    src = tmp_path / "x.zst"
    src.write_bytes(zstandard.ZstdCompressor().compress(content))
    out = decompress_zst_sparse(src, tmp_path / "x", use_cli=use_cli)
    assert out.read_bytes() == content
    assert os.stat(out).st_blocks * 512 < MiB
    assert not (tmp_path / "x.part").exists()


def test_real_file_fixture(real_file, real_text):
    path = real_file("rimg-kdump.raw")
    assert path.stat().st_size == 1 << 30
    with open(path, "rb") as f:
        f.seek(0x409000)
        assert f.read(8) == OSINFOSZ
    assert real_file("rimg-kdump.raw") == path  # decompressed once
    text = real_text("rimg-kdump.osinfo.txt")
    assert "0x409000" in text
    assert re.search(r'"csum": "0x40010001"', text)

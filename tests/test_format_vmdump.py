"""The z/VM VMDUMP reader against files written from the spec (tests/fixtures/vmdump.py) and
the real rimg-kdump.vmdump (memory = rimg-kdump.raw, registers = rimg-kdump.qemu.elf's)."""

from __future__ import annotations

import dataclasses
import json
import struct

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.errors import AbsentMemoryError, ImageError
from sadump.formats import open_image
from sadump.formats.elf import ElfCore
from sadump.formats.vmdump import VmDump
from sadump.kernel.cpus import from_notes
from tests.fixtures import vmdump as vm
from tests.fixtures.builder import Cpu

MiB, GiB, PAGE = 1 << 20, 1 << 30, 4096
runner = CliRunner()


def page(n: int) -> bytes:
    """A recognisable page for guest page n."""
    return struct.pack(">Q", n) * (PAGE // 8)


#: two ranges with a gap, stored pages in runs and alone, a slot without key page (clear
#: index bit) and one with a key page that stores nothing
RANGES = [(0, 24 * MiB), (32 * MiB, 80 * MiB)]  # key-page slots 0-4
STORED = [0, 1, 2, 3, 7, 4095, 4096, 4097, 5000, 12 * 256 + 1] + list(range(8192, 8200)) + [
    8192 + 4000, 11000, 11001]
CPUS = [Cpu.distinct(0), Cpu.distinct(1), Cpu.distinct(2)]


def write(tmp_path, data, name="dump.vmdump"):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(params=[vm.KEYS_REAL, (0x07, 0x06)], ids=["keys-real", "keys-with-storage-bits"])
def dump(tmp_path, request):
    """The real file's key bytes (0x01 / 0x00), and keys with storage-key bits set around the
    "stored" bit 0x01, which alone counts."""
    data = vm.vmdump_bytes({n: page(n) for n in STORED}, RANGES, CPUS, empty_keys=(4,),
                           keys=request.param)
    assert data[vm.INDEX_OFF] == 0b11101000  # slot 3: no key page; slot 4: one storing none
    return write(tmp_path, data)


def expected(paddr: int, size: int) -> bytes:
    out = b"".join(page(n) if n in STORED else bytes(PAGE)
                   for n in range(paddr // PAGE, -(-(paddr + size) // PAGE)))
    lo = paddr % PAGE
    return out[lo:lo + size]


def test_memory_page_for_page(dump):
    with open_image(str(dump)) as mem:
        assert isinstance(mem, VmDump) and mem.format == "vmdump"
        assert mem.ranges() == RANGES
        assert mem.warnings == [] and mem.incomplete is None
        for lo, hi in RANGES:
            assert mem.read(lo, hi - lo) == expected(lo, hi - lo)
        assert mem.read(7 * PAGE - 8, 24) == expected(7 * PAGE - 8, 24)  # across pages
        with pytest.raises(AbsentMemoryError):
            mem.read(24 * MiB, 8)  # the gap between the ranges


def test_extents_read_in_place(dump):
    """Stored runs are "file" extents whose bytes are the pages; the rest is "zero"."""
    raw = dump.read_bytes()
    with open_image(str(dump)) as mem:
        for lo, hi in RANGES:
            ext = list(mem.extents(lo, hi))
            assert ext[0].paddr == lo and sum(e.size for e in ext) == hi - lo
            for e in ext:
                want = expected(e.paddr, e.size)
                if e.kind == "file":
                    assert raw[e.file_offset:e.file_offset + e.size] == want
                else:
                    assert e.kind == "zero" and want == bytes(e.size)
        runs = [e for e in mem.extents(0, 24 * MiB) if e.kind == "file"]
        assert (runs[0].paddr, runs[0].size) == (0, 4 * PAGE)  # pages 0-3: one extent
        assert (4095 * PAGE, 3 * PAGE) in [(e.paddr, e.size) for e in runs]  # across key pages
        assert sum(e.size for e in mem.extents(32 * MiB, 80 * MiB) if e.kind == "file") + \
            sum(e.size for e in mem.extents(0, 24 * MiB) if e.kind == "file") == \
            len(STORED) * PAGE


def test_cpus_from_the_fir_records(dump):
    with open_image(str(dump)) as mem:
        cpus, warnings = from_notes(mem.notes)
        assert warnings == []
        assert mem.cpu_prefixes == [c.prefix for c in CPUS]
        prstatus = [n.desc for n in mem.notes if n.type == 1]
    for cpu, want, desc in zip(cpus, CPUS, prstatus, strict=True):
        assert (cpu.psw_mask, cpu.psw_addr) == want.psw
        assert cpu.gprs == want.gprs and cpu.acrs == want.acrs and cpu.ctrs == want.ctrs
        assert cpu.fprs == want.fprs and cpu.fpc == want.fpc and cpu.prefix == want.prefix
        assert (cpu.timer, cpu.todcmp, cpu.todpreg) == (want.timer, want.todcmp, want.todpreg)
        assert cpu.vxrs is None  # 64big records hold no vector registers
        # the kernel's elf_prstatus: psw at 0x70, gprs at 0x80, acrs at 0x100
        assert struct.unpack_from(">2Q16Q", desc, 0x70) == (*want.psw, *want.gprs)
        assert struct.unpack_from(">16I", desc, 0x100) == tuple(want.acrs)


def test_dumper_facts(dump):
    with open_image(str(dump)) as mem:
        facts = mem.dumper
    assert (facts.format, facts.version, facts.start_tod) == ("vmdump", 2, vm.TOD)
    assert (facts.cpu_count, facts.real_cpu_count) == (3, 3)
    assert facts.mem_size == 72 * MiB and facts.mem_size_real == 80 * MiB


def test_many_index_pages(tmp_path):
    """A second index page (slots from 512 GiB on): the pages after it are still found."""
    high = 600 * GiB
    stored = {0: page(0), high // PAGE + 3: page(99)}
    path = write(tmp_path, vm.vmdump_bytes(stored, [(0, MiB), (high, high + MiB)], CPUS[:1]))
    with open_image(str(path)) as mem:
        assert mem.ranges() == [(0, MiB), (high, high + MiB)]
        assert mem.read(0, PAGE) == page(0)
        assert mem.read(high + 3 * PAGE, PAGE) == page(99)
        assert mem.read(high, 3 * PAGE) == bytes(3 * PAGE)
        assert len(mem.notes) == 7  # one CPU


def test_stored_between_ranges_is_a_warning(tmp_path):
    path = write(tmp_path, vm.vmdump_bytes({0: page(0)}, RANGES, CPUS[:1],
                                           stored_extra=(25 * MiB // PAGE,)))
    with open_image(str(path)) as mem:
        assert "1 pages stored between the storage ranges" in mem.warnings[0]
        assert mem.read(32 * MiB, 8) == bytes(8)


@pytest.mark.parametrize("fmt, name", [(0x00, "ESA"), (0x82, "ESAME"), (0x05, "unknown")])
def test_old_formats_refused_by_name(tmp_path, fmt, name):
    data = vm.vmdump_bytes({0: page(0)}, RANGES, CPUS[:1])
    data[vm.FIR_FORMAT_OFF] = fmt
    with pytest.raises(ImageError, match=name):
        VmDump(str(write(tmp_path, data)))


def _refused(tmp_path, data, match):
    path = write(tmp_path, data)
    with pytest.raises(ImageError, match=match) as e:
        VmDump(str(path))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(path))
    res = runner.invoke(app, ["inspect-meminfo", "-F", "vmdump", str(path)])
    assert res.exit_code == Exit.IMAGE_ERROR and res.stderr.count("\n") == 1, res.stderr


def test_bitmap_past_the_ranges(tmp_path):
    # 256 pages: in the last key page, and in a key page of its own past the end
    for extra, match in [(300, "marks page 0x12c stored, past the storage ranges \\(0x100"),
                         (2 * 4096, "key page for pages from 0x2000, past")]:
        data = vm.vmdump_bytes({0: page(0)}, [(0, MiB)], CPUS[:1], stored_extra=(extra,))
        _refused(tmp_path, data, match)


def test_bitmap_shorter_than_the_ranges(tmp_path):
    """Ranges that claim more than the bitmap covers: the stored pages are read as more index
    pages (here all bits set) and the file ends long before the key pages they ask for."""
    data = vm.vmdump_bytes({0: b"\xff" * PAGE}, [(0, MiB)], CPUS[:1])
    struct.pack_into(">Q", data, vm.ASIZBK_OFF + 0x168, 600 * GiB - 1)
    _refused(tmp_path, data, "key page for pages from 0x9600000, past the storage ranges")


@pytest.mark.parametrize("cut, match", [
    (0x30, "symptom record"), (0x1010, "dump file map"), (0x2100, "FIR record"),
    (0x2500, "FIR records of 2 more CPUs"), (vm.ASIZBK_OFF + 0x100, "ASIZBK"),
    (vm.INDEX_OFF + 100, "index page"), (vm.INDEX_OFF + 5000, "3 key pages"),
])
def test_truncated_records(tmp_path, cut, match):
    data = vm.vmdump_bytes({n: page(n) for n in STORED}, RANGES, CPUS)
    _refused(tmp_path, data[:cut], f"truncated: the {match}")


def test_truncated_pages_are_incomplete(tmp_path):
    data = vm.vmdump_bytes({n: page(n) for n in STORED}, RANGES, CPUS)
    path = write(tmp_path, data[:len(data) - 7 * PAGE - 100])  # the last 8 pages lost
    with open_image(str(path)) as mem:
        assert mem.incomplete == f"the file is truncated: it holds {len(STORED) - 8} of " \
            f"{len(STORED)} stored pages"
        first_lost = sorted(STORED)[len(STORED) - 8] * PAGE  # page 8195
        assert mem.ranges() == [RANGES[0], (RANGES[1][0], first_lost)]
        for lo, hi in mem.ranges():
            assert mem.read(lo, hi - lo) == expected(lo, hi - lo)


@pytest.mark.parametrize("where, value, match", [
    (vm.ASIZBK_RANGE_COUNT_OFF, 0xFFFFFFFF, "4294967295 storage ranges"),
    (vm.FIR_ONLINE_CPUS_OFF, 0xFFFF, "FIR lists 65535 more CPUs: a machine has at most 512"),
    (vm.FIR_ONLINE_CPUS_OFF, 200, "truncated: the FIR records of 200 more CPUs"),
    (vm.ASIZBK_OFF + 0x160, 0x123, "storage range 0 .* not whole pages"),
    (vm.ASIZBK_OFF + 0x168, (1 << 60) - 1, "past what s390x can address"),
    (vm.ASIZBK_OFF, 0, "not the ASIZBK record"),
    (vm.FIR_OFF - 0x1000 + 8, 0xFFFFFFFF, "truncated: the FIR record at 0xfffffffe000"),
    (vm.FIR_OFF - 0x1000 + 8, 2, "FIR record number 2 is not after"),
])
def test_wild_fields(tmp_path, where, value, match):
    data = vm.vmdump_bytes({0: page(0)}, RANGES, CPUS[:1])
    size = 2 if where == vm.FIR_ONLINE_CPUS_OFF else 8 if where >= vm.ASIZBK_OFF + 0x160 \
        else 4
    data[where:where + size] = value.to_bytes(size, "big")
    _refused(tmp_path, data, match)


# ---- the real file -------------------------------------------------------------------------------
def test_real_memory_equals_the_raw_image(real_file):
    raw = real_file("rimg-kdump.raw")
    with open_image(str(real_file("sa/rimg-kdump.vmdump"))) as mem, open(raw, "rb") as f:
        assert mem.format == "vmdump" and mem.ranges() == [(0, GiB)]
        assert mem.warnings == [] and mem.incomplete is None
        step = 16 * MiB
        for off in range(0, GiB, step):
            assert mem.read(off, step) == f.read(step), hex(off)
        ext = list(mem.extents(0, GiB))
        assert sum(e.size for e in ext if e.kind == "file") == 12_414 * PAGE  # sa/README
        f.seek(ext[1].paddr)
        assert f.read(ext[1].size) == mem.read(ext[1].paddr, ext[1].size)


def test_real_registers_equal_the_qemu_notes(real_file):
    """Every register of both CPUs equals QEMU's notes (clock comparator in the save-area
    format); TODPREG too (zgetdump 2.40 leaves it 0); no vector registers in VMDUMP."""
    with open_image(str(real_file("sa/rimg-kdump.vmdump"))) as mem:
        ours, w = from_notes(mem.notes)
        facts = mem.dumper
    assert w == []
    with ElfCore(str(real_file("rimg-kdump.qemu.elf"))) as elf:
        qemu, _ = from_notes(elf.notes)
    assert len(ours) == len(qemu) == 2
    for a, b in zip(ours, qemu, strict=True):
        assert a.vxrs is None and b.vxrs is not None
        assert dataclasses.replace(a, vxrs=b.vxrs) == b
    assert [c.prefix for c in ours] == [0x115A000, 0x115C000]
    assert (facts.format, facts.version, facts.start_tod) == ("vmdump", 2, 0xE3A420355A15B000)
    assert (facts.cpu_count, facts.mem_size) == (2, GiB)


def test_real_bt_and_dmesg(real_file):
    vmd = str(real_file("sa/rimg-kdump.vmdump"))

    def bt(path):
        res = runner.invoke(app, ["bt", "--json", path])
        assert res.exit_code == Exit.OK, res.stderr
        return [[(f["pc"], f["symbol"], f["sp"]) for f in c["frames"]]
                for c in json.loads(res.stdout)["cpus"]]

    frames = bt(vmd)
    assert frames == bt(str(real_file("rimg-kdump.qemu.elf")))
    assert all(len(f) > 3 for f in frames)
    ours = runner.invoke(app, ["dmesg", vmd])
    raw = runner.invoke(app, ["dmesg", str(real_file("rimg-kdump.raw"))])
    assert ours.exit_code == raw.exit_code == Exit.OK
    assert ours.stdout == raw.stdout and "Linux version 6.1.192" in ours.stdout


def test_real_d31_kdump_bitmaps(real_file, tmp_path):
    """On the kdump path the VMDUMP's -d 31 bitmaps are makedumpfile's of the same moment."""
    from typer.testing import CliRunner

    from sadump.cli import app
    from tests.test_dump_levels import kdump_parts

    out = tmp_path / "d31.kdump"
    res = CliRunner().invoke(app, ["dump", str(real_file("sa/rimg-kdump.vmdump")), "-d", "31",
                                   "--format", "kdump", "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    ours, theirs = kdump_parts(out), kdump_parts(real_file("filter/rimg-kdump.d31.bitmaps"))
    for key in ("block_size", "bitmap_blocks", "max_mapnr", "dump_level"):
        assert ours[key] == theirs[key], key
    assert ours["bitmap1"] == theirs["bitmap1"]
    assert ours["bitmap2"] == theirs["bitmap2"]

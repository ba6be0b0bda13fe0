"""S390Dump and the s390 dump header/end-marker builders (spec s390-dump-abi.md 7.1); the
inputs are packed from the spec's table (tests/fixtures/s390dump.py), not with DfS390Hdr."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import pytest

from sadump.errors import AbsentMemoryError, ImageError
from sadump.formats import open_image
from sadump.formats.s390 import (
    DfS390Hdr,
    S390Dump,
    build_end_marker,
    build_header,
    tod_to_unix,
    unix_to_tod,
)
from tests.fixtures import s390dump

TOD = unix_to_tod(1_795_716_067.25)
PREFIXES = [0x7FE000, 0x7FC000]
MEM = random.Random(5).randbytes(16 * 4096)


def write_dump(path: Path, mem=MEM, header=None, end=None, tod=TOD) -> str:
    """An s390 dump packed from the spec's table (tests/fixtures/s390dump.py)."""
    header = s390dump.header(len(mem), tod, PREFIXES, cpu_id=0xFF00012345678000) \
        if header is None else header  # fmt: skip
    end = s390dump.end_marker(tod + (5 << 32)) if end is None else end
    path.write_bytes(header + mem + end)
    return str(path)


def patched_header(**fields) -> bytes:
    return s390dump.header(len(MEM), TOD, PREFIXES, **fields)


def one_line_error(path, match):
    with pytest.raises(ImageError, match=match) as ei:
        S390Dump(str(path))
    assert "\n" not in str(ei.value)
    return str(ei.value)


# ---- builders against the spec table ----------------------------------------------------
def test_header_layout_matches_spec():
    raw = build_header(0x40000000, 0x1234, [0x10000, 0x12000, 0x14000], cpu_id=0xABC)
    assert len(raw) == 4096 == DfS390Hdr.sizeof()
    u32 = lambda off: struct.unpack_from(">I", raw, off)[0]
    u64 = lambda off: struct.unpack_from(">Q", raw, off)[0]
    assert u64(0x000) == 0xA8190173618F23FD
    assert (u32(0x008), u32(0x00C), u32(0x010), u32(0x014)) == (5, 0x1000, 4, 4096)
    # mem_end = mem_size, as the zipl dumpers and zcore write it (not "last address")
    assert (u64(0x018), u64(0x020), u64(0x028)) == (0x40000000, 0, 0x40000000)
    assert u32(0x030) == 0x40000000 // 4096
    assert (u64(0x038), u64(0x040)) == (0x1234, 0xABC)
    assert (u32(0x048), u32(0x050)) == (2, 2)
    assert u64(0x054) == 0x40000000  # mem_size_real defaults to mem_size
    assert struct.unpack_from(">H", raw, 0x05D)[0] == 3  # cpu_cnt
    assert struct.unpack_from(">3I", raw, 0x800) == (0x10000, 0x12000, 0x14000)
    assert raw[0x80C:] == bytes(4096 - 0x80C)
    assert u64(0x054) != 0 and build_header(4096, 0, [], mem_size_real=1 << 40)[0x54:0x5C] == (
        (1 << 40).to_bytes(8, "big")
    )


def test_end_marker():
    assert build_end_marker(0x0123456789ABCDEF) == b"DUMP_END" + bytes.fromhex("0123456789ABCDEF")
    assert build_end_marker(TOD) == s390dump.end_marker(TOD)


def test_writer_side_header_equals_the_spec_packing():
    """sadump's build_header gives the bytes packed from the spec's table."""
    assert build_header(len(MEM), TOD, PREFIXES, cpu_id=0xFF00012345678000) == \
        s390dump.header(len(MEM), TOD, PREFIXES, cpu_id=0xFF00012345678000)
    assert build_header(1 << 30, 1, [0x1000] * 512, mem_size_real=1 << 40) == \
        s390dump.header(1 << 30, 1, [0x1000] * 512, mem_size_real=1 << 40)


def test_builder_limits():
    with pytest.raises(ValueError):
        build_header(0, 0, [])
    with pytest.raises(ValueError):
        build_header(4096, 0, [0] * 513)


def test_tod_epoch():
    # spec 7.1: (tod - 0x7D91048BCA000000) >> 12 = microseconds since 1970; TOD 0 = 1900
    assert unix_to_tod(0) == 0x7D91048BCA000000
    assert tod_to_unix(0x7D91048BCA000000 + (1_000_000 << 12)) == 1.0
    assert tod_to_unix(0) == -2208988800.0  # 1900-01-01, 70 years incl. 17 leap days
    for t in (0.0, 1.5, 1_795_716_067.123456, 2_000_000_000.000001):
        assert abs(tod_to_unix(unix_to_tod(t)) - t) < 1e-6
    with pytest.raises(ValueError):
        unix_to_tod(-3e9)
    with pytest.raises(ValueError):
        unix_to_tod(4e9)  # the 64-bit TOD clock wraps in 2042


# ---- reading back ------------------------------------------------------------------------
def test_round_trip(tmp_path):
    path = write_dump(tmp_path / "d.s390")
    with S390Dump(path) as d:
        assert d.incomplete is None and d.warnings == []
        assert d.ranges() == [(0, len(MEM))]
        assert d.read(0, len(MEM)) == MEM
        assert d.read(0x1FFF, 3) == MEM[0x1FFF:0x2002]
        assert d.cpu_prefixes == PREFIXES
        assert d.tod == TOD and d.end_tod == TOD + (5 << 32)
        assert d.cpu_id == 0xFF00012345678000
        [ext] = list(d.extents(0, len(MEM)))
        assert (ext.kind, ext.paddr, ext.size, ext.file_offset) == ("file", 0, len(MEM), 0x1000)
        assert os.pread(ext.fileno, 64, ext.file_offset + 0x3000) == MEM[0x3000:0x3040]
        with pytest.raises(AbsentMemoryError):
            d.read(len(MEM) - 1, 2)


def test_probe_and_open_image(tmp_path):
    path = write_dump(tmp_path / "d.s390")
    head = Path(path).read_bytes()[:4096]
    assert S390Dump.probe(head)
    # …FE belongs to the readers of sadump.formats.s390_ext (s390_ext, s390mv_ext, tape)
    assert not S390Dump.probe(bytes.fromhex("A8190173618F23FE") + bytes(8))
    assert not S390Dump.probe(b"\x7fELF" + bytes(60))
    assert not S390Dump.probe(b"")
    with open_image(path) as d:
        assert d.format == "s390" and d.read(0, 16) == MEM[:16]


def test_zgetdump_style_mem_end(tmp_path):
    """zipl's dumpers and zgetdump write mem_end = mem_size; read without a warning."""
    path = write_dump(tmp_path / "d.s390", header=patched_header(mem_end=len(MEM)))
    with S390Dump(path) as d:
        assert d.warnings == [] and d.incomplete is None
        assert d.read(0, len(MEM)) == MEM


def test_mem_end_disagrees(tmp_path):
    path = write_dump(tmp_path / "d.s390", header=patched_header(mem_end=0x1234))
    with S390Dump(path) as d:
        assert any("disagrees" in w for w in d.warnings)
        assert d.ranges() == [(0, len(MEM))]


def test_real_memory_in_s390_dump(real_file, tmp_path):
    """The first 8 MiB of the real raw image as an s390 dump: os_info where the guest put it."""
    with open(real_file("rimg-kdump.raw"), "rb") as f:
        mem = f.read(8 << 20)
    path = write_dump(tmp_path / "r.s390", mem=mem)
    with S390Dump(path) as d:
        assert d.read(0x409000, 8) == b"OSINFOSZ"
        assert int.from_bytes(d.read(0xE18, 8), "big") == 0x409000


# ---- incomplete dumps -------------------------------------------------------------------
@pytest.mark.parametrize("keep", [0, 1, 4096 * 5 + 123, len(MEM) - 1])
def test_truncated(tmp_path, keep):
    path = write_dump(tmp_path / "d.s390")
    os.truncate(path, 0x1000 + keep)
    with S390Dump(path) as d:
        assert d.incomplete and "truncated" in d.incomplete
        assert any("incomplete" in w for w in d.warnings)
        assert d.ranges() == ([(0, keep)] if keep else [])
        if keep:
            assert d.read(0, keep) == MEM[:keep]
        with pytest.raises(AbsentMemoryError):
            d.read(keep, 1)
        assert [(e.paddr, e.size) for e in d.extents(0, len(MEM))] == ([(0, keep)] if keep else [])


def test_no_room_for_end_marker(tmp_path):
    path = write_dump(tmp_path / "d.s390", end=b"DUMP_EN")
    with S390Dump(path) as d:
        assert d.incomplete and "no end marker" in d.incomplete
        assert d.read(0, len(MEM)) == MEM


def test_wrong_end_marker(tmp_path):
    path = write_dump(tmp_path / "d.s390", end=b"DUMP_BAD" + TOD.to_bytes(8, "big"))
    with S390Dump(path) as d:
        assert d.incomplete and "DUMP_BAD" in d.incomplete
        assert d.ranges() == [(0, len(MEM))]
        assert d.read(0, len(MEM)) == MEM


def test_end_tod_before_header_tod(tmp_path):
    path = write_dump(tmp_path / "d.s390", end=s390dump.end_marker(TOD - 1))
    with S390Dump(path) as d:
        assert d.incomplete and "earlier" in d.incomplete
        assert d.read(len(MEM) - 8, 8) == MEM[-8:]


# ---- bad headers ------------------------------------------------------------------------
def test_s390_ext_magic_sent_to_its_own_readers(tmp_path):
    """The classic reader asked to read a …FE file says which readers take it."""
    path = write_dump(tmp_path / "e.s390", header=patched_header(magic=0xA8190173618F23FE))
    msg = one_line_error(path, "read it as s390_ext, s390mv_ext or tape")
    assert path in msg


def test_short_file(tmp_path):
    p = tmp_path / "s.s390"
    p.write_bytes(s390dump.header(len(MEM), TOD, PREFIXES)[:2000])
    one_line_error(p, "too short")


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"mem_size": 0, "mem_end": (1 << 64) - 1}, "past what s390x can address"),
        ({"mem_size": (1 << 64) - 1}, "past what s390x can address"),
        ({"mem_size": 1 << 50}, "past what s390x can address"),
        ({"mem_size": 0, "mem_end": 0}, "no memory size"),
        ({"hdr_size": 0x800}, "header size is 0x800"),
        ({"hdr_size": 0xFFFFFFFF}, "header size"),
        ({"page_size": 8192}, "page size is 8192"),
        ({"magic": 0x1234}, "not an s390 dump"),
    ],
)
def test_bad_header(tmp_path, fields, match):
    path = write_dump(tmp_path / "b.s390", header=patched_header(**fields))
    one_line_error(path, match)


def test_cpu_count_capped(tmp_path):
    path = write_dump(tmp_path / "c.s390", header=patched_header(cpu_cnt=0xFFFF))
    with S390Dump(path) as d:
        assert len(d.cpu_prefixes) == 512
        assert d.cpu_prefixes[:2] == PREFIXES
        assert any("cpu_cnt 65535" in w for w in d.warnings)


def test_old_version_has_no_prefixes(tmp_path):
    path = write_dump(tmp_path / "c.s390", header=patched_header(version=4))
    with S390Dump(path) as d:
        assert d.cpu_prefixes == []
        assert d.read(0, 64) == MEM[:64]


def test_mutated_headers_never_crash(tmp_path):
    good = Path(write_dump(tmp_path / "g.s390")).read_bytes()
    rng = random.Random(3)
    p = tmp_path / "m.s390"
    for _ in range(200):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(8, 0x70)] = rng.randrange(256)
        p.write_bytes(bytes(data))
        try:
            d = S390Dump(str(p))
        except ImageError as e:
            assert "\n" not in str(e)
            continue
        with d:
            for start, end in d.ranges():
                d.read(start, min(end - start, 4096))


def test_dumper_facts(tmp_path):
    """The classic header's own facts, for inspect-meminfo and info."""
    path = write_dump(tmp_path / "d.s390")
    with S390Dump(path) as d:
        f = d.dumper
        assert (f.format, f.version, f.start_tod, f.end_tod) == ("s390", 5, TOD, TOD + (5 << 32))
        assert (f.cpu_id, f.cpu_count, f.mem_size) == (0xFF00012345678000, 2, len(MEM))
        assert f.compression is None

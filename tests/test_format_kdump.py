"""kdump-compressed readers: synthetic files packed from the spec's tables
(tests/fixtures/kdump.py, not sadump's declarations), bad inputs, and the real QEMU /
makedumpfile files of the rimg guest."""

from __future__ import annotations

import mmap
import random
import struct
import sys
import zlib

import numpy as np
import pytest

from sadump.errors import AbsentMemoryError, ImageError
from sadump.formats.elf import build_note
from sadump.formats.kdump import (
    DISK_DUMP_HEADER,
    FLAT_HEADER,
    FLAT_RECORD,
    KDUMP_SUB_HEADER,
    PAGE_DESC,
    PAGE_DESC_STRUCT,
    FlattenedKdumpFile,
    KdumpFile,
    build_disk_dump_header,
    build_flat_end,
    build_flat_header,
    build_flat_record,
    build_kdump_sub_header,
    build_page_desc,
)
from sadump.formats.memory import Note
from tests.fixtures import kdump as spec
from tests.fixtures.kdump import (
    disk_dump_header,
    elf_note,
    flat_end,
    flat_header,
    flat_record,
    kdump_sub_header,
    page_desc,
)

BS = 4096
ZLIB, LZO, SNAPPY, ZSTD = 0x1, 0x2, 0x4, 0x20


def page_of(pfn: int) -> bytes:
    """A page whose every 8 bytes name its pfn (so a misplaced page is caught)."""
    return (pfn | 0xABC0000000000000).to_bytes(8, "big") * (BS // 8)


def compress(flags: int, page: bytes) -> bytes:
    if flags == 0:
        return page
    if flags == ZLIB:
        return zlib.compress(page, 1)
    if flags == ZSTD:
        import zstandard

        return zstandard.ZstdCompressor(level=1).compress(page)
    if flags == SNAPPY:
        import cramjam

        return bytes(cramjam.snappy.compress_raw(page))
    raise AssertionError(flags)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def build_kdump(
    pages: dict,
    *,
    mapnr: int = 16,
    order: str = "big",
    status: int = 0,
    notes: bytes = b"",
    vmcoreinfo: bytes = b"",
    header: dict | None = None,
    sub: dict | None = None,
    bs: int = BS,
) -> tuple[bytes, dict]:
    """A plain kdump-compressed file laid out as makedumpfile does.

    pages: pfn -> (flags, stored bytes) or "zero" (points at the shared zero page).
    Returns the file and where things went.
    """
    sub_area = 104 + len(notes) + len(vmcoreinfo)
    sub_hdr_size = ceil_div(sub_area, bs)
    bitmap_len = ceil_div(ceil_div(mapnr, 8), bs) * bs
    bitmap_blocks = 2 * bitmap_len // bs
    dumped = sorted(pages)
    bm2 = bytearray(bitmap_len)
    for pfn in dumped:
        bm2[pfn >> 3] |= 1 << (pfn & 7)
    bm1 = bytes(b"\xff" * (mapnr // 8) + (bytes([(1 << (mapnr % 8)) - 1]) if mapnr % 8 else b""))
    bm1 = bm1.ljust(bitmap_len, b"\0")
    desc_off = (1 + sub_hdr_size + bitmap_blocks) * bs
    data_start = desc_off + 24 * len(dumped)
    data = bytearray()
    zero_at = None
    if any(v == "zero" for v in pages.values()):
        zero_at = data_start
        data += bytes(bs)
    descs = bytearray()
    where = {}
    for pfn in dumped:
        if pages[pfn] == "zero":
            descs += page_desc(zero_at, bs, 0, order=order)
            continue
        flags, stored = pages[pfn]
        where[pfn] = data_start + len(data)
        descs += page_desc(data_start + len(data), len(stored), flags, order=order)
        data += stored
    hdrfields = {
        "block_size": bs,
        "sub_hdr_size": sub_hdr_size,
        "bitmap_blocks": bitmap_blocks,
        "max_mapnr": mapnr,
        "status": status,
        "nr_cpus": 2,
        "utsname": {"sysname": "Linux", "release": "6.1.0-test", "machine": "s390x"},
        "timestamp": {"tv_sec": 1700000000, "tv_usec": 500000},
    } | (header or {})
    hdr = disk_dump_header(order, **hdrfields)
    subfields = {
        "max_mapnr_64": mapnr,
        "dump_level": 31,
        "offset_note": bs + 104 if notes else 0,
        "size_note": len(notes),
        "offset_vmcoreinfo": bs + 104 + len(notes) if vmcoreinfo else 0,
        "size_vmcoreinfo": len(vmcoreinfo),
    } | (sub or {})
    sub_bytes = kdump_sub_header(order, **subfields) + notes + vmcoreinfo
    blob = (
        hdr.ljust(bs, b"\0")
        + sub_bytes.ljust(sub_hdr_size * bs, b"\0")
        + bm1
        + bytes(bm2)
        + bytes(descs)
        + bytes(data)
    )
    return blob, {"desc_off": desc_off, "data_start": data_start, "where": where}


def flatten(blob: bytes, piece: int = 1000, shuffle: bool = True, end: bool = True) -> bytes:
    """The flattened form: records of `piece` bytes, out of order like QEMU writes them."""
    recs = [(off, blob[off : off + piece]) for off in range(0, len(blob), piece)]
    if shuffle:
        random.Random(7).shuffle(recs)
    out = flat_header() + b"".join(flat_record(o, d) for o, d in recs)
    return out + (flat_end() if end else b"")


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- a synthetic file with every kind of page ---------------------------------------------

VMCOREINFO_TEXT = b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n"


def sample_pages() -> dict:
    return {
        0: (ZLIB, compress(ZLIB, page_of(0))),
        1: (ZSTD, compress(ZSTD, page_of(1))),
        2: (SNAPPY, compress(SNAPPY, page_of(2))),
        3: (0, page_of(3)),
        4: (0, page_of(4)),
        5: "zero",
        # 6 excluded
        7: "zero",
        8: (ZLIB, compress(ZLIB, page_of(8))),
    }


def sample(order: str = "big", **kw) -> tuple[bytes, dict]:
    notes = elf_note("CORE", 1, b"\x11" * 336, order) + elf_note(
        "LINUX", 0x305, b"\0\0\x12\x34", order
    )
    return build_kdump(sample_pages(), order=order, notes=notes, vmcoreinfo=VMCOREINFO_TEXT, **kw)


def check_sample(m, plain: bool) -> None:
    assert m.ranges() == [(0, 6 * BS), (7 * BS, 9 * BS)]
    for pfn in (0, 1, 2, 3, 4, 8):
        assert m.read(pfn * BS, BS) == page_of(pfn)
    assert m.read(5 * BS, BS) == bytes(BS)
    assert m.read(7 * BS, BS) == bytes(BS)
    # small reads within a page, and reads across pages of different codecs
    assert m.read(BS + 8, 8) == page_of(1)[8:16]
    assert m.read(BS - 4, 12) == page_of(0)[-4:] + page_of(1)[:8]
    assert m.read(100, 6 * BS - 200) == b"".join(page_of(p) for p in range(5))[100:] + bytes(
        BS - 100
    )
    with pytest.raises(AbsentMemoryError):
        m.read(6 * BS, 1)
    with pytest.raises(AbsentMemoryError):
        m.read(5 * BS, 2 * BS)  # runs into the excluded page
    with pytest.raises(AbsentMemoryError):
        m.read(9 * BS, 8)
    kinds = [(e.paddr, e.size, e.kind) for e in m.extents(0, 6 * BS)]
    if plain:  # raw pages of a plain file are "file"; extents of one kind merge
        assert kinds == [(0, 3 * BS, "data"), (3 * BS, 2 * BS, "file"), (5 * BS, BS, "zero")]
    else:
        assert kinds == [(0, 5 * BS, "data"), (5 * BS, BS, "zero")]
    assert [(e.paddr, e.size, e.kind) for e in m.extents(7 * BS + 16, 9 * BS - 16)] == [
        (7 * BS + 16, BS - 16, "zero"),
        (8 * BS, BS - 16, "data"),
    ]
    if plain:
        ext = list(m.extents(3 * BS + 8, 5 * BS))
        assert ext[0].kind == "file"
        with open(m.path, "rb") as f:
            f.seek(ext[0].file_offset)
            assert f.read(ext[0].size) == (page_of(3) + page_of(4))[8:]
    assert [n.name for n in m.notes] == ["CORE", "LINUX", "VMCOREINFO"]
    assert m.notes[1] == Note("LINUX", 0x305, b"\0\0\x12\x34")
    assert m.notes[2].desc == VMCOREINFO_TEXT
    assert m.header["release"] == "6.1.0-test"
    assert m.header["machine"] == "s390x"
    assert m.header["nr_cpus"] == 2
    assert m.header["timestamp"] == 1700000000.5
    assert m.header["dump_level"] == 31
    assert m.incomplete is None
    assert m.warnings == []


@pytest.mark.parametrize("order", ["big", "little"])
def test_plain_round_trip(tmp_path, order):
    blob, _ = sample(order)
    path = write(tmp_path, "a.kdump", blob)
    assert KdumpFile.probe(blob[:4096]) and not FlattenedKdumpFile.probe(blob[:4096])
    with KdumpFile(path) as m:
        assert m.format == "kdump" and m.byteorder == order
        check_sample(m, plain=True)


@pytest.mark.parametrize("shuffle", [False, True])
def test_flattened_round_trip(tmp_path, shuffle):
    blob, _ = sample()
    flat = flatten(blob, piece=777, shuffle=shuffle)
    path = write(tmp_path, "a.flat", flat)
    assert FlattenedKdumpFile.probe(flat[:4096]) and not KdumpFile.probe(flat[:4096])
    with FlattenedKdumpFile(path) as m:
        assert m.format == "kdump-flat"
        check_sample(m, plain=False)


def test_diskdump_signature_and_old_header_version(tmp_path):
    """A v1 header: sub-header fields of later versions are ignored (no notes read)."""
    blob, _ = sample(header={"signature": b"DISKDUMP", "header_version": 1})
    path = write(tmp_path, "old.kdump", blob)
    assert KdumpFile.probe(blob[:8])
    with KdumpFile(path) as m:
        assert m.notes == []
        assert m.header["offset_note"] == 0
        assert m.read(8 * BS, BS) == page_of(8)


def test_vmcoreinfo_note_not_duplicated(tmp_path):
    """offset_vmcoreinfo pointing into the notes (makedumpfile) adds no second note."""
    order = "big"
    notes = elf_note("VMCOREINFO", 0, VMCOREINFO_TEXT, order)
    blob, _ = build_kdump(
        {0: (0, page_of(0))},
        notes=notes,
        sub={"offset_vmcoreinfo": BS + 104 + 24, "size_vmcoreinfo": len(VMCOREINFO_TEXT)},
    )
    with KdumpFile(write(tmp_path, "v.kdump", blob)) as m:
        assert m.notes == [Note("VMCOREINFO", 0, VMCOREINFO_TEXT)]


def test_bitmap_ranks_over_several_blocks(tmp_path):
    """Runs and descriptor ranks across bitmap blocks, mapnr not a multiple of a block."""
    mapnr = 3 * BS * 8 - 123
    rng = random.Random(3)
    dumped = set()
    pfn = 0
    while pfn < mapnr:  # runs of random lengths, some crossing block boundaries
        run = rng.choice([1, 2, 7, 300, 5000])
        if rng.random() < 0.5:
            dumped.update(range(pfn, min(pfn + run, mapnr)))
        pfn += run
    dumped.add(mapnr - 1)
    pages = {p: (ZLIB, zlib.compress(page_of(p), 1)) for p in dumped}
    blob, _ = build_kdump(pages, mapnr=mapnr)
    with KdumpFile(write(tmp_path, "big.kdump", blob)) as m:
        expect, start = [], None
        for p in range(mapnr + 1):
            if p in dumped and start is None:
                start = p
            elif p not in dumped and start is not None:
                expect.append((start * BS, p * BS))
                start = None
        assert m.ranges() == expect
        for p in rng.sample(sorted(dumped), 300) + [min(dumped), max(dumped)]:
            assert m.read(p * BS + 16, 8) == page_of(p)[16:24]
        absent = sorted(set(range(mapnr)) - dumped)
        for p in rng.sample(absent, 50):
            with pytest.raises(AbsentMemoryError):
                m.read(p * BS, 1)


def test_declarations():
    """One set of declarations: sizes from diskdump_mod.h; struct hot path agrees."""
    for order in ("big", "little"):
        assert DISK_DUMP_HEADER[order].sizeof() == 464
        assert KDUMP_SUB_HEADER[order].sizeof() == 104
        assert PAGE_DESC[order].sizeof() == 24 == PAGE_DESC_STRUCT[order].size
        raw = build_page_desc(0x123456789, 0xFFF, ZSTD, 7, byteorder=order)
        assert PAGE_DESC_STRUCT[order].unpack(raw) == (0x123456789, 0xFFF, ZSTD, 7)
        h = DISK_DUMP_HEADER[order].parse(build_disk_dump_header(order, block_size=BS))
        assert (h.signature, h.header_version, h.block_size) == (b"KDUMP   ", 6, BS)
    raw = build_disk_dump_header("big", status=0x21, nr_cpus=3)
    assert raw[424:428] == b"\0\0\0\x21" and raw[460:464] == b"\0\0\0\x03"  # spec offsets
    sub = build_kdump_sub_header("big", offset_note=0x1068, max_mapnr_64=0x40000)
    assert sub[48:56] == (0x1068).to_bytes(8, "big") and sub[96:104] == (0x40000).to_bytes(8, "big")
    assert FLAT_HEADER.sizeof() == 4096 and FLAT_RECORD.sizeof() == 16
    head = build_flat_header()
    assert head[:16] == b"makedumpfile\0\0\0\0" and head[16:32] == struct.pack(">qq", 1, 1)
    assert build_flat_end() == b"\xff" * 16


@pytest.mark.parametrize("order", ["big", "little"])
def test_writer_side_builders_equal_the_spec_packing(order):
    """sadump's own builders (the writer's) give the bytes packed from the spec's tables."""
    fields = {"status": 0x21, "block_size": BS, "sub_hdr_size": 3, "bitmap_blocks": 6,
              "max_mapnr": 0x38000, "current_cpu": 1, "nr_cpus": 2,
              "utsname": {"sysname": "Linux", "nodename": "n" * 70, "release": "6.1.0",
                          "machine": "s390x"},
              "timestamp": {"tv_sec": 1700000000, "tv_usec": 500000}}
    assert build_disk_dump_header(order, **fields) == spec.disk_dump_header(order, **fields)
    sub = {"phys_base": 1, "dump_level": 31, "split": 1, "offset_vmcoreinfo": 0x1100,
           "size_vmcoreinfo": 77, "offset_note": BS + 104, "size_note": 0x520,
           "max_mapnr_64": 1 << 40}
    assert build_kdump_sub_header(order, **sub) == spec.kdump_sub_header(order, **sub)
    assert build_page_desc(1 << 40, BS, ZSTD, 3, byteorder=order) == \
        spec.page_desc(1 << 40, BS, ZSTD, 3, order)
    for name in ("", "CORE", "VMCOREINFO"):
        assert build_note(Note(name, 0x305, b"\1\2\3"), order) == \
            spec.elf_note(name, 0x305, b"\1\2\3", order)
    assert build_flat_header() == spec.flat_header() and build_flat_end() == spec.flat_end()
    assert build_flat_record(1 << 33, b"abc") == spec.flat_record(1 << 33, b"abc")


# ---- bad input -----------------------------------------------------------------------------


def test_truncated_header(tmp_path):
    blob, _ = sample()
    with pytest.raises(ImageError) as e:
        KdumpFile(write(tmp_path, "t.kdump", blob[:300]))
    assert "truncated kdump header" in one_line(e)


@pytest.mark.parametrize("bs", [3000, 256, 1 << 17, 0, -4096])
def test_bad_block_size(tmp_path, bs):
    blob, _ = sample()
    bad = blob[:428] + struct.pack(">i", bs) + blob[432:]
    with pytest.raises(ImageError) as e:
        KdumpFile(write(tmp_path, "bs.kdump", bad))
    assert "not a power of two" in one_line(e)


def test_bad_header_version(tmp_path):
    blob, _ = sample()
    bad = blob[:8] + b"\x7f\xff\xff\xff" + blob[12:]
    with pytest.raises(ImageError) as e:
        KdumpFile(write(tmp_path, "v.kdump", bad))
    assert "header_version" in one_line(e)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("sub_hdr_size", 0x7FFFFFFF, "past the end of the file"),
        ("bitmap_blocks", 0xFFFFFFFE, "past the end of the file"),
        ("bitmap_blocks", 3, "even"),
        ("sub_hdr_size", -1, "negative sub_hdr_size"),
    ],
)
def test_bitmaps_past_end(tmp_path, field, value, words):
    blob, _ = sample(header={field: value})
    with pytest.raises(ImageError) as e:
        KdumpFile(write(tmp_path, "b.kdump", blob))
    assert words in one_line(e)


def test_max_mapnr_huge_vs_bitmap(tmp_path):
    blob, _ = sample(sub={"max_mapnr_64": 1 << 40})
    with pytest.raises(ImageError) as e:
        KdumpFile(write(tmp_path, "m.kdump", blob))
    assert "max_mapnr" in one_line(e)


def test_descriptors_past_end(tmp_path):
    """The bitmap promises more descriptors than the file holds."""
    blob, info = sample()
    with pytest.raises(ImageError) as e:
        KdumpFile(write(tmp_path, "d.kdump", blob[: info["desc_off"] + 24 * 3]))
    assert "page descriptors end at" in one_line(e)


def patch_desc(blob: bytes, info: dict, rank: int, **fields) -> bytes:
    at = info["desc_off"] + 24 * rank
    offset, size, flags, _ = struct.unpack(">qIIQ", blob[at : at + 24])
    new = page_desc(
        fields.get("offset", offset), fields.get("size", size), fields.get("flags", flags)
    )
    return blob[:at] + new + blob[at + 24 :]


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"offset": 1 << 40}, "outside the page data"),
        ({"offset": 8}, "outside the page data"),
        ({"size": BS + 1}, "has size"),
        ({"size": 0}, "has size"),
        ({"flags": 0x40}, "unknown compression flags"),
    ],
)
def test_bad_descriptor(tmp_path, fields, words):
    blob, info = sample()
    bad = patch_desc(blob, info, 8 - 1, **fields)  # pfn 8 has rank 7 (pfn 6 excluded)
    with KdumpFile(write(tmp_path, "p.kdump", bad)) as m:
        assert m.read(0, 8) == page_of(0)[:8]  # the rest stays readable
        with pytest.raises(ImageError) as e:
            m.read(8 * BS, 8)
        assert "pfn 0x8" in one_line(e) and words in str(e.value)
        if "offset" in fields or "size" in fields:
            with pytest.raises(ImageError):
                list(m.extents(7 * BS, 9 * BS))


def test_raw_page_must_be_full(tmp_path):
    blob, info = sample()
    bad = patch_desc(blob, info, 3, size=BS - 8)  # pfn 3 is raw
    with KdumpFile(write(tmp_path, "r.kdump", bad)) as m, pytest.raises(ImageError) as e:
        m.read(3 * BS, 8)
    assert "pfn 0x3" in one_line(e)


@pytest.mark.parametrize(
    "flags, stored",
    [
        (ZLIB, zlib.compress(b"short")),
        (ZLIB, b"\x78\x9cnot zlib at all"),
        (ZSTD, compress(ZSTD, bytes(BS * 2))),
        (ZSTD, b"\x28\xb5\x2f\xfdgarbage"),
        (SNAPPY, compress(SNAPPY, bytes(100))),
        (SNAPPY, b"\x80\x20\xff\xff"),
    ],
)
def test_bad_compressed_page(tmp_path, flags, stored):
    blob, _ = build_kdump({0: (0, page_of(0)), 1: (flags, stored)})
    with KdumpFile(write(tmp_path, "c.kdump", blob)) as m:
        assert m.read(0, 16) == page_of(0)[:16]
        with pytest.raises(ImageError) as e:
            m.read(BS, 16)
        assert "pfn 0x1" in one_line(e)


def test_lzo_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lzallright", None)  # import lzallright -> ImportError
    blob, _ = build_kdump({0: (LZO, b"\x11" * 40)})
    with KdumpFile(write(tmp_path, "l.kdump", blob)) as m, pytest.raises(ImageError) as e:
        m.read(0, 8)
    assert "lzallright" in one_line(e)


def test_snappy_through_cramjam(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "snappy", None)
    blob, _ = build_kdump({0: (SNAPPY, compress(SNAPPY, page_of(0)))})
    with KdumpFile(write(tmp_path, "s.kdump", blob)) as m:
        assert m.read(0, BS) == page_of(0)


def test_incomplete_flag(tmp_path):
    """status 0x8: a descriptor left zero (never written) is absent, not an error."""
    blob, info = sample(status=0x8 | ZLIB)
    blob = patch_desc(blob, info, 7, offset=0, size=0, flags=0)
    with KdumpFile(write(tmp_path, "i.kdump", blob)) as m:
        assert m.incomplete == "kdump header says the dump is incomplete"
        assert m.read(0, BS) == page_of(0)
        with pytest.raises(AbsentMemoryError):
            m.read(8 * BS, 8)


def test_incomplete_file_cut_in_descriptors(tmp_path):
    blob, info = sample(status=0x8)
    with KdumpFile(write(tmp_path, "ic.kdump", blob[: info["desc_off"] + 24 * 2])) as m:
        assert m.incomplete
        with pytest.raises(AbsentMemoryError):
            m.read(8 * BS, 8)


def test_bad_notes_are_a_warning(tmp_path):
    bad_note = struct.pack(">III", 5, 0x7FFFFFFF, 1) + b"CORE\0\0\0\0"
    blob, _ = build_kdump({0: (0, page_of(0))}, notes=bad_note)
    with KdumpFile(write(tmp_path, "n.kdump", blob)) as m:
        assert m.notes == [] and m.warnings
        assert m.read(0, 8) == page_of(0)[:8]
    blob, _ = build_kdump({0: (0, page_of(0))}, sub={"offset_note": 1 << 50, "size_note": 1 << 60})
    with KdumpFile(write(tmp_path, "n2.kdump", blob)) as m:
        assert m.notes == [] and "outside the file" in m.warnings[0]


def test_flattened_not_read_as_plain(tmp_path):
    blob, _ = sample()
    with pytest.raises(ImageError) as e:
        KdumpFile(write(tmp_path, "x.flat", flatten(blob)))
    assert "kdump-flat" in one_line(e)


@pytest.mark.parametrize("offset, size", [(-5, 16), (16, -1), ((1 << 63) - 8, 16)])
def test_flat_bad_record(tmp_path, offset, size):
    blob, _ = sample()
    flat = flatten(blob)
    bad = flat[:4096] + struct.pack(">qq", offset, size) + b"\0" * 16 + flat[4096:]
    with pytest.raises(ImageError) as e:
        FlattenedKdumpFile(write(tmp_path, "r.flat", bad))
    assert "flattened record at 0x1000" in one_line(e)


def test_flat_bad_header(tmp_path):
    blob, _ = sample()
    flat = flatten(blob)
    bad = flat[:24] + struct.pack(">q", 2) + flat[32:]
    with pytest.raises(ImageError) as e:
        FlattenedKdumpFile(write(tmp_path, "v.flat", bad))
    assert "version 2" in one_line(e)
    with pytest.raises(ImageError) as e:
        FlattenedKdumpFile(write(tmp_path, "t.flat", flat[:1000]))
    assert "truncated flattened header" in one_line(e)


def test_flat_missing_end_flag(tmp_path):
    blob, _ = sample()
    with FlattenedKdumpFile(write(tmp_path, "e.flat", flatten(blob, end=False))) as m:
        assert "no end marker" in m.incomplete
        assert any("end marker" in w for w in m.warnings)
        assert m.read(8 * BS, BS) == page_of(8)


def test_flat_record_runs_past_end(tmp_path):
    """A stream cut inside a record: earlier pages stay readable, cut pages are absent."""
    blob, _ = sample()
    flat = flatten(blob, piece=BS, shuffle=False, end=False)
    cut = flat[: len(flat) - 30]  # inside the last page's data
    with FlattenedKdumpFile(write(tmp_path, "c.flat", cut)) as m:
        assert m.incomplete and any("runs past the end" in w for w in m.warnings)
        assert m.read(0, BS) == page_of(0)
        assert m.read(4 * BS, BS) == page_of(4)
        with pytest.raises(AbsentMemoryError):
            m.read(8 * BS, BS)


def test_flat_later_record_wins(tmp_path):
    """A rewritten region (makedumpfile rewrites the sub header) reads as its last write."""
    blob, info = sample()
    at = info["where"][3] + 100  # inside raw page 3
    flat = flatten(blob, piece=5000, end=False)
    flat += flat_record(at, b"NEW!") + flat_record(at + 2, b"??") + flat_end()
    with FlattenedKdumpFile(write(tmp_path, "o.flat", flat)) as m:
        assert m.read(3 * BS + 98, 8) == page_of(3)[98:100] + b"NE??" + page_of(3)[104:106]
        assert m.read(0, BS) == page_of(0)


def test_flat_overlapping_absurdly(tmp_path):
    blob, _ = sample()
    flat = flatten(blob, end=False)
    flat += b"".join(flat_record(10, b"x" * 8) for _ in range(5000)) + flat_end()
    with pytest.raises(ImageError) as e:
        FlattenedKdumpFile(write(tmp_path, "a.flat", flat))
    assert "overlap" in one_line(e)


def test_flat_wild_offset(tmp_path):
    """A record far away stretches the rearranged file but no bitmap scan follows it; one
    past what a kdump file of s390x memory can be (2 * 2^46) is refused."""
    blob, _ = sample()
    flat = flatten(blob, end=False) + flat_record(1 << 46, b"x" * 8) + flat_end()
    with FlattenedKdumpFile(write(tmp_path, "f.flat", flat)) as m:
        assert m.read(8 * BS, BS) == page_of(8)
    blob, _ = sample(header={"bitmap_blocks": 0xFFFFFFFE})
    flat = flatten(blob, end=False) + flat_record(1 << 46, b"x" * 8) + flat_end()
    with pytest.raises(ImageError) as e:
        FlattenedKdumpFile(write(tmp_path, "g.flat", flat))
    assert "past the end of the file" in one_line(e)
    blob, _ = sample()
    flat = flatten(blob, end=False) + flat_record(1 << 50, b"x" * 8) + flat_end()
    with pytest.raises(ImageError) as e:
        FlattenedKdumpFile(write(tmp_path, "h.flat", flat))
    assert "past what a kdump file of s390x memory can be" in one_line(e)


def test_no_reader_allocates_by_header(tmp_path):
    """Files of all-0xff and all-zero bytes after a valid signature fail in one line."""
    for fill in (b"\xff", b"\0", b"\x7f"):
        with pytest.raises(ImageError) as e:
            KdumpFile(write(tmp_path, "f.kdump", b"KDUMP   " + fill * 8000))
        one_line(e)
        flat = flat_header() + fill * 64
        with pytest.raises(ImageError) as e2:  # no record holds a kdump header
            FlattenedKdumpFile(write(tmp_path, "f.flat", flat))
        assert "f.flat: " in one_line(e2)


# ---- real files --------------------------------------------------------------------------


def compare_with_raw(m, raw_path) -> int:
    """Every page the reader holds, compared a MiB at a time with the raw image."""
    checked = 0
    with open(raw_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as raw:
        for start, end in m.ranges():
            for a in range(start, end, 1 << 20):
                n = min(1 << 20, end - a)
                assert m.read(a, n) == raw[a : a + n], f"differs in [{a:#x}, +{n:#x})"
                checked += n
    return checked


def test_real_qemu_flat_equals_raw(real_file):
    with FlattenedKdumpFile(str(real_file("rimg-kdump.qemu-kdump-zlib.flat"))) as m:
        assert m.byteorder == "big" and m.block_size == 4096
        assert m.incomplete is None
        assert m.ranges() == [(0, 1 << 30)]  # dump-guest-memory excludes nothing
        assert m.read(0x409000, 8) == b"OSINFOSZ"  # os_info (guest README)
        assert m.read(0x38010008, 6) == b"S390EP"  # the loaded kdump kernel
        assert compare_with_raw(m, real_file("rimg-kdump.raw")) == 1 << 30
        prstatus = [n for n in m.notes if n.name == "CORE" and n.type == 1]
        assert len(prstatus) == 2
        assert not any(n.name == "VMCOREINFO" for n in m.notes)
        kinds = {e.kind for e in m.extents(0, 1 << 30)}
        assert kinds == {"zero", "data"}  # flattened: never "file"


def test_real_qemu_kdump_equals_raw(real_file):
    with KdumpFile(str(real_file("rimg-nokdump.qemu-kdump-zlib.kdump"))) as m:
        assert m.header["nr_cpus"] == 2
        assert compare_with_raw(m, real_file("rimg-nokdump.raw")) == 1 << 30
        assert len([n for n in m.notes if n.type == 1 and n.name == "CORE"]) == 2
        path = real_file("rimg-nokdump.raw")
        with open(path, "rb") as raw:
            for e in m.extents(0, 1 << 30):
                if e.kind == "zero":
                    raw.seek(e.paddr)
                    assert raw.read(min(e.size, 1 << 16)) == bytes(min(e.size, 1 << 16))
                elif e.kind == "file":
                    raw.seek(e.paddr)
                    with open(m.path, "rb") as f:
                        f.seek(e.file_offset)
                        assert f.read(e.size) == raw.read(e.size)


def test_real_makedumpfile_d31(real_file, tmp_path):
    with KdumpFile(str(real_file("rimg-kdump.makedumpfile-c-d31.kdump"))) as m:
        assert m.incomplete is None and m.warnings == []
        assert m.header["release"] == "6.1.192-rimg"
        assert m.header["dump_level"] == 31
        vmci = [n for n in m.notes if n.name == "VMCOREINFO"]
        assert len(vmci) == 1 and vmci[0].desc.startswith(b"OSRELEASE=6.1.192-rimg")
        ranges = m.ranges()
        # the dumped pages: the set bits of makedumpfile's own -d 31 bitmap of that vmcore
        # (filter/, read by the spec's layout in test_pages.reference), 7,867 of them
        from tests.test_pages import reference

        bits = np.unpackbits(reference(real_file("filter/rimg-kdump.d31.bitmaps"))["bitmap2"],
                             bitorder="little")
        pfns = np.flatnonzero(bits)
        cut = np.flatnonzero(np.diff(pfns) != 1)
        runs = zip(pfns[np.r_[0, cut + 1]], pfns[np.r_[cut, pfns.size - 1]] + 1, strict=True)
        assert ranges == [(int(a) * BS, int(b) * BS) for a, b in runs]
        assert m.size == 7867 * BS == pfns.size * BS  # -d 31 filtered pages out
        assert m.read(0x409000, 8) == b"OSINFOSZ"
        gap = ranges[0][1]  # the first excluded page is absent, not zero
        with pytest.raises(AbsentMemoryError):
            m.read(gap, 8)
        # makedumpfile read the kernel's /proc/vmcore: its pages are that file's pages
        from elftools.elf.elffile import ELFFile

        with open(real_file("rimg-kdump.proc-vmcore.elf"), "rb") as f:
            loads = [s for s in ELFFile(f).iter_segments() if s["p_type"] == "PT_LOAD"]
            assert len(loads) == 1 and loads[0]["p_paddr"] == 0
            base = loads[0]["p_offset"]
            for start, end in ranges:
                for a in range(start, end, 1 << 20):
                    n = min(1 << 20, end - a)
                    f.seek(base + a)
                    assert m.read(a, n) == f.read(n), f"differs at {a:#x}"


def test_real_truncated_flat(real_file, tmp_path):
    """The QEMU stream cut at 3 MiB: readable up to there, then absent, never a traceback."""
    src = real_file("rimg-kdump.qemu-kdump-zlib.flat")
    with open(src, "rb") as f:
        head = f.read(3 << 20)
    with FlattenedKdumpFile(write(tmp_path, "cut.flat", head)) as m, \
            open(real_file("rimg-kdump.raw"), "rb") as raw:
        assert m.incomplete
        assert m.read(0x409000, 8) == b"OSINFOSZ"
        seen = ""
        for pfn in range(0, 1 << 18, 97):
            try:
                page = m.read(pfn * 4096, 4096)
            except AbsentMemoryError:
                seen += "a"
                continue
            raw.seek(pfn * 4096)  # the same moment: a page that is there is the raw image's
            assert page == raw.read(4096), hex(pfn)
            seen += "p"
        # QEMU writes pages in pfn order: the pages before the cut are there, none after it
        kept = seen.count("p")
        assert 0 < kept < len(seen) and seen == "p" * kept + "a" * (len(seen) - kept)

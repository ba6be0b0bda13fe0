"""`sadump dump --format kdump`: makedumpfile's kdump-compressed format (spec dump-formats 2, 3),
plain and flattened, every codec; read back by an independent parser written from the spec, by
sadump's own readers and by drgn; a corrupting compressor, ENOSPC and a failing source."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import io
import json
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.errors import AbsentMemoryError, ImageError
from sadump.formats import codecs
from sadump.formats.kdump import FlattenedKdumpFile, KdumpFile
from sadump.formats.memory import Extent, PhysicalMemory
from sadump.formats.raw import RawImage
from sadump.writers import bitmap as kdump_bitmap
from sadump.writers import blocks as kdump_blocks
from sadump.writers import kdump as kdump_writer
from sadump.writers.blocks import PageBlock
from tests.fixtures import import_drgn
from tests.fixtures.builder import OSRELEASE, ImageSpec, MiB, write_elf, write_raw
from tests.fixtures.lzo1x import lzo1x_decompress_safe
from tests.test_dump import read_elf

runner = CliRunner()
PAGE = 4096
STATUS = {"zlib": 0x1, "lzo": 0x2, "snappy": 0x4, "zstd": 0x20, "none": 0}
CODEC_MODULE = {"zstd": "zstandard", "zlib": "zlib", "snappy": "cramjam", "lzo": "lzallright",
                "none": "zlib"}


def dump(image: Path, out: Path | str, *args: str):
    return runner.invoke(app, ["dump", str(image), "-o", str(out), "--format", "kdump", *args])


# ---- an independent kdump-compressed parser, written from spec section 3 ---------------------------
def decompress(flags: int, data: bytes) -> bytes:
    if flags == 0:
        return data
    if flags & 0x1:
        return zlib.decompress(data)
    if flags & 0x20:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data)
    if flags & 0x4:
        import cramjam

        return bytes(cramjam.snappy.decompress_raw(data))
    if flags & 0x2:
        return lzo1x_decompress_safe(data)
    raise AssertionError(f"flags {flags:#x}")


def parse_kdump(raw: bytes) -> dict:
    """Header, sub header, bitmaps and every page of a plain big-endian kdump file."""
    assert raw[:8] == b"KDUMP   "
    version, = struct.unpack_from(">i", raw, 8)
    uts = [raw[12 + 65 * i:12 + 65 * (i + 1)].split(b"\0")[0].decode() for i in range(6)]
    (tv_sec, tv_usec, status, bs, sub_blocks, bitmap_blocks, max_mapnr, _, _, _, current_cpu,
     nr_cpus) = struct.unpack_from(">qqIiiIIIIIIi", raw, 408)
    names = ("phys_base", "dump_level", "split", "start_pfn", "end_pfn", "offset_vmcoreinfo",
             "size_vmcoreinfo", "offset_note", "size_note", "offset_eraseinfo",
             "size_eraseinfo", "start_pfn_64", "end_pfn_64", "max_mapnr_64")
    sub = dict(zip(names, struct.unpack_from(">QiiQQqQqQqQQQQ", raw, bs), strict=True))
    half = bitmap_blocks // 2 * bs
    first = (1 + sub_blocks) * bs
    bm1, bm2 = raw[first:first + half], raw[first + half:first + 2 * half]

    def bits(bm: bytes) -> list[int]:
        return [i for i in range(sub["max_mapnr_64"]) if bm[i >> 3] >> (i & 7) & 1]

    dumped = bits(bm2)
    desc_at = first + 2 * half
    data_start = desc_at + 24 * len(dumped)
    descs = [struct.unpack_from(">qIIQ", raw, desc_at + 24 * i) for i in range(len(dumped))]
    pages = {pfn: decompress(flags, raw[off:off + size])
             for pfn, (off, size, flags, _) in zip(dumped, descs, strict=True)}
    return {"version": version, "uts": uts, "time": (tv_sec, tv_usec), "status": status,
            "block_size": bs, "sub_blocks": sub_blocks, "max_mapnr": max_mapnr,
            "current_cpu": current_cpu, "nr_cpus": nr_cpus, "sub": sub, "present": bits(bm1),
            "dumped": dumped, "descs": descs, "data_start": data_start, "pages": pages,
            "notes": raw[sub["offset_note"]:sub["offset_note"] + sub["size_note"]],
            "vmcoreinfo": raw[sub["offset_vmcoreinfo"]:
                              sub["offset_vmcoreinfo"] + sub["size_vmcoreinfo"]]}


def unflatten(stream: bytes) -> tuple[bytes, int]:
    """makedumpfile -R: records painted in order; returns the file and the record count."""
    assert stream[:12] == b"makedumpfile" and struct.unpack_from(">qq", stream, 16) == (1, 1)
    out, pos, count = bytearray(), 4096, 0
    while True:
        offset, size = struct.unpack_from(">qq", stream, pos)
        if offset == -1:
            assert size == -1 and pos + 16 == len(stream)
            return bytes(out), count
        data = stream[pos + 16:pos + 16 + size]
        assert len(data) == size
        out[len(out):] = bytes(max(0, offset + size - len(out)))
        out[offset:offset + size] = data
        pos += 16 + size
        count += 1


# ---- a synthetic image: holes, zero pages, compressible and incompressible pages --------------------
SPEC = ImageSpec(ranges=[(0, 40 * MiB), (48 * MiB, 64 * MiB)], crashkernel=(16 * MiB, 16 * MiB),
                 crashtime=1_700_000_000)
NOISE = 36 * MiB  # 64 KiB of random bytes (stored raw: they do not compress)


def pfns(ranges) -> list[int]:
    return [p for s, e in ranges for p in range(s // PAGE, e // PAGE)]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """An ELF core of SPEC (a raw file has no holes) with noise written into its memory."""
    SPEC.build().memory.write(NOISE, os.urandom(64 * 1024))  # the built memory is cached
    return write_elf(SPEC, tmp_path_factory.mktemp("img") / "mem.elf")


def mem(addr: int, size: int) -> bytes:
    return SPEC.build().memory.read(addr, size)


def memory_of(image: Path, pfn: int) -> bytes:
    return mem(pfn * PAGE, PAGE)


KDUMP_RANGES = [(0, 16 * MiB), (32 * MiB, 40 * MiB), (48 * MiB, 64 * MiB)]


@pytest.mark.parametrize("codec", ["zstd", "zlib", "snappy", "lzo", "none"])
def test_every_codec_reads_back_page_for_page(image, tmp_path, codec):
    importlib.import_module(CODEC_MODULE[codec])  # every codec is a dependency: missing fails
    out = tmp_path / "vmcore"
    res = dump(image, out, "--compress", codec, "--jobs", "3")
    assert res.exit_code == Exit.OK, res.stderr
    k = parse_kdump(out.read_bytes())
    assert k["version"] == 6 and k["block_size"] == PAGE and k["status"] == STATUS[codec]
    assert k["sub"]["dump_level"] == 1 and k["sub"]["phys_base"] == 0
    assert k["sub"]["split"] == 0 and k["sub"]["offset_eraseinfo"] == 0
    # kdump path: the crashkernel and the range gap are in neither bitmap
    assert k["present"] == k["dumped"] == pfns(KDUMP_RANGES)
    assert k["max_mapnr"] == k["sub"]["max_mapnr_64"] == 64 * MiB // PAGE
    for pfn in k["dumped"]:
        assert k["pages"][pfn] == memory_of(image, pfn), hex(pfn)
    # one shared zero page, first in the data area; other pages follow in pfn order
    zero = [d for pfn, d in zip(k["dumped"], k["descs"], strict=True)
            if memory_of(image, pfn) == bytes(PAGE)]
    assert zero and {d[:3] for d in zero} == {(k["data_start"], PAGE, 0)}
    data = [d[0] for d in k["descs"] if d[0] != k["data_start"]]
    assert data == sorted(data) and data[0] == k["data_start"] + PAGE
    noise = k["descs"][k["dumped"].index(NOISE // PAGE)]
    assert noise[1:3] == (PAGE, 0)  # incompressible: stored raw
    if codec != "none":
        assert any(d[2] == STATUS[codec] and d[1] < PAGE for d in k["descs"])
    # sadump's reader agrees
    with KdumpFile(str(out)) as back:
        assert back.ranges() == KDUMP_RANGES and back.incomplete is None
        for s, e in KDUMP_RANGES:
            assert back.read(s, e - s) == mem(s, e - s)


def test_header_notes_and_vmcoreinfo(image, tmp_path):
    assert dump(image, tmp_path / "vmcore").exit_code == Exit.OK
    assert runner.invoke(app, ["dump", str(image), "-o", str(tmp_path / "elf")]).exit_code == \
        Exit.OK
    k = parse_kdump((tmp_path / "vmcore").read_bytes())
    # utsname: the builder's init_uts_ns (sysname, nodename, release, version, machine, domain)
    assert k["uts"] == ["Linux", "synthetic", OSRELEASE, "#1 SMP", "s390x", "(none)"]
    assert k["time"] == (1_700_000_000, 0)  # CRASHTIME
    assert k["nr_cpus"] == 2 and k["current_cpu"] == 0
    # the notes are the ELF vmcore's PT_NOTE, byte for byte, right after the sub header
    elf = read_elf(tmp_path / "elf")
    with open(tmp_path / "elf", "rb") as f:
        f.seek(elf["phdrs"][0]["offset"])
        assert k["notes"] == f.read(elf["phdrs"][0]["filesz"])
    assert k["sub"]["offset_note"] == PAGE + 104
    assert k["sub_blocks"] == -(-(104 + len(k["notes"])) // PAGE)
    assert k["vmcoreinfo"] == SPEC.build().vmcoreinfo
    with KdumpFile(str(tmp_path / "vmcore")) as back:
        assert [(n.name, n.type, n.desc) for n in back.notes] == elf["notes"]


def test_output_does_not_depend_on_jobs(image, tmp_path):
    one, many = tmp_path / "one", tmp_path / "many"
    assert dump(image, one, "--jobs", "1", "--compress", "zlib").exit_code == Exit.OK
    assert dump(image, many, "--jobs", "5", "--compress", "zlib").exit_code == Exit.OK
    assert one.read_bytes() == many.read_bytes()


def test_full_dump_of_memory_with_holes(image, tmp_path):
    out = tmp_path / "vmcore"
    res = dump(image, out, "--mode", "full", "--compress", "zlib")
    assert res.exit_code == Exit.OK
    k = parse_kdump(out.read_bytes())
    assert k["dumped"] == pfns(SPEC.present)
    assert all(k["pages"][p] == memory_of(image, p) for p in k["dumped"])


def test_flattened_stdout_reads_back(image, tmp_path):
    res = runner.invoke(app, ["dump", str(image), "-o", "-", "--format", "kdump", "--json"])
    assert res.exit_code == Exit.OK, res.stderr
    stream = res.stdout_bytes
    summary = json.loads(res.stderr[res.stderr.index("{\n"):])
    assert summary["output"]["kdump"]["flattened"] is True
    assert summary["output"]["bytes_written"] == len(stream)
    rearranged, count = unflatten(stream)
    assert count > 4
    k = parse_kdump(rearranged)
    assert k["dumped"] == pfns(KDUMP_RANGES)
    assert all(k["pages"][p] == memory_of(image, p) for p in k["dumped"])
    # the same bytes as the plain file
    assert dump(image, tmp_path / "plain").exit_code == Exit.OK
    assert rearranged == (tmp_path / "plain").read_bytes()
    (tmp_path / "flat").write_bytes(stream)
    with FlattenedKdumpFile(str(tmp_path / "flat")) as back:
        assert back.ranges() == KDUMP_RANGES and back.incomplete is None
        assert back.read(NOISE, 64 * 1024) == mem(NOISE, 64 * 1024)


def test_flatten_to_a_file(image, tmp_path):
    res = dump(image, tmp_path / "vmcore.flat", "--flatten", "--compress", "zlib")
    assert res.exit_code == Exit.OK
    with FlattenedKdumpFile(str(tmp_path / "vmcore.flat")) as back:
        assert back.ranges() == KDUMP_RANGES
        assert back.read(0, 16 * MiB) == mem(0, 16 * MiB)


def test_options(image, tmp_path, monkeypatch):
    out = tmp_path / "v"
    res = dump(image, out, "--compress", "lz4")
    assert res.exit_code == Exit.USAGE and "'lz4' is not one of" in res.stderr
    res = dump(image, out, "--jobs", "0")
    assert res.exit_code == Exit.USAGE and "--jobs 0: a number of threads" in res.stderr
    res = runner.invoke(app, ["dump", str(image), "-o", str(out), "--compress", "zlib"])
    assert res.exit_code == Exit.USAGE and "--format kdump" in res.stderr
    res = runner.invoke(app, ["dump", str(image), "-o", str(out), "--flatten"])
    assert res.exit_code == Exit.USAGE and "--flatten: only with --format kdump" in res.stderr
    monkeypatch.setitem(sys.modules, "lzallright", None)  # import lzallright fails
    res = dump(image, out, "--compress", "lzo")
    assert res.exit_code == Exit.USAGE and "lzallright" in res.stderr
    assert not out.exists()
    monkeypatch.chdir(tmp_path)  # default names: vmcore, vmcore.flat with --flatten
    assert runner.invoke(app, ["dump", str(image), "--format", "kdump"]).exit_code == Exit.OK
    assert (tmp_path / "vmcore").read_bytes()[:8] == b"KDUMP   "
    res = runner.invoke(app, ["dump", str(image), "--format", "kdump", "--flatten"])
    assert res.exit_code == Exit.OK
    assert (tmp_path / "vmcore.flat").read_bytes()[:12] == b"makedumpfile"


def test_lzo_pages_are_lzo1x_streams(image, tmp_path):
    """makedumpfile -l: status and page flags 0x2, each page one raw LZO1X stream (no
    python-lzo header) that an LZO1X decoder written from the format turns into the page."""
    out = tmp_path / "vmcore"
    assert dump(image, out, "--compress", "lzo").exit_code == Exit.OK
    with KdumpFile(str(out)) as back:
        assert back.header["status"] == 0x2
        assert back.read(0, 16 * MiB) == mem(0, 16 * MiB)
    k = parse_kdump(out.read_bytes())
    assert any(d[2] == 0x2 for d in k["descs"])
    assert all(k["pages"][p] == memory_of(image, p) for p in k["dumped"])


def test_default_codec():
    assert kdump_writer.default_codec() == "zstd"
    opts = kdump_writer.KdumpOptions()
    assert opts.codec is None  # layout() takes DEFAULT_CODEC: zstd, a dependency


# ---- failures: nothing silently corrupt ------------------------------------------------------------
def corrupt_one_page(monkeypatch, codec: str = "zlib") -> None:
    """The codec gives the initrd's first page the bytes of its second (both compressible)."""
    real = codecs._FACTORIES[codec]

    def factory():
        codec_obj = real()
        compress = codec_obj.compress_pages

        def wrong(pages: list, probe: bool = True) -> list:
            out = compress(pages, probe)
            for i, page in enumerate(pages[:-1]):
                if bytes(page[:6]) == b"070701":  # the initrd's first page: the next one's
                    out[i] = compress([pages[i + 1]])[0]
                    break
            return out

        return dataclasses.replace(codec_obj, compress_pages=wrong)

    monkeypatch.setitem(codecs._FACTORIES, codec, factory)


@pytest.mark.parametrize(("jobs", "verify"), [("1", "memory"), ("3", "memory"), ("1", "file"),
                                             ("3", "file")])
def test_a_corrupting_compressor_is_caught_and_leaves_no_file(tmp_path, monkeypatch, jobs,
                                                               verify):
    """Both checks catch it: the page decoded in memory, and the block read back (CRC)."""
    spec = ImageSpec(crashtime=1)
    full = write_raw(spec, tmp_path / "mem.raw")
    corrupt_one_page(monkeypatch)
    monkeypatch.setenv("SADUMP_VERIFY", verify)
    out = tmp_path / "out" / "vmcore"
    out.parent.mkdir()
    res = dump(full, out, "--mode", "full", "--compress", "zlib", "--jobs", jobs)
    assert res.exit_code == Exit.NOT_WRITTEN, res.stderr
    assert "verification failed" in res.stderr and "nothing written" in res.stderr
    assert list(out.parent.iterdir()) == []  # no file, no temporary file


@pytest.mark.parametrize("verify", ["memory", "file"])
def test_a_corrupt_stream_ends_incomplete(tmp_path, monkeypatch, verify):
    full = write_raw(ImageSpec(crashtime=1), tmp_path / "mem.raw")
    corrupt_one_page(monkeypatch)
    monkeypatch.setenv("SADUMP_VERIFY", verify)
    res = runner.invoke(app, ["dump", str(full), "-o", "-", "--format", "kdump", "--mode",
                              "full", "--compress", "zlib"])
    assert res.exit_code == Exit.NOT_WRITTEN and "verification failed" in res.stderr
    rearranged, _ = unflatten(res.stdout_bytes)
    assert parse_kdump(rearranged)["status"] == 0x1 | 0x8  # zlib, INCOMPLETE


def test_enospc_leaves_no_file(image, tmp_path, monkeypatch):
    real, calls = os.pwrite, []

    def full_disk(fd, data, offset):
        calls.append(offset)
        if len(calls) > 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    out = tmp_path / "out" / "vmcore"
    out.parent.mkdir()
    res = dump(image, out, "--compress", "none")
    assert res.exit_code == Exit.NOT_WRITTEN
    assert "No space left on device" in res.stderr and "nothing written" in res.stderr
    assert list(out.parent.iterdir()) == []


class FlakyStdout:
    """A pipe into a full disk: one write fails with ENOSPC, the ones after it succeed."""

    def __init__(self, fail_after: int):
        self.buffer = self
        self.data = io.BytesIO()
        self.fail_after = fail_after
        self.failed = False

    def write(self, b) -> int:
        if not self.failed and self.data.tell() + len(b) > self.fail_after:
            self.failed = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.data.write(b)

    def flush(self) -> None:
        pass


def test_enospc_on_a_stream_ends_it_incomplete(image, tmp_path, monkeypatch):
    from sadump.analysis import analyse
    from sadump.dump_plan import plan_dump, write_dump
    from sadump.writers.sink import OutputError

    fake = FlakyStdout(fail_after=200_000)
    monkeypatch.setattr(sys, "stdout", fake)
    analysis = analyse(str(image))
    try:
        plan = plan_dump(analysis, "kdump", "kdump",
                         kdump_writer.KdumpOptions("zlib", 2, flatten=True))
        with pytest.raises(OutputError, match="No space left"):
            write_dump(plan, "-", progress=False)
    finally:
        analysis.close()
    stream = fake.data.getvalue()
    rearranged, _ = unflatten(stream)  # the stream still ends with an end marker
    assert parse_kdump(rearranged)["status"] == 0x1 | 0x8  # zlib, INCOMPLETE
    (tmp_path / "cut.flat").write_bytes(stream)
    with FlattenedKdumpFile(str(tmp_path / "cut.flat")) as back:
        assert back.incomplete and "incomplete" in back.incomplete
        assert back.read(0, PAGE) == memory_of(image, 0)  # written before the failure
        with pytest.raises(AbsentMemoryError):
            back.read(60 * MiB, PAGE)  # never written


def test_a_failing_source_ends_a_stream_incomplete(image, tmp_path, monkeypatch):
    real = kdump_writer.pack_block

    def failing(pfn0, data, codec, mode):
        data = data.read() if isinstance(data, PageBlock) else data  # read in the worker
        if b"<initrd>" in data:  # the initrd sits high in the crashkernel...
            raise ImageError("the image file went away")
        return real(pfn0, data, codec, mode)

    monkeypatch.setattr(kdump_writer, "pack_block", failing)
    full = write_raw(ImageSpec(crashtime=1), tmp_path / "mem.raw")
    res = runner.invoke(app, ["dump", str(full), "-o", "-", "--format", "kdump", "--mode",
                              "full", "--jobs", "2"])
    assert res.exit_code == Exit.IMAGE_ERROR and "went away" in res.stderr
    (tmp_path / "cut.flat").write_bytes(res.stdout_bytes)
    with FlattenedKdumpFile(str(tmp_path / "cut.flat")) as back:
        assert back.incomplete
        with open(full, "rb") as f:
            assert back.read(0, MiB) == f.read(MiB)
        with pytest.raises(AbsentMemoryError):
            back.read(63 * MiB, PAGE)


def test_verify_none_skips_the_checks(tmp_path, monkeypatch):
    """SADUMP_VERIFY=none: no check runs (the corrupt page is written, as asked), and the
    --json summary says so; an unknown mode is refused before anything is written."""
    full = write_raw(ImageSpec(crashtime=1), tmp_path / "mem.raw")
    corrupt_one_page(monkeypatch)
    monkeypatch.setenv("SADUMP_VERIFY", "none")
    out = tmp_path / "vmcore"
    res = dump(full, out, "--mode", "full", "--compress", "zlib", "--json")
    assert res.exit_code == Exit.OK, res.stderr
    assert json.loads(res.stdout)["output"]["kdump"]["verified"] == "not verified"
    monkeypatch.setenv("SADUMP_VERIFY", "sometimes")
    res = dump(full, tmp_path / "other", "--mode", "full")
    assert res.exit_code != Exit.OK and "sometimes" in res.stderr
    assert not (tmp_path / "other").exists()


# ---- blocks of unaligned memory --------------------------------------------------------------------
class Scattered(PhysicalMemory):
    """Present bytes at unaligned edges; a "zero" extent in the middle of each range."""

    def __init__(self, ranges):
        super().__init__("scattered")
        self._set_ranges(ranges)

    def _read(self, paddr: int, size: int) -> bytes:
        return bytes((a % 251) + 1 for a in range(paddr, paddr + size))

    def extents(self, start, end):
        mid = (start + end) // 2 // PAGE * PAGE
        if start < mid < end - PAGE:
            yield Extent(start, mid - start, "data")
            yield Extent(mid, PAGE, "zero")
            yield Extent(mid + PAGE, end - mid - PAGE, "data")
        else:
            yield Extent(start, end - start, "data")


def test_blocks_cover_each_page_once_with_zeros_outside_memory():
    from sadump.dump_plan import Segment

    ranges = [(0x100, 0x1800), (0x1C00, 0x3000), (0x5000, 0x6000), (0x7000, 0x107000 + 0x10)]
    mem = Scattered(ranges)
    segs = [Segment(s, s, e - s) for s, e in ranges]
    got = {}
    for pfn0, n, data in kdump_blocks.page_blocks(mem, segs):
        assert n <= 256 and (data is None or len(data) == n * PAGE)
        assert pfn0 // 256 == (pfn0 + n - 1) // 256  # inside one MiB
        for i in range(n):
            assert pfn0 + i not in got
            got[pfn0 + i] = bytes(PAGE) if data is None else bytes(data[i * PAGE:(i + 1) * PAGE])
    assert sorted(got) == sorted({0, 1, 2, 5} | set(range(7, 0x108)))
    for pfn, page in got.items():
        for off in (0, 0xFF, 0x100, 0x7FF, 0x800, 0xBFF, 0xC00, 0xFFF):
            addr = pfn * PAGE + off
            inside = any(s <= addr < e for s, e in ranges)
            zero_ext = any(addr // PAGE == ((s + e) // 2 // PAGE) for s, e in ranges
                           if s < (s + e) // 2 // PAGE * PAGE < e - PAGE)
            want = (addr % 251) + 1 if inside and not zero_ext else 0
            assert page[off] == want, (hex(addr), page[off], want)


def test_bitmap_chunks_set_exactly_the_runs():
    runs = [(0, 3), (5, 21), (4095, 4097), (9000, 9001)]
    bitmap = b"".join(c for _, c in kdump_bitmap.bitmap_chunks(runs, 2048, chunk=512))
    want = {p for a, b in runs for p in range(a, b)}
    assert {i for i in range(2048 * 8) if bitmap[i >> 3] >> (i & 7) & 1} == want


# ---- the real image ---------------------------------------------------------------------------------
CRASH = 0x38000000  # crashkernel base of rimg-kdump: the kdump path ends there


@pytest.fixture(scope="module")
def real_outputs(real_file, tmp_path_factory) -> dict:
    """The ELF vmcore and the kdump file (zstd) of rimg-kdump.raw, written once."""
    folder = tmp_path_factory.mktemp("real-kdump")
    raw = real_file("rimg-kdump.raw")
    done = {}
    for name, args in (("elf", []), ("kdump", ["--format", "kdump", "--json"]),
                       ("flat", ["--format", "kdump", "--flatten"])):
        out = folder / name
        before = time.time()
        res = runner.invoke(app, ["dump", str(raw), "-o", str(out), *args],
                            env={"SADUMP_VERIFY": None})  # the default check: memory
        done[f"{name}_written"] = (before, time.time())  # the dump was written between these
        assert res.exit_code == Exit.OK, res.stderr
        done[name] = out
        if name == "kdump":
            done["summary"] = json.loads(res.stdout)
    return done


def test_real_kdump_file_holds_the_images_pages(real_outputs, real_file):
    with KdumpFile(str(real_outputs["kdump"])) as back, RawImage(str(real_file(
            "rimg-kdump.raw"))) as raw:
        assert back.ranges() == [(0, CRASH)] and back.incomplete is None
        for pos in range(0, CRASH, 4 * MiB):
            assert back.read(pos, 4 * MiB) == raw.read(pos, 4 * MiB), hex(pos)


def test_real_kdump_header_matches_makedumpfiles(real_outputs, real_file):
    """The kernel's own makedumpfile (-c -d 31, of /proc/vmcore) wrote the same header facts."""
    with KdumpFile(str(real_outputs["kdump"])) as ours, KdumpFile(str(real_file(
            "rimg-kdump.makedumpfile-c-d31.kdump"))) as theirs:
        same = ("signature", "header_version", "byteorder", "block_size", "max_mapnr",
                "max_mapnr_64", "sysname", "nodename", "release", "version", "machine",
                "domainname", "phys_base", "offset_note", "split")
        assert {k: ours.header[k] for k in same} == {k: theirs.header[k] for k in same}
        assert ours.header["status"] == 0x20 and ours.header["dump_level"] == 1
        # the raw image was taken before the crash: no CRASHTIME, the time of writing
        before, after = real_outputs["kdump_written"]
        assert int(before) <= ours.header["timestamp"] <= after
        vmci = [n.desc for n in ours.notes if n.name == "VMCOREINFO"]
        assert vmci and vmci[0].startswith(b"OSRELEASE=6.1.192-rimg\n")
    summary = real_outputs["summary"]["output"]
    assert summary["format"] == "kdump" and summary["excluded"] == [CRASH, 1 << 30]
    kd = summary["kdump"]
    assert kd["pages"] == CRASH // PAGE == kd["zero_pages"] + kd["raw_pages"] + \
        kd["compressed_pages"]
    assert kd["compress"] == "zstd"
    assert kd["verified"] == ("each compressed page decoded again and compared with its source, "
                              "then opened with sadump's kdump reader")  # the default: memory
    assert any("no CRASHTIME" in w for w in real_outputs["summary"]["warnings"])


def test_real_notes_equal_the_elf_vmcores(real_outputs):
    elf = read_elf(real_outputs["elf"])
    for name, cls in (("kdump", KdumpFile), ("flat", FlattenedKdumpFile)):
        with cls(str(real_outputs[name])) as back:
            assert [(n.name, n.type, n.desc) for n in back.notes] == elf["notes"]


def test_real_flat_equals_plain(real_outputs):
    with KdumpFile(str(real_outputs["kdump"])) as plain, \
            FlattenedKdumpFile(str(real_outputs["flat"])) as flat:
        assert flat.ranges() == plain.ranges()
        # no CRASHTIME in the raw image: each file has its time of writing
        assert {**flat.header, "timestamp": 0} == {**plain.header, "timestamp": 0}
        for pos in (0, 0x100000, 0x12D0000, CRASH - MiB):
            assert flat.read(pos, MiB) == plain.read(pos, MiB)


def test_real_kdump_input_with_excluded_pages(real_file, tmp_path):
    """makedumpfile -d 31 left pages out: the same pages, no more, come out; the input is
    already a dump, so it is converted as it is and the status is 0 (issue 14)."""
    src = real_file("rimg-kdump.makedumpfile-c-d31.kdump")
    out = tmp_path / "vmcore"
    res = runner.invoke(app, ["dump", str(src), "-o", str(out), "--format", "kdump"])
    assert res.exit_code == Exit.OK, res.stderr
    with KdumpFile(str(src)) as theirs, KdumpFile(str(out)) as ours:
        assert ours.ranges() == theirs.ranges() and len(ours.ranges()) > 10
        for s, e in ours.ranges():
            assert ours.read(s, min(e - s, 8 * MiB)) == theirs.read(s, min(e - s, 8 * MiB))
        assert ours.header["nr_cpus"] == theirs.header["nr_cpus"] == 2


# ---- drgn: a Linux kernel core ------------------------------------------------------------------------
VMLINUX = "vmlinux-6.1.192-rimg"


@pytest.mark.parametrize("name", ["elf", "kdump", "flat"])
def test_drgn_opens_it_as_a_linux_kernel(real_outputs, real_file, name):
    drgn = import_drgn(kdump=name != "elf")
    from drgn.helpers.linux.printk import get_printk_records

    prog = drgn.Program()
    prog.set_core_dump(str(real_outputs[name]))
    assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
    assert prog.platform.arch == drgn.Architecture.S390X
    prog.load_debug_info([str(real_file(VMLINUX))])
    assert prog["init_uts_ns"].name.release.string_() == b"6.1.192-rimg"
    records = get_printk_records(prog)
    res = runner.invoke(app, ["dmesg", "--json", str(real_file("rimg-kdump.raw"))])
    ours = json.loads(res.stdout)["records"]
    assert len(records) == len(ours) > 50
    assert [(r.text.decode(), r.timestamp) for r in records[:20]] == \
        [(r["text"], r["ts_nsec"]) for r in ours[:20]]

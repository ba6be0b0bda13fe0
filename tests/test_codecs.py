"""The codec registry (sadump/formats/codecs.py) that the kdump reader and writer share: every
makedumpfile codec comes with `pip install .`; the real makedumpfile -l file reads; each codec
round-trips, checked by decoders that are not the ones sadump uses where one exists."""

from __future__ import annotations

import os
import random
import zlib

import pytest
from typer.testing import CliRunner

from sadump.cli import app
from sadump.formats import codecs
from sadump.formats.kdump import KdumpFile
from tests.fixtures.lzo1x import lzo1x_decompress_safe

PAGE = 4096
LZO_FILE = "rimg-kdump.makedumpfile-l-d31.kdump"
MAKEDUMPFILE_DMESG = "rimg-kdump.makedumpfile-s390x-dump-dmesg-of-proc-vmcore.txt"


def sample_pages() -> list[bytes]:
    rng = random.Random(12)
    text = b"".join(b"line %d of a kernel log\n" % i for i in range(400))[:PAGE]
    return [text, bytes(PAGE), os.urandom(PAGE), b"\xAA" * PAGE,
            bytes(rng.randrange(3) for _ in range(PAGE)),
            (b"\0" * 100 + b"\x01\x02\x03\x04" * 10) * 29 + bytes(PAGE - 29 * 140)]


@pytest.mark.parametrize("probe", [True, False])
@pytest.mark.parametrize("name", ["zstd", "zlib", "lzo", "snappy"])
def test_every_codec_round_trips(name, probe):
    codec = codecs.get(name)  # a dependency: never CodecUnavailable
    pages = sample_pages()
    frames = codec.compress_pages([memoryview(p) for p in pages], probe)
    assert [codec.decode(bytes(f), PAGE) for f in frames] == pages
    assert [bytes(p) for p in codec.decode_pages(frames, PAGE)] == pages
    for frame, page in zip(frames, pages, strict=True):  # independent decoders
        frame = bytes(frame)
        if name == "zlib":
            assert zlib.decompress(frame) == page
        elif name == "lzo":
            assert lzo1x_decompress_safe(frame, PAGE) == page  # makedumpfile's decoder
        elif name == "zstd":
            assert frame[:4] == b"\x28\xb5\x2f\xfd"  # one zstd frame per page


def test_flags_name_the_codec():
    assert [codecs.flag_name(f) for f in (0x1, 0x2, 0x4, 0x20, 0x0, 0x40)] == [
        "zlib", "lzo", "snappy", "zstd", None, None]
    assert {n: codecs.get(n).flag for n in codecs.NAMES} == {
        "zstd": 0x20, "zlib": 0x1, "lzo": 0x2, "snappy": 0x4, "none": 0}


def test_unknown_codec():
    with pytest.raises(codecs.CodecUnavailable, match="lz4"):
        codecs.get("lz4")


def test_real_lzo_file_gives_makedumpfiles_log(real_file, real_text):
    """makedumpfile 1.7.2 -l -d 31 of the kernel's /proc/vmcore: its log is the one
    makedumpfile --dump-dmesg took from that vmcore."""
    res = CliRunner().invoke(app, ["dmesg", str(real_file(LZO_FILE))])
    assert res.exit_code == 0, res.stderr
    assert res.stdout == real_text(MAKEDUMPFILE_DMESG)


def test_real_lzo_pages_decode_as_makedumpfiles_decoder_does(real_file):
    """Each LZO page of the real file that sadump reads is what the LZO1X decoder written
    from the kernel's lzo1x_decompress_safe makes of the stored bytes."""
    with KdumpFile(str(real_file(LZO_FILE))) as m:
        assert m.header["status"] & 0x2
        seen = 0
        for start, end in m.ranges()[:8]:
            for pfn in range(start // PAGE, min(end // PAGE, start // PAGE + 64)):
                off, size, flags, _ = m._descs(pfn, 1)[0]
                if flags & 0x2:
                    stored = m._pread(off, size)
                    assert lzo1x_decompress_safe(stored, PAGE) == m.read(pfn * PAGE, PAGE)
                    seen += 1
        assert seen > 20


def test_zstd_whole_block_test_for_random_memory():
    zstd = codecs.get("zstd")
    assert zstd.quick_size(os.urandom(1 << 20)) >= 1 << 20
    assert zstd.quick_size(b"".join(sample_pages()) * 40) < (1 << 20) // 2


def test_random_blocks_are_stored_raw_without_page_work():
    """A random MiB: every page raw, the payload the block itself; a zero page inside it
    still goes to the shared zero page (the block is then not taken as a whole)."""
    from sadump.writers.kdump import pack_block

    zstd = codecs.get("zstd")
    data = os.urandom(1 << 20)
    packed = pack_block(0, data, zstd, "memory")
    assert packed.sizes == [PAGE] * 256 and packed.raw == 256 and packed.payload == data
    holed = data[:5 * PAGE] + bytes(PAGE) + data[6 * PAGE:]
    packed = pack_block(0, holed, zstd, "memory")
    assert packed.sizes[5] == 0 and packed.raw == 255
    assert packed.payload == holed[:5 * PAGE] + holed[6 * PAGE:]

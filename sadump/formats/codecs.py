"""The page codecs of makedumpfile's kdump-compressed format, in one registry that the kdump
reader and the kdump writer both use (spec dump-formats 3: one page per compressed block).

Every codec comes from a wheel that `pip install sadump` brings: zlib (the standard
library), LZO (lzallright: LZO1X streams, decoded by liblzo2's lzo1x_decompress_safe as
makedumpfile reads them), snappy (cramjam: raw snappy blocks), zstd (zstandard: one frame
per page, level 1 as makedumpfile -z). The packages are imported only when a codec is first
asked for, so commands that never touch a kdump file do not pay for them.

Batch calls work on lists of pages (bytes-like) so that zstd's pages of a block are one C
call without the GIL.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from sadump.errors import SadumpError

#: the page flags / header status bits (spec 3.1): DUMP_DH_COMPRESSED_*
FLAG_ZLIB, FLAG_LZO, FLAG_SNAPPY, FLAG_ZSTD = 0x1, 0x2, 0x4, 0x20
NAMES = ("zstd", "zlib", "lzo", "snappy", "none")
FLAGS = {"zlib": FLAG_ZLIB, "lzo": FLAG_LZO, "snappy": FLAG_SNAPPY, "zstd": FLAG_ZSTD,
         "none": 0}
#: the Python package each codec needs (all of them are dependencies of sadump)
PACKAGES = {"zstd": "zstandard", "lzo": "lzallright", "snappy": "cramjam"}
#: level of zlib, as makedumpfile -c (Z_BEST_SPEED)
LEVEL = 1
#: zstd: each page is first tried at PROBE_LEVEL (fast: random pages cost little), and only
#: the pages that get smaller there are compressed at ZSTD_LEVEL (makedumpfile -z uses 1);
#: a block whose whole-block test says its pages compress skips the probe (writers.kdump)
ZSTD_PROBE_LEVEL = -5
ZSTD_LEVEL = 4
#: zstd's level for the whole-block test (about 2.3 GB/s per core on random bytes; -100
#: is faster but misses pages that level 4 shrinks: +400 KB on the real image)
ZSTD_BLOCK_PROBE_LEVEL = -20


class CodecUnavailable(SadumpError):
    """A codec whose Python package does not import (or an unknown codec name)."""


@dataclass(frozen=True)
class Codec:
    name: str
    flag: int
    #: (pages, probe) -> one compressed bytes-like per page (reentrant: one context per
    #: thread); probe=False: the caller knows the pages compress (see quick_size), a codec
    #: that tries each page cheaply first may skip that
    compress_pages: Callable[..., list] | None
    #: (data, block size) -> the page; raises on damage, never returns more than size bytes
    decode: Callable[[bytes, int], bytes] | None
    #: frames -> pages (one call for many pages where the package can)
    decode_pages: Callable[[list, int], list] | None
    #: buf -> its size after a very fast pass over all of it: not smaller than buf for
    #: random memory (its pages need not be tried one by one), well below it for memory
    #: whose pages compress; None: the codec has no such test
    quick_size: Callable[[object], int] | None = None


def flag_name(flags: int) -> str | None:
    """The codec a page's flags (or a header's status) name, None if none is known."""
    for name in ("zlib", "lzo", "snappy", "zstd"):
        if flags & FLAGS[name]:
            return name
    return None


def libdeflate_zlib(data: bytes, size: int) -> bytes | None:
    """libdeflate's inflate of a zlib stream of at most size bytes (2-4x zlib's speed; it
    wants the size, which a page or an s390_ext entry gives), or None where libdeflate is
    missing or refuses the stream: then zlib decodes it or says what is wrong."""
    try:
        import deflate
    except ImportError:
        return None
    try:
        return deflate.zlib_decompress(data, size)
    except deflate.DeflateError:
        return None


def _zlib() -> Codec:
    def decode(data: bytes, bs: int) -> bytes:
        out = libdeflate_zlib(data, bs)
        return out if out is not None else zlib.decompressobj().decompress(data, bs + 1)

    return Codec("zlib", FLAG_ZLIB,
                 lambda pages, probe=True: [zlib.compress(p, LEVEL) for p in pages],
                 decode, lambda frames, bs: [decode(bytes(f), bs) for f in frames])


def _zstd() -> Codec:
    import zstandard

    local = threading.local()  # zstandard contexts are not thread-safe: one per thread

    def cctx():
        c = getattr(local, "cctx", None)
        if c is None:
            c = local.cctx = (zstandard.ZstdCompressor(level=ZSTD_PROBE_LEVEL),
                              zstandard.ZstdCompressor(level=ZSTD_LEVEL),
                              zstandard.ZstdCompressor(level=ZSTD_BLOCK_PROBE_LEVEL,
                                                       write_content_size=False))
        return c

    def quick_size(buf) -> int:
        return len(cctx()[2].compress(buf))

    def dctx():
        d = getattr(local, "dctx", None)
        if d is None:
            d = local.dctx = zstandard.ZstdDecompressor()
        return d

    def compress(pages: list, probe: bool = True) -> list:
        """One frame per page; a page that the probe cannot shrink keeps the probe's frame
        (not smaller than the page: the writer stores such pages raw). probe=False: every
        page straight at ZSTD_LEVEL (the probe costs about 40% of level 4's time on pages
        that do shrink, so it pays only where many pages are random)."""
        if not pages:
            return []
        fast, final, _ = cctx()
        if not probe:
            return list(final.multi_compress_to_buffer(pages, threads=1))
        out = list(fast.multi_compress_to_buffer(pages, threads=1))
        if ZSTD_PROBE_LEVEL == ZSTD_LEVEL:
            return out
        small = [i for i, (p, z) in enumerate(zip(pages, out, strict=True)) if len(z) < len(p)]
        if small:
            again = final.multi_compress_to_buffer([pages[i] for i in small], threads=1)
            for i, z in zip(small, again, strict=True):
                out[i] = z
        return out

    def decode(data: bytes, bs: int) -> bytes:
        declared = zstandard.frame_content_size(data)
        if declared not in (-1, bs):
            raise ValueError(f"zstd frame holds {declared} bytes")
        return dctx().decompress(data, max_output_size=bs)

    def decode_pages(frames: list, bs: int) -> list:
        if not frames:
            return []
        sizes = struct.pack(f"={len(frames)}Q", *[bs] * len(frames))
        return list(dctx().multi_decompress_to_buffer(frames, decompressed_sizes=sizes,
                                                      threads=1))

    return Codec("zstd", FLAG_ZSTD, compress, decode, decode_pages, quick_size)


def _lzo() -> Codec:
    import lzallright

    local = threading.local()

    def ctx():
        c = getattr(local, "c", None)
        if c is None:
            c = local.c = lzallright.LZOCompressor()
        return c

    def decode(data: bytes, bs: int) -> bytes:
        page = ctx().decompress(bytes(data), bs)
        if len(page) > bs:
            raise ValueError(f"lzo block holds {len(page)} bytes")
        return page

    return Codec("lzo", FLAG_LZO,
                 lambda pages, probe=True: [ctx().compress(bytes(p)) for p in pages],
                 decode, lambda frames, bs: [decode(f, bs) for f in frames])


def snappy_length(data) -> int:
    """The uncompressed length varint that starts a raw snappy block (-1 if malformed)."""
    value = 0
    for i, b in enumerate(bytes(memoryview(data)[:5])):
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value
    return -1


def _snappy() -> Codec:
    import cramjam

    raw_compress = cramjam.snappy.compress_raw
    raw_decompress = cramjam.snappy.decompress_raw

    def decode(data, bs: int) -> bytes:
        n = snappy_length(data)
        if n != bs:  # checked before decompressing: no allocation sized by the block
            raise ValueError(f"snappy block holds {n} bytes")
        return bytes(raw_decompress(bytes(data)))

    return Codec("snappy", FLAG_SNAPPY,
                 lambda pages, probe=True: [raw_compress(bytes(p)) for p in pages],
                 decode, lambda frames, bs: [decode(f, bs) for f in frames])


_FACTORIES: dict[str, Callable[[], Codec]] = {"zstd": _zstd, "zlib": _zlib, "lzo": _lzo,
                                              "snappy": _snappy}


def get(name: str) -> Codec:
    """The codec `name` (one of NAMES); CodecUnavailable if unknown or its package is missing."""
    if name not in NAMES:
        raise CodecUnavailable(f"unknown codec {name!r}: one of {', '.join(NAMES)}")
    if name == "none":
        return Codec("none", 0, None, None, None)
    try:
        return _FACTORIES[name]()  # the import itself is cached by Python
    except ImportError:
        pkg = PACKAGES[name]
        raise CodecUnavailable(f"{name} needs the Python package {pkg}, which does not "
                               f"import (pip install {pkg})") from None

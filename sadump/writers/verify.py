"""Checks of what the kdump writer wrote, so that a codec or I/O bug never leaves a silently
corrupt dump (an OutputError: no file is left, a stream ends marked incomplete).

verify="memory" (the default): in the worker, right after compressing, each compressed page
is decoded again and compared with the page it came from (pages stored raw or as the zero
page are the source bytes themselves). verify="file": each block's CRC-32 is taken before
compressing; once written, its descriptors and data are read back from the file (a stream:
the records sent) and decoded, and the CRC compared. Both end by opening a finished file
with sadump's KdumpFile reader (ranges, status). verify="none": no checks.
"""

from __future__ import annotations

import os
import zlib

from sadump.constants import PAGE_SIZE
from sadump.errors import SadumpError
from sadump.formats.kdump import PAGE_DESC_STRUCT, KdumpFile
from sadump.writers.blocks import BLOCK_PAGES, ZERO_BLOCK, ZERO_PAGE, ZERO_SPAN
from sadump.writers.sink import OutputError

MODES = ("memory", "file", "none")
DESC = PAGE_DESC_STRUCT["big"]


def mismatch(pfn0: int, n: int, why: str) -> OutputError:
    return OutputError(f"verification failed: pfns [{pfn0:#x}, {pfn0 + n:#x}) do not decode "
                       f"to the memory they were compressed from ({why}): a bug in sadump, "
                       "please report it")


def decoded_equal(codec, frames: list, pages: list) -> bool:
    """The compressed frames decode to exactly these pages (bytes; one batch call)."""
    if not frames:
        return True
    try:
        got = codec.decode_pages(frames, PAGE_SIZE)
    except Exception:  # noqa: BLE001 - any codec error is a failed check
        return False
    return len(got) == len(pages) and all(
        len(g) == PAGE_SIZE and bytes(g) == p for g, p in zip(got, pages, strict=True))


_ZERO_CRCS: dict[int, int] = {}


def zero_crc(pages: int) -> int:
    """CRC-32 of `pages` zero pages (chained per MiB: no large buffer)."""
    if pages not in _ZERO_CRCS:
        crc, left = 0, pages
        while left:
            n = min(left, BLOCK_PAGES)
            crc = zlib.crc32(ZERO_BLOCK[:n * PAGE_SIZE], crc)
            left -= n
        if len(_ZERO_CRCS) < 64:
            _ZERO_CRCS[pages] = crc
        return crc
    return _ZERO_CRCS[pages]


class ReadBack:
    """verify="file": each block's descriptors and page data, decoded back to pages: their
    CRC-32 must be the one the worker took from the source before compressing. A plain file
    is read back (pread through a descriptor of its own); a flattened stream cannot be, so
    its records are decoded from the exact bytes sent."""

    def __init__(self, codec, data_start: int, path: str | None):
        self.codec = codec
        self.zero = (data_start, PAGE_SIZE, 0)
        self.zero_descs = DESC.pack(*self.zero, 0) * ZERO_SPAN
        self.fd = -1
        if path is not None:
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise OutputError(f"cannot read back {path}: {e.strerror}") from None

    def block(self, pfn0: int, n: int, crc: int, descs, payload, desc_pos: int,
              payload_off: int) -> None:
        """Check one block after it was written (in a worker thread: reentrant). A file is
        read back: payload is then only the length of the block's data."""
        if self.fd >= 0:
            descs = os.pread(self.fd, len(descs), desc_pos)
            payload = os.pread(self.fd, payload, payload_off) if payload else b""
        try:
            good = self._crc(n, descs, payload, payload_off) == crc
        except Exception as e:  # noqa: BLE001 - any codec error is a failed check
            raise mismatch(pfn0, n, f"{type(e).__name__}: {e}") from None
        if not good:
            raise mismatch(pfn0, n, "CRC-32 differs")

    def _crc(self, n: int, descs, payload, payload_off: int) -> int:
        if descs == self.zero_descs[:len(descs)]:
            return zero_crc(n)
        if len(payload) == n * PAGE_SIZE and list(DESC.iter_unpack(descs)) == [
                (payload_off + i * PAGE_SIZE, PAGE_SIZE, 0, 0) for i in range(n)]:
            return zlib.crc32(payload)  # all raw, one after the other (incompressible memory)
        view = memoryview(payload)
        pieces: list = []  # in page order: ZERO_PAGE, [start, end) of raw pages, a frame index
        frames = []
        for off, size, flags, _ in DESC.iter_unpack(descs):
            if (off, size, flags) == self.zero:
                pieces.append(ZERO_PAGE)
                continue
            rel = off - payload_off
            if rel < 0 or rel + size > len(view) or not 0 < size <= PAGE_SIZE:
                raise ValueError(f"descriptor ({off:#x}, {size:#x}) outside the block's data")
            if flags:
                pieces.append(len(frames))
                frames.append(view[rel:rel + size])
            elif size != PAGE_SIZE:
                raise ValueError(f"a raw page of {size} bytes")
            elif pieces and type(pieces[-1]) is list and pieces[-1][1] == rel:
                pieces[-1][1] += PAGE_SIZE  # raw pages one after the other: one piece
            else:
                pieces.append([rel, rel + PAGE_SIZE])
        pages = self.codec.decode_pages(frames, PAGE_SIZE) if frames else []
        if len(pages) != len(frames) or any(len(p) != PAGE_SIZE for p in pages):
            raise ValueError("a page does not decompress to 4096 bytes")
        crc = 0
        for p in pieces:
            kind = type(p)
            crc = zlib.crc32(pages[p] if kind is int else view[p[0]:p[1]] if kind is list
                             else p, crc)
        return crc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def check_file(path: str, runs: list[tuple[int, int]], status: int) -> None:
    """The finished file through sadump's reader: planned page ranges, status, a first page."""
    try:
        with KdumpFile(path) as reader:
            want = [(a * PAGE_SIZE, b * PAGE_SIZE) for a, b in runs]
            if reader.ranges() != want or reader.header["status"] != status:
                raise SadumpError("the reader sees other page ranges or status")
            first = runs[0][0] * PAGE_SIZE
            next(reader.extents(first, first + PAGE_SIZE))
    except SadumpError as e:
        raise OutputError(f"verification failed: {e} (a bug in sadump: please "
                          "report it)") from None

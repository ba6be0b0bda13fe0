"""The kdump-compressed writer: makedumpfile's format (spec dump-formats 2 and 3), big-endian
for s390x, block size 4096, header_version 6, dump level 1 (zero pages share one page).

File: main header | sub header + the plan's ELF notes | 1st bitmap (memory dumped) | 2nd
bitmap (the same: level 1 excludes nothing) | one page_desc per dumped pfn | the shared zero
page | page data in pfn order. Everything before the page data is known from the plan, so
each block's descriptors go straight to their place (desc_off + 24 x rank) after its data:
nothing is buffered but the blocks in flight.

This thread reads the source in blocks of up to 1 MiB; `jobs` threads compress them
(zstandard, zlib and snappy release the GIL; a block's zstd pages are one C call); this
thread writes them in pfn order. Each block's CRC-32 is taken in the worker from the pages
before compression; once written, the block is decoded again in a worker and its CRC
compared: a file is read back (its descriptors and data, with pread), a flattened stream
(which cannot be read back) is decoded from the exact records sent. A mismatch is an
OutputError: no file is left, a stream ends with its header marked incomplete. Last, the
finished file is opened with sadump's KdumpFile reader: ranges, status.

--flatten: makedumpfile's flattened format ({offset, size, data} records), for stdout.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import sys
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from sadump.errors import SadumpError
from sadump.formats.elf import NT_PRSTATUS, build_note
from sadump.formats.kdump import (
    DISK_DUMP_HEADER,
    DUMP_DH_COMPRESSED_INCOMPLETE,
    DUMP_DH_COMPRESSED_LZO,
    DUMP_DH_COMPRESSED_SNAPPY,
    DUMP_DH_COMPRESSED_ZLIB,
    DUMP_DH_COMPRESSED_ZSTD,
    FLAT_RECORD,
    PAGE_DESC_SIZE,
    PAGE_DESC_STRUCT,
    SUB_HEADER_SIZE,
    KdumpFile,
    _codec,
    build_disk_dump_header,
    build_flat_end,
    build_flat_header,
    build_kdump_sub_header,
)
from sadump.writing import OutputError

PAGE = 4096  # block size = s390x page size
BLOCK_PAGES = 256  # pages compressed as one task (1 MiB)
ZERO_SPAN = 4096  # pages of known zeros handled as one block (16 MiB)
IN_FLIGHT = 2  # blocks per job waiting to be compressed, and to be checked (a few MiB)
DUMP_LEVEL = 1
#: s390x MAX_PHYSMEM_BITS: memory above this cannot be in a kdump bitmap we write
MAX_PHYS = 1 << 46
ZERO_PAGE = bytes(PAGE)
ZERO_BLOCK = bytes(BLOCK_PAGES * PAGE)
DESC = PAGE_DESC_STRUCT["big"]

CODECS = ("zstd", "zlib", "lzo", "snappy", "none")
STATUS = {"zstd": DUMP_DH_COMPRESSED_ZSTD, "zlib": DUMP_DH_COMPRESSED_ZLIB,
          "lzo": DUMP_DH_COMPRESSED_LZO, "snappy": DUMP_DH_COMPRESSED_SNAPPY, "none": 0}
PACKAGES = {"zstd": "zstandard", "lzo": "python-lzo", "snappy": "python-snappy or cramjam"}


class CodecUnavailable(SadumpError):
    """--compress names a codec whose Python package is not installed (a usage error)."""


# ---- codecs: a list of 4 KiB page views -> one compressed bytes-like per page ----------------

def _zstd():
    import threading

    import zstandard

    local = threading.local()  # a ZstdCompressor is not thread-safe: one per thread

    def compress(pages: list) -> list:
        cctx = getattr(local, "cctx", None)
        if cctx is None:
            cctx = local.cctx = zstandard.ZstdCompressor(level=1)  # makedumpfile -z: level 1
        return list(cctx.multi_compress_to_buffer(pages, threads=1))  # one GIL-free call

    return compress


def _zlib():
    return lambda pages: [zlib.compress(p, 1) for p in pages]  # Z_BEST_SPEED, as -c


def _snappy():
    try:
        import cramjam

        fn = cramjam.snappy.compress_raw
    except ImportError:
        import snappy  # type: ignore[import-not-found]

        fn = snappy.compress
    return lambda pages: [fn(p) for p in pages]


def _lzo():
    import lzo  # type: ignore[import-not-found]

    return lambda pages: [lzo.compress(bytes(p), 1, False) for p in pages]  # lzo1x_1, raw


_COMPRESSORS = {"zstd": _zstd, "zlib": _zlib, "snappy": _snappy, "lzo": _lzo}


def page_compressor(codec: str) -> Callable[[list], list] | None:
    """The batch compressor of a codec (None for "none"); CodecUnavailable if not installed."""
    if codec not in CODECS:
        raise CodecUnavailable(f"--compress {codec!r}: one of {', '.join(CODECS)}")
    if codec == "none":
        return None
    try:
        return _COMPRESSORS[codec]()
    except ImportError:
        raise CodecUnavailable(f"--compress {codec}: install {PACKAGES[codec]} "
                               f"(pip install {PACKAGES[codec].split()[0]})") from None


def default_codec() -> str:
    """zstd when the zstandard package imports, else zlib (always there)."""
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return "zlib"
    return "zstd"


def _page_decoder(codec: str) -> Callable[[list], list] | None:
    """Decompress a list of pages (the check of what was written): zstd frames in one C call,
    the others with the reader's codecs."""
    if codec == "none":
        return None
    if codec == "zstd":
        import threading

        import zstandard

        local = threading.local()  # a ZstdDecompressor is not thread-safe: one per thread

        def unzstd(frames: list) -> list:
            dctx = getattr(local, "dctx", None)
            if dctx is None:
                dctx = local.dctx = zstandard.ZstdDecompressor()
            sizes = struct.pack(f"={len(frames)}Q", *[PAGE] * len(frames))
            return list(dctx.multi_decompress_to_buffer(frames, decompressed_sizes=sizes,
                                                        threads=1))

        return unzstd
    if codec == "zlib":
        return lambda frames: [zlib.decompress(f) for f in frames]
    fn = _codec(codec)
    return lambda frames: [fn(bytes(f), PAGE) for f in frames]


# ---- the layout: everything before the page data, decided from the plan ---------------------

@dataclass
class KdumpOptions:
    codec: str | None = None  # None: default_codec()
    jobs: int | None = None  # None: os.cpu_count()
    flatten: bool = False


@dataclass
class KdumpLayout:
    codec: str
    jobs: int
    flatten: bool
    runs: list[tuple[int, int]]  # dumped pfn runs [start, end), sorted, disjoint
    pages: int  # dumped pfns (set bits of each bitmap)
    max_mapnr: int
    bitmap_len: int  # bytes of ONE bitmap (a whole number of blocks)
    sub_block: bytes  # sub header + notes, padded to whole blocks
    header_fields: dict
    desc_off: int
    data_start: int  # the shared zero page; page data follows it
    # filled in while writing
    zero_pages: int = 0
    raw_pages: int = 0
    compressed_pages: int = 0
    data_end: int = 0
    verified: str = ""  # how the pages were checked, once they were

    def header(self, incomplete: bool = False) -> bytes:
        status = STATUS[self.codec] | (DUMP_DH_COMPRESSED_INCOMPLETE if incomplete else 0)
        head = build_disk_dump_header("big", status=status, **self.header_fields)
        return head.ljust(PAGE, b"\0")

    def summary(self) -> dict:
        return {"compress": self.codec, "jobs": self.jobs, "flattened": self.flatten,
                "dump_level": DUMP_LEVEL, "max_mapnr": self.max_mapnr, "pages": self.pages,
                "zero_pages": self.zero_pages, "raw_pages": self.raw_pages,
                "compressed_pages": self.compressed_pages, "verified": self.verified}


def _page_runs(segments) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for s in sorted(segments, key=lambda s: s.paddr):
        a, b = s.paddr // PAGE, -(-s.end // PAGE)
        if runs and a <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], b))
        else:
            runs.append((a, b))
    return runs


def _utsname(analysis, release: str | None, warnings: list[str]) -> dict:
    """init_uts_ns.name of the crashed kernel (as makedumpfile copies it), else a minimum."""
    fallback = {"sysname": "Linux", "release": release or "", "machine": "s390x"}
    info = analysis.vmcoreinfo.info
    sym = info.symbol("init_uts_ns") if info else None
    off = info.offset("uts_namespace.name") if info else None
    if sym is None or off is None:
        return fallback
    uts_struct = next(sc for sc in DISK_DUMP_HEADER["big"].subcons if sc.name == "utsname")
    try:
        raw = analysis.kernel_memory.read(sym + off, uts_struct.sizeof())
    except SadumpError as e:
        warnings.append(f"init_uts_ns unreadable ({e}): kdump header utsname from OSRELEASE")
        return fallback
    uts = {k: v for k, v in uts_struct.parse(raw).items() if not k.startswith("_")}
    if uts["sysname"] != "Linux" or (release and uts["release"] != release):
        warnings.append(f"init_uts_ns holds sysname {uts['sysname']!r}, release "
                        f"{uts['release']!r}: kdump header utsname from OSRELEASE")
        return fallback
    return uts


def layout(plan, options: KdumpOptions | None = None) -> None:
    """Memory segments only (the format is physical pages); decide every offset before the
    page data; plan.size is the largest the file can get (every page stored raw)."""
    opts = options or KdumpOptions()
    codec = opts.codec or default_codec()
    page_compressor(codec)  # fail now if its package is missing
    jobs = max(1, opts.jobs or os.cpu_count() or 1)
    plan.segments = sorted((s for s in plan.segments if s.what == "memory"),
                           key=lambda s: s.paddr)
    for s in plan.segments:
        s.offset = 0  # pages have no fixed place in the file
    runs = _page_runs(plan.segments)
    if runs[-1][1] * PAGE > MAX_PHYS:
        raise SadumpError(f"memory reaches {runs[-1][1] * PAGE:#x}, past the 2^46 bytes of "
                          "s390x physical memory a kdump bitmap covers")
    pages = sum(b - a for a, b in runs)
    max_mapnr = runs[-1][1]
    bitmap_bytes = (max_mapnr + 7) // 8
    bitmap_len = (bitmap_bytes + PAGE - 1) // PAGE * PAGE

    # the notes as the ELF writer puts them in PT_NOTE; VMCOREINFO's text found inside them
    built = [build_note(n) for n in plan.notes]
    notes = b"".join(built)
    vmci_off = vmci_size = 0
    for i, note in enumerate(plan.notes):
        if note.name == "VMCOREINFO":
            name_size = (len(note.name) + 1 + 3) // 4 * 4
            vmci_off = PAGE + SUB_HEADER_SIZE + sum(map(len, built[:i])) + 12 + name_size
            vmci_size = len(note.desc)
    sub_hdr_size = -(-(SUB_HEADER_SIZE + len(notes)) // PAGE)
    sub = build_kdump_sub_header(
        "big", phys_base=0, dump_level=DUMP_LEVEL, offset_vmcoreinfo=vmci_off,
        size_vmcoreinfo=vmci_size, offset_note=PAGE + SUB_HEADER_SIZE if notes else 0,
        size_note=len(notes), max_mapnr_64=max_mapnr)
    sub_block = (sub + notes).ljust(sub_hdr_size * PAGE, b"\0")

    warnings: list[str] = []
    info = plan.analysis.vmcoreinfo.info
    release = info.osrelease if info else None
    when = plan.analysis.crash_time()
    if when is None:
        import time

        when = int(time.time())
        warnings.append("no CRASHTIME in VMCOREINFO: the kdump header's timestamp is the "
                        "time of writing")
    fields = {"header_version": 6, "block_size": PAGE, "sub_hdr_size": sub_hdr_size,
              "bitmap_blocks": 2 * bitmap_len // PAGE,
              "max_mapnr": min(max_mapnr, 0xFFFFFFFF),
              "nr_cpus": sum(1 for n in plan.notes if n.name == "CORE" and n.type == NT_PRSTATUS),
              "utsname": _utsname(plan.analysis, release, warnings),
              "timestamp": {"tv_sec": when, "tv_usec": 0}}
    desc_off = (1 + sub_hdr_size) * PAGE + 2 * bitmap_len
    data_start = desc_off + PAGE_DESC_SIZE * pages
    lay = KdumpLayout(codec, jobs, opts.flatten, runs, pages, max_mapnr, bitmap_len,
                      sub_block, fields, desc_off, data_start)
    plan.kdump = lay
    plan.warnings.extend(warnings)
    # the free-space check's terms (dump_plan: need = size - known zero memory): the header
    # and sub header are `header`; bitmaps, descriptors, zero page (and flattened records'
    # heads) count as `trailer`; memory is every dumped page stored raw
    plan.header = lay.header() + sub_block
    trailer = data_start - len(plan.header) + PAGE
    if opts.flatten:
        windows = sum((b - 1) // BLOCK_PAGES - a // BLOCK_PAGES + 1 for a, b in runs)
        records = 8 + 2 * (-(-bitmap_len // (1 << 20))) + 4 * (windows + len(runs))
        trailer += PAGE + 16 * records
    plan.trailer = trailer
    plan.size = len(plan.header) + trailer + pages * PAGE


# ---- the bitmaps ----------------------------------------------------------------------------

def _bitmap_chunks(runs: list[tuple[int, int]], length: int,
                   chunk: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) of the bitmap of `runs`: bit (pfn & 7) of byte (pfn >> 3)."""
    i = 0
    for start in range(0, length, chunk):
        n = min(chunk, length - start)
        lo, hi = start * 8, (start + n) * 8  # pfns of this chunk
        buf = bytearray(n)
        while i < len(runs) and runs[i][1] <= lo:
            i += 1
        j = i
        while j < len(runs) and runs[j][0] < hi:
            a, b = max(runs[j][0], lo) - lo, min(runs[j][1], hi) - lo
            while a < b and a % 8:  # leading bits
                buf[a >> 3] |= 1 << (a & 7)
                a += 1
            full = (b - a) // 8
            buf[a >> 3:(a >> 3) + full] = b"\xff" * full
            a += full * 8
            while a < b:  # trailing bits
                buf[a >> 3] |= 1 << (a & 7)
                a += 1
            j += 1
        yield start, bytes(buf)


# ---- reading the source in blocks -----------------------------------------------------------

def _pread_full(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise SadumpError(f"the image file ends at byte {offset + len(data):#x}, before "
                              "the memory its header describes")
        data += more
    return data


def _pieces(mem, segments) -> Iterator[tuple[int, int, object]]:
    """(start, end, extent) of present memory in address order: data split at each MiB,
    known zeros at each 16 MiB of address."""
    for seg in segments:
        for ext in mem.extents(seg.paddr, seg.end):
            lo, hi = max(ext.paddr, seg.paddr), min(ext.paddr + ext.size, seg.end)
            unit = (ZERO_SPAN if ext.kind == "zero" else BLOCK_PAGES) * PAGE
            while lo < hi:
                step = min(hi, (lo // unit + 1) * unit)
                yield lo, step, ext
                lo = step


def _blocks(mem, segments) -> Iterator[tuple[int, int, bytes | bytearray | None]]:
    """(first pfn, pages, bytes) in pfn order: at most 1 MiB, inside one MiB of addresses;
    bytes None: all zero as the reader already knows (at most 16 MiB). Bytes of a page
    outside the segments (unaligned edges) read as zeros."""
    cur: list | None = None  # [pfn0, pfn1, zero only, parts]
    for lo, hi, ext in _pieces(mem, segments):
        zero = ext.kind == "zero"
        a, b = lo // PAGE, -(-hi // PAGE)
        if cur is not None and a < cur[1]:  # shares its first page with the block before
            if zero:
                a = cur[1]  # zero bytes: that page is in the block before already
                if a >= b:
                    continue
            elif cur[2]:
                cur[1] = a  # a zero-only block gives the page up to data
                if cur[1] == cur[0]:
                    cur = None
        if cur is not None and a <= cur[1] and (
                b - cur[0] <= ZERO_SPAN if zero and cur[2]
                else cur[0] // BLOCK_PAGES == (b - 1) // BLOCK_PAGES):
            cur[1] = b
            cur[2] = cur[2] and zero
            cur[3].append((lo, hi, ext))
            continue
        if cur is not None:
            yield _read_block(mem, *cur)
        cur = [a, b, zero, [(lo, hi, ext)]]
    if cur is not None:
        yield _read_block(mem, *cur)


def _read_block(mem, pfn0: int, pfn1: int, zero: bool, parts: list):
    if zero:
        return pfn0, pfn1 - pfn0, None
    base, size = pfn0 * PAGE, (pfn1 - pfn0) * PAGE
    lo, hi, ext = parts[0]
    if len(parts) == 1 and ext.kind == "file" and (lo, hi) == (base, base + size):
        return pfn0, pfn1 - pfn0, _pread_full(ext.fileno, size, ext.file_offset + lo - ext.paddr)
    buf = bytearray(size)
    for lo, hi, ext in parts:
        if ext.kind == "file":
            buf[lo - base:hi - base] = _pread_full(ext.fileno, hi - lo,
                                                   ext.file_offset + lo - ext.paddr)
        elif ext.kind == "data":
            buf[lo - base:hi - base] = mem.read(lo, hi - lo)
    return pfn0, pfn1 - pfn0, buf


# ---- compressing a block (in a worker thread) -----------------------------------------------

@dataclass
class Packed:
    """One block, compressed: per page its stored size (0: the shared zero page) and flags."""

    crc: int  # CRC-32 of the uncompressed pages, taken before compression
    sizes: list[int] | None  # None: every page is zero
    flags: list[int] | None
    payload: bytes = b""
    raw: int = 0  # pages stored uncompressed
    compressed: int = 0


def pack_block(data, compress, flag: int) -> Packed:
    """Zero pages are left to the shared page; a page that does not get smaller is raw."""
    crc = zlib.crc32(data)
    n = len(data) // PAGE
    if data == ZERO_BLOCK[:len(data)]:
        return Packed(crc, None, None)
    view = memoryview(data)
    words = view.cast("Q")  # a page whose first word is not 0 needs no full compare
    step = PAGE // 8
    nonzero = [i for i in range(n)
               if words[i * step] or data[i * PAGE:(i + 1) * PAGE] != ZERO_PAGE]
    pages = [view[i * PAGE:(i + 1) * PAGE] for i in nonzero]
    packed = compress(pages) if compress is not None else pages
    if len(packed) != len(pages):
        raise SadumpError(f"the compressor returned {len(packed)} pages for {len(pages)}")
    sizes, flags, parts = [0] * n, [0] * n, []
    raw = 0
    for i, page, z in zip(nonzero, pages, packed, strict=True):
        size = len(z)
        if size < PAGE and compress is not None:
            parts.append(z)
            sizes[i], flags[i] = size, flag
        else:
            parts.append(page)
            sizes[i] = PAGE
            raw += 1
    payload = data if raw == n else b"".join(parts)  # incompressible: no copy
    return Packed(crc, sizes, flags, bytes(payload), raw, len(pages) - raw)


_ZERO_CRCS: dict[int, int] = {}


def _zero_crc(pages: int) -> int:
    """CRC-32 of `pages` zero pages (chained per MiB: no large buffer)."""
    if pages not in _ZERO_CRCS:
        crc, left = 0, pages
        while left:
            n = min(left, BLOCK_PAGES)
            crc = zlib.crc32(ZERO_BLOCK[:n * PAGE], crc)
            left -= n
        if len(_ZERO_CRCS) < 64:
            _ZERO_CRCS[pages] = crc
        return crc
    return _ZERO_CRCS[pages]


# ---- where bytes go: a plain file, or flattened records -------------------------------------

class _PlainOut:
    """The kdump file itself: each piece at its offset (a file sink: pwrite, holes)."""

    def __init__(self, sink):
        if sink.stream is not None:
            raise SadumpError("a plain kdump file cannot be streamed: use --flatten")
        self.sink = sink

    def put(self, offset: int, data) -> int:
        self.sink.data(offset, data)
        return len(data)

    def reserve(self, size: int) -> None:
        """Give the file its largest length now, so that it can be read back while written."""
        try:
            os.ftruncate(self.sink.fd, size)
        except OSError as e:
            raise OutputError(f"cannot size {self.sink.target}: {e.strerror}") from None

    def end(self, data_end: int) -> None:
        self.sink.size = data_end  # finish() cuts the file to its real length

    def incomplete(self, header: bytes) -> None:
        self.sink.data(0, header)


class _FlatOut:
    """makedumpfile's flattened format: a 4 KiB header, then {offset, size, data} records in
    any order, then the end marker. Fits a stream (stdout) or a file."""

    def __init__(self, sink):
        self.sink = sink
        self.pos = 0
        self._send(build_flat_header())

    def _send(self, data) -> None:
        self.sink.data(self.pos, data)
        self.pos += len(data)

    def put(self, offset: int, data) -> int:
        """One record in one write: a stream that fails never ends inside a record head."""
        self._send(FLAT_RECORD.build({"offset": offset, "size": len(data)}) + data)
        return len(data) + 16

    def reserve(self, size: int) -> None:
        pass

    def end(self, data_end: int) -> None:
        self._send(build_flat_end())
        self.sink.size = self.pos

    def incomplete(self, header: bytes) -> None:
        """The stream ends with the header again, now flagged incomplete (the last record
        written wins when the stream is rearranged), and an end marker."""
        self.put(0, header)
        self._send(build_flat_end())
        self.sink.size = self.pos


# ---- checking what was written --------------------------------------------------------------

class _Check:
    """Each block's descriptors and page data, decoded back to pages: their CRC-32 must be
    the one the worker took from the source before compressing. A plain file is read back
    from the file (pread through a descriptor of its own); a flattened stream cannot be,
    so its records are decoded from the exact bytes sent. At the end a plain file is opened
    with sadump's KdumpFile reader, which must see the header, bitmaps and pages planned."""

    def __init__(self, lay: KdumpLayout, path: str | None):
        self.decode = _page_decoder(lay.codec)
        self.zero = (lay.data_start, PAGE, 0)
        self.zero_descs = DESC.pack(*self.zero, 0) * ZERO_SPAN
        self.path = path
        self.fd = -1
        if path is not None:
            try:
                self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise OutputError(f"cannot read back {path}: {e.strerror}") from None
        self.how = ("read back from the file, then opened with sadump's kdump reader"
                    if path is not None else "decoded from the records sent")

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
            raise _mismatch(pfn0, n, f"{type(e).__name__}: {e}") from None
        if not good:
            raise _mismatch(pfn0, n, "CRC-32 differs")

    def _crc(self, n: int, descs, payload, payload_off: int) -> int:
        if descs == self.zero_descs[:len(descs)]:
            return _zero_crc(n)
        if len(payload) == n * PAGE and list(DESC.iter_unpack(descs)) == [
                (payload_off + i * PAGE, PAGE, 0, 0) for i in range(n)]:
            return zlib.crc32(payload)  # all raw, one after the other (incompressible memory)
        view = memoryview(payload)
        pieces: list = []  # in page order: ZERO_PAGE, [start, end) of raw pages, a frame index
        frames = []
        for off, size, flags, _ in DESC.iter_unpack(descs):
            if (off, size, flags) == self.zero:
                pieces.append(ZERO_PAGE)
                continue
            rel = off - payload_off
            if rel < 0 or rel + size > len(view) or not 0 < size <= PAGE:
                raise ValueError(f"descriptor ({off:#x}, {size:#x}) outside the block's data")
            if flags:
                pieces.append(len(frames))
                frames.append(view[rel:rel + size])
            elif size != PAGE:
                raise ValueError(f"a raw page of {size} bytes")
            elif pieces and type(pieces[-1]) is list and pieces[-1][1] == rel:
                pieces[-1][1] += PAGE  # raw pages one after the other: one piece
            else:
                pieces.append([rel, rel + PAGE])
        pages = self.decode(frames) if frames else []
        if len(pages) != len(frames) or any(len(p) != PAGE for p in pages):
            raise ValueError("a page does not decompress to 4096 bytes")
        crc = 0
        for p in pieces:
            kind = type(p)
            crc = zlib.crc32(pages[p] if kind is int else view[p[0]:p[1]] if kind is list
                             else p, crc)
        return crc

    def whole(self, lay: KdumpLayout) -> None:
        """The finished file through the reader: planned page ranges, zero page, codec."""
        if self.path is None:
            return
        try:
            with KdumpFile(self.path) as reader:
                want = [(a * PAGE, b * PAGE) for a, b in lay.runs]
                if reader.ranges() != want or reader.header["status"] != STATUS[lay.codec]:
                    raise SadumpError("the reader sees other page ranges or status")
                first = lay.runs[0][0] * PAGE
                next(reader.extents(first, first + PAGE))
        except SadumpError as e:
            raise OutputError(f"verification failed: {e} (a bug in sadump: please "
                              "report it)") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _mismatch(pfn0: int, n: int, why: str) -> OutputError:
    return OutputError(f"verification failed: pfns [{pfn0:#x}, {pfn0 + n:#x}) do not decode "
                       f"to the memory they were compressed from ({why}): a bug in sadump, "
                       "please report it")


# ---- the writer -----------------------------------------------------------------------------

def write(plan, sink) -> None:
    """Header, sub header and notes, bitmaps, zero page, then blocks of pages in pfn order;
    on any failure the header says INCOMPLETE (status 0x8) before the error goes on."""
    lay: KdumpLayout = plan.kdump
    out = _FlatOut(sink) if lay.flatten else _PlainOut(sink)
    check = None
    try:
        out.put(0, lay.header())
        out.put(PAGE, lay.sub_block)
        first = PAGE + len(lay.sub_block)
        for off, chunk in _bitmap_chunks(lay.runs, lay.bitmap_len):
            out.put(first + off, chunk)
            out.put(first + lay.bitmap_len + off, chunk)  # level 1: dumped == present
        out.reserve(plan.size)
        out.put(lay.data_start, ZERO_PAGE)
        check = _Check(lay, None if lay.flatten else sink.tmp)
        _write_pages(plan, lay, out, sink, check)
        out.end(lay.data_end)
        if not lay.flatten:
            os.ftruncate(sink.fd, lay.data_end)
        check.whole(lay)
        lay.verified = check.how
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the first error is the one to report
            out.incomplete(lay.header(incomplete=True))
        raise
    finally:
        if check is not None:
            check.close()


def _write_pages(plan, lay: KdumpLayout, out, sink, check: _Check) -> None:
    """Read blocks (this thread), compress them (the pool), write them in pfn order (this
    thread), check each written block (the pool again); at most IN_FLIGHT x jobs blocks
    wait in each queue."""
    compress = page_compressor(lay.codec)
    flag = STATUS[lay.codec]
    zero_descs = DESC.pack(lay.data_start, PAGE, 0, 0) * ZERO_SPAN
    rank, data_pos = 0, lay.data_start + PAGE
    pool = ThreadPoolExecutor(lay.jobs, "kdump") if lay.jobs > 1 else None
    packing: deque = deque()  # (pfn0, n, Packed or its Future), in pfn order
    checking: deque = deque()  # Futures of block checks
    limit = IN_FLIGHT * lay.jobs

    def run(fn, *args):
        return pool.submit(fn, *args) if pool is not None else fn(*args)

    def emit(pfn0: int, n: int, item) -> None:
        nonlocal rank, data_pos
        packed = item.result() if isinstance(item, Future) else item
        if packed.sizes is None:
            descs = zero_descs[:PAGE_DESC_SIZE * n]
            lay.zero_pages += n
        else:
            descs = _descs(packed.sizes, packed.flags, data_pos, lay.data_start)
            lay.raw_pages += packed.raw
            lay.compressed_pages += packed.compressed
            lay.zero_pages += n - packed.raw - packed.compressed
        desc_pos = lay.desc_off + PAGE_DESC_SIZE * rank
        sent = out.put(data_pos, packed.payload) if packed.payload else 0
        sent += out.put(desc_pos, descs)  # after the data: a cut stream has no wild pointers
        checking.append(run(check.block, pfn0, n, packed.crc, descs,
                            packed.payload if check.fd < 0 else len(packed.payload),
                            desc_pos, data_pos))
        _progress(sink, n * (PAGE + PAGE_DESC_SIZE) - sent)
        rank += n
        data_pos += len(packed.payload)

    def settle(everything: bool = False) -> None:
        while checking and (everything or len(checking) > limit or _ready(checking[0])):
            item = checking.popleft()
            if isinstance(item, Future):
                item.result()  # raises the check's OutputError

    try:
        for pfn0, n, data in _blocks(plan.memory, plan.segments):
            if data is None:
                packing.append((pfn0, n, Packed(_zero_crc(n), None, None)))
            else:
                packing.append((pfn0, n, run(pack_block, data, compress, flag)))
            while packing and (len(packing) > limit or _ready(packing[0][2])):
                emit(*packing.popleft())
                settle()
        while packing:
            emit(*packing.popleft())
        settle(everything=True)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if rank != lay.pages:
        raise SadumpError(f"wrote {rank} page descriptors, the bitmap has {lay.pages}")
    lay.data_end = data_pos


def _descs(sizes: list[int], flags: list[int], pos: int, zero_off: int) -> bytes:
    """page_desc of each page of a block, its data from pos on (size 0: the zero page), built
    as 64-bit words: offset, size << 32 | flags, page_flags 0 (big-endian)."""
    n = len(sizes)
    offsets = list(itertools.accumulate(sizes, initial=pos))
    words = array("Q", bytes(PAGE_DESC_SIZE * n))
    if 0 in sizes:
        words[0::3] = array("Q", [o if s else zero_off for o, s in zip(offsets, sizes)])
        words[1::3] = array("Q", [(s or PAGE) << 32 | f for s, f in zip(sizes, flags)])
    else:
        del offsets[-1]
        words[0::3] = array("Q", offsets)
        words[1::3] = array("Q", [s << 32 | f for s, f in zip(sizes, flags)])
    if sys.byteorder == "little":
        words.byteswap()
    return words.tobytes()


def _ready(item) -> bool:
    return not isinstance(item, Future) or item.done()


def _progress(sink, n: int) -> None:
    """Count pages as the raw bytes they stand for (the bar's total is the raw size)."""
    if n > 0:
        sink._advance(n)

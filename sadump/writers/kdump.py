"""The kdump-compressed writer: makedumpfile's format (spec dump-formats 2 and 3), big-endian
for s390x, block size 4096, header_version 6, dump level 1 (zero pages share one page).

File: main header | sub header + the plan's ELF notes | 1st bitmap (memory dumped) | 2nd
bitmap (the same: level 1 excludes nothing) | one page_desc per dumped pfn | the shared zero
page | page data in pfn order. Everything before the page data is known from the plan, so
each block's descriptors go straight to their place (desc_off + 24 x rank) after its data:
nothing is buffered but the blocks in flight.

This thread reads the source in blocks of up to 1 MiB (writers.blocks.page_blocks); `jobs`
threads compress them (writers.pool; a block's pages are one codec call); this thread
writes them in pfn order; writers.verify checks them. --flatten: makedumpfile's flattened
format ({offset, size, data} records), for stdout.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import zlib
from array import array
from dataclasses import dataclass

from sadump.constants import MAX_PHYS_ADDR, MIB, PAGE_SIZE
from sadump.errors import SadumpError
from sadump.formats import codecs
from sadump.formats.codecs import CodecUnavailable
from sadump.formats.elf import NT_PRSTATUS, build_note
from sadump.formats.kdump import (
    DUMP_DH_COMPRESSED_INCOMPLETE,
    FLAT_RECORD,
    PAGE_DESC_SIZE,
    PAGE_DESC_STRUCT,
    SUB_HEADER_SIZE,
    build_disk_dump_header,
    build_flat_end,
    build_flat_header,
    build_kdump_sub_header,
)
from sadump.writers import Layout, need_bytes, verify
from sadump.writers.bitmap import bitmap_chunks, page_runs
from sadump.writers.blocks import (
    BLOCK_PAGES,
    ZERO_BLOCK,
    ZERO_PAGE,
    ZERO_SPAN,
    PageBlock,
    nonzero_pages,
)
from sadump.writers.blocks import page_blocks as _page_blocks
from sadump.writers.pool import Ordered
from sadump.writers.sink import OutputError

__all__ = ["CodecUnavailable", "KdumpLayout", "KdumpOptions", "layout", "page_compressor",
           "write"]

IN_FLIGHT = 2  # blocks per job waiting to be compressed, and to be checked (a few MiB)
DUMP_LEVEL = 1
DESC = PAGE_DESC_STRUCT["big"]
SWITCH_INTERVAL = 0.0002  # seconds: GIL hand-over while the pool runs
#: a block whose quick pass (Codec.quick_size) leaves at most this share of its non-zero
#: bytes is mostly memory that compresses (on the real images at most 1 page in 8 of such
#: blocks is random): its pages skip the codec's per-page probe, which costs more on the
#: pages that compress than the final level costs extra on the few random ones
QUICK_SURE = 0.9
CODECS = codecs.NAMES
#: the default codec (makedumpfile -z's); --compress chooses another
DEFAULT_CODEC = "zstd"


def page_compressor(codec: str):
    """The batch compressor of a codec (None for "none"); CodecUnavailable (a usage error)
    if the name is unknown or its package does not import."""
    if codec not in CODECS:
        raise CodecUnavailable(f"--compress {codec!r}: one of {', '.join(CODECS)}")
    try:
        return codecs.get(codec).compress_pages
    except CodecUnavailable as e:
        raise CodecUnavailable(f"--compress {codec}: {e}") from None


def default_codec() -> str:
    return DEFAULT_CODEC


# ---- the layout: everything before the page data, decided from the plan ---------------------

@dataclass
class KdumpOptions:
    codec: str | None = None  # None: DEFAULT_CODEC
    jobs: int | None = None  # None: os.cpu_count()
    flatten: bool = False
    #: verify.MODES; None: $SADUMP_VERIFY, else "memory"
    verify: str | None = None


@dataclass
class KdumpLayout(Layout):
    codec: str = DEFAULT_CODEC
    jobs: int = 1
    flatten: bool = False
    verify: str = "memory"
    runs: list = None  # dumped pfn runs [start, end), sorted, disjoint
    pages: int = 0  # dumped pfns (set bits of the 2nd bitmap)
    dump_level: int = DUMP_LEVEL
    #: a dump level's (1st, 2nd) packed bitmaps; None: both are `runs`
    bitmaps: tuple | None = None
    #: the memory whose pages are written: the plan's segments, or the 2nd bitmap's runs
    read_segments: list = None
    max_mapnr: int = 0
    bitmap_len: int = 0  # bytes of ONE bitmap (a whole number of blocks)
    sub_block: bytes = b""  # sub header + notes, padded to whole blocks
    header_fields: dict = None
    desc_off: int = 0
    data_start: int = 0  # the shared zero page; page data follows it
    # filled in while writing
    zero_pages: int = 0
    raw_pages: int = 0
    compressed_pages: int = 0
    data_end: int = 0
    verified: str = ""  # how the pages were checked, once they were

    @property
    def status(self) -> int:
        return codecs.FLAGS[self.codec]

    def header(self, incomplete: bool = False) -> bytes:
        status = self.status | (DUMP_DH_COMPRESSED_INCOMPLETE if incomplete else 0)
        head = build_disk_dump_header("big", status=status, **self.header_fields)
        return head.ljust(PAGE_SIZE, b"\0")

    def summary(self) -> dict:
        return {"kdump": {
            "compress": self.codec, "jobs": self.jobs, "flattened": self.flatten,
            "dump_level": self.dump_level, "max_mapnr": self.max_mapnr, "pages": self.pages,
            "zero_pages": self.zero_pages, "raw_pages": self.raw_pages,
            "compressed_pages": self.compressed_pages, "verified": self.verified}}


def _verify_mode(opts: KdumpOptions) -> str:
    mode = opts.verify or os.environ.get("SADUMP_VERIFY") or "memory"
    if mode not in verify.MODES:
        raise CodecUnavailable(f"verify mode {mode!r}: one of {', '.join(verify.MODES)}")
    return mode


def layout(plan, options: KdumpOptions | None = None) -> KdumpLayout:
    """Memory segments only (the format is physical pages); decide every offset before the
    page data; the size is the largest the file can get (every page stored raw)."""
    opts = options or KdumpOptions()
    codec = opts.codec or DEFAULT_CODEC
    page_compressor(codec)  # fail now if its package is missing
    jobs = max(1, opts.jobs or os.cpu_count() or 1)
    segments = sorted((s for s in plan.segments if s.what == "memory"), key=lambda s: s.paddr)
    runs = page_runs(segments, PAGE_SIZE)
    if runs[-1][1] * PAGE_SIZE > MAX_PHYS_ADDR:
        raise SadumpError(f"memory reaches {runs[-1][1] * PAGE_SIZE:#x}, past the 2^46 bytes of "
                          "s390x physical memory a kdump bitmap covers")
    max_mapnr, level, bitmaps, read = runs[-1][1], DUMP_LEVEL, None, segments
    pf = plan.page_filter
    if pf is not None:  # a dump level: makedumpfile's bitmaps; the 2nd one says what is read
        from sadump.page_filter import bit_runs

        runs = [(s, e) for starts, ends in bit_runs(pf.bitmap2, pf.max_mapnr)
                for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        if not runs:
            raise SadumpError(f"dump level {pf.level} leaves no page to dump")
        max_mapnr, level, bitmaps = pf.max_mapnr, pf.level, (pf.bitmap1, pf.bitmap2)
        read = [_Pages(s * PAGE_SIZE, (e - s) * PAGE_SIZE) for s, e in runs]
    pages = sum(b - a for a, b in runs)
    bitmap_bytes = (max_mapnr + 7) // 8
    bitmap_len = (bitmap_bytes + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE

    # the notes as the ELF writer puts them in PT_NOTE; VMCOREINFO's text found inside them
    built = [build_note(n) for n in plan.notes]
    notes = b"".join(built)
    vmci_off = vmci_size = 0
    for i, note in enumerate(plan.notes):
        if note.name == "VMCOREINFO":
            name_size = (len(note.name) + 1 + 3) // 4 * 4
            vmci_off = PAGE_SIZE + SUB_HEADER_SIZE + sum(map(len, built[:i])) + 12 + name_size
            vmci_size = len(note.desc)
    sub_hdr_size = -(-(SUB_HEADER_SIZE + len(notes)) // PAGE_SIZE)
    sub = build_kdump_sub_header(
        "big", phys_base=0, dump_level=level, offset_vmcoreinfo=vmci_off,
        size_vmcoreinfo=vmci_size, offset_note=PAGE_SIZE + SUB_HEADER_SIZE if notes else 0,
        size_note=len(notes), max_mapnr_64=max_mapnr)
    sub_block = (sub + notes).ljust(sub_hdr_size * PAGE_SIZE, b"\0")

    warnings: list[str] = []
    kernel = plan.kernel
    when = kernel.crash_time
    if when is None:
        import time

        when = int(time.time())
        warnings.append("no CRASHTIME in VMCOREINFO: the kdump header's timestamp is the "
                        "time of writing")
    utsname = kernel.utsname or {"sysname": "Linux", "release": kernel.release or "",
                                 "machine": "s390x"}
    fields = {"header_version": 6, "block_size": PAGE_SIZE, "sub_hdr_size": sub_hdr_size,
              "bitmap_blocks": 2 * bitmap_len // PAGE_SIZE,
              "max_mapnr": min(max_mapnr, 0xFFFFFFFF),
              "nr_cpus": sum(1 for n in plan.notes if n.name == "CORE" and n.type == NT_PRSTATUS),
              "utsname": utsname, "timestamp": {"tv_sec": when, "tv_usec": 0}}
    desc_off = (1 + sub_hdr_size) * PAGE_SIZE + 2 * bitmap_len
    data_start = desc_off + PAGE_DESC_SIZE * pages
    # the free-space check: header, sub header, bitmaps, descriptors, zero page (and the
    # flattened records' heads) are metadata; memory is every dumped page stored raw
    fixed = data_start + PAGE_SIZE
    if opts.flatten:
        windows = sum((b - 1) // BLOCK_PAGES - a // BLOCK_PAGES + 1 for a, b in runs)
        records = 8 + 2 * (-(-bitmap_len // (1 << 20))) + 4 * (windows + len(runs))
        fixed += PAGE_SIZE + 16 * records
    size = fixed + pages * PAGE_SIZE
    return KdumpLayout(size, need_bytes(plan, read, size, fixed), [(s, 0) for s in segments],
                       warnings, codec=codec, jobs=jobs, flatten=opts.flatten,
                       verify=_verify_mode(opts), runs=runs, pages=pages, max_mapnr=max_mapnr,
                       bitmap_len=bitmap_len, sub_block=sub_block, header_fields=fields,
                       desc_off=desc_off, data_start=data_start, dump_level=level,
                       bitmaps=bitmaps, read_segments=read)


@dataclass(frozen=True)
class _Pages:
    """A run of dumped pages, read like a plan segment."""

    paddr: int
    size: int

    @property
    def end(self) -> int:
        return self.paddr + self.size


def _bitmaps(lay: KdumpLayout):
    """(byte offset, 1st bitmap bytes, 2nd bitmap bytes) chunks, `bitmap_len` bytes each."""
    if lay.bitmaps is None:
        for off, chunk in bitmap_chunks(lay.runs, lay.bitmap_len):
            yield off, chunk, chunk  # no dump level: dumped == present
        return
    first, second = lay.bitmaps
    for off in range(0, lay.bitmap_len, MIB):
        n = min(MIB, lay.bitmap_len - off)
        yield (off, first[off:off + n].tobytes().ljust(n, b"\0"),
               second[off:off + n].tobytes().ljust(n, b"\0"))


# ---- compressing a block (in a worker thread) -----------------------------------------------

@dataclass
class Packed:
    """One block, compressed: per page its stored size (0: the shared zero page) and flags."""

    crc: int  # verify="file": CRC-32 of the uncompressed pages, taken before compression
    sizes: list[int] | None  # None: every page is zero
    flags: list[int] | None
    payload: bytes = b""
    raw: int = 0  # pages stored uncompressed
    compressed: int = 0


def pack_block(pfn0: int, data, codec, mode: str) -> Packed:
    """Zero pages are left to the shared page; a page that does not get smaller is raw.
    verify="memory": every compressed page is decoded again and compared with its source.
    data: the block's bytes, or a PageBlock to read them from (in the worker)."""
    if isinstance(data, PageBlock):
        data = data.read()
    crc = zlib.crc32(data) if mode == "file" else 0
    n = len(data) // PAGE_SIZE
    if len(data) <= len(ZERO_BLOCK) and ZERO_BLOCK.startswith(data):
        return Packed(crc, None, None)
    nonzero = nonzero_pages(data)
    quick = codec.quick_size(data) if codec.quick_size is not None else None
    if len(nonzero) == n and quick is not None and quick >= len(data):
        # random memory, no zero page: every page raw, nothing tried page by page
        return Packed(crc, [PAGE_SIZE] * n, [0] * n, bytes(data), n, 0)
    view = memoryview(data)
    pages = [view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] for i in nonzero]
    compress = codec.compress_pages
    probe = quick is None or quick > QUICK_SURE * len(pages) * PAGE_SIZE
    packed = compress(pages, probe) if compress is not None else pages
    if len(packed) != len(pages):
        raise SadumpError(f"the compressor returned {len(packed)} pages for {len(pages)}")
    lens = [len(z) for z in packed] if compress is not None else [PAGE_SIZE] * len(pages)
    sizes, flags = [0] * n, [0] * n
    if min(lens, default=PAGE_SIZE) >= PAGE_SIZE:  # nothing got smaller (random memory): all raw
        for i in nonzero:
            sizes[i] = PAGE_SIZE
        raw = len(pages)
        payload = data if raw == n else b"".join(pages)
        return Packed(crc, sizes, flags, bytes(payload), raw, 0)
    parts, raw, frames, sources = [], 0, [], []
    flag = codec.flag
    for i, page, z, size in zip(nonzero, pages, packed, lens, strict=True):
        if size < PAGE_SIZE:
            parts.append(z)
            sizes[i], flags[i] = size, flag
            if mode == "memory":
                frames.append(z)
                sources.append(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
        else:
            parts.append(page)
            sizes[i] = PAGE_SIZE
            raw += 1
    if frames and not verify.decoded_equal(codec, frames, sources):
        raise verify.mismatch(pfn0, n, "a compressed page decodes to other bytes")
    payload = b"".join(parts)
    return Packed(crc, sizes, flags, bytes(payload), raw, len(pages) - raw)


# ---- where bytes go: a plain file, or flattened records -------------------------------------

class _PlainOut:
    """The kdump file itself: each piece at its offset (a file sink: pwrite, holes)."""

    def __init__(self, sink):
        if sink.stream is not None:
            raise SadumpError("a plain kdump file cannot be streamed: use --flatten")
        self.sink = sink

    def put(self, offset: int, data, holes: bool = True) -> int:
        self.sink.data(offset, data, holes)
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

    def put(self, offset: int, data, holes: bool = True) -> int:
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


# ---- the writer -----------------------------------------------------------------------------

def write(plan, lay: KdumpLayout, sink) -> None:
    """Header, sub header and notes, bitmaps, zero page, then blocks of pages in pfn order;
    on any failure the header says INCOMPLETE (status 0x8) before the error goes on."""
    out = _FlatOut(sink) if lay.flatten else _PlainOut(sink)
    back = None
    try:
        out.put(0, lay.header(incomplete=bool(plan.analysis.image.incomplete)))  # the input's own
        out.put(PAGE_SIZE, lay.sub_block)
        first = PAGE_SIZE + len(lay.sub_block)
        for off, present, dumped in _bitmaps(lay):
            out.put(first + off, present)
            out.put(first + lay.bitmap_len + off, dumped)
        out.reserve(lay.size)
        out.put(lay.data_start, ZERO_PAGE)
        # from here on the file grows at its end: page data (plain) or records (flattened)
        sink.stream_from(out.pos if lay.flatten else lay.data_start + PAGE_SIZE)
        codec = codecs.get(lay.codec)
        if lay.verify == "file":
            back = verify.ReadBack(codec, lay.data_start, None if lay.flatten else sink.tmp)
        _write_pages(plan, lay, out, sink, codec, back)
        out.end(lay.data_end)
        if not lay.flatten:
            os.ftruncate(sink.fd, lay.data_end)
        if lay.verify != "none" and not lay.flatten:
            verify.check_file(sink.tmp, lay.runs, lay.status | (
                DUMP_DH_COMPRESSED_INCOMPLETE if plan.analysis.image.incomplete else 0))
        lay.verified = {
            "memory": "each compressed page decoded again and compared with its source",
            "file": "read back from the file" if not lay.flatten
            else "decoded from the records sent",
            "none": "not verified"}[lay.verify]
        if lay.verify != "none" and not lay.flatten:
            lay.verified += ", then opened with sadump's kdump reader"
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: the first error is the one to report
            out.incomplete(lay.header(incomplete=True))
        raise
    finally:
        if back is not None:
            back.close()


def _write_pages(plan, lay: KdumpLayout, out, sink, codec, back) -> None:
    """Read blocks (this thread), compress them (the pool), write them in pfn order (this
    thread), verify="file": check each written block (the pool again)."""
    zero_descs = DESC.pack(lay.data_start, PAGE_SIZE, 0, 0) * ZERO_SPAN
    rank, data_pos = 0, lay.data_start + PAGE_SIZE
    limit = IN_FLIGHT * lay.jobs
    packing, checking = Ordered(lay.jobs, limit, "kdump"), Ordered(lay.jobs, limit, "check")
    mode = lay.verify
    # this thread only reads, writes and hands out work: let it have the GIL back soon after
    # each system call (the default 5 ms lets a worker's Python hold the writes up)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)

    def emit(pfn0: int, n: int, packed: Packed) -> None:
        nonlocal rank, data_pos
        if packed.sizes is None:
            descs = zero_descs[:PAGE_DESC_SIZE * n]
            lay.zero_pages += n
        else:
            descs = _descs(packed.sizes, packed.flags, data_pos, lay.data_start)
            lay.raw_pages += packed.raw
            lay.compressed_pages += packed.compressed
            lay.zero_pages += n - packed.raw - packed.compressed
        desc_pos = lay.desc_off + PAGE_DESC_SIZE * rank
        # page data holds no zero page (those share the zero page): no holes to look for
        sent = out.put(data_pos, packed.payload, holes=False) if packed.payload else 0
        sent += out.put(desc_pos, descs)  # after the data: a cut stream has no wild pointers
        if back is not None:
            checking.submit(None, back.block, pfn0, n, packed.crc, descs,
                            packed.payload if back.fd < 0 else len(packed.payload),
                            desc_pos, data_pos)
        _progress(sink, n * (PAGE_SIZE + PAGE_DESC_SIZE) - sent)
        rank += n
        data_pos += len(packed.payload)

    try:
        for pfn0, n, data in _page_blocks(plan.memory, lay.read_segments, lazy=True):
            if data is None:
                crc = verify.zero_crc(n) if mode == "file" else 0
                packing.put((pfn0, n), Packed(crc, None, None))
            else:
                packing.submit((pfn0, n), pack_block, pfn0, data, codec, mode)
            for (p0, k), packed in packing.ready():
                emit(p0, k, packed)
                for _ in checking.ready():
                    pass
        for (p0, k), packed in packing.drain():
            emit(p0, k, packed)
        for _ in checking.drain():
            pass
    finally:
        packing.close()
        checking.close()
        sys.setswitchinterval(switch)
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
        words[1::3] = array("Q", [(s or PAGE_SIZE) << 32 | f for s, f in zip(sizes, flags)])
    else:
        del offsets[-1]
        words[0::3] = array("Q", offsets)
        words[1::3] = array("Q", [s << 32 | f for s, f in zip(sizes, flags)])
    if sys.byteorder == "little":
        words.byteswap()
    return words.tobytes()


def _progress(sink, n: int) -> None:
    """Count pages as the raw bytes they stand for (the bar's total is the raw size)."""
    if n > 0:
        sink._advance(n)

"""makedumpfile's kdump-compressed format, plain and flattened (spec dump-formats 2 and 3).

One implementation reads "the rearranged file" through `_pread(offset, size)`: a plain
file is its own rearranged file; a flattened file (a stream of {offset, size, data}
records) is served through a compact index of its records, never rewritten to disk.

Pages: the 2nd bitmap says which pfns were dumped; the page descriptor of a pfn is found
by the rank of its bit (cumulative popcounts per bitmap block make that O(1)).
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from array import array
from collections.abc import Iterator

from construct import (
    Bytes,
    ExprAdapter,
    Int32sb,
    Int32sl,
    Int32ub,
    Int32ul,
    Int64sb,
    Int64sl,
    Int64ub,
    Int64ul,
    Padding,
    Struct,
)

from sadump.constants import MAX_NOTE_BYTES, MAX_PHYS_ADDR, MAX_VMCOREINFO
from sadump.errors import AbsentMemoryError, ImageChanged, ImageError
from sadump.formats import codecs
from sadump.formats.elf import parse_notes
from sadump.formats.memory import (
    MAX_RANGES,
    Extent,
    FileImage,
    Note,
    RangeList,
    vmcoreinfo_phys_limit,
)

# ---- on-disk layouts (declared once; used to parse and to build) ---------------------------

SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096
FLAT_TYPE = 1
FLAT_VERSION = 1
FLAT_END = -1

#: disk_dump_header.status bits
DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20

UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")

#: a NUL-padded char[65] of struct new_utsname, seen as str
UtsString = ExprAdapter(
    Bytes(65),
    lambda obj, ctx: obj.split(b"\0", 1)[0].decode("utf-8", "replace"),
    lambda obj, ctx: obj.encode("utf-8")[:64].ljust(65, b"\0"),
)


def _ints(byteorder: str):
    if byteorder == "big":
        return Int32sb, Int32ub, Int64sb, Int64ub
    return Int32sl, Int32ul, Int64sl, Int64ul


def _disk_dump_header(byteorder: str) -> Struct:
    i32, u32, i64, _ = _ints(byteorder)
    return Struct(
        "signature" / Bytes(8),
        "header_version" / i32,
        "utsname" / Struct(*(name / UtsString for name in UTS_FIELDS)),
        Padding(6),
        "timestamp" / Struct("tv_sec" / i64, "tv_usec" / i64),
        "status" / u32,
        "block_size" / i32,
        "sub_hdr_size" / i32,
        "bitmap_blocks" / u32,
        "max_mapnr" / u32,
        "total_ram_blocks" / u32,
        "device_blocks" / u32,
        "written_blocks" / u32,
        "current_cpu" / u32,
        "nr_cpus" / i32,
    )


def _kdump_sub_header(byteorder: str) -> Struct:
    i32, _, i64, u64 = _ints(byteorder)
    return Struct(
        "phys_base" / u64,
        "dump_level" / i32,
        "split" / i32,
        "start_pfn" / u64,
        "end_pfn" / u64,
        "offset_vmcoreinfo" / i64,
        "size_vmcoreinfo" / u64,
        "offset_note" / i64,
        "size_note" / u64,
        "offset_eraseinfo" / i64,
        "size_eraseinfo" / u64,
        "start_pfn_64" / u64,
        "end_pfn_64" / u64,
        "max_mapnr_64" / u64,
    )


def _page_desc(byteorder: str) -> Struct:
    _, u32, i64, u64 = _ints(byteorder)
    return Struct("offset" / i64, "size" / u32, "flags" / u32, "page_flags" / u64)


ORDERS = ("big", "little")
DISK_DUMP_HEADER = {o: _disk_dump_header(o) for o in ORDERS}  # 464 bytes
KDUMP_SUB_HEADER = {o: _kdump_sub_header(o) for o in ORDERS}  # 104 bytes
PAGE_DESC = {o: _page_desc(o) for o in ORDERS}  # 24 bytes
#: the same page_desc for the per-page hot path: offset, size, flags, page_flags
PAGE_DESC_STRUCT = {"big": struct.Struct(">qIIQ"), "little": struct.Struct("<qIIQ")}
HEADER_SIZE = 464
SUB_HEADER_SIZE = 104
PAGE_DESC_SIZE = 24

#: flattened format: always big-endian, whatever the dumped machine
FLAT_HEADER = Struct(
    "signature" / Bytes(16),
    "type" / Int64sb,
    "version" / Int64sb,
    Padding(FLAT_HEADER_SIZE - 32),
)
FLAT_RECORD = Struct("offset" / Int64sb, "size" / Int64sb)
_FLAT_RECORD_STRUCT = struct.Struct(">qq")

#: header_version from which each sub-header field is valid (older: read as 0)
SUB_FIELD_SINCE = {
    "dump_level": 1,
    "split": 2,
    "start_pfn": 2,
    "end_pfn": 2,
    "offset_vmcoreinfo": 3,
    "size_vmcoreinfo": 3,
    "offset_note": 4,
    "size_note": 4,
    "offset_eraseinfo": 5,
    "size_eraseinfo": 5,
    "start_pfn_64": 6,
    "end_pfn_64": 6,
    "max_mapnr_64": 6,
}

_HEADER_DEFAULTS = {
    "signature": SIGNATURES[0],
    "header_version": 6,
    "status": 0,
    "block_size": 4096,
    "sub_hdr_size": 1,
    "bitmap_blocks": 2,
    "max_mapnr": 0,
    "total_ram_blocks": 0,
    "device_blocks": 0,
    "written_blocks": 0,
    "current_cpu": 0,
    "nr_cpus": 1,
}


def build_disk_dump_header(byteorder: str = "big", **fields) -> bytes:
    """The 464-byte main header; fields not given take makedumpfile's usual values."""
    values = dict(_HEADER_DEFAULTS, **fields)
    values["utsname"] = {name: "" for name in UTS_FIELDS} | dict(fields.get("utsname", {}))
    values["timestamp"] = {"tv_sec": 0, "tv_usec": 0} | dict(fields.get("timestamp", {}))
    return DISK_DUMP_HEADER[byteorder].build(values)


def build_kdump_sub_header(byteorder: str = "big", **fields) -> bytes:
    """The 104-byte sub header; unspecified fields are 0."""
    values = {sc.name: 0 for sc in KDUMP_SUB_HEADER[byteorder].subcons} | fields
    return KDUMP_SUB_HEADER[byteorder].build(values)


def build_page_desc(
    offset: int, size: int, flags: int = 0, page_flags: int = 0, byteorder: str = "big"
) -> bytes:
    return PAGE_DESC[byteorder].build(
        {"offset": offset, "size": size, "flags": flags, "page_flags": page_flags}
    )


def build_flat_header() -> bytes:
    return FLAT_HEADER.build(
        {"signature": FLAT_SIGNATURE.ljust(16, b"\0"), "type": FLAT_TYPE, "version": FLAT_VERSION}
    )


def build_flat_record(offset: int, data: bytes) -> bytes:
    """One flattened record: header then the bytes that go at `offset` of the rearranged file."""
    return FLAT_RECORD.build({"offset": offset, "size": len(data)}) + data


def build_flat_end() -> bytes:
    return FLAT_RECORD.build({"offset": FLAT_END, "size": FLAT_END})


# ---- helpers ---------------------------------------------------------------------------------

#: caps on sizes taken from headers (bounded allocations)
MAX_OVERLAPPING_RECORDS = 4096
_BITMAP_CHUNK = 1 << 20
_DESC_BATCH = 4096
#: a kdump file of 2^46 bytes of memory: headers, two 2 GiB bitmaps, descriptors and pages
#: stay below 2^47; a flattened record further out is damage
MAX_REARRANGED = 2 * MAX_PHYS_ADDR
#: runs of dumped pages sadump accepts (each is a present range): see memory.MAX_RANGES
MAX_RUNS = MAX_RANGES
_ONES = re.compile("1+")


def _valid_block_size(bs: int) -> bool:
    return 512 <= bs <= 65536 and bs & (bs - 1) == 0


def _detect_byteorder(head: bytes) -> str:
    """The byte order in which header_version and block_size are plausible (crash's test)."""
    sane = [o for o in ORDERS if 0 <= int.from_bytes(head[8:12], o, signed=True) < 0x1000]
    if not sane:
        version = int.from_bytes(head[8:12], "big", signed=True)
        raise ImageError(f"implausible kdump header_version {version:#x}")
    for order in sane:
        if _valid_block_size(int.from_bytes(head[428:432], order, signed=True)):
            return order
    bs = int.from_bytes(head[428:432], sane[0], signed=True)
    raise ImageError(f"kdump block_size {bs:#x} is not a power of two in [512, 64 KiB]")


# ---- the shared reader ---------------------------------------------------------------------


class _KdumpBase(FileImage):
    """kdump-compressed logic over `_pread` of the rearranged file (`_end` bytes long)."""

    format = "kdump"
    _plain = True

    def _load(self) -> None:
        self._end = self.file_size
        self._stored = self.file_size  # bytes the file really holds
        self._open_source()
        self._parse()

    # -- source: the rearranged file --
    def _open_source(self) -> None:
        """Plain file: nothing to index."""

    def _pread(self, offset: int, size: int) -> bytes:
        """Up to size bytes at offset of the rearranged file (short at its end only)."""
        if offset >= self._end or size <= 0:
            return b""
        want = min(size, self._end - offset)
        try:
            data = os.pread(self._fd, want, offset)
            while len(data) < want:
                more = os.pread(self._fd, want - len(data), offset + len(data))
                if not more:
                    raise ImageChanged(f"it ends at {offset + len(data):#x}, it was "
                                       f"{self._end:#x} bytes long")
                data += more
        except OSError as e:
            raise ImageChanged(f"reading {want:#x} bytes at {offset:#x}: "
                               f"{e.strerror or e}") from None
        return data

    # -- header --
    def _fail(self, msg: str) -> ImageError:
        return ImageError(f"{self.path}: {msg}")

    def _parse(self) -> None:
        head = self._pread(0, HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            raise self._fail(f"truncated kdump header ({len(head)} of {HEADER_SIZE} bytes)")
        if head[:8] not in SIGNATURES:
            hint = (
                " (a flattened file: read it as kdump-flat)" if head[:12] == FLAT_SIGNATURE else ""
            )
            raise self._fail(f"not a kdump-compressed file: signature {head[:8]!r}{hint}")
        try:
            order = _detect_byteorder(head)
        except ImageError as e:
            raise self._fail(str(e)) from None
        self.byteorder = order
        h = DISK_DUMP_HEADER[order].parse(head)
        bs = h.block_size
        self.block_size = bs
        version = h.header_version
        if h.sub_hdr_size < 0:
            raise self._fail(f"negative sub_hdr_size {h.sub_hdr_size}")
        if h.bitmap_blocks == 0 or h.bitmap_blocks % 2:
            raise self._fail(f"bitmap_blocks {h.bitmap_blocks} is not a positive even number")
        bitmaps_end = (1 + h.sub_hdr_size + h.bitmap_blocks) * bs
        # everything up to the bitmaps' end is written (but the padding of the two headers):
        # this also bounds the bitmap scan when a wild flattened record stretches _end
        limit = min(self._end, self._stored + 2 * bs)
        if bitmaps_end > limit:
            raise self._fail(
                f"sub_hdr_size {h.sub_hdr_size} and bitmap_blocks {h.bitmap_blocks} put the "
                f"bitmaps up to {bitmaps_end:#x}, past the end of the file ({limit:#x})"
            )
        sub_raw = b""
        if h.sub_hdr_size > 0 and h.signature == SIGNATURES[0]:  # DISKDUMP's differs
            sub_raw = self._pread(bs, SUB_HEADER_SIZE)
        s = KDUMP_SUB_HEADER[order].parse(sub_raw.ljust(SUB_HEADER_SIZE, b"\0"))
        # fields a header version does not have yet are 0
        sub = {name: value for name, value in s.items() if not name.startswith("_")}
        for name, v in SUB_FIELD_SINCE.items():
            if version < v:
                sub[name] = 0

        bitmap_len = h.bitmap_blocks // 2 * bs
        nbits = bitmap_len * 8
        mapnr = sub["max_mapnr_64"] or h.max_mapnr or nbits
        if mapnr > nbits:
            raise self._fail(
                f"max_mapnr {mapnr:#x} needs {(mapnr + 7) // 8:#x} bitmap bytes, "
                f"bitmap_blocks gives {bitmap_len:#x}"
            )
        self._mapnr = mapnr
        self._bitmap1 = (1 + h.sub_hdr_size) * bs
        self._bitmap2 = (1 + h.sub_hdr_size + h.bitmap_blocks // 2) * bs
        self._recorded: RangeList | bool | None = None
        self._desc_off = bitmaps_end

        uts = {name: getattr(h.utsname, name) for name in UTS_FIELDS}
        self.header = {
            "signature": h.signature.decode("ascii", "replace"),
            "header_version": version,
            "byteorder": order,
            **uts,
            "timestamp": h.timestamp.tv_sec + h.timestamp.tv_usec / 1e6,
            "status": h.status,
            "block_size": bs,
            "sub_hdr_size": h.sub_hdr_size,
            "bitmap_blocks": h.bitmap_blocks,
            "max_mapnr": mapnr,
            "current_cpu": h.current_cpu,
            "nr_cpus": h.nr_cpus,
            **sub,
        }
        self.dump_level = sub["dump_level"]
        if h.status & DUMP_DH_COMPRESSED_INCOMPLETE:
            self._mark_incomplete("kdump header says the dump is incomplete")
        if sub["split"]:
            self.warnings.append(
                f"part of a split dump: pfns [{sub['start_pfn_64']:#x}, {sub['end_pfn_64']:#x})"
            )

        self._desc = PAGE_DESC_STRUCT[order]
        self._page_cache: tuple[int, bytes] = (-1, b"")
        self._zero_ok: bool | None = None
        self._codec_cache: dict = {}
        self._read_notes(version, sub)
        self.phys_limit = vmcoreinfo_phys_limit(self.notes)
        if mapnr * bs > self.phys_limit:
            raise self._fail(
                f"max_mapnr {mapnr:#x} of {bs}-byte pages reaches {mapnr * bs:#x}, past what "
                f"s390x can address ({self.phys_limit:#x})")
        self._scan_bitmap(limit)
        self._data_start = self._desc_off + PAGE_DESC_SIZE * self._dumpable

    def _mark_incomplete(self, why: str) -> None:
        self.incomplete = f"{self.incomplete}; {why}" if self.incomplete else why

    def _read_notes(self, version: int, sub: dict) -> None:
        order = self.byteorder
        off, size = sub["offset_note"], sub["size_note"]
        if version >= 4 and size:
            if off < 0 or off + size > self._end:
                self.warnings.append(f"ELF notes [{off:#x}, +{size:#x}) lie outside the file")
            elif size > MAX_NOTE_BYTES:
                self.warnings.append(f"ELF notes of {size:#x} bytes ignored (too large)")
            else:
                self.notes.extend(parse_notes(self._pread(off, size), order, self.warnings))
        off, size = sub["offset_vmcoreinfo"], sub["size_vmcoreinfo"]
        if version >= 3 and size and not any(n.name == "VMCOREINFO" for n in self.notes):
            if off < 0 or off + size > self._end:
                self.warnings.append(f"VMCOREINFO [{off:#x}, +{size:#x}) lies outside the file")
            elif size > MAX_VMCOREINFO:
                self.warnings.append(f"VMCOREINFO of {size:#x} bytes ignored (too large)")
            else:
                self.notes.append(Note("VMCOREINFO", 0, self._pread(off, size)))

    # -- bitmap --
    def _scan_bitmap(self, file_end: int) -> None:
        """Two bounded passes over the 2nd bitmap: cumulative popcounts per block (the
        bitmap's own size in memory, 8 bytes a block), then the present runs, kept in two
        arrays. Only pages whose descriptor lies in the file can be present: an incomplete
        file ends its memory there; a complete one whose descriptors do not fit is corrupt."""
        bs = self.block_size
        bits = bs * 8
        nblocks = -(-self._mapnr // bits)
        room = max(0, (file_end - self._desc_off) // PAGE_DESC_SIZE)
        cum = array("q", [0])
        total = 0
        per_chunk = max(1, _BITMAP_CHUNK // bs)
        for first in range(0, nblocks, per_chunk):
            count = min(per_chunk, nblocks - first)
            chunk = self._pread(self._bitmap2 + first * bs, count * bs)
            if len(chunk) != count * bs:
                raise self._fail("the 2nd bitmap is cut short by the end of the file")
            for j in range(count):
                x = int.from_bytes(chunk[j * bs : (j + 1) * bs], "little")
                base = (first + j) * bits
                if base + bits > self._mapnr:
                    x &= (1 << (self._mapnr - base)) - 1
                total += x.bit_count()
                cum.append(total)
        self._cum = cum
        self._bm_cache: tuple[int, int] = (-1, 0)
        end_pfn = self._mapnr
        if total > room:
            if not self.incomplete:
                raise self._fail(
                    f"{total} page descriptors end at "
                    f"{self._desc_off + PAGE_DESC_SIZE * total:#x}, past the end of the file "
                    f"({file_end:#x})")
            end_pfn = self._select(room)
            self.warnings.append(
                f"the bitmap marks {total} pages dumped, the file holds descriptors of the "
                f"first {room}: memory from pfn {end_pfn:#x} on is absent")
            total = room
        self._dumpable = total
        self._present_pfns = end_pfn
        self._set_ranges(self._runs(end_pfn))

    def _select(self, rank: int) -> int:
        """The pfn of the dumped page of the given rank (0-based)."""
        bits = self.block_size * 8
        blk = bisect.bisect_right(self._cum, rank) - 1
        x = self._bitmap_block(blk)
        need = rank - self._cum[blk]
        lo, hi = 0, bits  # smallest bit b with popcount(x & (2^b - 1)) > need
        while lo < hi:
            mid = (lo + hi) // 2
            if (x & ((1 << (mid + 1)) - 1)).bit_count() > need:
                hi = mid
            else:
                lo = mid + 1
        return blk * bits + lo

    def recorded_ranges(self) -> RangeList | None:
        """The 1st bitmap as byte ranges: the memory the dumped system had, dumped or left out
        by a dump level (None when it cannot be read or is too fragmented)."""
        if self._recorded is None:
            try:
                self._recorded = self._runs(self._mapnr, self._bitmap1, "1st")
            except ImageError as e:
                self.warnings.append(f"1st bitmap not used: {e}")
                self._recorded = False
        return self._recorded or None

    def _runs(self, end_pfn: int, bitmap: int | None = None, which: str = "2nd") -> RangeList:
        """Runs of set bits below end_pfn (of the 2nd bitmap, or of the bitmap at file offset
        `bitmap`) as byte ranges, found by the regex engine on the bits of one chunk at a time
        (no Python work per bit)."""
        bs = self.block_size
        bitmap = self._bitmap2 if bitmap is None else bitmap
        kind = "dumped" if which == "2nd" else "present"
        starts, ends = array("Q"), array("Q")
        chunk_bits = _BITMAP_CHUNK * 8
        for pfn0 in range(0, end_pfn, chunk_bits):
            n = min(chunk_bits, end_pfn - pfn0)
            raw = self._pread(bitmap + pfn0 // 8, (n + 7) // 8)
            x = int.from_bytes(raw, "little") & ((1 << n) - 1)
            if not x:
                continue
            lsb_first = bin(x)[:1:-1]  # character i = bit i = pfn pfn0 + i
            for m in _ONES.finditer(lsb_first):
                a, b = (pfn0 + m.start()) * bs, (pfn0 + m.end()) * bs
                if ends and ends[-1] == a:
                    ends[-1] = b
                    continue
                if len(starts) == MAX_RUNS:
                    raise self._fail(
                        f"the {which} bitmap holds more than {MAX_RUNS} runs of {kind} pages "
                        f"(from pfn {a // bs:#x} on): too fragmented to be a dump sadump reads")
                starts.append(a)
                ends.append(b)
        return RangeList(starts, ends)

    def _bitmap_block(self, blk: int) -> int:
        if self._bm_cache[0] != blk:
            bs = self.block_size
            raw = self._pread(self._bitmap2 + blk * bs, bs)
            x = int.from_bytes(raw, "little")
            base = blk * bs * 8
            if base + bs * 8 > self._mapnr:
                x &= (1 << max(0, self._mapnr - base)) - 1
            self._bm_cache = (blk, x)
        return self._bm_cache[1]

    def _rank(self, pfn: int) -> int:
        """Number of dumped pages below pfn = index of pfn's descriptor."""
        bits = self.block_size * 8
        blk, bit = divmod(pfn, bits)
        if blk >= len(self._cum) - 1:
            return self._cum[-1]
        return self._cum[blk] + (self._bitmap_block(blk) & ((1 << bit) - 1)).bit_count()

    def _descs(self, pfn: int, count: int) -> list[tuple[int, int, int, int]]:
        """Descriptors of count consecutive dumped pages starting at pfn."""
        rank = self._rank(pfn)
        if self._rank(pfn + count) - rank != count:
            raise AbsentMemoryError(
                pfn * self.block_size, count * self.block_size, "excluded from the kdump file"
            )
        raw = self._pread(self._desc_off + PAGE_DESC_SIZE * rank, PAGE_DESC_SIZE * count)
        if len(raw) < PAGE_DESC_SIZE * count:
            if not self.incomplete:
                raise self._fail(
                    f"page descriptor of pfn {pfn + len(raw) // 24:#x} is past the end of the file"
                )
            raw = raw[: len(raw) // 24 * 24].ljust(PAGE_DESC_SIZE * count, b"\0")
        return list(self._desc.iter_unpack(raw))

    # -- pages --
    def _check_desc(self, pfn: int, offset: int, size: int, flags: int) -> None:
        bs = self.block_size
        if offset == 0 and self.incomplete:
            raise AbsentMemoryError(pfn * bs, bs, "page not written (incomplete dump)")
        if size == 0 or size > bs or (flags == 0 and size != bs):
            raise self._fail(
                f"descriptor of pfn {pfn:#x} has size {size:#x} "
                f"(flags {flags:#x}, block size {bs:#x})"
            )
        if offset < self._data_start or offset + size > self._end:
            if self.incomplete and offset >= self._data_start:
                raise AbsentMemoryError(pfn * bs, bs, "page data cut off (incomplete dump)")
            raise self._fail(
                f"descriptor of pfn {pfn:#x} points at [{offset:#x}, +{size:#x}), outside "
                f"the page data [{self._data_start:#x}, {self._end:#x})"
            )

    def _decode(self, pfn: int, offset: int, size: int, flags: int) -> bytes:
        self._check_desc(pfn, offset, size, flags)
        bs = self.block_size
        data = self._pread(offset, size)
        if len(data) != size:
            raise self._fail(f"page data of pfn {pfn:#x} cut short")
        if flags == 0:
            return data
        name = codecs.flag_name(flags)
        if name is None:
            raise self._fail(f"pfn {pfn:#x}: unknown compression flags {flags:#x}")
        try:
            page = self._load_codec(name).decode(data, bs)
        except ImageError:
            raise
        except Exception as e:  # noqa: BLE001 - every codec has its own error class
            raise self._fail(f"pfn {pfn:#x}: {name} page does not decompress: {e}") from None
        if len(page) != bs:
            raise self._fail(
                f"pfn {pfn:#x}: {name} page decompresses to {len(page)} bytes, not {bs}"
            )
        return page

    def _load_codec(self, name: str) -> codecs.Codec:
        codec = self._codec_cache.get(name)
        if codec is None:
            try:
                codec = codecs.get(name)
            except codecs.CodecUnavailable as e:
                raise self._fail(f"the file has {name}-compressed pages: {e}") from None
            self._codec_cache[name] = codec
        return codec

    def _page(self, pfn: int, desc: tuple | None = None) -> bytes:
        if self._page_cache[0] == pfn:
            return self._page_cache[1]
        if desc is None:
            desc = self._descs(pfn, 1)[0]
        page = self._decode(pfn, desc[0], desc[1], desc[2])
        self._page_cache = (pfn, page)
        return page

    def _read(self, paddr: int, size: int) -> bytes:
        bs = self.block_size
        first, last = paddr // bs, (paddr + size - 1) // bs
        if first == last:
            off = paddr - first * bs
            return self._page(first)[off : off + size]
        out = bytearray()
        end = paddr + size
        for pfn0 in range(first, last + 1, _DESC_BATCH):
            count = min(_DESC_BATCH, last + 1 - pfn0)
            for i, desc in enumerate(self._descs(pfn0, count)):
                pfn = pfn0 + i
                page = self._page(pfn, desc)
                lo = max(paddr, pfn * bs) - pfn * bs
                hi = min(end, (pfn + 1) * bs) - pfn * bs
                out += page[lo:hi]
        return bytes(out)

    def _is_zero_page(self, offset: int, size: int, flags: int) -> bool:
        """The shared zero page: written first in the page data, raw and all zeros."""
        if offset != self._data_start or flags or size != self.block_size:
            return False
        if self._zero_ok is None:
            data = self._pread(offset, size)
            self._zero_ok = len(data) == size and not any(data)
        return self._zero_ok

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """zero (the shared zero page), file (raw page, plain file only) or data; merged."""
        bs = self.block_size
        cur: list | None = None  # [kind, paddr, size, file_offset]
        first, last = start // bs, (end - 1) // bs
        for pfn0 in range(first, last + 1, _DESC_BATCH):
            count = min(_DESC_BATCH, last + 1 - pfn0)
            for i, (offset, size, flags, _) in enumerate(self._descs(pfn0, count)):
                pfn = pfn0 + i
                self._check_desc(pfn, offset, size, flags)
                lo = max(start, pfn * bs)
                n = min(end, (pfn + 1) * bs) - lo
                if self._is_zero_page(offset, size, flags):
                    kind, foff = "zero", 0
                elif flags == 0 and self._plain:
                    kind, foff = "file", offset + lo - pfn * bs
                else:
                    kind, foff = "data", 0
                if (
                    cur is not None
                    and cur[0] == kind
                    and (kind != "file" or cur[3] + cur[2] == foff)
                ):
                    cur[2] += n
                    continue
                if cur is not None:
                    yield self._extent(cur)
                cur = [kind, lo, n, foff]
        if cur is not None:
            yield self._extent(cur)

    def _extent(self, cur: list) -> Extent:
        kind, paddr, size, foff = cur
        if kind == "file":
            return Extent(paddr, size, kind, self._fd, foff)
        return Extent(paddr, size, kind)


class KdumpFile(_KdumpBase):
    """A plain kdump-compressed file (makedumpfile's default output, QEMU after -R)."""

    format = "kdump"

    @staticmethod
    def probe(head: bytes) -> bool:
        return head[:8] in SIGNATURES


class FlattenedKdumpFile(_KdumpBase):
    """makedumpfile -F / QEMU dump-guest-memory -z: records read in place through an index."""

    format = "kdump-flat"
    _plain = False

    @staticmethod
    def probe(head: bytes) -> bool:
        return (
            head[:12] == FLAT_SIGNATURE
            and len(head) >= 32
            and int.from_bytes(head[16:24], "big") == FLAT_TYPE
        )

    def _open_source(self) -> None:
        """Index the records: sorted rearranged offsets -> flat file offsets."""
        fd, fsize = self._fd, self.file_size
        head = os.pread(fd, FLAT_HEADER_SIZE, 0)
        if len(head) < FLAT_HEADER_SIZE:
            raise self._fail(f"truncated flattened header ({len(head)} of 4096 bytes)")
        h = FLAT_HEADER.parse(head)
        if h.signature.rstrip(b"\0") != FLAT_SIGNATURE:
            raise self._fail(f"not a flattened kdump file: signature {h.signature[:12]!r}")
        if h.type != FLAT_TYPE or h.version != FLAT_VERSION:
            raise self._fail(f"unsupported flattened type {h.type} / version {h.version}")
        starts, sizes, where = array("q"), array("q"), array("q")
        pos, ended = FLAT_HEADER_SIZE, False
        while True:
            raw = os.pread(fd, 16, pos)
            if len(raw) < 16:
                break
            offset, size = _FLAT_RECORD_STRUCT.unpack(raw)
            if offset == FLAT_END:
                ended = True
                break
            if offset < 0 or size < 0:
                raise self._fail(
                    f"flattened record at {pos:#x} has offset {offset:#x} and size {size:#x}"
                )
            if offset + size > MAX_REARRANGED:
                raise self._fail(
                    f"flattened record at {pos:#x} writes [{offset:#x}, +{size:#x}), past what "
                    f"a kdump file of s390x memory can be ({MAX_REARRANGED:#x} bytes)")
            data_at = pos + 16
            if data_at + size > fsize:
                self.warnings.append(
                    f"flattened record at {pos:#x} ({size:#x} bytes) runs past the end of the "
                    f"file: stream cut short, {fsize - data_at:#x} bytes of it kept"
                )
                size = max(0, fsize - data_at)
                if size:
                    starts.append(offset), sizes.append(size), where.append(data_at)
                pos = fsize
                break
            if size:
                starts.append(offset), sizes.append(size), where.append(data_at)
            pos = data_at + size
        if not ended:
            self.warnings.append(f"flattened file has no end marker at {pos:#x}")
            self._mark_incomplete("flattened stream has no end marker (cut short?)")
        elif pos + 16 < fsize:
            self.warnings.append(f"{fsize - pos - 16:#x} bytes after the flattened end marker")
        self._index(starts, sizes, where)

    def _index(self, starts: array, sizes: array, where: array) -> None:
        n = len(starts)
        if any(starts[i] > starts[i + 1] for i in range(n - 1)):
            order = sorted(range(n), key=starts.__getitem__)  # stable: file order on ties
        else:
            order = range(n)
        # records that overlap one another form clusters; they are painted in file order
        base, overlay, cluster = [], [], []
        cluster_end = -1
        for i in order:
            if starts[i] < cluster_end:
                cluster.append(i)
            else:
                (overlay.extend if len(cluster) > 1 else base.extend)(cluster)
                cluster = [i]
            cluster_end = max(cluster_end, starts[i] + sizes[i])
        (overlay.extend if len(cluster) > 1 else base.extend)(cluster)
        if len(overlay) > MAX_OVERLAPPING_RECORDS:
            raise self._fail(f"{len(overlay)} flattened records overlap one another")
        self._starts_r = array("q", (starts[i] for i in base))
        self._sizes_r = array("q", (sizes[i] for i in base))
        self._where_r = array("q", (where[i] for i in base))
        self._overlay = [(starts[i], sizes[i], where[i]) for i in sorted(overlay)]
        self._overlay_span = (
            min((r[0] for r in self._overlay), default=0),
            max((r[0] + r[1] for r in self._overlay), default=0),
        )
        self._stored = sum(sizes)
        self._end = max((starts[i] + sizes[i] for i in range(n)), default=0)

    def _pread(self, offset: int, size: int) -> bytes:
        end = min(offset + size, self._end)
        if end <= offset:
            return b""
        out = bytearray(end - offset)  # unwritten gaps of the rearranged file read as zero
        starts, sizes, where = self._starts_r, self._sizes_r, self._where_r
        i = max(0, bisect.bisect_right(starts, offset) - 1)
        while i < len(starts) and starts[i] < end:
            self._copy(out, offset, end, starts[i], sizes[i], where[i])
            i += 1
        if self._overlay_span[0] < end and offset < self._overlay_span[1]:
            for s, n, w in self._overlay:  # file order: the last write wins
                self._copy(out, offset, end, s, n, w)
        return bytes(out)

    def _copy(self, out: bytearray, offset: int, end: int, s: int, n: int, w: int) -> None:
        a, b = max(s, offset), min(s + n, end)
        if a >= b:
            return
        try:
            data = os.pread(self._fd, b - a, w + a - s)
        except OSError as e:
            raise ImageChanged(f"reading at {w + a - s:#x}: {e.strerror or e}") from None
        if len(data) != b - a:
            raise ImageChanged(f"it ends before {w + a - s + b - a:#x}, it was "
                               f"{self.file_size:#x} bytes long")
        out[a - offset : b - offset] = data

"""The dump formats of today's s390 stand-alone dumpers (zipl -d / -M, spec sa-dump-formats 3-4).

s390_ext (one DASD or FBA partition): [4 KiB header]{[4 KiB segment header][data]}*[end marker].
A segment covers MiB-aligned memory [start, start + len); its data is either the bytes
(size_on_disk 0) or one zlib stream per MiB entry at entry_offset[i] device blocks (bit 31: the
entry is stored raw). Memory between segments and after the last was zero and was skipped: it is
a hole to every writer. s390mv_ext is the same stream spread over up to 32 volumes, never
compressed; a tape copy is the classic layout under the …FE magic.

Compressed entries are inflated on demand into a small cache; a reader that goes through memory
in address order (the writers) gets the next entries inflated ahead on every core (libdeflate
through the `deflate` wheel, which drops the GIL; zlib where it refuses a stream).
"""

from __future__ import annotations

import bisect
import os
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from construct import Array, Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

from sadump.constants import MAX_PHYS_ADDR, MIB
from sadump.errors import ImageError
from sadump.formats.codecs import libdeflate_zlib
from sadump.formats.memory import (
    DumperFacts,
    Extent,
    FileImage,
    PhysicalMemory,
    file_extents,
    pread_exact,
)
from sadump.formats.s390 import (
    ARCH_64,
    CPU_MAX,
    HDR_SIZE,
    S390_EXT_MAGIC,
    DfS390Hdr,
    LinearDump,
    end_marker,
)

SEG_HDR_SIZE = 4096
#: entries one segment header holds: (4096 - 0x34) / 4 (DUMP_SEGM_ZLIB_MAXENTS)
MAX_ENTRIES = (SEG_HDR_SIZE - 0x34) // 4
ENTRY_RAW = 0x80000000
ENTRY = MIB
#: device block sizes a dump partition can have (ECKD 512-4096, FBA 512), the likely first
BLOCK_SIZES = (4096, 512, 2048, 1024)
#: a zlib stream of 1 MiB is at most this long (stored blocks of 64 KiB, 5 bytes each, + 6)
MAX_STREAM = ENTRY + 4096
#: inflated entries kept for random reads (MiB)
CACHE_ENTRIES = 8
#: entries inflating ahead of a writer (MiB in flight): enough to keep every core busy
AHEAD = min(16, 2 * (os.cpu_count() or 1) + 2)
#: multi-volume: volumes a zipl -M set can have (MAX_DUMP_VOLUMES)
MAX_VOLUMES = 32
#: whole-volume copies: the dumper sits at block 3, its parameter table 0x4000 after it
DUMPER_BLOCK = 3
DUMPER_SIZE_MV = 0x4000
MV_MAGIC = b"XMULT64"
#: tape dumpers write memory in records of 32 KiB
TAPE_BLOCK = 0x8000
#: bytes open_image reads to probe: enough for a whole volume's parameter table at 4 KiB blocks
PROBE_BYTES = DUMPER_BLOCK * 4096 + DUMPER_SIZE_MV + 0x200

#: struct df_s390_dump_segm_hdr without entry_offset[] (read apart, entry_count of them)
SegHdr = Struct(
    "start" / Int64ub,
    "len" / Int64ub,
    "stop_marker" / Int64ub,
    "size_on_disk" / Int32ub,
    "reserved" / Bytes(0x30 - 0x1c),
    "entry_count" / Int32ub,
)

#: zipl -M's vol_parm_table (zdump/dfi_s390mv.h), at 3 x block size + 0x4000 of each volume
VolParm = Struct("devno" / Int16ub, "start_blk" / Int32ub, "end_blk" / Int32ub,
                 "blk_size" / Int8ub, "end_sec" / Int8ub, "num_heads" / Int8ub)
VolParmTable = Struct("timestamp" / Int64ub, "vol_cnt" / Int16ub,
                      "vol_parm" / Array(MAX_VOLUMES, VolParm), "ssid" / Bytes(MAX_VOLUMES))


def _u64(b: bytes, off: int) -> int:
    return int.from_bytes(b[off:off + 8], "big")


def plausible_segment(hdr_page: bytes, mem_size: int) -> bool:
    """A segment header as a dumper writes one: MiB-aligned, inside mem_size, reserved zero."""
    if len(hdr_page) < 0x34:
        return False
    s = SegHdr.parse(hdr_page)
    return (s.start % MIB == 0 and s.len % MIB == 0 and 0 < s.len
            and s.start + s.len <= mem_size and s.stop_marker in (0, (1 << 64) - 1)
            and s.reserved == bytes(len(s.reserved)))


def probe_header(head: bytes):
    """The dump header of a …FE file, or None."""
    if len(head) < HDR_SIZE or _u64(head, 0) != S390_EXT_MAGIC:
        return None
    return DfS390Hdr.parse(head[:HDR_SIZE])


# ---- the segment map ---------------------------------------------------------------------

@dataclass(slots=True)
class Piece:
    """Memory [start, end) stored on volume `vol` from file offset `off`: raw bytes
    (entries None) or MiB entries at block offsets."""

    start: int
    end: int
    vol: int
    off: int
    entries: array | None = None  # entry_offset[] as the header gives it
    data_end: int = 0  # file offset where the segment's data ends
    block: int = 4096


@dataclass
class Walk:
    """What one volume's segment chain gave."""

    pieces: list
    stop: bool  # the last segment had the stop marker
    next_off: int  # file offset after the last segment
    why_short: str | None  # why the chain ended without the stop marker
    stored: int  # bytes of segment data
    compressed: bool


def walk_segments(read, file_size: int, vol: int, first: int, limit: int, mem_size: int,
                  block: int, prev_end: int, name: str) -> Walk:
    """Follow one volume's segment headers from file offset `first` up to `limit` (the
    partition's end): every step moves forward by at least a header and memory never goes
    backwards, so the work is bounded by the file. Contradictions are ImageErrors; a chain that
    just stops (the file ends, a header that is no header) is a short walk."""
    pieces, off, stored, compressed, n = [], first, 0, False, 0

    def bad(msg: str) -> ImageError:
        e = ImageError(msg)
        e.walked = n  # segments read before this one: how far this block size got
        return e

    while True:
        if off + SEG_HDR_SIZE > min(file_size, limit):
            return Walk(pieces, False, off, f"{name} ends at {min(file_size, limit):#x}, "
                        f"where segment header {n} belongs: no stop marker", stored, compressed)
        page = read(off, SEG_HDR_SIZE)
        s = SegHdr.parse(page)
        where = f"{name}: segment {n} at file offset {off:#x}"
        if s.len == 0 and s.start == 0 and page == bytes(SEG_HDR_SIZE):
            return Walk(pieces, False, off, f"{name} has no segment header at {off:#x} "
                        f"(zeros): no stop marker", stored, compressed)
        if s.start % MIB or s.len % MIB or s.len == 0:
            return Walk(pieces, False, off, f"{where} is not a segment header (start "
                        f"{s.start:#x}, len {s.len:#x}): no stop marker", stored, compressed)
        if s.start < prev_end:
            raise bad(f"{where} starts at memory {s.start:#x}, before the end of the "
                             f"segment before ({prev_end:#x}): the chain goes backwards or "
                             "overlaps")
        if s.start + s.len > mem_size:
            raise bad(f"{where} covers [{s.start:#x}, {s.start + s.len:#x}), past "
                             f"the dump's memory size {mem_size:#x}")
        data = off + SEG_HDR_SIZE
        if s.size_on_disk:
            compressed = True
            if s.entry_count > MAX_ENTRIES or s.entry_count != s.len // ENTRY:
                raise bad(f"{where}: entry_count {s.entry_count} for {s.len // MIB} "
                                 f"MiB (at most {MAX_ENTRIES}, one per MiB)")
            entries = array("I", page[0x34:0x34 + 4 * s.entry_count])
            if array("I", b"\1\0\0\0")[0] == 1:
                entries.byteswap()  # big-endian on disk
            end = data + s.size_on_disk * block
            last = -1
            for i, e in enumerate(entries):
                b = e & ~ENTRY_RAW
                if b <= last or b >= s.size_on_disk or (
                        e & ENTRY_RAW and (b * block + ENTRY > s.size_on_disk * block)):
                    raise bad(f"{where}: entry {i} at block {b} is outside the "
                                     f"segment's {s.size_on_disk} blocks or out of order")
                last = b
            pieces.append(Piece(s.start, s.start + s.len, vol, data, entries, end, block))
        else:
            end = data + s.len
            pieces.append(Piece(s.start, s.start + s.len, vol, data, None, end, block))
        stored += end - data
        prev_end = s.start + s.len
        n += 1
        if end > file_size:
            last = pieces.pop()
            held = _held_part(last, file_size)
            if held:
                pieces.append(held)
            return Walk(pieces, False, end, f"{name} ends at {file_size:#x}, inside segment "
                        f"{n - 1} (its data ends at {end:#x}): no stop marker", stored,
                        compressed)
        if s.stop_marker:
            return Walk(pieces, True, end, None, stored, compressed)
        off = end


def _held_part(p: Piece, file_size: int) -> Piece | None:
    """The part of a cut-off segment that the file still holds (whole MiBs)."""
    if p.entries is None:
        n = (file_size - p.off) // MIB
        return Piece(p.start, p.start + n * MIB, p.vol, p.off, None, p.off + n * MIB,
                     p.block) if n > 0 else None
    n = 0
    for i in range(len(p.entries)):
        nxt = ((p.entries[i + 1] & ~ENTRY_RAW) * p.block + p.off if i + 1 < len(p.entries)
               else p.data_end)
        if nxt > file_size:
            break
        n = i + 1
    if n == 0:
        return None
    return Piece(p.start, p.start + n * MIB, p.vol, p.off, p.entries[:n],
                 min(p.data_end, file_size), p.block)


# ---- inflating entries ---------------------------------------------------------------------

def inflate_entry(data: bytes, where: str) -> bytes:
    """One entry's zlib stream to exactly 1 MiB: libdeflate first, zlib for what it refuses;
    a stream that inflates past its MiB, ends short or is damaged is an ImageError."""
    out = libdeflate_zlib(data, ENTRY)
    if out is not None and len(out) == ENTRY:
        return out
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, ENTRY)
    except zlib.error as e:
        raise ImageError(f"{where}: damaged zlib stream ({e})") from None
    if len(out) == ENTRY and not d.eof and (d.unconsumed_tail or d.decompress(b"", 1)):
        raise ImageError(f"{where}: the zlib stream inflates past its 1 MiB entry")
    if len(out) != ENTRY or not d.eof:
        raise ImageError(f"{where}: the zlib stream gives {len(out):#x} bytes, not 1 MiB "
                         f"({'complete' if d.eof else 'cut short'})")
    return out


class SegmentedMemory(PhysicalMemory):
    """Memory from pieces on one or more files: holes are zero, raw pieces are file bytes,
    compressed entries are inflated on demand (a few MiB cached) and ahead of a reader that
    goes in address order."""

    records_skipped_memory = True

    def _init_pieces(self, pieces: list[Piece], fds: list[int], names: list[str],
                     present_end: int) -> None:
        self._pieces = pieces
        self._starts = [p.start for p in pieces]
        self._fds, self._names = fds, names
        self._cache: OrderedDict = OrderedDict()
        self._pending: dict = {}
        self._lock = threading.Lock()
        self._pool = None  # a ThreadPoolExecutor once a reader goes in address order
        self._set_ranges([(0, present_end)] if present_end else [])

    # the compressed entry at paddr: (piece index, entry index)
    def _entry_at(self, i: int, paddr: int) -> tuple[int, int]:
        return i, (paddr - self._pieces[i].start) // ENTRY

    def _piece(self, paddr: int) -> int:
        """Index of the piece holding paddr, -1 for a hole."""
        i = bisect.bisect_right(self._starts, paddr) - 1
        return i if i >= 0 and paddr < self._pieces[i].end else -1

    def _entry_file(self, p: Piece, k: int) -> tuple[int, int, bool]:
        """(file offset, bytes to read at most, raw) of entry k of piece p."""
        e = p.entries[k]
        off = p.off + (e & ~ENTRY_RAW) * p.block
        nxt = (p.off + (p.entries[k + 1] & ~ENTRY_RAW) * p.block if k + 1 < len(p.entries)
               else p.data_end)
        return off, min(nxt - off, MAX_STREAM), bool(e & ENTRY_RAW)

    def _inflate(self, key: tuple[int, int]) -> bytes:
        p = self._pieces[key[0]]
        off, n, _ = self._entry_file(p, key[1])
        data = pread_exact(self._fds[p.vol], n, off)
        where = (f"{self._names[p.vol]}: segment at memory {p.start:#x}, entry {key[1]} "
                 f"(file offset {off:#x})")
        return inflate_entry(data, where)

    def _entry(self, key: tuple[int, int]) -> bytes:
        """Entry key inflated: from the cache, from the pool when it was read ahead, or now."""
        with self._lock:
            data = self._cache.get(key)
            if data is not None:
                self._cache.move_to_end(key)
                return data
            fut = self._pending.pop(key, None)
        data = fut.result() if fut is not None else self._inflate(key)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return data

    def ahead(self, extents: Iterator[Extent]) -> Iterator[Extent]:
        """The extents, with the compressed entries of the next few already inflating on
        every core: a writer reads each "data" extent it is given, so the window is exactly
        what it reads next. At most AHEAD entries are in flight (1 MiB each)."""
        from collections import deque

        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1),
                                            thread_name_prefix="inflate")
        window: deque = deque()
        queued: list = []  # keys submitted by this generator, to drop when it is left early
        it = iter(extents)
        busy = 0  # data extents in the window

        def pull() -> bool:
            nonlocal busy
            e = next(it, None)
            if e is None:
                return False
            if e.kind == "data":
                busy += 1
                i = self._piece(e.paddr)
                if i >= 0 and self._pieces[i].entries is not None:
                    key = self._entry_at(i, e.paddr)
                    with self._lock:
                        if key not in self._pending and key not in self._cache:
                            self._pending[key] = self._pool.submit(self._inflate, key)
                            queued.append(key)
            window.append(e)
            return True

        try:
            while True:
                while busy < AHEAD and pull():
                    pass
                if not window:
                    return
                e = window.popleft()
                if e.kind == "data":
                    busy -= 1
                yield e
        finally:
            with self._lock:
                for key in queued:
                    fut = self._pending.pop(key, None)
                    if fut is not None:
                        fut.cancel()

    def _read(self, paddr: int, size: int) -> bytes:
        out, pos, end = [], paddr, paddr + size
        while pos < end:
            i = self._piece(pos)
            if i < 0:  # a hole: zeros up to the next piece
                nxt = bisect.bisect_right(self._starts, pos)
                stop = min(end, self._starts[nxt] if nxt < len(self._starts) else end)
                out.append(bytes(stop - pos))
                pos = stop
                continue
            p = self._pieces[i]
            stop = min(end, p.end)
            if p.entries is None:
                out.append(pread_exact(self._fds[p.vol], stop - pos, p.off + pos - p.start))
                pos = stop
                continue
            k = (pos - p.start) // ENTRY
            lo = pos - (p.start + k * ENTRY)
            n = min(stop - pos, ENTRY - lo)
            off, _, raw = self._entry_file(p, k)
            if raw:
                out.append(pread_exact(self._fds[p.vol], n, off + lo))
            else:
                data = self._entry((i, k))
                out.append(data[lo:lo + n] if (lo, n) != (0, ENTRY) else data)
            pos += n
        return out[0] if len(out) == 1 else b"".join(out)

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """Holes "zero", raw bytes "file" (split at the file's own holes), compressed entries
        "data" (one a MiB)."""
        pos = start
        while pos < end:
            i = self._piece(pos)
            if i < 0:
                nxt = bisect.bisect_right(self._starts, pos)
                stop = min(end, self._starts[nxt] if nxt < len(self._starts) else end)
                yield Extent(pos, stop - pos, "zero")
                pos = stop
                continue
            p = self._pieces[i]
            stop = min(end, p.end)
            if p.entries is None:
                yield from file_extents(self._fds[p.vol], pos, stop - pos, p.off + pos - p.start)
                pos = stop
                continue
            k = (pos - p.start) // ENTRY
            n = min(stop, p.start + (k + 1) * ENTRY) - pos
            off, _, raw = self._entry_file(p, k)
            if raw:
                yield Extent(pos, n, "file", self._fds[p.vol], off + pos - p.start - k * ENTRY)
            else:
                yield Extent(pos, n, "data")
            pos += n

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if hasattr(self, "_cache"):
            self._cache.clear()
            self._pending.clear()


# ---- the dump header -----------------------------------------------------------------------

def check_header(h, name: str) -> list[str]:
    """The header checks every …FE reader makes; returns warnings."""
    warnings = []
    if h.hdr_size != HDR_SIZE or h.page_size != 4096:
        raise ImageError(f"{name}: header size {h.hdr_size:#x}, page size {h.page_size}: "
                         "not an s390 dump header")
    if h.arch != ARCH_64:
        raise ImageError(f"{name}: arch {h.arch}: only 64-bit (2) dumps are read")
    if not 0 < h.mem_size <= MAX_PHYS_ADDR:
        raise ImageError(f"{name}: memory size {h.mem_size:#x} is 0 or past what s390x can "
                         f"address ({MAX_PHYS_ADDR:#x})")
    if h.cpu_cnt > CPU_MAX:
        raise ImageError(f"{name}: cpu_cnt {h.cpu_cnt} is more than {CPU_MAX}")
    return warnings


def facts_of(h, fmt: str, end_tod: int | None, compressed: bool, volumes: int | None,
             block: int | None) -> DumperFacts:
    return DumperFacts(format=fmt, version=h.version, start_tod=h.tod, end_tod=end_tod,
                       cpu_id=h.cpu_id, cpu_count=h.cpu_cnt, real_cpu_count=h.real_cpu_cnt,
                       mem_size=h.mem_size, mem_size_real=h.mem_size_real,
                       compression="zlib" if compressed else None, volumes=volumes,
                       block_size=block)


class S390ExtDump(SegmentedMemory, FileImage):
    """A single-volume s390_ext dump partition (or a file copied from one)."""

    format = "s390_ext"

    def __init__(self, path: str, block_size: int | None = None):
        self._block_opt = block_size
        super().__init__(path)

    @staticmethod
    def probe(head: bytes) -> bool:
        h = probe_header(head)
        return bool(h is not None and not h.mvdump
                    and plausible_segment(head[HDR_SIZE:HDR_SIZE + SEG_HDR_SIZE], h.mem_size))

    def _load(self) -> None:
        if self.file_size < HDR_SIZE + SEG_HDR_SIZE:
            raise ImageError(f"file is {self.file_size} bytes, too short for an s390_ext dump")
        self.header = h = DfS390Hdr.parse(self._read_file(0, HDR_SIZE))
        if h.magic != S390_EXT_MAGIC:
            raise ImageError(f"not an s390_ext dump: magic {h.magic:#018x}")
        self.warnings += check_header(h, self.path)
        # the block size that carries the chain farthest (to its end marker, at best); a
        # contradiction found farther than any other block size got is the dump's own
        candidates = (self._block_opt,) if self._block_opt else BLOCK_SIZES
        best = None
        for bs in candidates:
            try:
                w = walk_segments(self._read_file, self.file_size, 0, HDR_SIZE,
                                  self.file_size, h.mem_size, bs, 0, "the dump")
            except ImageError as e:
                if best is None or (False, e.walked) > best[0]:
                    best = ((False, e.walked), bs, e, None, None)
                continue
            end_tod, why = (end_marker(self._read_file, self.file_size, w.next_off, h.tod)
                            if w.stop else (None, w.why_short))
            score = (w.stop and end_tod is not None, len(w.pieces))
            if score > best[0] if best else True:
                best = (score, bs, w, end_tod, why)
            if not w.compressed or score[0]:
                break  # the block size does not matter, or it made the whole chain fit
        _, bs, w, end_tod, why = best
        if isinstance(w, ImageError):
            raise ImageError(f"{w} (block size {bs})" if w.walked else str(w))
        if w.compressed and h.zlib_entry_size not in (0, ENTRY):
            raise ImageError(f"zlib_entry_size is {h.zlib_entry_size:#x}: only 1 MiB entries "
                             "are known")
        self.block_size = bs if w.compressed else None
        self.tod = h.tod
        self.end_tod = end_tod
        self.cpu_prefixes = list(h.lc_vec[:h.cpu_cnt])
        self.incomplete = why
        if why:
            self.warnings.append(f"incomplete dump: {why}")
        if h.zlib_version_s390 and not w.compressed:
            self.warnings.append("the header says zlib, but no segment is compressed (as FBA "
                                 "dumpers write it): read as stored")
        present = h.mem_size if w.stop else (w.pieces[-1].end if w.pieces else 0)
        self.dumper = facts_of(h, self.format, end_tod, w.compressed, 1, self.block_size)
        self._init_pieces(w.pieces, [self._fd], [self.path], present)

    def close(self) -> None:
        SegmentedMemory.close(self)
        FileImage.close(self)


# ---- multi-volume (zipl -M) -----------------------------------------------------------------

@dataclass
class Volume:
    """One volume file: a copy of its dump partition, or of the whole volume."""

    path: str
    fd: int
    size: int
    part_off: int  # where the dump partition starts in the file
    part_end: int
    header: object
    table: object | None  # the parameter table of a whole-volume copy

    @property
    def nr(self) -> int:
        return self.header.volnr


def whole_volume_table(head: bytes):
    """(block size, parameter table) of a whole-volume copy of a zipl -M volume, or None."""
    for bs in BLOCK_SIZES:
        at = DUMPER_BLOCK * bs
        if head[at:at + len(MV_MAGIC)] == MV_MAGIC:
            t = at + DUMPER_SIZE_MV
            raw = head[t:t + VolParmTable.sizeof()]
            if len(raw) == VolParmTable.sizeof():
                return bs, VolParmTable.parse(raw)
    return None


def _open_volume(path: str) -> Volume:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise ImageError(f"{path}: cannot open: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        head = pread_exact(fd, min(size, PROBE_BYTES), 0, size)
        h = probe_header(head)
        if h is not None and h.mvdump:
            return Volume(path, fd, size, 0, size, h, None)
        found = whole_volume_table(head)
        if found is None:
            raise ImageError(f"{path}: not a volume of a multi-volume dump (no dump header "
                             "with mvdump 1, no XMULT64 dumper)")
        _, table = found
        if not 0 < table.vol_cnt <= MAX_VOLUMES:
            raise ImageError(f"{path}: the parameter table lists {table.vol_cnt} volumes "
                             f"(1 to {MAX_VOLUMES})")
        # the partition the table lists for the volume number its header gives (all of them
        # may start at the same block); else any header there, for order_volumes to judge
        found = []
        for i, vp in enumerate(table.vol_parm[:table.vol_cnt]):
            bs = vp.blk_size << 8
            off = vp.start_blk * bs
            if bs == 0 or vp.end_blk < vp.start_blk or off + HDR_SIZE > size:
                continue
            h = probe_header(pread_exact(fd, HDR_SIZE, off, size))
            if h is not None and h.mvdump:
                found.append((h.volnr != i, i, off, min(size, (vp.end_blk + 1) * bs), h))
        if found:
            _, _, off, end, h = min(found, key=lambda f: f[:2])
            return Volume(path, fd, size, off, end, h, table)
        raise ImageError(f"{path}: a whole volume with the XMULT64 dumper, but no partition "
                         "its parameter table lists holds that volume's dump header")
    except BaseException:
        os.close(fd)
        raise


def _numbers(nrs) -> str:
    """"volume 3", "volumes 1, 4-30"."""
    spans: list[list[int]] = []
    for n in sorted(nrs):
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    return ("volume " if len(spans) == 1 and spans[0][0] == spans[0][1] else "volumes ") + text


def order_volumes(vols: list[Volume]) -> tuple[list[Volume], int | None]:
    """The volumes ordered by volnr and checked to be one complete set: (volumes, the set's
    volume count where a parameter table gives it). Every mistake is one line naming the
    volume by its number."""
    for v in vols:
        if v.nr >= MAX_VOLUMES:
            raise ImageError(f"{v.path} claims to be volume {v.nr}: a multi-volume dump has at "
                             f"most {MAX_VOLUMES}")
    by_nr: dict[int, Volume] = {}
    for v in vols:
        if v.nr in by_nr:
            raise ImageError(f"volume {v.nr} given twice: {by_nr[v.nr].path} and {v.path}")
        by_nr[v.nr] = v
    tables = [v for v in vols if v.table is not None]
    count = None
    if tables:
        t0 = tables[0]
        for v in tables[1:]:
            if v.table != t0.table:
                raise ImageError(f"{v.path} (volume {v.nr}) belongs to another dump set: its "
                                 f"parameter table differs from that of {t0.path}")
        count = t0.table.vol_cnt
        for v in vols:
            if v.nr >= count:
                raise ImageError(f"{v.path} claims to be volume {v.nr} of {count}")
    ref = by_nr.get(0) or min(vols, key=lambda v: v.nr)
    for v in vols:
        for field, what in (("tod", "dump start TOD"), ("mvdump_zipl_time", "zipl time"),
                            ("mem_size", "memory size")):
            a, b = getattr(v.header, field), getattr(ref.header, field)
            if a != b:
                raise ImageError(f"{v.path} (volume {v.nr}) belongs to another dump: its "
                                 f"{what} {a:#x} differs from volume {ref.nr}'s {b:#x}")
    top = count if count is not None else max(by_nr) + 1
    missing = [n for n in range(top) if n not in by_nr]
    if missing:
        of = f" of {count}" if count is not None else ""
        raise ImageError(f"{_numbers(missing)}{of} missing: give every volume of the dump "
                         f"(given: {', '.join(str(n) for n in sorted(by_nr))})")
    return [by_nr[n] for n in sorted(by_nr)], count


class S390MvDump(SegmentedMemory):
    """A multi-volume dump (zipl -M) from its volume files, given in any order."""

    format = "s390mv_ext"

    @staticmethod
    def probe(head: bytes) -> bool:
        h = probe_header(head)
        return bool(h.mvdump) if h is not None else whole_volume_table(head) is not None

    def __init__(self, paths: list[str]):
        vols: list[Volume] = []
        try:
            for p in paths:
                vols.append(_open_volume(p))
            vols, count = order_volumes(vols)
            super().__init__(" + ".join(v.path for v in vols))
            self._vols = vols
            self._load(count)
        except BaseException:
            for v in vols:
                os.close(v.fd)
            self._vols = []
            raise

    def _load(self, count: int | None) -> None:
        h = self.header = self._vols[0].header
        for v in self._vols:
            check_header(v.header, v.path)
        pieces, prev_end, walk, compressed = [], 0, None, False
        used = 0
        for v in self._vols:
            def read(off, n, v=v):
                return pread_exact(v.fd, n, off, v.size)
            # as zgetdump: no segment starts where a header and 1 MiB no longer fit (the
            # dumper went on to the next volume; what lies there is old data)
            walk = walk_segments(read, v.size, used, v.part_off + HDR_SIZE,
                                 v.part_end - ENTRY, h.mem_size, 4096, prev_end,
                                 f"{v.path} (volume {v.nr})")
            pieces += walk.pieces
            compressed |= walk.compressed
            used += 1
            if walk.pieces:
                prev_end = walk.pieces[-1].end
            if walk.stop:
                break
        unused = self._vols[used:]
        if unused:
            self.warnings.append(f"{_numbers(v.nr for v in unused)} follow the stop marker on "
                                 f"volume {self._vols[used - 1].nr}: not read")
        last = self._vols[used - 1]
        end_tod, why = None, walk.why_short
        if walk.stop:
            end_tod, why = end_marker(lambda off, n: pread_exact(last.fd, n, off, last.size),
                                      last.size, walk.next_off, h.tod)
        elif count is None:
            why += (f" (the dump stopped early, or volume {last.nr + 1} was not given)")
        self.incomplete = why
        if why:
            self.warnings.append(f"incomplete dump: {why}")
        self.tod, self.end_tod = h.tod, end_tod
        self.cpu_prefixes = list(h.lc_vec[:h.cpu_cnt])
        present = h.mem_size if walk.stop else (pieces[-1].end if pieces else 0)
        self.dumper = facts_of(h, self.format, end_tod, compressed,
                               count if count is not None else len(self._vols), None)
        self._init_pieces(pieces, [v.fd for v in self._vols], [v.path for v in self._vols],
                          present)

    @property
    def stored_bytes(self) -> int | None:
        return sum(v.part_end - v.part_off for v in self._vols)

    def close(self) -> None:
        SegmentedMemory.close(self)
        for v in getattr(self, "_vols", []):
            if v.fd >= 0:
                os.close(v.fd)
                v.fd = -1


# ---- tape copies ----------------------------------------------------------------------------

class S390TapeDump(LinearDump):
    """A tape dump copied into a file (`dd bs=32k`): the 4 KiB header record (…FE), memory
    from address 0 in 32 KiB records, the end-marker record."""

    format = "s390tape"

    @staticmethod
    def probe(head: bytes) -> bool:
        h = probe_header(head)
        return bool(h is not None and not h.mvdump
                    and not plausible_segment(head[HDR_SIZE:HDR_SIZE + SEG_HDR_SIZE],
                                              h.mem_size))

    def _load(self) -> None:
        if self.file_size < HDR_SIZE:
            raise ImageError(f"file is {self.file_size} bytes, too short for a dump header")
        self.header = h = DfS390Hdr.parse(self._read_file(0, HDR_SIZE))
        if h.magic != S390_EXT_MAGIC:
            raise ImageError(f"not a tape dump: magic {h.magic:#018x}")
        self.warnings += check_header(h, self.path)
        if h.volnr:
            raise ImageError(f"volume number {h.volnr}: multi-volume tape dumps are not "
                             "supported (nor by zgetdump)")
        held = max(0, min(h.mem_size, self.file_size - HDR_SIZE))
        end_tod, why = None, None
        if held < h.mem_size:
            why = f"the file holds {held:#x} of {h.mem_size:#x} bytes of memory"
        else:
            records = -(-h.mem_size // TAPE_BLOCK) * TAPE_BLOCK
            for at in dict.fromkeys((HDR_SIZE + records, HDR_SIZE + h.mem_size)):
                end_tod, why = end_marker(self._read_file, self.file_size, at, h.tod)
                if end_tod is not None:
                    break
        self.incomplete = why
        if why:
            self.warnings.append(f"incomplete dump: {why}")
        self.tod, self.end_tod = h.tod, end_tod
        self.cpu_prefixes = list(h.lc_vec[:h.cpu_cnt])
        self.dumper = facts_of(h, self.format, end_tod, False, 1, None)
        self._held = held
        self._set_ranges([(0, held)] if held else [])

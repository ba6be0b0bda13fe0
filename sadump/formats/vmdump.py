"""z/VM VMDUMP (64big), as `vmur receive` writes it (spec sa-dump-formats 6; zgetdump's
dfi_vmdump.c and df_vmdump.h).

4 KiB records: ADSR (symptom record), FMBK (map of the records), FIR (CPU 0's registers,
then one record per other CPU), ALBK, ASIZBK (the storage ranges), then index pages whose
bits say which 4096-page slots have a key page (a byte per page, 0x01 = stored), then the
stored pages in address order. Pages the bitmap does not mark stored are zero (zgetdump reads
them as zero: z/VM leaves out pages that were never touched). z/VM stores no status into the
guest: the registers are in the FIR records and become the kernel's register notes here.
"""

from __future__ import annotations

import bisect
from array import array
from collections import OrderedDict
from collections.abc import Iterator

from construct import Array, Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from sadump.errors import ImageError
from sadump.formats.memory import DumperFacts, Extent, FileImage, RangeList, check_phys_end
from sadump.formats.regnotes import register_notes
from sadump.formats.s390 import CPU_MAX

PAGE = 4096
ADSR_MAGIC = b"\xe2\xd9"  # "SR"
VMDUMP_MAGIC = b"\xe5\xd4\xc4\xe4\xd4\xd7\x40\x40"  # "VMDUMP  "
FMBK_MAGIC = b"\xc8\xc3\xd7\xc4\xc6\xd4\xc2\xd2"  # "HCPDFMBK"
ALBK_MAGIC = b"\xc8\xc3\xd7\xc4\xc1\xd3\xc2\xd2"  # "HCPDALBK"
ASIZBK_MAGIC = b"\xc1\xe2\xc9\xe9\xc2\xd2\x40\x40"  # "ASIZBK  "
FIR_64BIG = 0x02
#: fir_format values zgetdump no longer reads, by name
OLD_FORMATS = {0x00: "ESA (31-bit)", 0x82: "ESAME (64-bit, before 64big)"}
#: guest pages one key page covers, and key pages one index page designates
KEY_PAGES = PAGE
INDEX_BITS = 8 * PAGE
RANGE_TABLE = 64  # the ASIZBK range table's size
#: key pages kept decoded for reads (4 KiB each)
KEY_CACHE = 256
#: key pages read in one go while indexing
READ_KEYS = 256
_STORED = bytes(b & 1 for b in range(256))  # key byte -> 1 if the page is stored

Adsr = Struct(
    "sr" / Bytes(2),  # 0x00
    Padding(0x10 - 2),
    "tod" / Int64ub,  # 0x10
    Padding(0x38 - 0x18),
    "dump_type" / Bytes(8),  # 0x38
)

Fmbk = Struct(
    "id" / Bytes(8),
    "rec_nr_fir" / Int32ub,
    "rec_nr_vector" / Int32ub,
    "rec_nr_access" / Int32ub,
    "num_acc_recs" / Int32ub,
    "num_addr_spaces" / Int32ub,
    "rec_nr_asibk" / Int32ub,
)

#: struct vmd_fir_64: CPU 0's registers and the dump's facts, 1104 bytes
Fir64 = Struct(
    Padding(0x10),
    "gprs" / Array(16, Int64ub),  # 0x010
    "prefix" / Int32ub,  # 0x090
    Padding(5),
    "tod" / Int64ub,  # 0x099
    Padding(8),
    "cpu_timer" / Int64ub,  # 0x0a9
    Padding(7),
    "flag" / Int8ub,  # 0x0b8
    "type" / Int8ub,
    "complete" / Int8ub,
    "fir_format" / Int8ub,  # 0x0bb
    Padding(4),
    "psw" / Array(2, Int64ub),  # 0x0c0
    "crs" / Array(16, Int64ub),  # 0x0d0
    "fprs" / Array(16, Int64ub),  # 0x150
    Padding(1),
    "clock_cmp" / Int64ub,  # 0x1d1 (store-status format: bits 0-55 in 8-63)
    Padding(3),
    "todpreg" / Int32ub,  # 0x1dc
    Padding(80),
    "acrs" / Array(16, Int32ub),  # 0x230
    Padding(0x280 - 0x270),
    "storage_size" / Int64ub,  # 0x280
    Padding(0x390 - 0x288),
    "online_cpus" / Int16ub,  # 0x390: the other CPUs (fir_other records)
    "cpu_addr" / Int16ub,  # 0x392
    Padding(0x3c8 - 0x394),
    "fpc" / Int32ub,  # 0x3c8
    Padding(0x450 - 0x3cc),
)
assert Fir64.sizeof() == 1104

#: struct vmd_fir_other_64: each other CPU, right after the FIR, 552 bytes
FirOther64 = Struct(
    "cpu_addr" / Int16ub,  # 0x000
    Padding(0x10 - 2),
    "fprs" / Array(16, Int64ub),  # 0x010
    "gprs" / Array(16, Int64ub),  # 0x090
    "psw" / Array(2, Int64ub),  # 0x110
    Padding(8),
    "prefix" / Int32ub,  # 0x128
    "fpc" / Int32ub,  # 0x12c
    Padding(4),
    "todpreg" / Int32ub,  # 0x134
    "cpu_timer" / Int64ub,  # 0x138
    "clock_cmp" / Int64ub,  # 0x140
    Padding(8),
    "acrs" / Array(16, Int32ub),  # 0x150
    "crs" / Array(16, Int64ub),  # 0x190
    Padding(0x228 - 0x210),
)
assert FirOther64.sizeof() == 552

#: struct vmd_asizbk, up to the requested range table
Asizbk = Struct(
    "id" / Bytes(8),
    Padding(0x48 - 8),
    "storage_size_def_store" / Int64ub,  # 0x048
    Padding(0xd8 - 0x50),
    "range_count" / Int32ub,  # 0x0d8
    Padding(0x160 - 0xdc),
    "ranges" / Array(RANGE_TABLE, Struct("start" / Int64ub, "end" / Int64ub)),  # 0x160
)


class VmDump(FileImage):
    """A z/VM VMDUMP in the 64big format: memory from the key pages' stored pages."""

    format = "vmdump"

    @staticmethod
    def probe(head: bytes) -> bool:
        return head[:2] == ADSR_MAGIC and head[0x38:0x40] == VMDUMP_MAGIC

    def __init__(self, path: str):
        #: per key page that exists, by slot (guest page >> 12): its file offset and the
        #: stored pages before it (the running count: no per-page scan at read time)
        self._slots = array("Q")
        self._key_offsets = array("Q")
        self._before = array("Q")
        self._keys: OrderedDict[int, bytes] = OrderedDict()
        self._data = 0  # file offset of the first stored page
        super().__init__(path)

    # ---- parsing ---------------------------------------------------------------------
    def _record(self, what: str, offset: int, size: int) -> bytes:
        if offset + size > self.file_size:
            raise ImageError(f"truncated: the {what} at {offset:#x} ({size} bytes) runs past "
                             f"the end of the file ({self.file_size:#x} bytes)")
        return self._read_file(offset, size)

    def _load(self) -> None:
        adsr = Adsr.parse(self._record("symptom record (ADSR)", 0, Adsr.sizeof()))
        if adsr.sr != ADSR_MAGIC or adsr.dump_type != VMDUMP_MAGIC:
            raise ImageError("not a z/VM VMDUMP: no symptom record naming VMDUMP")
        fmbk = Fmbk.parse(self._record("dump file map (FMBK)", PAGE, Fmbk.sizeof()))
        if fmbk.id != FMBK_MAGIC:
            raise ImageError("not a z/VM VMDUMP: record 2 is not HCPDFMBK")
        if fmbk.rec_nr_fir < 3:
            raise ImageError(f"the FIR record number {fmbk.rec_nr_fir} is not after records "
                             "1 and 2")
        fir_off = (fmbk.rec_nr_fir - 1) * PAGE
        fir = Fir64.parse(self._record("FIR record", fir_off, Fir64.sizeof()))
        if fir.fir_format != FIR_64BIG:
            name = OLD_FORMATS.get(fir.fir_format)
            if name:
                raise ImageError(f"VMDUMP in the {name} format (FIR format "
                                 f"{fir.fir_format:#04x}): only 64big (0x02) is read")
            raise ImageError(f"unknown VMDUMP FIR format {fir.fir_format:#04x}: only 64big "
                             "(0x02) is read")
        if fir.online_cpus >= CPU_MAX:  # 0xffff would be 65535 CPUs' notes in memory
            raise ImageError(f"the FIR lists {fir.online_cpus} more CPUs: a machine has at "
                             f"most {CPU_MAX}")
        others_off = fir_off + Fir64.sizeof()
        raw = self._record(f"FIR records of {fir.online_cpus} more CPUs", others_off,
                           fir.online_cpus * FirOther64.sizeof())
        one = FirOther64.sizeof()
        others = [FirOther64.parse(raw[i * one:(i + 1) * one]) for i in range(fir.online_cpus)]
        if fmbk.rec_nr_vector:
            self.warnings.append(f"a vector register record ({fmbk.rec_nr_vector}) is "
                                 "present but not read: the CPUs' notes have no VXRS")
        acc = fmbk.rec_nr_access
        if acc <= fmbk.rec_nr_fir:
            raise ImageError(f"the access list record number {acc} is not after the FIR "
                             f"record ({fmbk.rec_nr_fir})")
        if self._record("access list (ALBK)", (acc - 1) * PAGE, 8) != ALBK_MAGIC:
            self.warnings.append(f"record {acc} is not HCPDALBK")
        asiz = Asizbk.parse(self._record("ASIZBK record", acc * PAGE, Asizbk.sizeof()))
        if asiz.id != ASIZBK_MAGIC:
            raise ImageError(f"record {acc + 1} is not the ASIZBK record")
        ranges = self._storage_ranges(asiz)
        total = ranges[-1][1] // PAGE
        self._index((acc + 1) * PAGE, total, ranges)
        self._set_ranges(self._held(ranges))
        self._cpus(fir, others)
        self.dumper = DumperFacts(
            format="vmdump", version=fir.fir_format, start_tod=adsr.tod,
            cpu_count=1 + len(others), real_cpu_count=1 + len(others),
            mem_size=RangeList.merged(ranges).total,
            mem_size_real=asiz.storage_size_def_store or None)

    def _storage_ranges(self, asiz) -> list[tuple[int, int]]:
        """[start, end) of each storage range; none listed: [0, defined storage) (zgetdump)."""
        count = asiz.range_count
        if count > RANGE_TABLE:
            raise ImageError(f"the ASIZBK lists {count} storage ranges, its table holds "
                             f"{RANGE_TABLE}: the record is corrupt")
        ranges = []
        for i, r in enumerate(asiz.ranges[:count]):
            end = r.end + 1
            if r.start % PAGE or end % PAGE or end <= r.start:
                raise ImageError(f"storage range {i} [{r.start:#x}, {r.end:#x}] is not whole "
                                 "pages")
            check_phys_end(end)
            ranges.append((r.start, end))
        if not ranges:
            size = asiz.storage_size_def_store
            if not size or size % PAGE:
                raise ImageError(f"no storage ranges and a defined storage of {size:#x} bytes")
            check_phys_end(size)
            ranges = [(0, size)]
        return sorted(ranges, key=lambda r: r[1])

    def _index(self, pos: int, total: int, ranges: list[tuple[int, int]]) -> None:
        """Read the index and key pages: per key page its offset and the running count of
        stored pages. Every index page and key page is 4 KiB of the file, so the work is
        bounded by the file's size."""
        slot, stored = 0, 0
        slots_total = -(-total // KEY_PAGES)
        outside = 0
        merged = RangeList.merged(ranges)
        while slot < slots_total:
            index = self._record(f"index page for pages from {slot * KEY_PAGES:#x}", pos, PAGE)
            pos += PAGE
            set_bits = [8 * n + b for n, byte in enumerate(index) if byte
                        for b in range(8) if byte & 0x80 >> b]  # most significant bit first
            for i in set_bits:
                if slot + i >= slots_total:
                    raise ImageError(
                        f"the bitmap has a key page for pages from {(slot + i) * KEY_PAGES:#x},"
                        f" past the storage ranges ({total:#x} pages)")
            for first in range(0, len(set_bits), READ_KEYS):
                group = set_bits[first:first + READ_KEYS]
                data = self._record(f"{len(group)} key pages", pos, len(group) * PAGE)
                for k, i in enumerate(group):
                    key = data[k * PAGE:(k + 1) * PAGE].translate(_STORED)
                    base = (slot + i) * KEY_PAGES
                    if base + KEY_PAGES > total and key.find(1, total - base) >= 0:
                        bad = base + key.find(1, total - base)
                        raise ImageError(f"the bitmap marks page {bad:#x} stored, past the "
                                         f"storage ranges ({total:#x} pages)")
                    count = key.count(1)
                    if count:
                        outside += count - self._inside(key, base, merged)
                        self._slots.append(slot + i)
                        self._key_offsets.append(pos + k * PAGE)
                        self._before.append(stored)
                        stored += count
                pos += len(group) * PAGE
            slot += INDEX_BITS
        self._data = pos
        self.stored_pages = stored
        if outside:
            self.warnings.append(f"the bitmap marks {outside} pages stored between the storage "
                                 "ranges: they are not read")
        end = pos + stored * PAGE
        if end < self.file_size:
            self.warnings.append(f"{self.file_size - end:#x} bytes after the last stored page "
                                 "are ignored")
        held = max(0, (self.file_size - pos) // PAGE)
        self._held_pages = min(held, stored)
        if held < stored:
            self.incomplete = (f"the file is truncated: it holds {held} of {stored} stored "
                               "pages")
            self.warnings.append(f"incomplete dump: {self.incomplete}")

    @staticmethod
    def _inside(key: bytes, base: int, merged: RangeList) -> int:
        """Stored pages of one key page (guest pages base...) that lie in the ranges."""
        lo, hi = base * PAGE, (base + KEY_PAGES) * PAGE
        n = 0
        for start, end in merged:
            a, b = max(lo, start), min(hi, end)
            if a < b:
                n += key.count(1, (a - lo) // PAGE, (b - lo) // PAGE)
        return n

    def _held(self, ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The ranges, cut at the first stored page the (truncated) file does not hold."""
        if self._held_pages == self.stored_pages:
            return ranges
        i = bisect.bisect_right(self._before, self._held_pages) - 1
        key = self._key(i)
        pos, want = -1, self._held_pages - self._before[i]
        for _ in range(want + 1):
            pos = key.find(1, pos + 1)
        cut = (self._slots[i] * KEY_PAGES + pos) * PAGE
        return [(s, min(e, cut)) for s, e in ranges if s < cut]

    def _cpus(self, fir, others) -> None:
        """Every CPU of the FIR records as the kernel's register notes (FIR CPU first, as
        zgetdump orders them); no VXRS: the 64big records hold no vector registers."""
        cpus = [(fir.psw, fir.gprs, fir.acrs, fir.fpc, fir.fprs, fir.cpu_timer, fir.clock_cmp,
                 fir.todpreg, fir.crs, fir.prefix)]
        cpus += [(o.psw, o.gprs, o.acrs, o.fpc, o.fprs, o.cpu_timer, o.clock_cmp, o.todpreg,
                  o.crs, o.prefix) for o in others]
        for pid, regs in enumerate(cpus, 1):
            self.notes.extend(register_notes(pid, tuple(regs[0]), *regs[1:]))
        self.cpu_prefixes = [regs[-1] for regs in cpus]

    # ---- memory ----------------------------------------------------------------------
    def _key(self, i: int) -> bytes:
        """Key page i (of the existing ones) as 0/1 bytes, from a small cache."""
        key = self._keys.get(i)
        if key is None:
            key = self._read_file(self._key_offsets[i], PAGE).translate(_STORED)
            self._keys[i] = key
            if len(self._keys) > KEY_CACHE:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(i)
        return key

    def _read(self, paddr: int, size: int) -> bytes:
        parts = []
        for e in self.extents(paddr, paddr + size):
            parts.append(self._read_file(e.file_offset, e.size) if e.kind == "file"
                         else bytes(e.size))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """Runs of stored pages as "file" extents (each run is contiguous in the file), the
        pages the bitmap leaves out as "zero"; neighbours that continue each other joined."""
        pending: Extent | None = None
        for e in self._runs(start, end):
            if pending is None:
                pending = e
            elif pending.kind == e.kind and (
                    e.kind == "zero" or pending.file_offset + pending.size == e.file_offset):
                pending = Extent(pending.paddr, pending.size + e.size, e.kind, pending.fileno,
                                 pending.file_offset)
            else:
                yield pending
                pending = e
        if pending is not None:
            yield pending

    def _runs(self, start: int, end: int) -> Iterator[Extent]:
        slot_bytes = KEY_PAGES * PAGE
        pos = start
        i = bisect.bisect_left(self._slots, start // slot_bytes)
        while pos < end:
            if i >= len(self._slots) or self._slots[i] * slot_bytes >= end:
                yield Extent(pos, end - pos, "zero")
                return
            base = self._slots[i] * slot_bytes
            if base > pos:  # slots without a key page: all zero
                yield Extent(pos, base - pos, "zero")
                pos = base
            key, before = self._key(i), self._before[i]
            stop = min(end, base + slot_bytes)
            page = (pos - base) // PAGE
            counted = key.count(1, 0, page)
            while pos < stop:
                stored = key[page] == 1
                nxt = key.find(0 if stored else 1, page)
                nxt = KEY_PAGES if nxt < 0 else nxt
                run_end = min(stop, base + nxt * PAGE)
                if stored:
                    off = self._data + (before + counted) * PAGE + pos - (base + page * PAGE)
                    yield Extent(pos, run_end - pos, "file", self._fd, off)
                    counted += nxt - page
                else:
                    yield Extent(pos, run_end - pos, "zero")
                pos, page = run_end, nxt
            i += 1

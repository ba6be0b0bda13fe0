"""The s390 stand-alone dump format (zipl dump tools, zgetdump -f s390).

[4 KiB header][memory from address 0, byte for byte][16-byte end marker "DUMP_END" + TOD].
A dump without a valid end marker is incomplete (the dumper stopped early); the memory
the file holds is still read, and `incomplete` says why.
"""

from __future__ import annotations

from collections.abc import Iterator

from construct import Array, Bytes, Default, Int8ub, Int16ub, Int32ub, Int64ub, Padding, Struct

from sadump.constants import MAX_PHYS_ADDR
from sadump.errors import ImageError
from sadump.formats.memory import DumperFacts, Extent, FileImage, file_extents

S390_MAGIC = 0xA8190173618F23FD
S390_EXT_MAGIC = 0xA8190173618F23FE
HDR_SIZE = 0x1000
PAGE_SIZE = 4096
EM_SIZE = 16
EM_STR = b"DUMP_END"
CPU_MAX = 512
ARCH_31, ARCH_64 = 1, 2
#: First header version that lists CPU prefixes in lc_vec (zgetdump ignores them before).
VERSION_WITH_PREFIXES = 5
#: TOD clock value of 1970-01-01 00:00 UTC (df_s390.c: 0x8126D60E46000000 - 0x3C26700 * 10^6 * 4096).
TOD_UNIX_EPOCH = 0x8126D60E46000000 - 0x3C26700 * 1000000 * 4096
#: Memory offsets must stay file offsets (off_t) including header and end marker.
MAX_MEM_SIZE = (1 << 63) - HDR_SIZE - EM_SIZE

#: struct df_s390_hdr (s390-tools include/dump/s390_dump.h), 4096 bytes, big-endian.
DfS390Hdr = Struct(
    "magic" / Default(Int64ub, S390_MAGIC),  # 0x000
    "version" / Default(Int32ub, 5),  # 0x008
    "hdr_size" / Default(Int32ub, HDR_SIZE),  # 0x00c
    "dump_level" / Default(Int32ub, 4),  # 0x010
    "page_size" / Default(Int32ub, PAGE_SIZE),  # 0x014
    "mem_size" / Int64ub,  # 0x018
    "mem_start" / Default(Int64ub, 0),  # 0x020
    "mem_end" / Int64ub,  # 0x028
    "num_pages" / Int32ub,  # 0x030
    Padding(4),  # 0x034
    "tod" / Default(Int64ub, 0),  # 0x038
    "cpu_id" / Default(Int64ub, 0),  # 0x040
    "arch" / Default(Int32ub, ARCH_64),  # 0x048
    "volnr" / Default(Int32ub, 0),  # 0x04c
    "build_arch" / Default(Int32ub, ARCH_64),  # 0x050
    "mem_size_real" / Default(Int64ub, 0),  # 0x054
    "mvdump" / Default(Int8ub, 0),  # 0x05c
    "cpu_cnt" / Default(Int16ub, 0),  # 0x05d
    "real_cpu_cnt" / Default(Int16ub, 0),  # 0x05f
    "zlib_version_s390" / Default(Int8ub, 0),  # 0x061
    "zlib_entry_size" / Default(Int32ub, 0),  # 0x062
    Padding(0x200 - 0x066),
    "mvdump_sign" / Default(Int64ub, 0),  # 0x200
    "mvdump_zipl_time" / Default(Int64ub, 0),  # 0x208
    Padding(0x800 - 0x210),
    "lc_vec" / Default(Array(CPU_MAX, Int32ub), [0] * CPU_MAX),  # 0x800
)

#: struct df_s390_em: "DUMP_END" and the TOD clock at the end of the dump.
DfS390Em = Struct("magic" / Default(Bytes(8), EM_STR), "tod" / Int64ub)


def unix_to_tod(seconds: float) -> int:
    """Unix time to an s390 TOD clock value (bit 51 = 1 microsecond)."""
    tod = (round(seconds * 1_000_000) << 12) + TOD_UNIX_EPOCH
    if not 0 <= tod < 1 << 64:
        raise ValueError(f"time {seconds} is outside the TOD clock range")
    return tod


def tod_to_unix(tod: int) -> float:
    """s390 TOD clock value to Unix time in seconds (microsecond resolution)."""
    return ((tod - TOD_UNIX_EPOCH) >> 12) / 1_000_000


def build_header(
    mem_size: int,
    tod: int,
    cpu_prefixes: list[int],
    cpu_id: int = 0,
    mem_size_real: int | None = None,
) -> bytes:
    """The 4 KiB header of a version 5 s390 dump of [0, mem_size).

    mem_end = mem_size, as the zipl dumpers and the kernel's zcore write it (the format's
    comment says "last address"; the real producers win).
    """
    if not 0 < mem_size <= MAX_MEM_SIZE:
        raise ValueError(f"memory size {mem_size:#x} cannot be written as an s390 dump")
    if len(cpu_prefixes) > CPU_MAX:
        raise ValueError(f"{len(cpu_prefixes)} CPUs: the s390 dump header holds {CPU_MAX}")
    return DfS390Hdr.build(
        {
            "mem_size": mem_size,
            "mem_end": mem_size,
            "num_pages": min(mem_size // PAGE_SIZE, 0xFFFFFFFF),
            "tod": tod,
            "cpu_id": cpu_id,
            "mem_size_real": mem_size if mem_size_real is None else mem_size_real,
            "cpu_cnt": len(cpu_prefixes),
            "real_cpu_cnt": len(cpu_prefixes),
            "lc_vec": list(cpu_prefixes) + [0] * (CPU_MAX - len(cpu_prefixes)),
        }
    )


def build_end_marker(tod: int) -> bytes:
    return DfS390Em.build({"tod": tod})


def end_marker(read, file_size: int, off: int, tod: int) -> tuple[int | None, str | None]:
    """(end TOD, None) for a valid end marker at off, else (None, why not): every dump of
    this family (classic, s390_ext, multi-volume, tape) ends with the same 16 bytes."""
    if off + EM_SIZE > file_size:
        return None, f"no end marker: the file ends at {file_size:#x}, it belongs at {off:#x}"
    em = DfS390Em.parse(read(off, EM_SIZE))
    if em.magic != EM_STR:
        return None, f"no end marker at {off:#x} (the bytes are {em.magic!r})"
    if em.tod < tod:
        return None, f"the end marker's TOD {em.tod:#x} is earlier than the header's {tod:#x}"
    return em.tod, None


class LinearDump(FileImage):
    """Memory [0, _held) as plain bytes at file offset 0x1000 + address (the classic format
    and tape copies); holes of a sparse file are zero."""

    _held = 0

    def _read(self, paddr: int, size: int) -> bytes:
        return self._read_file(HDR_SIZE + paddr, size)

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        lo, hi = max(start, 0), min(end, self._held)
        if lo < hi:
            yield from file_extents(self._fd, lo, hi - lo, HDR_SIZE + lo)


class S390Dump(LinearDump):
    """A single-volume s390 dump: memory [0, mem_size) at file offset 0x1000 + address."""

    format = "s390"

    @staticmethod
    def probe(head: bytes) -> bool:
        # s390_ext and tape copies (…FE) have readers of their own (sadump.formats.s390_ext)
        return int.from_bytes(head[:8], "big") == S390_MAGIC

    def _load(self) -> None:
        size = self.file_size
        if size < 8:
            raise ImageError(f"file is {size} bytes, too short for an s390 dump")
        magic = int.from_bytes(self._read_file(0, 8), "big")
        if magic == S390_EXT_MAGIC:
            raise ImageError("an s390_ext dump (…FE magic): read it as s390_ext, s390mv_ext "
                             "or tape")
        if magic != S390_MAGIC:
            raise ImageError(f"not an s390 dump: magic {magic:#018x}")
        if size < HDR_SIZE:
            raise ImageError(f"file is {size} bytes, too short for the 4 KiB s390 dump header")
        self.header = h = DfS390Hdr.parse(self._read_file(0, HDR_SIZE))
        if h.hdr_size != HDR_SIZE:
            raise ImageError(f"header size is {h.hdr_size:#x}, expected 0x1000")
        if h.page_size != PAGE_SIZE:
            raise ImageError(f"page size is {h.page_size}, expected 4096")
        self.version, self.arch, self.cpu_id = h.version, h.arch, h.cpu_id
        self.tod = h.tod
        self.end_tod: int | None = None
        self.mem_size_real = h.mem_size_real
        if h.arch not in (ARCH_31, ARCH_64):
            self.warnings.append(f"arch is {h.arch}, neither 1 (31-bit) nor 2 (64-bit)")

        # zgetdump reads mem_size; dumpers write mem_end = mem_size, the format says
        # mem_size - 1. Anything else is reported, and mem_size is used.
        mem_size = h.mem_size
        if mem_size == 0 and h.mem_end:
            mem_size = h.mem_end + 1
            self.warnings.append(f"mem_size is 0: using mem_end + 1 = {mem_size:#x}")
        elif h.mem_end not in (mem_size - 1, mem_size):
            self.warnings.append(
                f"mem_end {h.mem_end:#x} disagrees with mem_size {mem_size:#x}; "
                "using mem_size (as zgetdump does)"
            )
        if mem_size == 0:
            raise ImageError("the header gives no memory size (mem_size and mem_end are 0)")
        if mem_size > MAX_PHYS_ADDR:
            raise ImageError(f"memory size {mem_size:#x} is past what s390x can address "
                             f"({MAX_PHYS_ADDR:#x})")
        if h.mem_start != 0:
            self.warnings.append(
                f"mem_start is {h.mem_start:#x}, not 0; memory is read from address 0 "
                "at file offset 0x1000 (as zgetdump does)"
            )
        self.mem_size = mem_size

        cpu_cnt = h.cpu_cnt
        if h.version < VERSION_WITH_PREFIXES:
            if cpu_cnt:
                self.warnings.append(
                    f"header version {h.version} has no CPU prefix list: cpu_cnt {cpu_cnt} ignored"
                )
            cpu_cnt = 0
        elif cpu_cnt > CPU_MAX:
            self.warnings.append(f"cpu_cnt {cpu_cnt} is more than {CPU_MAX}: capped")
            cpu_cnt = CPU_MAX
        self.cpu_prefixes: list[int] = list(h.lc_vec[:cpu_cnt])

        held = max(0, min(mem_size, size - HDR_SIZE))
        self.incomplete = self._check_end_marker(size, mem_size, held)
        if self.incomplete:
            self.warnings.append(f"incomplete dump: {self.incomplete}")
        self._held = held
        self.dumper = DumperFacts(format="s390", version=h.version, start_tod=h.tod,
                                  end_tod=self.end_tod, cpu_id=h.cpu_id, cpu_count=cpu_cnt,
                                  real_cpu_count=h.real_cpu_cnt if cpu_cnt else None,
                                  mem_size=mem_size, mem_size_real=h.mem_size_real or None,
                                  volumes=1)
        self._set_ranges([(0, held)])

    def _check_end_marker(self, size: int, mem_size: int, held: int) -> str | None:
        """Why the dump is incomplete, or None when the end marker is valid."""
        if held < mem_size:
            return (
                f"the file is truncated: it holds {held:#x} of {mem_size:#x} bytes of "
                "memory and no end marker"
            )
        self.end_tod, why = end_marker(self._read_file, size, HDR_SIZE + mem_size, self.tod)
        return why

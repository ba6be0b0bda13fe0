"""The one interface every memory-image reader gives (volatility3-style layer).

A raw image, an ELF core, an s390 dump and a kdump-compressed file differ only below
this line: above it there are present ranges, `read(paddr, n)` that raises on absent
memory, and the ELF notes the input carried.
"""

from __future__ import annotations

import bisect
import errno
import os
from abc import ABC, abstractmethod
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sadump.constants import MAX_PHYS_ADDR
from sadump.errors import AbsentMemoryError, ImageChanged, ImageError, SadumpError

#: Largest single read the layer serves; callers bound image-supplied sizes below it.
MAX_READ = 64 << 20
#: Present ranges a reader may have: each one becomes a JSON pair in reports and a segment
#: in dump plans (an ELF header lists < 65535); real images have a few dozen. 2^18 keeps
#: `info --json` of the worst case near 150 MiB.
MAX_RANGES = 1 << 18


def check_phys_end(end: int, limit: int = MAX_PHYS_ADDR) -> None:
    """Memory that reaches past `limit` is not memory of an s390x Linux system."""
    if end > limit:
        raise ImageError(
            f"memory up to {end:#x} is past what s390x can address ({limit:#x}, "
            f"MAX_PHYSMEM_BITS {limit.bit_length() - 1}): not a memory image of this system")


def vmcoreinfo_phys_limit(notes: Iterable[Note]) -> int:
    """MAX_PHYS_ADDR, or 2^NUMBER(MAX_PHYSMEM_BITS) of a VMCOREINFO note that says more (a
    later kernel); values outside [32, 52] are ignored."""
    for note in notes:
        if note.name != "VMCOREINFO":
            continue
        for line in note.desc[:MAX_READ].split(b"\n"):
            if line.startswith(b"NUMBER(MAX_PHYSMEM_BITS)="):
                try:
                    bits = int(line.split(b"=", 1)[1].strip(b"\0 "), 10)
                except ValueError:
                    continue
                if 32 <= bits <= 52:
                    return 1 << bits
    return MAX_PHYS_ADDR


@dataclass(frozen=True)
class Note:
    """One ELF note as carried by the input: name without NUL, type, descriptor bytes."""

    name: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class Extent:
    """How a piece of physical memory is stored, for fast copying.

    kind "file": the bytes sit unchanged at `file_offset` of `fileno`;
    "zero": the reader knows they are all zero (hole, excluded or zero page);
    "data": read them with `read()`.
    """

    paddr: int
    size: int
    kind: str
    fileno: int = -1
    file_offset: int = 0


def file_extents(fd: int, paddr: int, size: int, file_offset: int) -> Iterator[Extent]:
    """Memory [paddr, paddr + size) stored as plain bytes at file_offset of fd, split at the
    file's holes (SEEK_DATA/SEEK_HOLE): holes become "zero" extents, the rest "file". Where
    the file system cannot say, the whole range is one "file" extent."""
    pos, end = file_offset, file_offset + size
    delta = paddr - file_offset
    while pos < end:
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), end)
        except OSError as e:
            if e.errno != errno.ENXIO:  # no hole support: all of it is data
                yield Extent(pos + delta, end - pos, "file", fd, pos)
                return
            # ENXIO: a hole up to the end of the file; bytes past its end stay "file" extents,
            # so that reading them fails loudly instead of passing for zeros
            data = min(end, max(pos, os.fstat(fd).st_size))
        if data > pos:
            yield Extent(pos + delta, data - pos, "zero")
            pos = data
            if pos >= end:
                return
        try:
            hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end)
        except OSError:
            hole = end
        yield Extent(pos + delta, hole - pos, "file", fd, pos)
        pos = hole


def _short(offset: int, known_size: int | None) -> Exception:
    """A read that ended at offset: the file changed if it was known to be longer (or if
    the caller validated the range against the file before), else it is just short."""
    if known_size is None or offset < known_size:
        detail = f"it ends at {offset:#x}"
        return ImageChanged(detail if known_size is None
                            else f"{detail}, it was {known_size:#x} bytes long")
    return ImageError(f"file ends at {offset:#x}, before the data it should hold")


def pread_exact(fd: int, size: int, offset: int, known_size: int | None = None) -> bytes:
    """Exactly size bytes of fd at offset (os.pread may return fewer). The one such helper
    of sadump. A read error, or a file that ends before known_size (its size when it was
    opened; None: the range was checked against the file before), is ImageChanged; a file
    that was always that short is an ImageError."""
    try:
        data = os.pread(fd, size, offset)
        if len(data) == size:
            return data
        parts, got = [data], len(data)
        while got < size:
            more = os.pread(fd, size - got, offset + got)
            if not more:
                raise _short(offset + got, known_size)
            parts.append(more)
            got += len(more)
    except OSError as e:
        raise ImageChanged(f"reading {size:#x} bytes at {offset:#x}: {e.strerror or e}") \
            from None
    return b"".join(parts)


def preadinto_exact(fd: int, buf, offset: int, known_size: int | None = None) -> None:
    """Fill buf (a writable buffer) from fd at offset, as pread_exact without a new object."""
    view, got = memoryview(buf), 0
    try:
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if not n:
                raise _short(offset + got, known_size)
            got += n
    except OSError as e:
        raise ImageChanged(f"reading {len(view):#x} bytes at {offset:#x}: "
                           f"{e.strerror or e}") from None


class RangeList(Sequence):
    """Sorted, disjoint [start, end) pairs kept in two arrays (16 bytes a range, not a
    tuple each): a reader of a pathological bitmap may have millions of them. Reads like a
    list of tuples (len, index, slice, iteration, == with a list); never changed."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, starts: array | None = None, ends: array | None = None):
        self._starts = starts if starts is not None else array("Q")
        self._ends = ends if ends is not None else array("Q")

    @classmethod
    def merged(cls, ranges: Iterable[tuple[int, int]]) -> RangeList:
        """From any pairs: empty ones dropped, sorted, touching and overlapping ones merged."""
        if isinstance(ranges, RangeList):
            return ranges
        starts, ends = array("Q"), array("Q")
        for start, end in sorted(r for r in ranges if r[1] > r[0]):
            if ends and start <= ends[-1]:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        return cls(starts, ends)

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return list(zip(self._starts[i], self._ends[i], strict=True))
        return (self._starts[i], self._ends[i])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __eq__(self, other) -> bool:
        if isinstance(other, RangeList):
            return self._starts == other._starts and self._ends == other._ends
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(
                tuple(o) == r for o, r in zip(other, self, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"({s:#x}, {e:#x})" for s, e in self[:4])
        return f"RangeList([{shown}{', ...' if len(self) > 4 else ''}] {len(self)} ranges)"

    @property
    def total(self) -> int:
        return sum(self._ends) - sum(self._starts)

    def find(self, paddr: int) -> int:
        """Index of the range that starts at or below paddr, -1 if none."""
        return bisect.bisect_right(self._starts, paddr) - 1

    def end(self, i: int) -> int:
        return self._ends[i]


@dataclass
class DumperFacts:
    """What the program that wrote the dump recorded about the dump itself (a stand-alone
    dumper's header, z/VM's records): shown by inspect-meminfo and info, kept apart from what
    the kernel says. None: the format does not record it."""

    format: str  # s390, s390_ext, s390mv_ext, tape, vmdump, ngdump
    version: int | None = None
    start_tod: int | None = None  # TOD clock at dump start (epoch 1900, microseconds = tod >> 12)
    end_tod: int | None = None  # TOD clock of the end marker
    cpu_id: int | None = None  # STIDP of the dumping CPU
    cpu_count: int | None = None
    real_cpu_count: int | None = None
    mem_size: int | None = None  # bytes of memory the dump covers
    mem_size_real: int | None = None  # the machine's memory (can exceed mem_size)
    compression: str | None = None  # "zlib", or None for stored bytes
    volumes: int | None = None
    block_size: int | None = None


class PhysicalMemory(ABC):
    """Physical memory of one system, as read from an image file."""

    #: short format name: raw, elf, s390, s390_ext, s390mv_ext, s390tape, vmdump, ngdump, kdump,
    #: kdump-flat
    format: str = "?"
    #: the format itself records all-zero memory it skipped (s390_ext's MiBs between
    #: segments): a small file can truthfully describe a large machine, so its memory is not
    #: weighed against the file's size (dump_plan.check_claim), only against MAX_PHYS_ADDR
    records_skipped_memory: bool = False

    def __init__(self, path: str):
        self.path = path
        #: things the reader found off but could read around (QEMU quirks, ...)
        self.warnings: list[str] = []
        #: ELF notes carried by the input in file order (register notes, VMCOREINFO)
        self.notes: list[Note] = []
        #: the input says it is incomplete (s390 end marker, kdump INCOMPLETE flag)
        self.incomplete: str | None = None
        #: CPU lowcore addresses the input's header lists (the s390 dump format does)
        self.cpu_prefixes: list[int] = []
        #: what the dumper recorded about the dump (DumperFacts), for the formats that do
        self.dumper: DumperFacts | None = None
        #: the makedumpfile dump level the input was filtered at (kdump-compressed files)
        self.dump_level: int | None = None
        #: addresses at or past this are not memory (MAX_PHYS_ADDR; see vmcoreinfo_phys_limit)
        self.phys_limit = MAX_PHYS_ADDR
        self._ranges = RangeList()

    # ---- what a reader implements -------------------------------------------------
    def _set_ranges(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Store the present ranges sorted and merged; readers call this once. Every end
        must lie within what an s390x system can address (MAX_PHYS_ADDR, or the limit the
        reader learnt from its VMCOREINFO)."""
        checked = isinstance(ranges, RangeList)  # another layer's, checked there
        self._ranges = RangeList.merged(ranges)
        if len(self._ranges) > MAX_RANGES:
            raise ImageError(f"{len(self._ranges)} separate ranges of memory, more than "
                             f"sadump reads ({MAX_RANGES}): too fragmented")
        if self._ranges and not checked:
            check_phys_end(self._ranges[-1][1], self.phys_limit)

    @abstractmethod
    def _read(self, paddr: int, size: int) -> bytes:
        """Return size bytes at paddr; the range is known to be present."""

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """Describe [start, end) (present memory) as extents; default: all "data"."""
        yield Extent(start, end - start, "data")

    def ahead(self, extents: Iterator[Extent]) -> Iterator[Extent]:
        """extents, as a reader that reads each "data" extent it yields would go through
        them: a reader that decodes its data (s390_ext) starts on the next ones here, on
        other cores. Default: as they are."""
        return extents

    def recorded_ranges(self):
        """Memory the input says the system had, dumped or left out (a kdump-compressed
        file's 1st bitmap, as byte ranges); None: the same as ranges() (other formats)."""
        return

    @property
    def stored_bytes(self) -> int | None:
        """Bytes of the file the memory comes from (None: not a file): what a header's claims
        are weighed against."""
        return None

    def close(self) -> None:
        """Release the file; safe to call twice."""

    # ---- what everyone above uses -------------------------------------------------
    def ranges(self) -> RangeList:
        """Present physical memory as sorted, disjoint [start, end) pairs (a compact,
        read-only sequence of tuples)."""
        return self._ranges

    @property
    def size(self) -> int:
        """Bytes of memory present."""
        return self._ranges.total

    def is_present(self, paddr: int, size: int = 1) -> bool:
        if paddr < 0 or size < 0 or paddr >= 1 << 64:
            return False
        i = self._ranges.find(paddr)
        return i >= 0 and paddr + size <= self._ranges.end(i)

    def read(self, paddr: int, size: int) -> bytes:
        """Read present memory; raise AbsentMemoryError for any byte not in the image."""
        if size < 0 or size > MAX_READ:
            raise SadumpError(f"refusing a read of {size:#x} bytes at {paddr:#x}")
        if size == 0:
            return b""
        if not self.is_present(paddr, size):
            raise AbsentMemoryError(paddr, size)
        return self._read(paddr, size)

    def read_u64(self, paddr: int) -> int:
        return int.from_bytes(self.read(paddr, 8), "big")

    def read_u32(self, paddr: int) -> int:
        return int.from_bytes(self.read(paddr, 4), "big")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FileImage(PhysicalMemory):
    """A reader over one open file: opens it, lets `_load()` parse it, and on any failure
    closes it again and names the file in the one-line error."""

    def __init__(self, path: str):
        super().__init__(path)
        self._fd = -1
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ImageError(f"{path}: cannot open: {e.strerror}") from None
        self.file_size = os.fstat(self._fd).st_size
        try:
            self._load()
        except ImageError as e:
            self.close()
            msg = str(e)
            raise ImageError(msg if msg.startswith(f"{path}:") else f"{path}: {msg}") from None
        except BaseException:
            self.close()
            raise

    @abstractmethod
    def _load(self) -> None:
        """Parse the file's headers and call `_set_ranges`; raise ImageError when corrupt."""

    def _read_file(self, offset: int, size: int) -> bytes:
        """Exactly size bytes at offset: a file that ends early is an ImageError; one that
        shrank since it was opened, or fails to read, is ImageChanged."""
        return pread_exact(self._fd, size, offset, self.file_size)

    @property
    def stored_bytes(self) -> int | None:
        return self.file_size

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

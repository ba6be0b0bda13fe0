"""ELF64 core files as physical memory: the kernel's /proc/vmcore, QEMU dump-guest-memory,
zgetdump -f elf.

Memory is mapped by p_paddr of the PT_LOAD segments; the notes of every PT_NOTE are kept
in file order. QEMU 7.2's quirks are read around and reported in `warnings`; notes are
left exactly as the file has them (a later step normalises pr_pid).
"""

from __future__ import annotations

import bisect
import functools
import struct
from collections import namedtuple
from collections.abc import Iterator

from construct import (
    Const,
    Default,
    Int8ub,
    Int16ub,
    Int16ul,
    Int32ub,
    Int32ul,
    Int64ub,
    Int64ul,
    Padding,
    Struct,
)

from sadump.constants import MAX_NOTE_BYTES, MAX_NOTES
from sadump.errors import ImageError
from sadump.formats.memory import Extent, FileImage, Note, file_extents, vmcoreinfo_phys_limit

ELFMAG = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1
ET_CORE = 4
EM_S390 = 22
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
SHT_NOBITS = 8

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_S390_TIMER = 0x301
NT_S390_TODCMP = 0x302
NT_S390_TODPREG = 0x303
NT_S390_CTRS = 0x304
NT_S390_PREFIX = 0x305
NT_S390_VXRS_LOW = 0x309
NT_S390_VXRS_HIGH = 0x30A
NT_S390_GS_CB = 0x30B

EHDR_SIZE, PHDR_SIZE, SHDR_SIZE, NHDR_SIZE = 64, 56, 64, 12
PRSTATUS_PID_OFFSET = 0x20  # elf_prstatus.pr_pid on every 64-bit Linux architecture

#: More program headers than this is taken as a corrupt header (PN_XNUM allows 2^32).
MAX_PHNUM = 1 << 20
#: Note segments are read whole; real ones are a few KiB (about 1.3 KiB per CPU): the caps
#: MAX_NOTE_BYTES and MAX_NOTES (sadump.constants) hold for all note segments together.
#: Section headers looked at for the QEMU byte-order quirk; cores need none of them.
MAX_SHDR_CHECK = 64
_NO_PADDR = (1 << 64) - 1  # p_paddr all ones: "no physical address" (drgn, x86 kcore)


def _declare(u16, u32, u64, ei_data: int):
    """The four ELF64 records for one byte order, declared once for parse and build."""
    ident = Struct(
        "magic" / Const(ELFMAG),
        "ei_class" / Default(Int8ub, ELFCLASS64),
        "ei_data" / Default(Int8ub, ei_data),
        "ei_version" / Default(Int8ub, EV_CURRENT),
        "ei_osabi" / Default(Int8ub, 0),
        "ei_abiversion" / Default(Int8ub, 0),
        Padding(7),
    )
    ehdr = Struct(
        "e_ident" / Default(ident, {}),
        "e_type" / Default(u16, ET_CORE),
        "e_machine" / Default(u16, EM_S390),
        "e_version" / Default(u32, EV_CURRENT),
        "e_entry" / Default(u64, 0),
        "e_phoff" / Default(u64, EHDR_SIZE),
        "e_shoff" / Default(u64, 0),
        "e_flags" / Default(u32, 0),
        "e_ehsize" / Default(u16, EHDR_SIZE),
        "e_phentsize" / Default(u16, PHDR_SIZE),
        "e_phnum" / u16,
        "e_shentsize" / Default(u16, SHDR_SIZE),
        "e_shnum" / Default(u16, 0),
        "e_shstrndx" / Default(u16, 0),
    )
    phdr = Struct(
        "p_type" / u32,
        "p_flags" / Default(u32, 0),
        "p_offset" / u64,
        "p_vaddr" / Default(u64, 0),
        "p_paddr" / Default(u64, 0),
        "p_filesz" / u64,
        "p_memsz" / u64,
        "p_align" / Default(u64, 0),
    )
    shdr = Struct(
        "sh_name" / Default(u32, 0),
        "sh_type" / Default(u32, 0),
        "sh_flags" / Default(u64, 0),
        "sh_addr" / Default(u64, 0),
        "sh_offset" / Default(u64, 0),
        "sh_size" / Default(u64, 0),
        "sh_link" / Default(u32, 0),
        "sh_info" / Default(u32, 0),
        "sh_addralign" / Default(u64, 0),
        "sh_entsize" / Default(u64, 0),
    )
    nhdr = Struct("n_namesz" / u32, "n_descsz" / u32, "n_type" / u32)
    return ehdr, phdr, shdr, nhdr


#: Big-endian (s390) records; the ELF writer builds with these.
Elf64_Ehdr, Elf64_Phdr, Elf64_Shdr, Elf64_Nhdr = _declare(Int16ub, Int32ub, Int64ub, ELFDATA2MSB)
#: Both byte orders by name, for reading cores of either endianness.
STRUCTS = {
    "big": (Elf64_Ehdr, Elf64_Phdr, Elf64_Shdr, Elf64_Nhdr),
    "little": _declare(Int16ul, Int32ul, Int64ul, ELFDATA2LSB),
}


@functools.cache
def _fast(byteorder: str, index: int):
    """struct.Struct and namedtuple derived from one flat construct record (index 1 = Phdr,
    3 = Nhdr): the per-entry loops (up to MAX_PHNUM headers) run at struct speed without
    declaring the layout a second time."""
    record = STRUCTS[byteorder][index]
    names, fmt = [], ">" if byteorder == "big" else "<"
    for sub in record.subcons:
        names.append(sub.name)
        field = sub.subcon
        while not hasattr(field, "fmtstr"):  # unwrap Default
            field = field.subcon
        fmt += field.fmtstr[1:]
    return struct.Struct(fmt), namedtuple(("Ehdr", "Phdr", "Shdr", "Nhdr")[index], names)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def parse_notes(
    data: bytes,
    byteorder: str = "big",
    warnings: list[str] | None = None,
    max_notes: int = MAX_NOTES,
) -> list[Note]:
    """Split note data (a PT_NOTE segment) into Notes.

    Stops at the kernel's all-zero terminating header. A note whose sizes run past the
    buffer raises ImageError, or, when a `warnings` list is given, ends the parse with a
    warning there and returns the notes before it. Nothing is allocated from a size field
    before it is checked against the buffer; more than max_notes notes is an ImageError.
    """
    nhdr = _fast(byteorder, 3)[0]
    data = memoryview(data)
    notes: list[Note] = []
    off, end = 0, len(data)
    while off + NHDR_SIZE <= end:
        namesz, descsz, ntype = nhdr.unpack_from(data, off)
        if namesz == 0 and descsz == 0 and ntype == 0:
            break  # the terminating empty note
        desc_off = off + NHDR_SIZE + _pad4(namesz)
        desc_end = desc_off + descsz
        if desc_end > end:
            msg = (
                f"note {len(notes)} at offset {off:#x}: name size {namesz:#x} and "
                f"descriptor size {descsz:#x} run past the end of the note data "
                f"({end:#x} bytes)"
            )
            if warnings is None:
                raise ImageError(msg)
            warnings.append(msg + "; the notes after it are ignored")
            return notes
        if len(notes) >= max_notes:
            raise ImageError(f"more than {max_notes} notes: the note data is corrupt")
        raw_name = bytes(data[off + NHDR_SIZE : off + NHDR_SIZE + namesz])
        name = raw_name.split(b"\0", 1)[0].decode("ascii", errors="replace")
        notes.append(Note(name, ntype, bytes(data[desc_off:desc_end])))
        off = desc_off + _pad4(descsz)
    return notes


def build_note(note: Note, byteorder: str = "big") -> bytes:
    """One note as the kernel lays it out: n_namesz counts the NUL, name and desc padded to 4.

    Note("", 0, b"") gives the 12 zero bytes of the kernel's terminating note.
    """
    name = note.name.encode("ascii") + b"\0" if note.name else b""
    head = STRUCTS[byteorder][3].build(
        {"n_namesz": len(name), "n_descsz": len(note.desc), "n_type": note.type}
    )
    name += b"\0" * (_pad4(len(name)) - len(name))
    desc = note.desc + b"\0" * (_pad4(len(note.desc)) - len(note.desc))
    return head + name + desc


def prstatus_pid(desc: bytes) -> tuple[int, bool]:
    """pr_pid of a big-endian NT_PRSTATUS desc, and whether it was written little-endian.

    QEMU 7.2 writes pr_pid in host (little-endian) order: 1 reads as 0x01000000. The
    heuristic: the big-endian value is above 0xFFFF and the byte-swapped one is not.
    """
    if len(desc) < PRSTATUS_PID_OFFSET + 4:
        raise ImageError(f"NT_PRSTATUS descriptor of {len(desc)} bytes has no pr_pid")
    raw = desc[PRSTATUS_PID_OFFSET : PRSTATUS_PID_OFFSET + 4]
    big, little = int.from_bytes(raw, "big"), int.from_bytes(raw, "little")
    if big > 0xFFFF and little <= 0xFFFF:
        return little, True
    return big, False


class ElfCore(FileImage):
    """An ELF64 core file (ET_CORE) of either byte order."""

    format = "elf"

    @staticmethod
    def probe(head: bytes) -> bool:
        return head[:4] == ELFMAG

    def __init__(self, path: str):
        self.ehdr = None
        #: program headers and (up to MAX_SHDR_CHECK) section headers as parsed
        self.phdrs: list = []
        self.shdrs: list = []
        self._pieces: list[tuple[int, int, str, int]] = []
        self._piece_starts: list[int] = []
        self._note_bytes = 0
        super().__init__(path)

    # ---- parsing ---------------------------------------------------------------------
    def _load(self) -> None:
        size = self.file_size
        if size < EHDR_SIZE:
            raise ImageError(f"file is {size} bytes, too short for an ELF64 header (64 bytes)")
        head = self._read_file(0, EHDR_SIZE)
        if head[:4] != ELFMAG:
            raise ImageError("not an ELF file (no \\x7fELF magic)")
        if head[4] != ELFCLASS64:
            raise ImageError(f"ELF class {head[4]}: only 64-bit ELF cores (ELFCLASS64) are read")
        if head[5] not in (ELFDATA2LSB, ELFDATA2MSB):
            raise ImageError(f"ELF data encoding {head[5]} is neither little- nor big-endian")
        self.byteorder = "big" if head[5] == ELFDATA2MSB else "little"
        self.ehdr = eh = STRUCTS[self.byteorder][0].parse(head)
        if eh.e_type != ET_CORE:
            raise ImageError(f"not an ELF core file: e_type is {eh.e_type}, ET_CORE is 4")
        self.machine = eh.e_machine
        if eh.e_machine != EM_S390:
            self.warnings.append(f"e_machine is {eh.e_machine}, not EM_S390 (22)")
        if eh.e_ehsize != EHDR_SIZE:
            who = "QEMU quirk: " if eh.e_ehsize == 8 else ""
            self.warnings.append(f"{who}e_ehsize is {eh.e_ehsize}, expected 64")

        shdr0 = self._check_sections(eh, size)
        phnum = eh.e_phnum
        if phnum == PN_XNUM:
            if shdr0 is None:
                raise ImageError(
                    "e_phnum is PN_XNUM (0xffff) but there is no section header 0 "
                    "holding the real program header count"
                )
            phnum = shdr0.sh_info
        if phnum and eh.e_phentsize != PHDR_SIZE:
            raise ImageError(f"e_phentsize is {eh.e_phentsize}, expected 56 for ELF64")
        if phnum > MAX_PHNUM:
            raise ImageError(
                f"{phnum} program headers is more than sadump accepts ({MAX_PHNUM}): "
                "the header is corrupt"
            )
        table_end = eh.e_phoff + phnum * PHDR_SIZE
        if phnum and eh.e_phoff < EHDR_SIZE:
            raise ImageError(f"program headers at {eh.e_phoff:#x} overlap the ELF header")
        if table_end > size:
            raise ImageError(
                f"program headers [{eh.e_phoff:#x}, {table_end:#x}) lie beyond the end "
                f"of the file ({size:#x} bytes)"
            )
        if phnum and eh.e_phoff != EHDR_SIZE and 0 < eh.e_shoff < eh.e_phoff:
            self.warnings.append(
                f"QEMU quirk: section headers at {eh.e_shoff:#x} come before the program "
                f"headers (e_phoff {eh.e_phoff:#x}, expected 0x40)"
            )
        table = self._read_file(eh.e_phoff, phnum * PHDR_SIZE) if phnum else b""
        unpack, record = _fast(self.byteorder, 1)
        self.phdrs = [record._make(t) for t in unpack.iter_unpack(table)]

        loads = []
        for i, ph in enumerate(self.phdrs):
            if ph.p_type == PT_NOTE:
                self._read_notes(i, ph, size)
            elif ph.p_type == PT_LOAD:
                seg = self._check_load(i, ph, size)
                if seg is not None:
                    loads.append(seg)
        if not loads:
            self.warnings.append("the ELF core has no PT_LOAD segment: it holds no memory")
        self.phys_limit = vmcoreinfo_phys_limit(self.notes)
        for i, (paddr, _, memsz, _) in enumerate(loads):
            if paddr + memsz > self.phys_limit:
                raise ImageError(
                    f"segment {i}: [{paddr:#x}, +{memsz:#x}) is past what s390x can address "
                    f"({self.phys_limit:#x}): not memory of an s390x system")
        self._layout(loads)
        self._check_prstatus()

    def _check_sections(self, eh, size: int):
        """Look at the section headers (a core needs none) and return section 0 or None.

        QEMU 7.2 writes section header 1 in little-endian order in a big-endian file;
        that is found by which byte order gives a sane header.
        """
        if eh.e_shoff == 0:
            return None
        count = eh.e_shnum or 1  # e_shnum 0 with e_shoff set: the count is in section 0
        if eh.e_shentsize != SHDR_SIZE:
            self.warnings.append(
                f"section headers ignored: e_shentsize is {eh.e_shentsize}, expected 64"
            )
            return None
        end = eh.e_shoff + count * SHDR_SIZE
        if end > size:
            self.warnings.append(
                f"section headers ignored: [{eh.e_shoff:#x}, {end:#x}) run past the end "
                f"of the file ({size:#x} bytes)"
            )
            return None
        own = STRUCTS[self.byteorder][2]
        other_order = "little" if self.byteorder == "big" else "big"
        other = STRUCTS[other_order][2]
        checked = min(count, MAX_SHDR_CHECK)
        raw = self._read_file(eh.e_shoff, checked * SHDR_SIZE)
        shdrs = []
        for i in range(checked):
            rec = raw[i * SHDR_SIZE : (i + 1) * SHDR_SIZE]
            sh = own.parse(rec)
            swapped = other.parse(rec)
            if not _plausible_shdr(sh, size) and _plausible_shdr(swapped, size):
                self.warnings.append(
                    f"QEMU quirk: section header {i} is written {other_order}-endian "
                    f"in a {self.byteorder}-endian file"
                )
                sh = swapped
            shdrs.append(sh)
        self.shdrs = shdrs
        return shdrs[0]

    def _read_notes(self, i: int, ph, size: int) -> None:
        end = ph.p_offset + ph.p_filesz
        if end > size:
            raise ImageError(
                f"note segment {i} [{ph.p_offset:#x}, {end:#x}) runs past the end of the "
                f"file ({size:#x} bytes)"
            )
        self._note_bytes += ph.p_filesz
        if self._note_bytes > MAX_NOTE_BYTES:
            raise ImageError(
                f"note segment {i}: the notes reach {self._note_bytes:#x} bytes, more than "
                f"sadump reads ({MAX_NOTE_BYTES:#x}): the header is corrupt"
            )
        found: list[str] = []
        data = self._read_file(ph.p_offset, ph.p_filesz) if ph.p_filesz else b""
        self.notes.extend(
            parse_notes(data, self.byteorder, found, max_notes=MAX_NOTES - len(self.notes))
        )
        self.warnings.extend(f"note segment {i}: {w}" for w in found)

    def _check_load(self, i: int, ph, size: int):
        """Validate one PT_LOAD; return (paddr, filesz, memsz, offset) or None to skip it."""
        paddr, offset, filesz, memsz = ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz
        if filesz > memsz:
            raise ImageError(f"segment {i}: p_filesz {filesz:#x} is larger than p_memsz {memsz:#x}")
        if offset + filesz > size:
            raise ImageError(
                f"image is shorter than its header claims: segment {i} needs "
                f"{offset + filesz} bytes, file has {size}"
            )
        if memsz == 0:
            return None
        if paddr == _NO_PADDR:
            self.warnings.append(f"segment {i} has no physical address (p_paddr -1): skipped")
            return None
        if paddr + memsz > 1 << 64:
            raise ImageError(
                f"segment {i}: [{paddr:#x}, +{memsz:#x}) runs past the end of "
                "the 64-bit address space"
            )
        return paddr, filesz, memsz, offset

    def _layout(self, loads: list[tuple[int, int, int, int]]) -> None:
        """Turn possibly overlapping segments into disjoint pieces.

        File bytes win over a zero tail; among overlapping file bytes the segment that
        starts lower wins (6.10+ vmcores map the kernel image twice with the same bytes).
        """
        files: list[tuple[int, int, str, int]] = []
        for start, filesz, _, off in sorted(seg for seg in loads if seg[1]):
            end = start + filesz
            if files and start < files[-1][1]:
                if end <= files[-1][1]:
                    continue
                off += files[-1][1] - start
                start = files[-1][1]
            files.append((start, end, "file", off))
        tails: list[list[int]] = []
        for start, end in sorted((p + fs, p + ms) for p, fs, ms, _ in loads if ms > fs):
            if tails and start <= tails[-1][1]:
                tails[-1][1] = max(tails[-1][1], end)
            else:
                tails.append([start, end])
        zeros: list[tuple[int, int, str, int]] = []
        j = 0
        for start, end in tails:
            while j < len(files) and files[j][1] <= start:
                j += 1
            k, cur = j, start
            while cur < end:
                if k < len(files) and files[k][0] < end:
                    if files[k][0] > cur:
                        zeros.append((cur, files[k][0], "zero", 0))
                    cur = max(cur, files[k][1])
                    k += 1
                else:
                    zeros.append((cur, end, "zero", 0))
                    cur = end
        pieces: list[tuple[int, int, str, int]] = []
        for piece in sorted(files + zeros):  # join neighbours that continue each other
            if pieces:
                start, end, kind, off = pieces[-1]
                if (
                    end == piece[0]
                    and kind == piece[2]
                    and (kind == "zero" or off + end - start == piece[3])
                ):
                    pieces[-1] = (start, piece[1], kind, off)
                    continue
            pieces.append(piece)
        self._pieces = pieces
        self._piece_starts = [p[0] for p in self._pieces]
        self._set_ranges([(p[0], p[1]) for p in self._pieces])

    def _check_prstatus(self) -> None:
        if self.byteorder != "big":
            return
        swapped = []
        for note in self.notes:
            if (
                note.type == NT_PRSTATUS
                and note.name == "CORE"
                and len(note.desc) >= PRSTATUS_PID_OFFSET + 4
            ):
                pid, little = prstatus_pid(note.desc)
                if little:
                    swapped.append(pid)
        if swapped:
            self.warnings.append(
                f"QEMU quirk: pr_pid of {len(swapped)} NT_PRSTATUS note(s) is written "
                f"little-endian (pids {', '.join(map(str, swapped))} when byte-swapped)"
            )

    # ---- PhysicalMemory ----------------------------------------------------------------
    def _pieces_from(self, paddr: int) -> int:
        return max(bisect.bisect_right(self._piece_starts, paddr) - 1, 0)

    def _read(self, paddr: int, size: int) -> bytes:
        parts = []
        pos, end = paddr, paddr + size
        i = self._pieces_from(paddr)
        while pos < end:
            start, stop, kind, off = self._pieces[i]
            n = min(stop, end) - pos
            if kind == "file":
                parts.append(self._read_file(off + pos - start, n))
            else:
                parts.append(bytes(n))
            pos += n
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """File pieces as "file" extents (fd + offset) split at the file's holes, holes and
        p_filesz < p_memsz tails as "zero"."""
        i = self._pieces_from(start)
        while i < len(self._pieces) and self._pieces[i][0] < end:
            pstart, pstop, kind, off = self._pieces[i]
            lo, hi = max(pstart, start), min(pstop, end)
            if lo < hi:
                if kind == "file":
                    yield from self._file_extents(lo, hi - lo, off + lo - pstart)
                else:
                    yield Extent(lo, hi - lo, "zero")
            i += 1

    def _file_extents(self, paddr: int, size: int, file_offset: int) -> Iterator[Extent]:
        """Memory [paddr, +size) stored at file_offset of the core (a reader of a core
        inside another file maps the offsets)."""
        return file_extents(self._fd, paddr, size, file_offset)


def _plausible_shdr(sh, file_size: int) -> bool:
    """A section header whose type is a defined range and whose data lies in the file."""
    if not (sh.sh_type < 0x20 or sh.sh_type >= 0x60000000):
        return False
    return sh.sh_type == SHT_NOBITS or sh.sh_offset + sh.sh_size <= file_size

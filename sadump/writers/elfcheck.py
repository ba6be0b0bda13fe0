"""The independent check of each written ELF dump: pyelftools (not sadump's ELF reader) opens
the finished file and must find the header, the program headers and the notes that the
layout planned. A difference is an OutputError (a bug in sadump): no file is left.
Memory itself is not read back (it was written from the blocks just read)."""

from __future__ import annotations

from sadump.writers.sink import OutputError


def check_elf(path: str, segments: list, note_offset: int, notes: list) -> None:
    """segments: [(Segment, file offset)]; notes: the Notes written at note_offset."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    from elftools.elf.enums import ENUM_CORE_NOTE_N_TYPE

    def number(t) -> int:
        return t if isinstance(t, int) else ENUM_CORE_NOTE_N_TYPE.get(t, -1)

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            h = elf.header
            ident = h.e_ident
            if (ident.EI_CLASS, ident.EI_DATA, h.e_type, h.e_machine) != (
                    "ELFCLASS64", "ELFDATA2MSB", "ET_CORE", "EM_S390"):
                raise _bad(f"header {ident.EI_CLASS} {ident.EI_DATA} {h.e_type} {h.e_machine}")
            phdrs = [s.header for s in elf.iter_segments()]
            if len(phdrs) != 1 + len(segments) or phdrs[0].p_type != "PT_NOTE":
                raise _bad(f"{len(phdrs)} program headers, the first {phdrs[0].p_type}")
            for ph, (seg, off) in zip(phdrs[1:], segments, strict=True):
                got = (ph.p_type, ph.p_offset, ph.p_paddr, ph.p_vaddr, ph.p_filesz, ph.p_memsz)
                want = ("PT_LOAD", off, seg.paddr, seg.vaddr, seg.size, seg.size)
                if got != want:
                    raise _bad(f"PT_LOAD {got} where {want} was planned")
            if phdrs[0].p_offset != note_offset:
                raise _bad(f"PT_NOTE at {phdrs[0].p_offset:#x}, planned {note_offset:#x}")
            found = list(elf.get_segment(0).iter_notes())
            if len(found) != len(notes):
                raise _bad(f"{len(found)} notes, {len(notes)} written")
            for got, want in zip(found, notes, strict=True):
                at = got.n_offset + 12 + (got.n_namesz + 3) // 4 * 4
                f.seek(at)
                desc = f.read(got.n_descsz)
                if (got.n_name, number(got.n_type), desc) != (want.name, want.type, want.desc):
                    raise _bad(f"note {got.n_name} type {got.n_type} differs from the "
                               f"{want.name} note written")
    except (ELFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise _bad(f"{type(e).__name__}: {e}") from None


def _bad(why: str) -> OutputError:
    return OutputError(f"verification failed: pyelftools reads the written ELF dump "
                       f"otherwise: {why} (a bug in sadump: please report it)")

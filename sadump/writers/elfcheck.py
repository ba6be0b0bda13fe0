"""The independent check of each written ELF dump: pyelftools (not sadump's ELF reader) reads
the finished file's header, program headers and notes, which must be what the layout
planned. A difference is an OutputError (a bug in sadump): no file is left. Memory itself
is not read back (it was written from the blocks just read).

pyelftools' own struct definitions (elftools.elf.structs) and note walker do the reading;
its ELFFile class is not imported: that would bring the DWARF readers too (about 30 ms of
imports, as long as a small dump takes)."""

from __future__ import annotations

from types import SimpleNamespace

from sadump.writers.sink import OutputError


def check_elf(path: str, segments: list, note_offset: int, notes: list) -> None:
    """segments: [(Segment, file offset)]; notes: the Notes written at note_offset."""
    from elftools.common.exceptions import ELFError
    from elftools.common.utils import struct_parse
    from elftools.elf.enums import ENUM_CORE_NOTE_N_TYPE
    from elftools.elf.notes import iter_notes
    from elftools.elf.structs import ELFStructs

    def number(t) -> int:
        return t if isinstance(t, int) else ENUM_CORE_NOTE_N_TYPE.get(t, -1)

    structs = ELFStructs(little_endian=False, elfclass=64)
    structs.create_basic_structs()
    try:
        with open(path, "rb") as f:
            h = struct_parse(structs.Elf_Ehdr, f, stream_pos=0)
            ident = h.e_ident
            if (ident.EI_MAG, ident.EI_CLASS, ident.EI_DATA, h.e_type, h.e_machine) != (
                    [0x7F, 0x45, 0x4C, 0x46], "ELFCLASS64", "ELFDATA2MSB", "ET_CORE",
                    "EM_S390"):
                raise _bad(f"header {ident.EI_MAG} {ident.EI_CLASS} {ident.EI_DATA} "
                           f"{h.e_type} {h.e_machine}")
            structs.create_advanced_structs(h.e_type, h.e_machine, ident.EI_OSABI)
            phdrs = [struct_parse(structs.Elf_Phdr, f, stream_pos=h.e_phoff + i * h.e_phentsize)
                     for i in range(h.e_phnum)]
            if len(phdrs) != 1 + len(segments) or phdrs[0].p_type != "PT_NOTE":
                raise _bad(f"{len(phdrs)} program headers, the first "
                           f"{phdrs[0].p_type if phdrs else None}")
            for ph, (seg, off) in zip(phdrs[1:], segments, strict=True):
                got = (ph.p_type, ph.p_offset, ph.p_paddr, ph.p_vaddr, ph.p_filesz, ph.p_memsz)
                want = ("PT_LOAD", off, seg.paddr, seg.vaddr, seg.size, seg.size)
                if got != want:
                    raise _bad(f"PT_LOAD {got} where {want} was planned")
            if phdrs[0].p_offset != note_offset:
                raise _bad(f"PT_NOTE at {phdrs[0].p_offset:#x}, planned {note_offset:#x}")
            # the walker needs only what an ELFFile would lend it: the structs and the stream
            found = list(iter_notes(SimpleNamespace(structs=structs, stream=f),
                                    phdrs[0].p_offset, phdrs[0].p_filesz))
            if len(found) != len(notes):
                raise _bad(f"{len(found)} notes, {len(notes)} written")
            for got, want in zip(found, notes, strict=True):
                if (got.n_name, number(got.n_type), bytes(got.n_descdata)) != (
                        want.name, want.type, want.desc):
                    raise _bad(f"note {got.n_name} type {got.n_type} differs from the "
                               f"{want.name} note written")
    except (ELFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise _bad(f"{type(e).__name__}: {e}") from None


def _bad(why: str) -> OutputError:
    return OutputError(f"verification failed: pyelftools reads the written ELF dump "
                       f"otherwise: {why} (a bug in sadump: please report it)")

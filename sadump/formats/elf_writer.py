"""The kdump vmcore writer: an ELF64 big-endian core shaped like the kernel's /proc/vmcore.

Layout as in the reference /proc/vmcore of a 6.1 kernel: ELF header and program headers
in the first page(s), PT_NOTE at the next page boundary (0x1000), each PT_LOAD's data at a
page-aligned offset after the notes. p_filesz == p_memsz always (every reader accepts it);
all-zero pages cost no disk space because the file is sparse.
"""

from __future__ import annotations

from sadump.errors import SadumpError
from sadump.formats.elf import (
    EHDR_SIZE,
    PHDR_SIZE,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    Elf64_Ehdr,
    Elf64_Phdr,
    build_note,
)
from sadump.writing import Sink, copy_memory

PAGE = 4096
PF_RWX = 7


def _up(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def layout(plan) -> None:
    """Set each segment's file offset, the header bytes and the output size."""
    phnum = 1 + len(plan.segments)
    if phnum >= PN_XNUM:
        raise SadumpError(f"{phnum - 1} memory ranges: more than an ELF header can list")
    notes = b"".join(build_note(n) for n in plan.notes)
    note_offset = _up(EHDR_SIZE + PHDR_SIZE * phnum)
    offset = _up(note_offset + len(notes))
    for seg in plan.segments:
        seg.offset = offset
        offset = _up(offset + seg.size)
    last = plan.segments[-1]
    plan.size = last.offset + last.size
    ehdr = Elf64_Ehdr.build({"e_phnum": phnum, "e_shentsize": 0})
    phdrs = [Elf64_Phdr.build({"p_type": PT_NOTE, "p_offset": note_offset,
                               "p_filesz": len(notes), "p_memsz": len(notes)})]
    for seg in plan.segments:
        phdrs.append(Elf64_Phdr.build({
            "p_type": PT_LOAD, "p_flags": PF_RWX, "p_offset": seg.offset, "p_vaddr": seg.vaddr,
            "p_paddr": seg.paddr, "p_filesz": seg.size, "p_memsz": seg.size, "p_align": PAGE}))
    head = ehdr + b"".join(phdrs)
    plan.header = head + bytes(note_offset - len(head)) + notes
    plan.note_offset, plan.note_size = note_offset, len(notes)


def write(plan, sink: Sink) -> None:
    """Header and notes, then each segment's memory (read through the swap view)."""
    sink.data(0, plan.header)
    for seg in plan.segments:
        copy_memory(plan.memory, seg.paddr, seg.end, sink, seg.offset)

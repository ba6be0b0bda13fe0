"""The ELF vmcore writer: an ELF64 big-endian core shaped like the kernel's /proc/vmcore.

Layout as in the reference /proc/vmcore of a 6.1 kernel: ELF header and program headers
in the first page(s), PT_NOTE at the next page boundary (0x1000), each PT_LOAD's data at a
page-aligned offset after the notes. p_filesz == p_memsz always (every reader accepts it);
all-zero pages cost no disk space because the file is sparse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sadump.constants import PAGE_SIZE
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
from sadump.writers import Layout, need_bytes
from sadump.writers.sink import Sink, write_memory

PF_RWX = 7


def _up(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


@dataclass
class ElfOptions:
    #: "none": no pyelftools check of the written file; None: $SADUMP_VERIFY, else check
    verify: str | None = None


@dataclass
class ElfLayout(Layout):
    header: bytes = b""  # ELF header, program headers, padding, notes
    note_offset: int = 0  # where the PT_NOTE data starts
    note_size: int = 0
    check: bool = True  # pyelftools reads the written file back


def layout(plan, options: ElfOptions | None = None) -> ElfLayout:
    """Each segment's file offset, the header bytes and the output size."""
    phnum = 1 + len(plan.segments)
    if phnum >= PN_XNUM:
        raise SadumpError(f"{phnum - 1} memory ranges: more than an ELF header can list")
    notes = b"".join(build_note(n) for n in plan.notes)
    note_offset = _up(EHDR_SIZE + PHDR_SIZE * phnum)
    offset = _up(note_offset + len(notes))
    placed = []
    for seg in plan.segments:
        placed.append((seg, offset))
        offset = _up(offset + seg.size)
    last, last_off = placed[-1]
    size = last_off + last.size
    ehdr = Elf64_Ehdr.build({"e_phnum": phnum, "e_shentsize": 0})
    phdrs = [Elf64_Phdr.build({"p_type": PT_NOTE, "p_offset": note_offset,
                               "p_filesz": len(notes), "p_memsz": len(notes)})]
    for seg, off in placed:
        phdrs.append(Elf64_Phdr.build({
            "p_type": PT_LOAD, "p_flags": PF_RWX, "p_offset": off, "p_vaddr": seg.vaddr,
            "p_paddr": seg.paddr, "p_filesz": seg.size, "p_memsz": seg.size,
            "p_align": PAGE_SIZE}))
    head = ehdr + b"".join(phdrs)
    header = head + bytes(note_offset - len(head)) + notes
    verify = (options.verify if options else None) or os.environ.get("SADUMP_VERIFY")
    return ElfLayout(size, need_bytes(plan, plan.segments, size, len(header)), placed,
                     header=header, note_offset=note_offset, note_size=len(notes),
                     check=verify != "none")


def write(plan, lay: ElfLayout, sink: Sink) -> None:
    """Header and notes, then each segment's memory (read through the swap view); then a
    file (not a stream) is checked by pyelftools (writers.elfcheck) unless --verify none
    (or $SADUMP_VERIFY=none)."""
    sink.data(0, lay.header)
    sink.stream_from(len(lay.header))
    for seg, off in lay.segments:
        write_memory(sink, plan.memory, seg.paddr, seg.end, off)
    if sink.tmp is not None and lay.check:
        from sadump.writers.elfcheck import check_elf

        os.ftruncate(sink.fd, lay.size)  # its length, as finish() will leave it
        check_elf(sink.tmp, lay.segments, lay.note_offset, plan.notes)

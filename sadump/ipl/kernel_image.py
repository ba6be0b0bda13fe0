"""The kernel entry table and parmarea of a loaded s390x kernel image (spec 4.1)."""

from __future__ import annotations

from dataclasses import dataclass

from construct import Bytes, Int8ub, Int64ub, Struct

from sadump.errors import SadumpError
from sadump.formats.memory import PhysicalMemory

ENTRY_TABLE_OFFSET = 0x10000
KDUMP_ENTRY_OFFSET = 0x10010
EP_MARKER = b"S390EP"
COMMAND_LINE_SIZE = 896

EntryTable = Struct(
    "normal_entry" / Bytes(8),  # 0x10000: branch to startup_normal
    "marker" / Bytes(6),  # 0x10008: "S390EP"
    "pad" / Int8ub,  # 0x1000E
    "entry_count" / Int8ub,  # 0x1000F: extra entry points (1 = kdump)
)
PARMAREA_OFFSET = 0x10400
Parmarea = Struct(
    "ipl_device" / Int64ub,  # 0x10400
    "initrd_start" / Int64ub,
    "initrd_size" / Int64ub,
    "oldmem_base" / Int64ub,  # 0x10418: non-zero in a kdump kernel
    "oldmem_size" / Int64ub,  # 0x10420
)
COMMAND_LINE_OFFSET = 0x10480


@dataclass
class KernelImage:
    """What sits at a load address: a kernel with an entry table, or nothing."""

    base: int
    present: bool  # the entry table is readable at all
    has_marker: bool
    entry_count: int = 0
    oldmem_base: int = 0
    oldmem_size: int = 0
    command_line: str = ""
    error: str = ""

    @property
    def has_kdump_entry(self) -> bool:
        return self.has_marker and self.entry_count >= 1

    @property
    def kdump_entry(self) -> int:
        return self.base + KDUMP_ENTRY_OFFSET


def read_kernel_image(mem: PhysicalMemory, base: int) -> KernelImage:
    """Look for a kernel loaded at base; absent memory is an answer, not an error."""
    try:
        table = EntryTable.parse(mem.read(base + ENTRY_TABLE_OFFSET, EntryTable.sizeof()))
    except SadumpError as e:
        return KernelImage(base, present=False, has_marker=False, error=str(e))
    image = KernelImage(base, present=True, has_marker=table.marker == EP_MARKER,
                        entry_count=table.entry_count)
    if not image.has_marker:
        return image
    try:
        parm = Parmarea.parse(mem.read(base + PARMAREA_OFFSET, Parmarea.sizeof()))
        image.oldmem_base, image.oldmem_size = parm.oldmem_base, parm.oldmem_size
        raw = mem.read(base + COMMAND_LINE_OFFSET, COMMAND_LINE_SIZE)
        image.command_line = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    except SadumpError as e:
        image.error = str(e)
    return image

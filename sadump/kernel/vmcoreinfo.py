"""The VMCOREINFO text: where it is found (os_info entry 0, the note lowcore 0xE0C points
to, a note the input carried) and its keys parsed once: symbols, sizes, offsets, numbers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sadump.constants import MAX_VMCOREINFO
from sadump.errors import SadumpError
from sadump.formats.elf import Elf64_Nhdr
from sadump.formats.memory import PhysicalMemory
from sadump.meminfo_reader import LowcoreAbi, OsInfo


class VmcoreInfo:
    """Key=value lines of a VMCOREINFO text. Missing keys give None, never an exception."""

    def __init__(self, text: str):
        self.text = text
        self.values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key not in self.values:
                self.values[key] = value.strip()

    @classmethod
    def from_bytes(cls, data: bytes) -> VmcoreInfo:
        return cls(data.split(b"\0", 1)[0].decode("ascii", "replace"))

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def hex(self, key: str) -> int | None:
        """A %lx value: one that is negative or wider than 64 bits is as unreadable as
        "zz" (it would become an address below 0 or past 2^64)."""
        value = self.values.get(key)
        try:
            n = int(value, 16) if value is not None else None
        except ValueError:
            return None
        return n if n is None or 0 <= n < 1 << 64 else None

    def dec(self, key: str) -> int | None:
        value = self.values.get(key)
        try:
            return int(value, 0) if value is not None else None
        except ValueError:
            return None

    def symbol(self, name: str) -> int | None:
        return self.hex(f"SYMBOL({name})")

    def size(self, name: str) -> int | None:
        return self.dec(f"SIZE({name})")

    def offset(self, name: str) -> int | None:
        return self.dec(f"OFFSET({name})")

    def length(self, name: str) -> int | None:
        return self.dec(f"LENGTH({name})")

    def number(self, name: str) -> int | None:
        return self.dec(f"NUMBER({name})")

    @property
    def osrelease(self) -> str | None:
        return self.values.get("OSRELEASE")

    @property
    def pagesize(self) -> int | None:
        return self.dec("PAGESIZE")

    @property
    def crashtime(self) -> int | None:
        return self.dec("CRASHTIME")

    @property
    def kerneloffset(self) -> int | None:
        return self.hex("KERNELOFFSET")


def utc(seconds: int | None) -> str | None:
    """A CRASHTIME as people read it: "2026-11-26 18:01:07 UTC" (None stays None)."""
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{seconds} (not a date)"


def crash_time(info: VmcoreInfo | None, notes) -> int | None:
    """CRASHTIME of the VMCOREINFO found in memory, else of a VMCOREINFO note the input
    carried (the kernel's /proc/vmcore and kdump files carry it; an image taken before a
    crash has none)."""
    if info is not None and info.crashtime is not None:
        return info.crashtime
    for note in notes:
        if note.name == "VMCOREINFO":
            value = VmcoreInfo.from_bytes(note.desc).crashtime
            if value is not None:
                return value
    return None


@dataclass
class VmcoreinfoFound:
    """Where the VMCOREINFO text came from and the text itself (or why not)."""

    source: str = ""  # os_info entry 0 | lowcore 0xE0C | input note
    address: int | None = None  # of the note (or of the text, for entry 0)
    size: int = 0  # of the descriptor text
    info: VmcoreInfo | None = None
    note_name: str = ""
    error: str = ""


VMCOREINFO_NAME = b"VMCOREINFO"


def read_vmcoreinfo_note(mem: PhysicalMemory, addr: int) -> VmcoreinfoFound:
    """Parse the ELF note that lowcore 0xE0C points to: name, bounded size, text."""
    found = VmcoreinfoFound(source="lowcore 0xE0C", address=addr)
    if addr == 0:
        found.error = "VMCOREINFO pointer at 0xE0C is zero"
        return found
    try:
        hdr = Elf64_Nhdr.parse(mem.read(addr, Elf64_Nhdr.sizeof()))
        if hdr.n_namesz != len(VMCOREINFO_NAME) + 1:
            found.error = f"note name size {hdr.n_namesz}, expected {len(VMCOREINFO_NAME) + 1}"
            return found
        name = mem.read(addr + 12, hdr.n_namesz)
        found.note_name = name.rstrip(b"\0").decode("ascii", "replace")
        if name != VMCOREINFO_NAME + b"\0":
            found.error = f"note name {found.note_name!r}, expected 'VMCOREINFO'"
            return found
        if hdr.n_descsz == 0 or hdr.n_descsz > MAX_VMCOREINFO:
            found.error = f"note size {hdr.n_descsz:#x} out of bounds (1..{MAX_VMCOREINFO:#x})"
            return found
        desc_at = addr + 12 + (hdr.n_namesz + 3) // 4 * 4
        found.size = hdr.n_descsz
        found.info = VmcoreInfo.from_bytes(mem.read(desc_at, hdr.n_descsz))
    except SadumpError as e:
        found.error = f"VMCOREINFO note at {addr:#x} not readable: {e}"
    return found


def find_vmcoreinfo(mem: PhysicalMemory, info: OsInfo, lowcore: LowcoreAbi) -> VmcoreinfoFound:
    """os_info entry 0 when valid, else the note at 0xE0C, else a note the input carried."""
    if info.valid and info.entries and info.entries[0].checksum_ok:
        e = info.entries[0]
        if e.size <= MAX_VMCOREINFO:
            return VmcoreinfoFound("os_info entry 0", e.addr, e.size,
                                   VmcoreInfo.from_bytes(mem.read(e.addr, e.size)))
    found = read_vmcoreinfo_note(mem, lowcore.vmcore_info) if not lowcore.error else \
        VmcoreinfoFound(error=lowcore.error)
    if found.info is not None:
        return found
    for note in mem.notes:
        if note.name == "VMCOREINFO" and 0 < len(note.desc) <= MAX_VMCOREINFO:
            return VmcoreinfoFound("input note", None, len(note.desc),
                                   VmcoreInfo.from_bytes(note.desc))
    return found

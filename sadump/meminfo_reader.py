"""Find, decode and validate os_info exactly as Linux and the s390 stand-alone dumpers do
(spec s390-dump-abi 2). os_info is what the 2011 kdump design called "meminfo" (hence this
module's name and the `inspect-meminfo` command); everywhere else it is os_info.
Pure: takes memory, returns findings, never prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from construct import Array, Bytes, Int16ub, Int32ub, Int64ub, Struct

from sadump.checksum import cksm
from sadump.errors import SadumpError
from sadump.formats.memory import PhysicalMemory
from sadump.ipl.lowcore import DUMP_ABI_OFFSET, DumpAbiFields

OS_INFO_MAGIC = b"OSINFOSZ"
OS_INFO_SIZE = 4096
OS_INFO_VERSION_MAJOR = 1
CSUM_START = 0x00C  # the header checksum covers [0x00C, 0x1000)

# ABI error classes (s390-tools include/boot/error.h); also the trigger's reason codes.
EOS_INFO_MISSING = 0x4520
EOS_INFO_CSUM_FAILED = 0x4521
EOS_INFO_VERSION = 0x4522
EOS_INFO_NOCRASHKERNEL = 0x4523

#: an entry larger than this is damage (the biggest real one, VMCOREINFO, is one page)
MAX_ENTRY_SIZE = 1 << 20

OsInfoEntry = Struct(
    "addr" / Int64ub,  # data entry: physical address; value entry: the value
    "size" / Int64ub,  # data entry: length; value entry: 0
    "csum" / Int32ub,  # data entry: CKSM of the data; value entry: 0
)
OS_INFO_ENTRIES = 13
OsInfoPage = Struct(
    "magic" / Bytes(8),
    "csum" / Int32ub,
    "version_major" / Int16ub,
    "version_minor" / Int16ub,
    "crashkernel_addr" / Int64ub,
    "crashkernel_size" / Int64ub,
    "entries" / Array(OS_INFO_ENTRIES, OsInfoEntry),
    "reserved" / Bytes(OS_INFO_SIZE - 0x20 - 20 * OS_INFO_ENTRIES),
)
assert OsInfoPage.sizeof() == OS_INFO_SIZE

# index -> (name, kind); slot 2 is INIT_FN on 3.4-era kernels, FLAGS from ~6.5
ENTRY_SLOTS = [
    ("VMCOREINFO", "data"), ("REIPL_BLOCK", "data"), ("FLAGS", "data"), ("RESERVED", "reserved"),
    ("IDENTITY_BASE", "value"), ("KASLR_OFFSET", "value"), ("KASLR_OFF_PHYS", "value"),
    ("VMEMMAP", "value"), ("AMODE31_START", "value"), ("AMODE31_END", "value"),
    ("IMAGE_START", "value"), ("IMAGE_END", "value"), ("IMAGE_PHYS", "value"),
]
OS_INFO_FLAG_REIPL_CLEAR = 1


@dataclass
class Entry:
    index: int
    name: str
    kind: str  # data | value | reserved
    addr: int
    size: int
    csum: int
    checksum_ok: bool | None = None  # data entries only
    computed: int | None = None
    status: str = ""  # the kernel's words: copied | not available | checksum failed | ...


@dataclass
class OsInfo:
    """Everything found at lowcore 0xE18, with each check's expected and actual value."""

    pointer: int | None = None
    page_read: bool = False  # the pointer is non-zero, aligned and its page is present
    found: bool = False  # a page with the right magic was read
    valid: bool = False  # magic, header checksum and version hold
    magic: bytes = b""
    magic_ok: bool = False
    version: tuple[int, int] = (0, 0)
    csum_stored: int | None = None
    csum_computed: int | None = None
    crashkernel_addr: int = 0
    crashkernel_size: int = 0
    entries: list[Entry] = field(default_factory=list)
    error_code: int | None = None
    error: str = ""
    expected: str = ""
    actual: str = ""

    def fail(self, code: int, error: str, expected: str, actual: str) -> OsInfo:
        self.error_code, self.error, self.expected, self.actual = code, error, expected, actual
        return self

    def value(self, index: int) -> int:
        """A value entry (4..12), meaningful only when the header is valid."""
        return self.entries[index].addr if self.valid and len(self.entries) > index else 0

    @property
    def checksum_ok(self) -> bool:
        return self.csum_stored is not None and self.csum_stored == self.csum_computed


@dataclass
class LowcoreAbi:
    """The dump-ABI pointers at absolute 0xE00..0xE20."""

    ipib: int = 0
    ipib_checksum: int = 0
    vmcore_info: int = 0
    os_info: int = 0
    error: str = ""


def read_lowcore_abi(mem: PhysicalMemory) -> LowcoreAbi:
    try:
        raw = DumpAbiFields.parse(mem.read(DUMP_ABI_OFFSET, DumpAbiFields.sizeof()))
    except SadumpError as e:
        return LowcoreAbi(error=f"lowcore not readable: {e}")
    return LowcoreAbi(raw.ipib, raw.ipib_checksum, raw.vmcore_info, raw.os_info)


def read_os_info(mem: PhysicalMemory, lowcore: LowcoreAbi | None = None) -> OsInfo:
    """Validate os_info in the order of s390-tools' kdump_os_info_check (spec 2.4)."""
    lowcore = lowcore or read_lowcore_abi(mem)
    info = OsInfo()
    if lowcore.error:
        return info.fail(EOS_INFO_MISSING, lowcore.error, "lowcore 0xE18 readable", "absent")
    ptr = info.pointer = lowcore.os_info
    if ptr == 0:
        return info.fail(EOS_INFO_MISSING, "os_info pointer at 0xE18 is zero", "non-zero", "0x0")
    if ptr % OS_INFO_SIZE:
        return info.fail(EOS_INFO_MISSING, f"os_info pointer {ptr:#x} is not 4 KiB aligned",
                         "4 KiB aligned", hex(ptr))
    if not mem.is_present(ptr, OS_INFO_SIZE):
        return info.fail(EOS_INFO_MISSING, f"os_info pointer {ptr:#x} is outside present memory",
                         "inside present memory", hex(ptr))
    page = mem.read(ptr, OS_INFO_SIZE)
    info.page_read = True
    raw = OsInfoPage.parse(page)
    info.magic = raw.magic
    info.magic_ok = raw.magic == OS_INFO_MAGIC
    if not info.magic_ok:
        return info.fail(EOS_INFO_MISSING, f"no os_info magic at {ptr:#x}",
                         OS_INFO_MAGIC.decode(), raw.magic.hex())
    info.found = True
    info.csum_stored, info.csum_computed = raw.csum, cksm(page[CSUM_START:])
    info.version = (raw.version_major, raw.version_minor)
    info.crashkernel_addr, info.crashkernel_size = raw.crashkernel_addr, raw.crashkernel_size
    info.entries = [Entry(i, *ENTRY_SLOTS[i], e.addr, e.size, e.csum)
                    for i, e in enumerate(raw.entries)]
    if not info.checksum_ok:
        return info.fail(EOS_INFO_CSUM_FAILED, "os_info header checksum mismatch",
                         f"{raw.csum:#010x}", f"{info.csum_computed:#010x}")
    if raw.version_major > OS_INFO_VERSION_MAJOR:
        return info.fail(EOS_INFO_VERSION, f"os_info version {raw.version_major}.{raw.version_minor}"
                         f" is newer than {OS_INFO_VERSION_MAJOR}.x", f"<= {OS_INFO_VERSION_MAJOR}",
                         str(raw.version_major))
    info.valid = True
    for entry in info.entries:
        _check_entry(mem, entry)
    if raw.crashkernel_addr == 0:
        return info.fail(EOS_INFO_NOCRASHKERNEL, "os_info has no crashkernel",
                         "crashkernel_addr != 0", "0x0")
    return info


def _check_entry(mem: PhysicalMemory, entry: Entry) -> None:
    """Verify a data entry's own checksum over the data it points to."""
    if entry.kind == "value":
        entry.status = "value"
        return
    if entry.kind == "reserved" or (entry.addr == 0 and entry.size == 0):
        entry.status = "not available" if entry.kind == "data" else "reserved"
        return
    if entry.addr == 0 or entry.size == 0:
        entry.status, entry.checksum_ok = "not available", False
        return
    if entry.size > MAX_ENTRY_SIZE:
        entry.status, entry.checksum_ok = f"size {entry.size:#x} too large", False
        return
    if not mem.is_present(entry.addr, entry.size):
        entry.status, entry.checksum_ok = "outside memory", False
        return
    entry.computed = cksm(mem.read(entry.addr, entry.size))
    entry.checksum_ok = entry.computed == entry.csum
    entry.status = "copied" if entry.checksum_ok else "checksum failed"
    if entry.index == 2 and entry.size >= 4096:
        entry.name = "INIT_FN"  # 3.4-era kernels put a code page into slot 2

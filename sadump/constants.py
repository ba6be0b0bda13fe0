"""Numbers of the s390x architecture and of sadump's own bounds, declared once."""

#: s390x page size: the unit of os_info, kexec segments, kdump blocks and dump filtering
PAGE_SIZE = 4096
PAGE_SHIFT = 12
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

#: Linux's MAX_PHYSMEM_BITS on s390x (VMCOREINFO NUMBER(MAX_PHYSMEM_BITS) says so when
#: present): a physical address at or past 2^46 is not memory of an s390x Linux system
MAX_PHYSMEM_BITS = 46
MAX_PHYS_ADDR = 1 << MAX_PHYSMEM_BITS

#: Decision.path values: a trigger would start kdump, fall back to a full dump, or the input is
#: already a dump taken after the crash
KDUMP, FULL, DUMPED = "kdump", "full", "dumped"

#: a VMCOREINFO text is a few KiB (the kernel's buffer is one page); more is damage
MAX_VMCOREINFO = 64 * KIB

#: ELF notes of one dump: at most this many bytes (all note segments together) ...
MAX_NOTE_BYTES = 16 * MIB
#: ... and at most this many notes (512 CPUs x 10 notes fit)
MAX_NOTES = 1 << 16


def mib(n: int) -> str:
    """n bytes as MiB with one decimal, for messages."""
    return f"{n / MIB:.1f} MiB"

"""The trigger's hand-off decision: kdump when the map can be trusted and a kdump kernel
is loaded at the crashkernel base; a full dump otherwise, always with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from sadump.ipl.kernel_image import KernelImage
from sadump.meminfo_reader import MemInfo

#: sadump's own reason codes, outside the ABI's 0x4520-0x4524
NO_KDUMP_KERNEL = 0x4610
KDUMP_KERNEL_DAMAGED = 0x4611
KDUMP_OK = 0

REASONS = {
    0x4520: "os_info missing",
    0x4521: "os_info checksum failed",
    0x4522: "os_info version not supported",
    0x4523: "no crashkernel",
    NO_KDUMP_KERNEL: "no kdump kernel loaded at the crashkernel base",
    KDUMP_KERNEL_DAMAGED: "kdump kernel segments damaged (digest mismatch)",
}


@dataclass
class Decision:
    path: str  # "kdump" | "full"
    reason_code: int
    reason: str
    entry_point: int | None = None


def decide(meminfo: MemInfo, kernel: KernelImage | None) -> Decision:
    if meminfo.error_code is not None:
        return Decision("full", meminfo.error_code,
                        f"{REASONS.get(meminfo.error_code, 'os_info invalid')}: {meminfo.error}")
    if kernel is None or not kernel.has_kdump_entry:
        where = f"{meminfo.crashkernel_addr:#x}"
        why = ("no S390EP entry table" if kernel is None or kernel.present
               else "its memory is absent")
        return Decision("full", NO_KDUMP_KERNEL,
                        f"{REASONS[NO_KDUMP_KERNEL]} ({where}): {why}")
    return Decision("kdump", KDUMP_OK,
                    "os_info valid, crashkernel set, kdump kernel loaded",
                    kernel.kdump_entry)

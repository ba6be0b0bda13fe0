"""The trigger's hand-off decision: kdump when the map can be trusted, a kdump kernel
is loaded at the crashkernel base and its segment digest holds where one is found; a full
dump otherwise, always with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from sadump.ipl.kernel_image import KernelImage
from sadump.meminfo_reader import OsInfo
from sadump.trigger.kexec_digest import KexecDigest

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

    def json(self) -> dict:
        """The decision object of every --json output."""
        return {"path": self.path, "reason_code": self.reason_code, "reason": self.reason,
                "entry_point": self.entry_point}


def decide(os_info: OsInfo, kernel: KernelImage | None,
           digest: KexecDigest | None = None) -> Decision:
    """digest: the kexec segment check (None: not made, e.g. before the kernel was found)."""
    if os_info.error_code is not None:
        return Decision("full", os_info.error_code,
                        f"{REASONS.get(os_info.error_code, 'os_info invalid')}: {os_info.error}")
    if kernel is None or not kernel.has_kdump_entry:
        where = f"{os_info.crashkernel_addr:#x}"
        why = ("no S390EP entry table" if kernel is None or kernel.present
               else "its memory is absent")
        return Decision("full", NO_KDUMP_KERNEL,
                        f"{REASONS[NO_KDUMP_KERNEL]} ({where}): {why}")
    if digest is not None and digest.ok is False:
        return Decision("full", KDUMP_KERNEL_DAMAGED,
                        f"{REASONS[KDUMP_KERNEL_DAMAGED]}: segment list at {digest.found_at:#x}, "
                        f"stored {digest.stored.hex()}, computed {digest.computed.hex()}")
    return Decision("kdump", KDUMP_OK,
                    "os_info valid, crashkernel set, kdump kernel loaded" + digest_words(digest),
                    kernel.kdump_entry)


def digest_words(digest: KexecDigest | None) -> str:
    """What the segment check adds to a kdump decision."""
    if digest is None:
        return ""
    if digest.ok:
        return f", segment digest verified (list at {digest.found_at:#x})"
    if not digest.applies:
        return f"; segment digest check does not apply: {digest.reason}"
    return f"; kdump kernel could not be verified: {digest.reason}"

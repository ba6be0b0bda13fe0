"""The trigger's hand-off decision: kdump when the map can be trusted, a kdump kernel
is loaded at the crashkernel base and its segment digest holds where one is found; a full
dump otherwise, always with the reason. An input that is already a dump taken after the
crash (the kdump kernel's /proc/vmcore, makedumpfile's or sadump's output) is not judged as
a trigger would judge memory: its decision is "dumped", and it is converted as it is."""

from __future__ import annotations

from dataclasses import dataclass

from sadump.constants import DUMPED, FULL, KDUMP  # noqa: F401 - the decision's paths
from sadump.formats.memory import PhysicalMemory
from sadump.ipl.kernel_image import KernelImage
from sadump.kernel.vmcoreinfo import utc
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
    path: str  # "kdump" | "full" | "dumped"
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


def already_dumped(image: PhysicalMemory, os_info: OsInfo,
                   crash_time: int | None) -> Decision | None:
    """The "dumped" decision for an input that is a kernel dump taken after the crash, else
    None. Such an input is an ELF core with a VMCOREINFO note whose memory leaves out the
    whole crashkernel that os_info names (the kdump kernel's /proc/vmcore, sadump's kdump
    vmcore), a kdump-compressed file (plain or flattened) whose sub header carries
    VMCOREINFO (makedumpfile's, sadump's), or an NGDump partition (makedumpfile -E -d 31).
    QEMU's dumps carry no VMCOREINFO note: they are memory images of a running or stopped
    machine and keep the trigger's decision."""
    if not any(n.name == "VMCOREINFO" for n in image.notes):
        return None
    when = f", crash time {utc(crash_time)}" if crash_time is not None else ""
    if image.format == "elf":
        base, size = os_info.crashkernel_addr, os_info.crashkernel_size
        if not os_info.valid or not size:
            return None
        if any(s < base + size and base < e for s, e in image.ranges()):
            return None
        what = (f"an ELF vmcore as the kdump kernel's /proc/vmcore shows it{when}, "
                f"crashkernel [{base:#x}, {base + size:#x}) left out")
    elif image.format in ("kdump", "kdump-flat"):
        flat = " (flattened)" if image.format == "kdump-flat" else ""
        what = f"a kdump-compressed dump{flat}, dump level {image.dump_level or 0}{when}"
    elif image.format == "ngdump":
        what = (f"an NGDump partition's {getattr(image, 'dump_file', 'dump')} (makedumpfile "
                f"-E), dump level {image.dump_level or 0}{when}")
    else:
        return None
    return Decision(DUMPED, KDUMP_OK, f"already dumped after the crash: {what}")

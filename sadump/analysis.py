"""image -> (swap view) -> OsInfo -> Decision: one call per arrow, plain data between."""

from __future__ import annotations

from dataclasses import dataclass, field

from sadump.constants import MIB
from sadump.formats import open_image
from sadump.formats.memory import PhysicalMemory
from sadump.formats.swap import SwappedMemory
from sadump.ipl.ipib import Ipib, read_ipib
from sadump.ipl.kernel_image import KernelImage, read_kernel_image
from sadump.kernel.cpus import CpuFinding, find_cpus
from sadump.kernel.translate import KernelLayout, KernelMemory, kernel_memory
from sadump.kernel.vmcoreinfo import VmcoreinfoFound, crash_time, find_vmcoreinfo
from sadump.meminfo_reader import LowcoreAbi, OsInfo, read_lowcore_abi, read_os_info
from sadump.trigger.decision import KDUMP, Decision, already_dumped, decide
from sadump.trigger.kexec_digest import KexecDigest, not_applicable, verify_kexec_digest


@dataclass
class Handoff:
    """The image was taken after the hand-off: a kdump kernel runs at 0."""

    oldmem_base: int
    oldmem_size: int


@dataclass
class Analysis:
    image: PhysicalMemory  # the file as it is
    memory: PhysicalMemory  # the crashed system's memory (swap view when handed off)
    handoff: Handoff | None
    lowcore: LowcoreAbi
    os_info: OsInfo
    vmcoreinfo: VmcoreinfoFound
    ipib: Ipib | None
    kdump_kernel: KernelImage | None  # what sits at the crashkernel base
    decision: Decision
    warnings: list[str] = field(default_factory=list)
    digest: KexecDigest | None = None  # the kexec segment check, made only on the kdump path

    kernel_memory: KernelMemory | None = None  # the crashed kernel's virtual address space
    _cpus: CpuFinding | None = field(default=None, repr=False)
    _symbols: object | None = field(default=None, repr=False)
    _btf: dict = field(default_factory=dict, repr=False)

    def cpus(self) -> CpuFinding:
        """The CPUs' registers: the input's notes, else the save areas (read once)."""
        if self._cpus is None:
            self._cpus = find_cpus(self.memory, self.kernel_memory, self.vmcoreinfo.info)
        return self._cpus

    def symbols(self):
        """The kernel's kallsyms (sadump.kernel.kallsyms.Kallsyms), decoded once; raises
        KallsymsError when the kernel has none that VMCOREINFO points at."""
        if self._symbols is None:
            from sadump.kernel.kallsyms import decode

            self._symbols = decode(self.vmcoreinfo.info, self.kernel_memory)
        return self._symbols

    def kernel_btf(self, btf_file: str | None = None):
        """The kernel's BTF (sadump.kernel.btf.Btf), found once: --btf FILE, else in memory
        (__start_BTF, else a scan of the kernel image from kallsyms' or else VMCOREINFO's
        _stext); raises BtfError / NoBtfError."""
        if btf_file not in self._btf:
            from sadump.kernel.btf import VmcoreinfoSymbols, load_kernel_btf
            from sadump.kernel.kallsyms import KallsymsError

            try:
                symbols = self.symbols() if btf_file is None else None
            except KallsymsError:
                info = self.vmcoreinfo.info
                symbols = VmcoreinfoSymbols(info) if info is not None else None
            self._btf[btf_file] = load_kernel_btf(self.kernel_memory, symbols, btf_file)
        return self._btf[btf_file]

    def crash_time(self) -> int | None:
        """CRASHTIME (seconds since the epoch) of the crashed kernel, when recorded."""
        return crash_time(self.vmcoreinfo.info, self.image.notes)

    def close(self) -> None:
        self.memory.close()


def detect_handoff(image: PhysicalMemory) -> Handoff | None:
    """A kernel at 0 whose parmarea holds a sane oldmem base/size is a running kdump kernel."""
    kernel = read_kernel_image(image, 0)
    b, s = kernel.oldmem_base, kernel.oldmem_size
    if not kernel.has_marker or b == 0 or s == 0:
        return None
    if b % MIB or s % MIB or b < s or not image.is_present(b, s):
        return None
    return Handoff(b, s)


def analyse_memory(image: PhysicalMemory) -> Analysis:
    handoff = detect_handoff(image)
    memory = SwappedMemory(image, handoff.oldmem_base, handoff.oldmem_size) if handoff else image
    lowcore = read_lowcore_abi(memory)
    os_info = read_os_info(memory, lowcore)
    vmcoreinfo = find_vmcoreinfo(memory, os_info, lowcore)
    ipib = None if lowcore.error else read_ipib(memory, lowcore.ipib, lowcore.ipib_checksum)
    kernel = read_kernel_image(memory, os_info.crashkernel_addr) if os_info.crashkernel_addr \
        else None
    decision = already_dumped(image, os_info, crash_time(vmcoreinfo.info, image.notes)) \
        or decide(os_info, kernel)
    digest = None
    if decision.path == KDUMP:
        digest = not_applicable("image taken after the hand-off: the kdump kernel already ran") \
            if handoff else verify_kexec_digest(memory, os_info.crashkernel_addr,
                                                os_info.crashkernel_size)
        decision = decide(os_info, kernel, digest)
    layout = None
    if os_info.valid and os_info.value(5):  # 6.10+: the layout from os_info value entries
        layout = KernelLayout(*(os_info.value(i) for i in (4, 5, 6, 8, 9)))
    kmem = kernel_memory(memory, vmcoreinfo.info, layout)
    warnings = list(image.warnings)
    if image.incomplete:
        warnings.append(f"incomplete image: {image.incomplete}")
    return Analysis(image, memory, handoff, lowcore, os_info, vmcoreinfo, ipib, kernel,
                    decision, warnings, digest, kmem)


def analyse(paths, input_format: str | None = None, block_size: int | None = None) -> Analysis:
    """paths: one image file, or the volume files of one multi-volume dump."""
    return analyse_memory(open_image(paths, input_format, block_size))

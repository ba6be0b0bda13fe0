"""The crashed system's CPUs: their registers from the input's register notes or from the
store-status save areas of their lowcores (found through VMCOREINFO lowcore_ptr), and the
same registers as the kernel's crash notes (spec s390-dump-abi 5.2/5.3, 6)."""

from __future__ import annotations

from dataclasses import dataclass

from sadump.errors import SadumpError
from sadump.formats.elf import (
    NT_PRFPREG,
    NT_PRSTATUS,
    NT_S390_CTRS,
    NT_S390_GS_CB,
    NT_S390_PREFIX,
    NT_S390_TIMER,
    NT_S390_TODCMP,
    NT_S390_TODPREG,
    NT_S390_VXRS_HIGH,
    NT_S390_VXRS_LOW,
    prstatus_pid,
)
from sadump.formats.memory import Note, PhysicalMemory
from sadump.formats.regnotes import (
    CORE,
    LINUX,
    FpRegSet,
    PrStatus,
    Regs64,
    VxrsHigh,
    VxrsLow,
    register_notes,
)
from sadump.ipl.save_area import CpuState, read_save_area
from sadump.kernel.translate import KernelMemory
from sadump.kernel.vmcoreinfo import VmcoreInfo

#: the register notes of one CPU in the kernel's order (arch/s390/kernel/crash_dump.c)
#: with the names a 6.1 kernel's /proc/vmcore carries (rimg-kdump.proc-vmcore.elf)
PER_CPU_TYPES = (NT_PRFPREG, NT_S390_TIMER, NT_S390_TODCMP, NT_S390_TODPREG, NT_S390_CTRS,
                 NT_S390_PREFIX, NT_S390_VXRS_LOW, NT_S390_VXRS_HIGH, NT_S390_GS_CB)
#: A cap on lowcore_ptr entries: NR_CPUS of s390 kernels is at most a few hundred.
MAX_CPUS = 4096


# ---- from the input's notes ---------------------------------------------------------------
def _u(desc: bytes, size: int) -> int:
    return int.from_bytes(desc[:size], "big") if len(desc) >= size else 0


def _cpu_from_group(group: list[Note]) -> tuple[CpuState, bool, bool]:
    """One PRSTATUS and the register notes after it -> (state, from QEMU, prefix known)."""
    pr = group[0].desc
    if len(pr) < PrStatus.sizeof():
        raise SadumpError(f"NT_PRSTATUS of {len(pr)} bytes, expected 336")
    st = PrStatus.parse(pr[:336])
    _, pid_little = prstatus_pid(pr)
    cpu = CpuState(st.psw_mask, st.psw_addr, list(st.gprs), list(st.acrs))
    types = [n.type for n in group]
    # QEMU's order puts NT_S390_PREFIX right after NT_FPREGSET and adds NT_S390_GS_CB
    qemu = pid_little or NT_S390_GS_CB in types or types[1:3] == [NT_PRFPREG, NT_S390_PREFIX]
    low = high = None
    has_prefix = False
    for n in group[1:]:
        d = n.desc
        if n.type == NT_PRFPREG and len(d) >= FpRegSet.sizeof():
            fp = FpRegSet.parse(d[:136])
            cpu.fpc, cpu.fprs = fp.fpc, list(fp.fprs)
        elif n.type == NT_S390_TIMER:
            cpu.timer = _u(d, 8)
        elif n.type == NT_S390_TODCMP:
            cpu.todcmp = _u(d, 8)
        elif n.type == NT_S390_TODPREG:
            cpu.todpreg = _u(d, 4)  # 4 bytes now; old kernels wrote 8 with the value first
        elif n.type == NT_S390_CTRS and len(d) >= 128:
            cpu.ctrs = list(Regs64.parse(d[:128]).regs)
        elif n.type == NT_S390_PREFIX:
            cpu.prefix, has_prefix = _u(d, 4), True
        elif n.type == NT_S390_VXRS_LOW and len(d) >= 128:
            low = list(VxrsLow.parse(d[:128]).low)
        elif n.type == NT_S390_VXRS_HIGH and len(d) >= 256:
            high = list(VxrsHigh.parse(d[:256]).vrs)
    if qemu:
        # QEMU writes the clock comparator as the register holds it; store status (and so
        # the kernel's note) holds bits 0-55 in bits 8-63. Seen on the real pair of files.
        cpu.todcmp >>= 8
    if low is not None or high is not None:
        low, high = low or [0] * 16, high or [bytes(16)] * 16
        cpu.vxrs = [cpu.fprs[i].to_bytes(8, "big") + low[i].to_bytes(8, "big")
                    for i in range(16)] + high
    return cpu, qemu, has_prefix


def from_notes(notes: list[Note]) -> tuple[list[CpuState], list[str]]:
    """CPUs from register notes: every NT_PRSTATUS starts a CPU (crash's rule), the
    register notes after it belong to it. CPUs whose prefix note says 0 are skipped."""
    groups: list[list[Note]] = []
    for n in notes:
        if n.type == NT_PRSTATUS and n.name == CORE:
            groups.append([n])
        elif groups and n.type in PER_CPU_TYPES and n.name in (CORE, LINUX):
            groups[-1].append(n)
    cpus, warnings = [], []
    quirk = False
    for i, group in enumerate(groups):
        try:
            cpu, qemu, has_prefix = _cpu_from_group(group)
        except SadumpError as e:
            warnings.append(f"CPU note group {i + 1} ignored: {e}")
            continue
        quirk |= qemu
        if has_prefix and cpu.prefix == 0:
            warnings.append(f"CPU note group {i + 1} has prefix 0 (no stored status): skipped")
            continue
        cpus.append(cpu)
    if quirk:
        warnings.append("register notes in QEMU's order: mapped to the kernel's order and names, "
                        "pr_pid renumbered, clock comparator shifted to the save-area format")
    return cpus, warnings


def lowcore_table(kmem: KernelMemory,
                  info: VmcoreInfo | None) -> tuple[list[tuple[int, int]], list[str]]:
    """(cpu number, physical lowcore) of each non-zero VMCOREINFO lowcore_ptr[LENGTH] entry
    (identity-virtual pointers); LENGTH is capped at MAX_CPUS."""
    if info is None:
        return [], ["no VMCOREINFO: the CPUs' lowcores (lowcore_ptr) cannot be found"]
    sym, count = info.symbol("lowcore_ptr"), info.length("lowcore_ptr")
    if sym is None or count is None:
        return [], ["VMCOREINFO has no SYMBOL(lowcore_ptr)/LENGTH(lowcore_ptr)"]
    warnings = []
    if not 0 < count <= MAX_CPUS:
        warnings.append(f"LENGTH(lowcore_ptr)={count} out of range: capped at {MAX_CPUS}")
        count = max(0, min(count, MAX_CPUS))
    try:
        raw = kmem.read(sym, 8 * count)
    except SadumpError as e:
        return [], warnings + [f"lowcore_ptr table at {sym:#x} is not readable: {e}"]
    out = []
    for cpu in range(count):
        ptr = int.from_bytes(raw[8 * cpu:8 * cpu + 8], "big")
        if not ptr:
            continue
        try:
            out.append((cpu, kmem.to_physical(ptr)))
        except SadumpError as e:
            warnings.append(f"CPU {cpu}: lowcore pointer {ptr:#x}: {e}")
    return out, warnings


def lowcore_addresses(memory: PhysicalMemory, kmem: KernelMemory,
                      info: VmcoreInfo | None) -> tuple[list[int], list[str]]:
    """Physical addresses of every CPU's lowcore: the s390 dump header's prefix list when
    the input is one, else lowcore_ptr (lowcore_table)."""
    if memory.cpu_prefixes:
        return [p for p in memory.cpu_prefixes if p], []
    table, warnings = lowcore_table(kmem, info)
    return [p for _, p in table], warnings


def from_memory(mem: PhysicalMemory, lowcores: list[int],
                dumper: bool = False) -> tuple[list[CpuState], list[str]]:
    """The kernel's rule: the IPL (boot) CPU from absolute 0x1200 first, then each other CPU
    from its prefix area; a save area holding prefix 0 has no stored status.

    dumper: the lowcores are a stand-alone dumper's header list (lc_vec), into which it
    stored every CPU's status, its own CPU's too (spec sa-dump-formats 5): those alone, as
    zgetdump reads them; absolute 0x1200 is the dumper's own memory then, not a CPU."""
    warnings: list[str] = []
    cpus: list[CpuState] = []
    try:
        ipl = None if dumper else read_save_area(mem, 0, ipl=True)
        if ipl is not None and ipl.prefix:
            cpus.append(ipl)
        seen = {c.prefix for c in cpus}
        for lc in lowcores:
            if lc in seen:
                continue  # the IPL CPU's own prefix area: 0x1200 already gave it
            cpu = read_save_area(mem, lc, ipl=False, dumper=dumper)
            if cpu is None:
                warnings.append(f"lowcore {lc:#x} is not in the image: its CPU is left out")
            elif cpu.prefix and cpu.prefix not in seen:
                cpus.append(cpu)
                seen.update({lc, cpu.prefix})
            elif dumper and not cpu.prefix:  # listed by the dumper, yet no status stored
                warnings.append(f"the dump header lists a CPU at lowcore {lc:#x}, whose save "
                                "area holds no stored status (prefix 0): its CPU is left out")
    except SadumpError as e:
        warnings.append(f"CPU save areas not readable: {e}")
    return cpus, warnings


@dataclass
class CpuFinding:
    cpus: list[CpuState]
    source: str  # "notes" | "save areas" | "none"
    warnings: list[str]


def find_cpus(memory: PhysicalMemory, kmem: KernelMemory, info: VmcoreInfo | None) -> CpuFinding:
    """The input's register notes when it carries any, else the save areas in memory."""
    notes = memory.notes
    if any(n.type == NT_PRSTATUS for n in notes):
        cpus, warnings = from_notes(notes)
        if cpus:
            return CpuFinding(cpus, "notes", warnings)
    lowcores, warnings = lowcore_addresses(memory, kmem, info)
    cpus, more = from_memory(memory, lowcores, dumper=bool(memory.cpu_prefixes))
    warnings += more
    if cpus:
        return CpuFinding(cpus, "save areas", warnings)
    warnings.append("no CPU has a stored status (every save area holds prefix 0): "
                    "the dump carries no register notes")
    return CpuFinding([], "none", warnings)


# ---- to the kernel's notes ---------------------------------------------------------------------
def notes_for(cpu: CpuState, pid: int) -> list[Note]:
    """The kernel's per-CPU notes (fill_cpu_elf_notes), in its order, with its names."""
    notes = register_notes(pid, (cpu.psw_mask, cpu.psw_addr), cpu.gprs, cpu.acrs, cpu.fpc,
                           cpu.fprs, cpu.timer, cpu.todcmp, cpu.todpreg, cpu.ctrs, cpu.prefix)
    if cpu.vxrs is not None:
        notes.append(Note(LINUX, NT_S390_VXRS_HIGH, VxrsHigh.build({"vrs": cpu.vxrs[16:]})))
        low = [int.from_bytes(v[8:16], "big") for v in cpu.vxrs[:16]]
        notes.append(Note(LINUX, NT_S390_VXRS_LOW, VxrsLow.build({"low": low})))
    return notes


def cpu_notes(cpus: list[CpuState]) -> list[Note]:
    """All CPUs' notes, pr_pid 1, 2, ... in order."""
    return [n for pid, cpu in enumerate(cpus, 1) for n in notes_for(cpu, pid)]


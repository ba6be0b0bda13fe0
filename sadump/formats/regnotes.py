"""The kernel's s390 per-CPU register notes (arch/s390/kernel/crash_dump.c): their layouts,
declared once for the readers that build them (VMDUMP's FIR records) and the kernel layer
that reads and writes them (sadump.kernel.cpus)."""

from __future__ import annotations

from construct import Array, Bytes, Default, Int16ub, Int32sb, Int32ub, Int64ub, Padding, Struct

from sadump.formats.elf import (
    NT_PRFPREG,
    NT_PRSTATUS,
    NT_S390_CTRS,
    NT_S390_PREFIX,
    NT_S390_TIMER,
    NT_S390_TODCMP,
    NT_S390_TODPREG,
)
from sadump.formats.memory import Note

#: s390x struct elf_prstatus (spec 5.3); the kernel fills pr_pid, psw, gprs and acrs.
PrStatus = Struct(
    "si_signo" / Default(Int32sb, 0),
    "si_code" / Default(Int32sb, 0),
    "si_errno" / Default(Int32sb, 0),
    "pr_cursig" / Default(Int16ub, 0),
    Padding(2),
    "pr_sigpend" / Default(Int64ub, 0),
    "pr_sighold" / Default(Int64ub, 0),
    "pr_pid" / Default(Int32ub, 0),  # 0x20
    "pr_ppid" / Default(Int32ub, 0),
    "pr_pgrp" / Default(Int32ub, 0),
    "pr_sid" / Default(Int32ub, 0),
    "pr_times" / Default(Bytes(64), bytes(64)),  # utime, stime, cutime, cstime
    "psw_mask" / Int64ub,  # 0x70
    "psw_addr" / Int64ub,
    "gprs" / Array(16, Int64ub),  # 0x80
    "acrs" / Array(16, Int32ub),  # 0x100
    "orig_gpr2" / Default(Int64ub, 0),  # 0x140
    "pr_fpvalid" / Default(Int32ub, 0),
    Padding(4),
)
assert PrStatus.sizeof() == 336

#: s390 elf_fpregset_t (NT_PRFPREG): fpc, pad, 16 FPRs
FpRegSet = Struct("fpc" / Int32ub, Padding(4), "fprs" / Array(16, Int64ub))
assert FpRegSet.sizeof() == 136

U32 = Struct("value" / Int32ub)
U64 = Struct("value" / Int64ub)
Regs64 = Struct("regs" / Array(16, Int64ub))
VxrsLow = Struct("low" / Array(16, Int64ub))  # low halves of VR0-15
VxrsHigh = Struct("vrs" / Array(16, Bytes(16)))  # VR16-31

#: the note names a 6.1 kernel's /proc/vmcore carries (rimg-kdump.proc-vmcore.elf)
CORE, LINUX = "CORE", "LINUX"


def register_notes(pid: int, psw: tuple[int, int], gprs, acrs, fpc: int, fprs, timer: int,
                   todcmp: int, todpreg: int, ctrs, prefix: int) -> list[Note]:
    """One CPU's notes without vector registers, in the kernel's order and names
    (fill_cpu_elf_notes). todcmp as store status holds it (clock comparator bits 0-55 in
    bits 8-63), as the kernel's note does."""
    prstatus = PrStatus.build({"pr_pid": pid, "psw_mask": psw[0], "psw_addr": psw[1],
                               "gprs": list(gprs), "acrs": list(acrs)})
    return [
        Note(CORE, NT_PRSTATUS, prstatus),
        Note(CORE, NT_PRFPREG, FpRegSet.build({"fpc": fpc, "fprs": list(fprs)})),
        Note(LINUX, NT_S390_TIMER, U64.build({"value": timer})),
        Note(LINUX, NT_S390_TODCMP, U64.build({"value": todcmp})),
        Note(LINUX, NT_S390_TODPREG, U32.build({"value": todpreg})),
        Note(LINUX, NT_S390_CTRS, Regs64.build({"regs": list(ctrs)})),
        Note(LINUX, NT_S390_PREFIX, U32.build({"value": prefix})),
    ]

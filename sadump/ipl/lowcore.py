"""Lowcore fields that dump tools rely on (spec 2.1) and the store-status save area
(spec 6). Offsets are relative to a CPU's lowcore: absolute 0 for the IPL CPU."""

from __future__ import annotations

from construct import Array, Bytes, Int32ub, Int64ub, Padding, Struct

#: the "do not move" window of lowcore that dump tools read
DUMP_ABI_OFFSET = 0xE00
DumpAbiFields = Struct(
    "ipib" / Int64ub,  # 0xE00 IPL parameter block address
    "ipib_checksum" / Int32ub,  # 0xE08 CKSM over the IPIB
    "vmcore_info" / Int64ub,  # 0xE0C VMCOREINFO note address (unaligned)
    Padding(4),  # 0xE14
    "os_info" / Int64ub,  # 0xE18 os_info address
)

#: machine-check extended save area designation: vector registers (real address)
MCESAD_OFFSET = 0x11B0
MCESAD_ADDR_MASK = ~0x3FF

#: the 512-byte store-status save area at lowcore 0x1200
SAVE_AREA_OFFSET = 0x1200
SAVE_AREA_SIZE = 0x200
SaveArea = Struct(
    "fprs" / Array(16, Int64ub),  # 0x1200
    "gprs" / Array(16, Int64ub),  # 0x1280
    "psw_mask" / Int64ub,  # 0x1300
    "psw_addr" / Int64ub,  # 0x1308
    Padding(8),  # 0x1310
    "prefix" / Int32ub,  # 0x1318
    "fpc" / Int32ub,  # 0x131C
    Padding(4),  # 0x1320
    "todpreg" / Int32ub,  # 0x1324
    "timer" / Int64ub,  # 0x1328
    "todcmp" / Int64ub,  # 0x1330
    "last_break" / Int64ub,  # 0x1338
    "acrs" / Array(16, Int32ub),  # 0x1340
    "ctrs" / Array(16, Int64ub),  # 0x1380
)
assert SaveArea.sizeof() == SAVE_AREA_SIZE

#: vector registers VR0-31, 16 bytes each, as the machine-check extended save area holds them
VX_SAVE_AREA_SIZE = 32 * 16
VxSaveArea = Struct("vrs" / Array(32, Bytes(16)))

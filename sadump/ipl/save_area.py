"""One CPU's registers as the store-status save area holds them (spec s390-dump-abi 6):
absolute 0x1200 for the IPL CPU, each CPU's prefix area for the others, the vector registers
in the machine-check extended save area that lowcore 0x11B0 designates."""

from __future__ import annotations

from dataclasses import dataclass, field

from sadump.errors import SadumpError
from sadump.formats.memory import PhysicalMemory
from sadump.ipl.lowcore import (
    MCESAD_ADDR_MASK,
    MCESAD_OFFSET,
    SAVE_AREA_OFFSET,
    SAVE_AREA_SIZE,
    VX_SAVE_AREA_SIZE,
    SaveArea,
    VxSaveArea,
)


def _zeros16() -> list[int]:
    return [0] * 16


@dataclass
class CpuState:
    """One CPU's registers as store status leaves them (save-area formats)."""

    psw_mask: int = 0
    psw_addr: int = 0
    gprs: list[int] = field(default_factory=_zeros16)
    acrs: list[int] = field(default_factory=_zeros16)
    fprs: list[int] = field(default_factory=_zeros16)
    fpc: int = 0
    timer: int = 0
    todcmp: int = 0  # as the save area holds it: clock comparator bits 0-55 in bits 8-63
    todpreg: int = 0
    ctrs: list[int] = field(default_factory=_zeros16)
    prefix: int = 0
    vxrs: list[bytes] | None = None  # VR0-31, 16 bytes each, when the CPU has vector regs
    last_break: int = 0  # kept for patching save areas; not in any note

    @classmethod
    def from_save_area(cls, area: bytes, vx: bytes | None = None) -> CpuState:
        """From the 512-byte save area (lowcore 0x1200..0x13FF) and the 512-byte VX area.

        A whole lowcore (>= 0x1400 bytes) is accepted too.
        """
        if len(area) >= SAVE_AREA_OFFSET + SAVE_AREA_SIZE:
            area = area[SAVE_AREA_OFFSET:SAVE_AREA_OFFSET + SAVE_AREA_SIZE]
        if len(area) < SAVE_AREA_SIZE:
            raise SadumpError(f"save area of {len(area)} bytes, expected {SAVE_AREA_SIZE}")
        sa = SaveArea.parse(area)
        vxrs = None
        if vx is not None:
            if len(vx) < VX_SAVE_AREA_SIZE:
                raise SadumpError(f"vector save area of {len(vx)} bytes, expected 512")
            vxrs = list(VxSaveArea.parse(vx).vrs)
        return cls(sa.psw_mask, sa.psw_addr, list(sa.gprs), list(sa.acrs), list(sa.fprs),
                   sa.fpc, sa.timer, sa.todcmp, sa.todpreg, list(sa.ctrs), sa.prefix, vxrs,
                   sa.last_break)

    def save_area(self, original: bytes | None = None) -> bytes:
        """The 512-byte save area with this CPU's registers laid over `original`
        (zgetdump's cpu2lc_64: what is not a register stays as it was)."""
        base = SaveArea.parse(original if original else bytes(SAVE_AREA_SIZE))
        base.update({"psw_mask": self.psw_mask, "psw_addr": self.psw_addr, "gprs": self.gprs,
                     "acrs": self.acrs, "fprs": self.fprs, "fpc": self.fpc, "timer": self.timer,
                     "todcmp": self.todcmp, "todpreg": self.todpreg, "ctrs": self.ctrs,
                     "prefix": self.prefix})
        return SaveArea.build(base)

    def vx_area(self) -> bytes | None:
        return None if self.vxrs is None else VxSaveArea.build({"vrs": self.vxrs})


def _vx_area(mem: PhysicalMemory, lowcores: list[int], exact: bool) -> bytes | None:
    """The vector registers at the address lowcore 0x11B0 (MCESAD) holds: a real address,
    used as is (never translated). The first lowcore with a usable designation wins.

    exact: a stand-alone dumper's store status (spec sa-dump-formats 5): the dumper stores
    the vector registers only when MCESAD is 1 KiB aligned (zipl's should_dump_vx), and
    zgetdump reads them only then; with Linux's length bits in the low bits (machines with
    guarded storage) the area holds no registers of the dump's moment."""
    for lc in lowcores:
        if not mem.is_present(lc + MCESAD_OFFSET, 8):
            continue
        raw = mem.read_u64(lc + MCESAD_OFFSET)
        if exact and raw & ~MCESAD_ADDR_MASK:
            continue
        addr = raw & MCESAD_ADDR_MASK
        if addr and mem.is_present(addr, VX_SAVE_AREA_SIZE):
            return mem.read(addr, VX_SAVE_AREA_SIZE)
    return None


def read_save_area(mem: PhysicalMemory, lowcore: int, ipl: bool,
                   dumper: bool = False) -> CpuState | None:
    """The save area in the lowcore at `lowcore`; VX from the CPU's own lowcore (for the
    IPL CPU: the prefix area it names, then absolute 0). dumper: the status a stand-alone
    dumper stored (VX only through a 1 KiB aligned MCESAD, see _vx_area)."""
    at = lowcore + SAVE_AREA_OFFSET
    if not mem.is_present(at, SAVE_AREA_SIZE):
        return None
    cpu = CpuState.from_save_area(mem.read(at, SAVE_AREA_SIZE))
    if cpu.prefix == 0:
        return cpu
    vx = _vx_area(mem, [cpu.prefix, 0] if ipl else [lowcore, cpu.prefix], exact=dumper)
    if vx is not None:
        cpu.vxrs = list(VxSaveArea.parse(vx).vrs)
    return cpu

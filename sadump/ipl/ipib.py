"""The IPL parameter block that lowcore 0xE00 points to, secured by the CKSM at 0xE08."""

from __future__ import annotations

from dataclasses import dataclass

from construct import Bytes, Int8ub, Int32ub, Struct

from sadump.checksum import cksm
from sadump.errors import SadumpError
from sadump.formats.memory import PhysicalMemory

IpibHeader = Struct(
    "len" / Int32ub,  # whole block, the checksum's length
    "flags" / Int8ub,
    "reserved" / Bytes(2),
    "version" / Int8ub,
    "pb0_len" / Int32ub,  # first parameter block
    "pbt" / Int8ub,  # parameter block type
)
IPL_TYPES = {0: "fcp", 1: "scp_data", 2: "ccw", 3: "eckd", 4: "nvme"}
MAX_IPIB = 4096  # one page, as the kernel allocates it


@dataclass
class Ipib:
    address: int
    stored_checksum: int
    length: int = 0
    type: str = ""
    computed_checksum: int | None = None
    error: str = ""

    @property
    def checksum_ok(self) -> bool:
        return self.computed_checksum == self.stored_checksum


def read_ipib(mem: PhysicalMemory, address: int, stored_checksum: int) -> Ipib | None:
    """None when no block is recorded (pointer 0); the block with its checks otherwise."""
    if address == 0:
        return None
    ipib = Ipib(address, stored_checksum)
    try:
        hdr = IpibHeader.parse(mem.read(address, IpibHeader.sizeof()))
        if not IpibHeader.sizeof() <= hdr.len <= MAX_IPIB:
            ipib.error = f"IPIB length {hdr.len:#x} out of bounds"
            return ipib
        ipib.length = hdr.len
        ipib.type = IPL_TYPES.get(hdr.pbt, f"unknown ({hdr.pbt})")
        ipib.computed_checksum = cksm(mem.read(address, hdr.len))
    except SadumpError as e:
        ipib.error = f"IPIB at {address:#x} not readable: {e}"
    return ipib

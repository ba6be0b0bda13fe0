"""The s390 CKSM checksum that secures os_info (spec 2.5).

32-bit big-endian words added with end-around carry, zero-padded tail, initial 0,
neither folded to 16 bits nor complemented.
"""

import struct

_MASK = 0xFFFFFFFF


def cksm(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Return the raw CKSM accumulator over data, as the CKSM instruction leaves it."""
    data = bytes(data)
    pad = -len(data) % 4
    if pad:
        data += b"\0" * pad
    total = initial + sum(struct.unpack(f">{len(data) // 4}I", data))
    # Per-word end-around carry over any number of additions has this closed form.
    return 0 if total == 0 else (total - 1) % _MASK + 1

"""The raw reader: address = file offset, sparse holes are zero extents, RSS stays flat."""

import os

from sadump.formats import open_image
from sadump.formats.raw import RawImage

MiB = 1 << 20


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_address_is_file_offset(tmp_path):
    path = tmp_path / "m.raw"
    path.write_bytes(bytes(range(256)) * 64)
    with open_image(str(path)) as mem:
        assert isinstance(mem, RawImage)
        assert mem.ranges() == [(0, 16384)]
        assert mem.read(0x1234, 4) == bytes([0x34, 0x35, 0x36, 0x37])


def test_holes_are_zero_extents(tmp_path):
    path = tmp_path / "sparse.raw"
    with open(path, "wb") as f:
        f.seek(8 * MiB)
        f.write(b"\x01" * MiB)
        f.truncate(16 * MiB)
    with open_image(str(path)) as mem:
        kinds = [(e.paddr, e.size, e.kind) for e in mem.extents(0, 16 * MiB)]
    assert sum(size for _, size, _ in kinds) == 16 * MiB
    file_bytes = sum(size for _, size, kind in kinds if kind == "file")
    assert MiB <= file_bytes < 16 * MiB  # the data is "file", (most of) the holes "zero"
    assert any(kind == "file" and p <= 8 * MiB < p + size for p, size, kind in kinds)


def test_large_reads_do_not_grow_resident_memory(tmp_path):
    """Scanning 128 MiB (a whole crashkernel) through the mapping keeps RSS flat."""
    path = tmp_path / "dense.raw"
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        f.writelines(block for _ in range(128))
    with open_image(str(path)) as mem:
        before = rss_bytes()
        for addr in range(0, 128 * MiB, MiB):
            assert len(mem.read(addr, MiB)) == MiB
        grown = rss_bytes() - before
    assert grown < 32 * MiB, f"RSS grew by {grown / MiB:.0f} MiB reading 128 MiB"

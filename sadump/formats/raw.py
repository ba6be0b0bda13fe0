"""Raw physical memory: address = file offset (QEMU pmemsave, /dev/mem copies)."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

from sadump.errors import ImageError
from sadump.formats.memory import Extent, FileImage, file_extents

#: reads this large drop their pages from our mapping afterwards (they stay in the page
#: cache): scanning a whole crashkernel must not grow the resident set by its size
UNMAP_AFTER = 256 << 10


class RawImage(FileImage):
    format = "raw"

    @staticmethod
    def probe(head: bytes) -> bool:
        return True  # the fallback: any file is raw memory

    def _load(self) -> None:
        if self.file_size == 0:
            raise ImageError("empty file")
        self._map = mmap.mmap(self._fd, self.file_size, access=mmap.ACCESS_READ)
        self._set_ranges([(0, self.file_size)])

    def _read(self, paddr: int, size: int) -> bytes:
        data = self._map[paddr : paddr + size]
        if size >= UNMAP_AFTER:
            start = paddr - paddr % mmap.PAGESIZE
            self._map.madvise(mmap.MADV_DONTNEED, start, paddr + size - start)
        return data

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """File-backed extents; holes of a sparse image become zero extents."""
        return file_extents(self._fd, start, end - start, start)

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            self._map.close()
            self._map = None
        super().close()

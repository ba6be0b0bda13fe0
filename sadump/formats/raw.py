"""Raw physical memory: address = file offset (QEMU pmemsave, /dev/mem copies).

Read with pread, not a memory mapping: a file that shrinks under a mapping kills the
process with SIGBUS; a short pread is an ImageChanged error instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from sadump.errors import ImageError
from sadump.formats.memory import Extent, FileImage, file_extents


class RawImage(FileImage):
    format = "raw"

    @staticmethod
    def probe(head: bytes) -> bool:
        return True  # the fallback: any file is raw memory

    def _load(self) -> None:
        if self.file_size == 0:
            raise ImageError("empty file")
        self._set_ranges([(0, self.file_size)])

    def _read(self, paddr: int, size: int) -> bytes:
        return self._read_file(paddr, size)

    def extents(self, start: int, end: int) -> Iterator[Extent]:
        """File-backed extents; holes of a sparse image become zero extents."""
        return file_extents(self._fd, start, end - start, start)

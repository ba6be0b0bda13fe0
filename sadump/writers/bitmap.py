"""The kdump format's page bitmaps (spec dump-formats 3.3): bit (pfn & 7) of byte (pfn >> 3)
set for each dumped pfn, produced in chunks (never the whole bitmap in memory)."""

from __future__ import annotations

from collections.abc import Iterator

from sadump.constants import MIB


def page_runs(segments, page: int) -> list[tuple[int, int]]:
    """Sorted, merged pfn runs [start, end) covering the segments' bytes."""
    runs: list[tuple[int, int]] = []
    for s in sorted(segments, key=lambda s: s.paddr):
        a, b = s.paddr // page, -(-s.end // page)
        if runs and a <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], b))
        else:
            runs.append((a, b))
    return runs


def bitmap_chunks(runs: list[tuple[int, int]], length: int,
                  chunk: int = MIB) -> Iterator[tuple[int, bytes]]:
    """(byte offset, bytes) of the bitmap of `runs`, `length` bytes in all."""
    i = 0
    for start in range(0, length, chunk):
        n = min(chunk, length - start)
        lo, hi = start * 8, (start + n) * 8  # pfns of this chunk
        buf = bytearray(n)
        while i < len(runs) and runs[i][1] <= lo:
            i += 1
        j = i
        while j < len(runs) and runs[j][0] < hi:
            a, b = max(runs[j][0], lo) - lo, min(runs[j][1], hi) - lo
            while a < b and a % 8:  # leading bits
                buf[a >> 3] |= 1 << (a & 7)
                a += 1
            full = (b - a) // 8
            buf[a >> 3:(a >> 3) + full] = b"\xff" * full
            a += full * 8
            while a < b:  # trailing bits
                buf[a >> 3] |= 1 << (a & 7)
                a += 1
            j += 1
        yield start, bytes(buf)

"""The one zero-page detector: which 4 KiB pages of a buffer are all zero. The writers turn
them into holes or the shared zero page; the dump-level filter counts and clears them.

An all-zero buffer is one comparison; elsewhere zero pages are found with bytes.find (C speed
over data) and only the pages of a zero stretch are compared one by one. No numpy: every
command can use it without paying for numpy's import.
"""

from __future__ import annotations

from sadump.constants import MIB, PAGE_SIZE

ZERO_BLOCK = bytes(MIB)
ZERO_PAGE = bytes(PAGE_SIZE)


def nonzero_runs(buf) -> list[tuple[int, int]]:
    """[start, end) runs of buf to write: all of it but its whole zero pages (4 KiB apart
    from the start of buf; a short tail counts as a page). An all-zero 1 MiB block is one
    comparison; elsewhere zero pages are found with bytes.find (C speed over data) and only
    the pages of a zero stretch are compared one by one."""
    if not isinstance(buf, (bytes, bytearray)):
        buf = bytes(buf)
    n = len(buf)
    if n <= len(ZERO_BLOCK) and ZERO_BLOCK.startswith(buf):  # all zero: one memcmp, no copy
        return []
    runs = []
    start = at = 0  # start of the current run; where to look for the next zero page
    while (z := buf.find(ZERO_PAGE, at)) >= 0:
        a = -(-z // PAGE_SIZE) * PAGE_SIZE  # no page before a is all zero (find saw none)
        if a + PAGE_SIZE > n or buf[a:a + PAGE_SIZE] != ZERO_PAGE:
            at = a + PAGE_SIZE  # the zero stretch at z ends inside page a
            if at >= n:
                break
            continue
        e = a + PAGE_SIZE
        while e + PAGE_SIZE <= n and buf[e:e + PAGE_SIZE] == ZERO_PAGE:
            e += PAGE_SIZE
        if a > start:
            runs.append((start, a))
        start = at = e
    tail = n % PAGE_SIZE
    end = n - tail if tail and buf[n - tail:] == ZERO_PAGE[:tail] else n
    if end > start:  # what is left, less a short all-zero tail
        runs.append((start, end))
    return runs


def nonzero_pages(buf) -> list[int]:
    """Indexes of the pages of buf (a whole number of pages) that are not all zero."""
    return [i for a, b in nonzero_runs(buf) for i in range(a // PAGE_SIZE, -(-b // PAGE_SIZE))]

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
    from the start of buf; a short tail counts as a page). Judged a MiB at a time, in place
    (bytes.startswith at an offset: no copy): an all-zero MiB is one comparison; elsewhere
    zero pages are found with bytes.find (C speed over data) and only the pages of a zero
    stretch are compared one by one."""
    if not isinstance(buf, (bytes, bytearray)):
        buf = bytes(buf)
    n = len(buf)
    runs: list[tuple[int, int]] = []
    for lo in range(0, n, MIB):
        hi = min(lo + MIB, n)
        if hi - lo == MIB and buf.startswith(ZERO_BLOCK, lo):  # all zero: one memcmp
            continue
        for a, b in _runs_in(buf, lo, hi):
            if runs and runs[-1][1] == a:  # one run across the MiB boundary
                a = runs.pop()[0]
            runs.append((a, b))
    return runs


def _runs_in(buf, lo: int, hi: int) -> list[tuple[int, int]]:
    """nonzero_runs of buf[lo:hi] (lo a multiple of the page size), as offsets in buf."""
    runs = []
    start = at = lo  # start of the current run; where to look for the next zero page
    while (z := buf.find(ZERO_PAGE, at, hi)) >= 0:
        a = -(-z // PAGE_SIZE) * PAGE_SIZE  # no page before a is all zero (find saw none)
        if a + PAGE_SIZE > hi or not buf.startswith(ZERO_PAGE, a):
            at = a + PAGE_SIZE  # the zero stretch at z ends inside page a
            if at >= hi:
                break
            continue
        e = a + PAGE_SIZE
        while e + PAGE_SIZE <= hi and buf.startswith(ZERO_PAGE, e):
            e += PAGE_SIZE
        if a > start:
            runs.append((start, a))
        start = at = e
    tail = (hi - lo) % PAGE_SIZE
    end = hi - tail if tail and buf.startswith(ZERO_PAGE[:tail], hi - tail) else hi
    if end > start:  # what is left, less a short all-zero tail
        runs.append((start, end))
    return runs


def nonzero_pages(buf) -> list[int]:
    """Indexes of the pages of buf (a whole number of pages) that are not all zero."""
    return [i for a, b in nonzero_runs(buf) for i in range(a // PAGE_SIZE, -(-b // PAGE_SIZE))]

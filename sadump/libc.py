"""The two glibc calls that the os module lacks: mallopt (reuse freed 1 MiB blocks; the CLI
sets it for every command, the writers for library callers) and sync_file_range (the
sink writes a dump back while it is written). Linux and glibc only; elsewhere both are
quietly absent and sadump works as before."""

from __future__ import annotations

import functools
import os

#: sync_file_range flags (linux/fs.h)
WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4


@functools.cache
def _libc():
    try:
        import ctypes

        return ctypes, ctypes.CDLL(None, use_errno=True)
    except (OSError, ImportError):
        return None, None


@functools.cache
def reuse_block_memory() -> None:
    """Let freed 1 MiB blocks be reused from the heap instead of each new one being a fresh
    mmap whose 256 pages the kernel must fault in and zero (glibc's default for blocks in
    flight): about 0.2-0.5 s of system time per GiB."""
    libc = _libc()[1]
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 16 << 20)  # blocks up to 16 MiB come from the heap
    mallopt(m_trim_threshold, 64 << 20)  # and up to 64 MiB freed stays for reuse


@functools.cache
def _sync_file_range():
    ctypes, libc = _libc()
    fn = getattr(libc, "sync_file_range", None)
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


def has_sync_file_range() -> bool:
    return _sync_file_range() is not None


def sync_file_range(fd: int, offset: int, n: int, flags: int) -> None:
    """sync_file_range(2); raises OSError (EIO, ENOSPC: the write-back failed)."""
    fn = _sync_file_range()
    if fn is not None and fn(fd, offset, n, flags) != 0:
        err = _libc()[0].get_errno()
        raise OSError(err, os.strerror(err))

"""The dump's fast paths: input holes skipped (SEEK_DATA/SEEK_HOLE, one helper for raw, ELF
and s390 readers), zero pages found without per-page Python, plain file bytes copied by the
kernel (copy_file_range) with a read-write fallback, and the output the same either way."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import random
import sys
from pathlib import Path

import pytest

from sadump.analysis import analyse
from sadump.constants import PAGE_SIZE as PAGE
from sadump.dump_plan import plan_dump, write_dump
from sadump.errors import ImageChanged
from sadump.formats.elf import ElfCore
from sadump.formats.memory import file_extents
from sadump.formats.raw import RawImage
from sadump.formats.s390 import S390Dump
from sadump.writers import sink as writing
from sadump.writers.blocks import BLOCK, nonzero_runs
from sadump.writers.sink import READ_AHEAD, Sink, write_output
from tests.fixtures.builder import ImageSpec, MiB, write_elf, write_raw, write_s390

ZERO = bytes(PAGE)

#: the platform offers write-behind: Linux, and sync_file_range in this process's C library
#: (decided here, not by sadump's own libc.has_sync_file_range, which is under test)
PLATFORM_SYNC_FILE_RANGE = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None),
                                                                        "sync_file_range")
needs_sync_file_range = pytest.mark.skipif(
    not PLATFORM_SYNC_FILE_RANGE, reason="not Linux with sync_file_range in its C library")


def naive_runs(buf: bytes) -> list[tuple[int, int]]:
    """The same answer page by page: runs of pages that are not all zero."""
    runs: list[tuple[int, int]] = []
    for a in range(0, len(buf), PAGE):
        page = buf[a:a + PAGE]
        if page == ZERO[:len(page)] and (len(page) == PAGE or a + len(page) == len(buf)):
            continue
        if runs and runs[-1][1] == a:
            runs[-1] = (runs[-1][0], a + len(page))
        else:
            runs.append((a, a + len(page)))
    return runs


def page_mix(rng: random.Random, pages: int, tail: int = 0) -> bytes:
    """Pages that are zero, random, or zero but for one byte somewhere (edges included)."""
    out = bytearray()
    for _ in range(pages):
        kind = rng.choice("zzzrb")
        if kind == "z":
            out += ZERO
        elif kind == "r":
            out += rng.randbytes(PAGE)
        else:
            page = bytearray(PAGE)
            page[rng.choice([0, PAGE - 1, rng.randrange(PAGE)])] = rng.randrange(1, 256)
            out += page
    out += bytes(tail) if rng.random() < 0.5 else rng.randbytes(tail)
    return bytes(out)


@pytest.mark.parametrize("seed", range(40))
def test_nonzero_runs_equals_the_page_by_page_answer(seed):
    rng = random.Random(seed)
    buf = page_mix(rng, rng.choice([1, 3, 17, 256]), rng.choice([0, 0, 1, 100, PAGE - 1]))
    assert nonzero_runs(buf) == naive_runs(buf)
    assert nonzero_runs(bytearray(buf)) == naive_runs(buf)
    assert nonzero_runs(memoryview(buf)) == naive_runs(buf)


@pytest.mark.parametrize("seed", range(12))
def test_nonzero_runs_of_several_mib(seed):
    """Longer than a MiB (the read-ahead's pieces): judged a MiB at a time, with runs and
    zero stretches that cross the MiB boundaries, whole zero and whole data MiBs."""
    rng = random.Random(100 + seed)
    parts = []
    for _ in range(rng.choice([2, 3, 4])):
        kind = rng.choice(["mix", "zero", "data"])
        parts.append(page_mix(rng, 256) if kind == "mix" else bytes(BLOCK) if kind == "zero"
                     else rng.randbytes(BLOCK))
    buf = b"".join(parts) + page_mix(rng, rng.choice([0, 3]), rng.choice([0, 1, 100]))
    assert nonzero_runs(buf) == naive_runs(buf)
    assert nonzero_runs(bytearray(buf)) == naive_runs(buf)


def test_nonzero_runs_edges():
    assert nonzero_runs(bytes(BLOCK)) == []
    assert nonzero_runs(bytes(4 * BLOCK + 5)) == []
    assert nonzero_runs(bytes(BLOCK - 1) + b"\1\1" + bytes(BLOCK - 1)) == [
        (BLOCK - PAGE, BLOCK + PAGE)]  # one run across the MiB boundary
    assert nonzero_runs(b"") == []
    assert nonzero_runs(bytes(100)) == []  # a short all-zero tail is a hole too
    assert nonzero_runs(b"\1" + bytes(BLOCK - 1)) == [(0, PAGE)]
    assert nonzero_runs(bytes(BLOCK - 1) + b"\1") == [(BLOCK - PAGE, BLOCK)]
    # zeros that straddle a page boundary without filling a page are data
    buf = b"\1" * (PAGE - 10) + bytes(PAGE + 5) + b"\1" * (PAGE - 5)
    assert nonzero_runs(buf) == [(0, len(buf))]


# ---- input holes --------------------------------------------------------------------------
def sparse_file(path: Path, size: int, data: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        for off, blob in data.items():
            f.seek(off)
            f.write(blob)
        f.truncate(size)
    return path


def holes_supported(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE) < os.fstat(fd).st_size
    except OSError:
        return False
    finally:
        os.close(fd)


def test_file_extents_split_at_holes(tmp_path):
    path = sparse_file(tmp_path / "f", 8 * MiB, {2 * MiB: b"a" * PAGE, 5 * MiB: b"b" * MiB})
    if not holes_supported(path):
        pytest.skip("this file system does not report holes (SEEK_DATA)")
    fd = os.open(path, os.O_RDONLY)
    try:
        exts = list(file_extents(fd, 0x100000, 8 * MiB - 0x1000, 0x1000))
    finally:
        os.close(fd)
    pos = 0x100000
    for e in exts:  # they tile the range, in order
        assert e.paddr == pos
        pos += e.size
    assert pos == 0x100000 + 8 * MiB - 0x1000
    files = [(e.paddr - 0x100000 + 0x1000, e.size) for e in exts if e.kind == "file"]
    # the data (file offsets) is inside file extents, and file extents are mostly data
    assert any(a <= 2 * MiB and 2 * MiB + PAGE <= a + n for a, n in files)
    assert any(a <= 5 * MiB and 6 * MiB <= a + n for a, n in files)
    assert sum(n for _, n in files) < 2 * MiB
    assert all(e.file_offset == e.paddr - 0x100000 + 0x1000 for e in exts if e.kind == "file")


def test_file_extents_past_the_end_of_the_file_are_not_zeros(tmp_path):
    """A file shorter than the range (it shrank underneath): its hole is zero, the bytes past
    its end stay "file", so that copying them fails instead of inventing zeros."""
    path = sparse_file(tmp_path / "f", 3 * MiB, {0: b"x" * PAGE})
    fd = os.open(path, os.O_RDONLY)
    try:
        exts = list(file_extents(fd, 0, 5 * MiB, 0))
        assert exts[-1].kind == "file" and exts[-1].paddr + exts[-1].size == 5 * MiB
        assert exts[-1].paddr <= 3 * MiB
        with pytest.raises(ImageChanged, match="the image changed or could not be read"):
            write_output(str(tmp_path / "out"), 5 * MiB, 5 * MiB, False,
                         lambda sink: sink.copy_file(0, fd, 0, 5 * MiB), progress=False)
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_file_extents_without_hole_support(tmp_path, monkeypatch):
    path = sparse_file(tmp_path / "f", 4 * MiB, {MiB: b"x"})

    def no_holes(fd, pos, how):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "lseek", no_holes)
    fd = os.open(path, os.O_RDONLY)
    try:
        exts = list(file_extents(fd, 0, 4 * MiB, 0))
    finally:
        os.close(fd)
    assert [(e.paddr, e.size, e.kind, e.file_offset) for e in exts] == [(0, 4 * MiB, "file", 0)]


@pytest.mark.parametrize("fmt", ["raw", "elf", "s390"])
def test_readers_report_input_holes_as_zero(tmp_path, fmt):
    spec = ImageSpec(mem_size=64 * MiB)
    writer, reader = {"raw": (write_raw, RawImage), "elf": (write_elf, ElfCore),
                      "s390": (write_s390, S390Dump)}[fmt]
    path = writer(spec, tmp_path / f"img.{fmt}")
    if not holes_supported(path) and fmt == "raw":
        pytest.skip("this file system does not report holes (SEEK_DATA)")
    with reader(str(path)) as mem:
        exts = list(mem.extents(0, 64 * MiB))
        assert sum(e.size for e in exts) == 64 * MiB
        zero = sum(e.size for e in exts if e.kind == "zero")
        assert zero > 32 * MiB  # the builder's image is mostly holes
        for e in exts:  # every extent holds what the image holds
            n = min(e.size, 64 * 1024)
            if e.kind == "file":
                assert os.pread(e.fileno, n, e.file_offset) == spec.expected(e.paddr, n)
            else:
                assert spec.expected(e.paddr, n) == bytes(n)


# ---- the kernel copy ------------------------------------------------------------------------
def copy_out(tmp_path: Path, src: Path, name: str, size: int) -> tuple[Path, int]:
    out = tmp_path / name
    fd = os.open(src, os.O_RDONLY)
    try:
        res = write_output(str(out), size, size, False,
                           lambda sink: sink.copy_file(0, fd, 0, size), progress=False)
    finally:
        os.close(fd)
    return out, res.data_bytes


def test_copy_file_writes_zero_pages_as_holes(tmp_path, monkeypatch):
    rng = random.Random(3)
    data = page_mix(rng, 1024)  # 4 MiB written out, zero pages included (not holes)
    src = tmp_path / "src"
    src.write_bytes(data)
    calls = []
    real = os.copy_file_range

    def copy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(writing.os, "copy_file_range", copy)
    out, written = copy_out(tmp_path, src, "out", len(data))
    assert out.read_bytes() == data
    assert calls  # the kernel copied the data
    want = sum(b - a for a, b in naive_runs(data))
    assert written == want
    assert out.stat().st_blocks * 512 <= want + 64 * PAGE  # zero pages took no room


def test_copy_file_to_an_unaligned_offset_keeps_page_holes(tmp_path):
    """Input holes end at file blocks, not at output pages (QEMU's ELF data starts at an odd
    offset): zero pages are still found on the output's page boundaries."""
    data = b"\1" * 100 + bytes(16 * PAGE) + b"\2" * PAGE
    src = tmp_path / "src"
    src.write_bytes(data)
    out, at = tmp_path / "out", PAGE - 100
    fd = os.open(src, os.O_RDONLY)
    try:
        res = write_output(str(out), at + len(data), len(data), False,
                           lambda sink: sink.copy_file(at, fd, 0, len(data)), progress=False)
    finally:
        os.close(fd)
    assert out.read_bytes() == bytes(at) + data
    assert res.data_bytes == 100 + PAGE  # the head's 100 bytes and the last page only


def test_copy_file_without_kernel_copy(tmp_path, monkeypatch):
    """Where copy_file_range cannot (other file systems, old kernels), bytes are written."""
    data = page_mix(random.Random(4), 600, 123)
    src = tmp_path / "src"
    src.write_bytes(data)
    out1, n1 = copy_out(tmp_path, src, "kernel", len(data))

    def cannot(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(writing.os, "copy_file_range", cannot)
    out2, n2 = copy_out(tmp_path, src, "plain", len(data))
    assert out1.read_bytes() == out2.read_bytes() == data
    assert n1 == n2


def test_copy_file_write_error_is_an_output_error(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.write_bytes(b"\1" * MiB)

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writing.os, "copy_file_range", full)
    with pytest.raises(writing.OutputError, match="No space left"):
        copy_out(tmp_path, src, "out", MiB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_copy_file_to_a_stream(tmp_path, capfdbinary):
    data = page_mix(random.Random(5), 300)
    src = tmp_path / "src"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    try:
        sink = Sink("-", len(data), 0, progress=False)
        sink.copy_file(0, fd, 0, len(data))
        sink.finish()
    finally:
        os.close(fd)
    assert capfdbinary.readouterr().out == data


# ---- the dump reads only what the input holds ------------------------------------------------
def test_dump_of_a_sparse_elf_reads_only_its_data(tmp_path, monkeypatch):
    spec = ImageSpec(mem_size=256 * MiB)
    path = write_elf(spec, tmp_path / "in.elf")
    if not holes_supported(path):
        pytest.skip("this file system does not report holes (SEEK_DATA)")
    read = []
    real = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        read.append(n)
        return real(fd, n, off)

    monkeypatch.setattr(os, "pread", pread)
    analysis = analyse(str(path))
    try:
        plan = plan_dump(analysis, "full")
        write_dump(plan, str(tmp_path / "vmcore"), progress=False)
    finally:
        analysis.close()
    on_disk = path.stat().st_blocks * 512
    assert 0 < sum(read) <= on_disk + MiB  # its data and headers, not 256 MiB of addresses
    with ElfCore(str(tmp_path / "vmcore")) as core, ElfCore(str(path)) as src:
        for paddr in range(0, 256 * MiB, 4 * MiB):
            assert core.read(paddr, PAGE) == src.read(paddr, PAGE)


def test_dense_data_is_copied_mostly_unread(tmp_path, monkeypatch):
    """40 MiB without a zero page: after a few MiB read and found dense, the kernel copies the
    rest unread (only each MiB's first and last page are looked at); the bytes are the
    input's, and a stretch of zero pages after the dense part is found again: holes."""
    rng = random.Random(5)
    dense = rng.randbytes(40 * MiB)
    data = dense + bytes(8 * MiB) + rng.randbytes(MiB)
    src = tmp_path / "src"
    src.write_bytes(data)
    read = []
    real = writing.pread_exact

    def pread(fd, n, offset, *a):
        read.append(n)
        return real(fd, n, offset, *a)

    monkeypatch.setattr(writing, "pread_exact", pread)
    out, _ = copy_out(tmp_path, src, "out", len(data))
    assert out.read_bytes() == data
    # 4 MiB to learn it is dense, the MiBs already read ahead by then, 2 pages a MiB, the
    # zeros, the tail
    assert sum(read) <= 14 * MiB + READ_AHEAD * MiB
    assert out.stat().st_blocks * 512 <= len(data) - 7 * MiB  # the zero stretch is a hole


@needs_sync_file_range
def test_write_behind_sends_each_window_once_in_order(tmp_path, monkeypatch):
    """A dump of 5 windows and a bit: from the streamed part's start on, each full window is
    started (SYNC_FILE_RANGE_WRITE) once, in order, and waited for and dropped from the page
    cache once the next one starts (the rest goes with the final fsync); the file is the
    input's bytes."""
    window = writing.WRITE_BEHIND
    data = random.Random(11).randbytes(5 * window + 12345)
    src = tmp_path / "src"
    src.write_bytes(data)
    calls, dropped = [], []
    real = writing.libc.sync_file_range
    monkeypatch.setattr(writing.libc, "sync_file_range",
                        lambda fd, off, n, flags: (calls.append((off, n, flags)),
                                                   real(fd, off, n, flags))[1])
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(writing.os, "posix_fadvise",
                        lambda fd, off, n, advice: (dropped.append((off, n, advice)),
                                                    real_fadvise(fd, off, n, advice))[1])
    start = 3 * PAGE

    def write(sink):
        sink.data(0, data[:start])
        sink.stream_from(start)
        fd = os.open(src, os.O_RDONLY)
        try:
            sink.copy_file(start, fd, start, len(data) - start)
        finally:
            os.close(fd)

    out = tmp_path / "out"
    write_output(str(out), len(data), len(data), False, write, progress=False)
    assert out.read_bytes() == data
    started = [(off, n) for off, n, flags in calls if flags == writing.libc.WRITE]
    waited = [(off, n) for off, n, flags in calls if flags != writing.libc.WRITE]
    assert len(started) >= 4 and started[0][0] == start
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(started))  # back to back
    assert all(n >= window for _, n in started)
    assert len(data) - window < started[-1][0] + started[-1][1] <= len(data)
    assert waited == started[:-1]  # each window but the last is waited for, in order
    assert dropped == [(a, n, os.POSIX_FADV_DONTNEED) for a, n in waited]


def test_sadump_finds_sync_file_range_where_the_platform_has_it():
    """A regression in sadump's own probe would switch write-behind off unseen."""
    assert writing.libc.has_sync_file_range() == PLATFORM_SYNC_FILE_RANGE


def streamed(src: Path):
    """A writer that streams all of file src from offset 0 (write-behind on)."""
    def write(sink):
        sink.stream_from(0)
        fd = os.open(src, os.O_RDONLY)
        try:
            sink.copy_file(0, fd, 0, src.stat().st_size)
        finally:
            os.close(fd)

    return write


@needs_sync_file_range
def test_write_behind_error_is_a_failed_write(tmp_path, monkeypatch):
    """The disk's error can come back from the write-behind: the dump fails there, with
    the line, and nothing is left under the name."""
    data = random.Random(12).randbytes(3 * writing.WRITE_BEHIND)
    src = tmp_path / "src"
    src.write_bytes(data)

    def eio(fd, off, n, flags):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(writing.libc, "sync_file_range", eio)

    with pytest.raises(writing.OutputError, match="Input/output error.*nothing written"):
        write_output(str(tmp_path / "out"), len(data), len(data), False, streamed(src),
                     progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_read_ahead_error_reaches_the_writer(tmp_path, monkeypatch):
    """A read that fails in a read-ahead thread fails the dump as the image's error, at its
    place; nothing is left under the name."""
    data = random.Random(13).randbytes(12 * MiB)
    src = tmp_path / "src"
    src.write_bytes(data)
    real = writing.pread_exact

    def pread(fd, n, offset, *a):
        if offset >= 7 * MiB:
            raise ImageChanged(f"reading {n:#x} bytes at {offset:#x}: Input/output error")
        return real(fd, n, offset, *a)

    monkeypatch.setattr(writing, "pread_exact", pread)
    monkeypatch.setattr(writing, "DENSE_AFTER", 1 << 60)  # every MiB is read
    with pytest.raises(ImageChanged, match="Input/output error.*nothing written"):
        copy_out(tmp_path, src, "out", len(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@needs_sync_file_range
def test_write_behind_not_offered_is_left_out(tmp_path, monkeypatch):
    """A file system whose sync_file_range says EINVAL: the dump goes on without
    write-behind (the final fsync writes it all) and is the input's bytes."""
    data = random.Random(14).randbytes(3 * writing.WRITE_BEHIND)
    src = tmp_path / "src"
    src.write_bytes(data)
    calls = []

    def einval(fd, off, n, flags):
        calls.append(off)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(writing.libc, "sync_file_range", einval)

    write_output(str(tmp_path / "out"), len(data), len(data), False, streamed(src),
                 progress=False)
    assert (tmp_path / "out").read_bytes() == data
    assert len(calls) == 1  # tried once, then left out

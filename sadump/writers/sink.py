"""The output sink of every writer: a temporary file in the target folder renamed at the end
(or stdout), sparse holes for all-zero pages, a free-space check first, a progress bar on a
terminal, and on any failure no file under the final name and one line saying so.

Writers hand it blocks of at most 1 MiB (sadump.writers.blocks): never the whole image or
output in memory. Zero pages inside a block become holes (blocks.nonzero_runs); plain file
bytes can also be copied by the kernel (copy_file) instead of through Python, the pieces it
must look at read ahead by worker threads. The part a writer streams (stream_from) is
written behind in WRITE_BEHIND windows, so the disk works while sadump reads.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sadump import libc
from sadump.constants import MIB, PAGE_SIZE, mib
from sadump.errors import ImageChanged, ImageError, SadumpError
from sadump.formats.memory import pread_exact
from sadump.writers.blocks import BLOCK, ZERO_BLOCK, ZERO_PAGE, memory_blocks, nonzero_runs

#: room left free on top of what the dump needs (metadata of a large sparse file)
FREE_SPACE_MARGIN = 1 << 20
#: copy_file_range errors that mean "not here" (old kernel, other file systems): write instead
NO_KERNEL_COPY = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}
#: copy_file's pieces: read (ahead) and judged whole (2 and 4 MiB measured no faster on a
#: mostly-zero image, and they make coarser holes in dense memory)
PIECE = MIB
#: after this many bytes in a row without a zero page, a piece whose first and last pages
#: are not zero is copied by the kernel unread
DENSE_AFTER = 4 * MIB
#: copy_file reads pieces ahead in one thread per CPU (up to 4: the page cache copy is then
#: memory-bound), two pieces per thread
READ_THREADS = min(os.cpu_count() or 1, 4)
READ_AHEAD = 2 * READ_THREADS
#: sync_file_range / posix_fadvise errors that mean "not on this file": no write-behind
NO_WRITE_BEHIND = {errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP}
#: write-behind window: the dump's streamed part is sent to the disk a window at a time
#: while sadump goes on (the disk works during the copy, not all at the final fsync), and a
#: window on disk leaves the page cache (a 1 TiB dump does not push every other file out)
WRITE_BEHIND = 16 * MIB


def _not_a_file(path: str) -> str | None:
    """What an existing output path is when it is not a regular file (a link is judged by
    what it leads to; a dangling link is replaced like a file), else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISFIFO, "pipe (FIFO)"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return None


class OutputError(SadumpError):
    """The dump could not be written: nothing is left under the final name."""


class DumpInterrupted(SadumpError):
    """Ctrl-C while writing: nothing is left under the final name."""


@dataclass
class WriteResult:
    path: str  # the final name, or "-" for stdout
    size: int  # bytes of the output (its length; holes included)
    data_bytes: int  # bytes actually written (not holes)
    seconds: float
    sparse: bool

    @property
    def rate(self) -> float:
        """MiB/s over the output's length."""
        return self.size / MIB / self.seconds if self.seconds > 0 else 0.0


class Sink:
    """Where a planned dump goes. Writers call data()/zeros() in increasing offset order."""

    def __init__(self, target: str, size: int, need: int, force: bool = False,
                 progress: bool | None = None, label: str = "dump"):
        self.target = target
        self.size = size
        self.pos = 0  # for streams: bytes sent so far
        self.data_bytes = 0
        self.tmp: str | None = None
        self.fd = -1
        self.stream = None
        self._kernel_copy = True  # copy_file_range works here (until it says otherwise)
        self._dense = 0  # bytes in a row read without a zero page
        self._behind: tuple[int, int] | None = None  # write-behind: [waited to, started to)
        self._readers = None  # copy_file's read-ahead threads, made when first needed
        self.start = time.monotonic()
        if target == "-":
            self.stream = sys.stdout.buffer
            self.sparse = False
        else:
            self._open_file(need, force)
            self.sparse = True
        self._progress = None
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            self._start_progress(label)

    # ---- opening ------------------------------------------------------------------------
    def _open_file(self, need: int, force: bool) -> None:
        path = os.path.abspath(self.target)
        folder, name = os.path.split(path)
        if not os.path.isdir(folder):
            raise OutputError(f"folder {folder} does not exist: nothing written")
        if os.path.isdir(path):
            raise OutputError(f"{self.target} is a folder: nothing written")
        if os.path.lexists(path):
            kind = _not_a_file(path)
            if kind:  # --force renames over it: /dev/full would become a file in /dev
                raise OutputError(f"{self.target} is a {kind}, not a file: not replaced "
                                  f"(to write into it: -o - > {self.target}): nothing written")
            if not force:
                raise OutputError(f"{self.target} exists: not overwritten (use --force): "
                                  "nothing written")
        try:
            st = os.statvfs(folder)
        except OSError as e:
            raise OutputError(f"cannot check free space in {folder}: {e.strerror}: "
                              "nothing written") from None
        free = st.f_bavail * st.f_frsize
        if free < need + FREE_SPACE_MARGIN:
            raise OutputError(
                f"not enough room in {folder}: the dump needs {mib(need + FREE_SPACE_MARGIN)}"
                f" (its bytes that are not known to be zero), {mib(free)} free: nothing written")
        self.path = path
        self.tmp = os.path.join(folder, f".{name}.sadump-tmp-{os.getpid()}")
        try:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              0o644)
        except OSError as e:
            self.tmp = None
            raise OutputError(f"cannot create a temporary file in {folder}: {e.strerror}: "
                              "nothing written") from None

    def _start_progress(self, label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress("[progress.description]{task.description}", BarColumn(),
                                  DownloadColumn(binary_units=True), TransferSpeedColumn(),
                                  TimeRemainingColumn(), console=Console(stderr=True),
                                  transient=True)
        self._progress.start()
        self._task = self._progress.add_task(label, total=self.size)

    # ---- writing ------------------------------------------------------------------------
    def readers(self):
        if self._readers is None:
            from concurrent.futures import ThreadPoolExecutor

            self._readers = ThreadPoolExecutor(READ_THREADS, "sadump-read")
        return self._readers

    def stream_from(self, offset: int) -> None:
        """The writer writes [offset, end) once, in increasing order: write it behind
        (WRITE_BEHIND), where the kernel offers sync_file_range."""
        if self.fd >= 0 and libc.has_sync_file_range():
            start = -(-offset // PAGE_SIZE) * PAGE_SIZE
            self._behind = (start, start)

    def _wrote(self, end: int) -> None:
        """Bytes up to `end` are written: once a window is full, wait for the one before it
        to reach the disk, drop it from the page cache and start writing this one."""
        if self._behind is None:
            return
        waited, started = self._behind
        if end - started < WRITE_BEHIND:
            return
        upto = end // PAGE_SIZE * PAGE_SIZE
        try:
            if started > waited:
                libc.sync_file_range(self.fd, waited, started - waited,
                                     libc.WAIT_BEFORE | libc.WRITE | libc.WAIT_AFTER)
                os.posix_fadvise(self.fd, waited, started - waited, os.POSIX_FADV_DONTNEED)
            libc.sync_file_range(self.fd, started, upto - started, libc.WRITE)
        except OSError as e:
            if e.errno in NO_WRITE_BEHIND:  # not here: the final fsync does it all
                self._behind = None
                return
            raise OutputError(f"cannot write {self.target} at bytes {waited:#x}-{upto:#x}: "
                              f"{e.strerror}") from None
        self._behind = (started, upto)

    def _advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def _pwrite(self, offset: int, view) -> None:
        view = memoryview(view)
        while len(view):
            try:
                n = os.pwrite(self.fd, view, offset)
            except OSError as e:
                raise OutputError(f"cannot write {self.target} at byte {offset:#x}: "
                                  f"{e.strerror}") from None
            view, offset = view[n:], offset + n
            self.data_bytes += n
        self._wrote(offset)

    def _send(self, data) -> None:
        try:
            self.stream.write(data)
        except OSError as e:
            raise OutputError(f"cannot write to stdout at byte {self.pos:#x}: "
                              f"{e.strerror}") from None
        self.pos += len(data)
        self.data_bytes += len(data)

    def _fill_to(self, offset: int) -> None:
        """Streams cannot seek: send zeros up to offset."""
        while self.pos < offset:
            self._send(memoryview(ZERO_BLOCK)[: min(BLOCK, offset - self.pos)])

    def data(self, offset: int, buf: bytes, holes: bool = True) -> None:
        """buf at offset; in a file, all-zero pages become holes (decided per MiB first)
        unless holes=False (the writer knows buf has no zero page: no need to look)."""
        n = len(buf)
        if self.stream is not None:
            self._fill_to(offset)
            self._send(buf)
        elif not holes:
            self._pwrite(offset, buf)
        else:
            view = memoryview(buf)
            for a, b in nonzero_runs(buf):
                self._pwrite(offset + a, view[a:b])
        self._advance(n)

    def copy_file(self, offset: int, fd: int, src: int, n: int) -> None:
        """n bytes of file fd at src to offset. A piece (PIECE) is read to find its zero
        pages (holes); into a file the others are then copied by the kernel, not through
        Python. Where piece after piece holds no zero page (dense memory), a piece whose first
        and last pages are not zero is copied by the kernel unread: dense data crosses memory
        once (a zero page in the middle of such a piece is then copied, not a hole). The
        pieces to read are read ahead by worker threads (pread lets go of the GIL: the page
        cache is copied on every core)."""
        ahead = _ReadAhead(self, fd, src, _steps(offset, n))
        for pos, k, looked in ahead:
            if (looked is None and self.stream is None and self._dense >= DENSE_AFTER
                    and self._kernel_copy and k == PIECE and self._edges_dense(fd, src + pos)):
                done = self._copy_range(fd, src + pos, offset + pos, k)
                if done:
                    self._advance(done)
                    if done < k:
                        self.copy_file(offset + pos + done, fd, src + pos + done, k - done)
                    continue
            buf, runs = looked.result() if looked is not None else _look(fd, src + pos, k)
            ahead.dense = False
            if self.stream is not None:
                self.data(offset + pos, buf)
                continue
            view = memoryview(buf)
            # a whole piece without a zero page counts toward copying unread
            dense = k == PIECE and runs == [(0, k)]
            self._dense = self._dense + k if dense else 0
            ahead.dense = self._dense >= DENSE_AFTER and self._kernel_copy
            for a, b in runs:
                done = self._copy_range(fd, src + pos + a, offset + pos + a, b - a)
                if a + done < b:  # the kernel cannot here: write the bytes read
                    self._pwrite(offset + pos + a + done, view[a + done:b])
            self._advance(k)

    @staticmethod
    def _edges_dense(fd: int, src: int) -> bool:
        """Neither the first nor the last page of the piece at src is all zero."""
        return all(pread_exact(fd, PAGE_SIZE, at) != ZERO_PAGE
                   for at in (src, src + PIECE - PAGE_SIZE))

    def _copy_range(self, fd: int, src: int, dst: int, n: int) -> int:
        """copy_file_range; return the bytes copied (fewer where the kernel cannot)."""
        done = 0
        while done < n and self._kernel_copy:
            try:
                k = os.copy_file_range(fd, self.fd, n - done, src + done, dst + done)
            except OSError as e:
                if e.errno not in NO_KERNEL_COPY:
                    raise OutputError(f"cannot write {self.target} at byte {dst + done:#x}: "
                                      f"{e.strerror}") from None
                self._kernel_copy = False
                break
            if k == 0:
                raise ImageChanged(f"it ends at {src + done:#x}")
            done += k
        self.data_bytes += done
        self._wrote(dst + done)
        return done

    def zeros(self, offset: int, n: int) -> None:
        """n zero bytes at offset: a hole in a file, zeros on a stream."""
        if self.stream is not None:
            self._fill_to(offset + n)
            self._advance(n)
            return
        while n > 0:  # in steps, so that the progress bar moves over huge holes too
            step = min(n, 64 * BLOCK)
            self._advance(step)
            n -= step

    # ---- ending -------------------------------------------------------------------------
    def _stop_helpers(self) -> None:
        """The read-ahead threads and the progress bar end with the sink."""
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
            self._readers = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def finish(self) -> WriteResult:
        """Length, fsync, rename to the final name, fsync the folder."""
        try:
            if self.stream is not None:
                self._fill_to(self.size)
                self.stream.flush()
            else:
                os.ftruncate(self.fd, self.size)
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = -1
                os.replace(self.tmp, self.path)
                self.tmp = None
                _fsync_dir(os.path.dirname(self.path))
        except OSError as e:
            raise OutputError(f"cannot finish {self.target}: {e.strerror}") from None
        finally:
            self._stop_helpers()
        return WriteResult(self.target, self.size, self.data_bytes,
                           time.monotonic() - self.start, self.sparse)

    def abort(self) -> str:
        """Remove the temporary file; say what was and was not written."""
        self._stop_helpers()
        if self.stream is not None:
            try:
                self.stream.flush()
            except OSError:
                pass
            if self.pos == 0:
                return "nothing was sent to stdout"
            return (f"{self.pos} of {self.size} bytes had been sent to stdout: "
                    "the stream is incomplete")
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self.tmp = None
        return f"nothing written under {self.target} (temporary file removed)"


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders; the rename itself is done
    finally:
        os.close(fd)


def write_output(target: str, size: int, need: int, force: bool,
                 write: Callable[[Sink], None], progress: bool | None = None,
                 label: str = "dump") -> WriteResult:
    """Open the sink, let `write` fill it, finish; on any failure (Ctrl-C too) remove the
    temporary file and re-raise as one line that says what was and was not written."""
    sink = Sink(target, size, need, force, progress, label)
    old_term = _on_sigterm(_interrupt)
    try:
        write(sink)
        return sink.finish()
    except KeyboardInterrupt:
        raise DumpInterrupted(f"interrupted: {sink.abort()}") from None
    except OutputError as e:
        raise OutputError(f"{e}: {sink.abort()}") from None
    except SadumpError as e:
        raise ImageError(f"{e}: {sink.abort()}") from None
    except OSError as e:  # writes are OutputErrors: this is the image
        raise ImageChanged(f"{e.strerror or e}; {sink.abort()}") from None
    except ImageChanged as e:
        e.args = (f"{e}: {sink.abort()}",)
        raise
    except BaseException:
        sink.abort()
        raise
    finally:
        _on_sigterm(old_term)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, timeout) cleans up like Ctrl-C


def _on_sigterm(handler):
    """Install a SIGTERM handler (main thread only); return the previous one."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _steps(offset: int, n: int) -> Iterator[tuple[int, int]]:
    """(position, length) of copy_file's pieces: a partial first page alone, then up to the
    output's PIECE boundaries (so pages and pieces line up), then whole pieces."""
    pos = 0
    while pos < n:
        at = offset + pos
        k = min(PAGE_SIZE - at % PAGE_SIZE if at % PAGE_SIZE else PIECE - at % PIECE, n - pos)
        yield pos, k
        pos += k


def _look(fd: int, at: int, k: int) -> tuple[bytes, list[tuple[int, int]]]:
    """k bytes of fd at `at`, and their runs that are not whole zero pages."""
    buf = pread_exact(fd, k, at)
    return buf, nonzero_runs(buf)


class _ReadAhead:
    """copy_file's pieces in order, each with the future of its read (_look) when read
    ahead: READ_AHEAD pieces are read by READ_THREADS threads while this one writes. While
    the sink copies dense data unread (dense), no new piece is read ahead."""

    def __init__(self, sink: Sink, fd: int, src: int, steps: Iterator[tuple[int, int]]):
        self.sink, self.fd, self.src, self.steps = sink, fd, src, steps
        self.queue: deque = deque()
        self.dense = False

    def __iter__(self):
        while True:
            while len(self.queue) < READ_AHEAD:
                step = next(self.steps, None)
                if step is None:
                    break
                pos, k = step
                fut = None if self.dense else self.sink.readers().submit(
                    _look, self.fd, self.src + pos, k)
                self.queue.append((pos, k, fut))
            if not self.queue:
                return
            yield self.queue.popleft()


def write_memory(sink: Sink, mem, start: int, end: int, offset: int,
                 patches: list[tuple[int, bytes]] = ()) -> None:
    """Memory [start, end) to the sink at `offset` (ELF and s390 data): holes for known
    zeros, plain file bytes copied by the kernel, the rest written from the block read;
    `patches` (paddr, bytes) replace memory."""
    # whole file extents: copy_file cuts them at the output's PIECE boundaries
    for blk in memory_blocks(mem, start, end, patches, files=True, split_files=False):
        at = offset + blk.paddr - start
        if blk.kind == "zero":
            sink.zeros(at, blk.size)
        elif blk.kind == "file":
            sink.copy_file(at, blk.fileno, blk.file_offset, blk.size)
        else:
            sink.data(at, blk.data)

"""Safe output: no file under the final name after any failure, one clear line, the
documented exit status; sparse holes; stdout streaming."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.constants import PAGE_SIZE as PAGE
from sadump.writers import sink as writing
from sadump.writers.blocks import BLOCK
from sadump.writers.sink import OutputError, Sink, write_output
from tests.fixtures.builder import ImageSpec, MiB, write_elf, write_raw, write_s390

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A 64 MiB image with data spread over it (so that writes happen all along)."""
    spec = ImageSpec(cpus=[])
    path = write_raw(spec, tmp_path_factory.mktemp("img") / "mem.raw")
    with open(path, "r+b") as f:  # a non-zero page in every MiB below the crashkernel
        for mib in range(1, 40):
            f.seek(mib * MiB + 0x800)
            f.write(b"data" * 16)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1, res.stderr
    return lines[0]


def dump(image: Path, out, *args):
    return runner.invoke(app, ["dump", str(image), "-o", str(out), *args])


def test_existing_output_is_not_overwritten(image, tmp_path):
    out = tmp_path / "vmcore"
    out.write_bytes(b"keep me")
    res = dump(image, out)
    assert res.exit_code == Exit.NOT_WRITTEN
    assert out.read_bytes() == b"keep me" and leftovers(tmp_path) == ["vmcore"]
    assert "exists" in error_line(res) and "--force" in error_line(res)
    res = dump(image, out, "--force")
    assert res.exit_code == Exit.OK
    assert out.read_bytes()[:4] == b"\x7fELF" and leftovers(tmp_path) == ["vmcore"]


def test_missing_folder(image, tmp_path):
    res = dump(image, tmp_path / "nope" / "vmcore")
    assert res.exit_code == Exit.NOT_WRITTEN
    assert "does not exist" in error_line(res)
    assert leftovers(tmp_path) == []


def test_no_room(image, tmp_path, monkeypatch):
    class Tiny:
        f_bavail, f_frsize = 16, 4096  # 64 KiB free

    monkeypatch.setattr(writing.os, "statvfs", lambda _: Tiny())
    res = dump(image, tmp_path / "vmcore")
    assert res.exit_code == Exit.NOT_WRITTEN
    assert "not enough room" in error_line(res) and "nothing written" in error_line(res)
    assert leftovers(tmp_path) == []


def _on_writes(monkeypatch, hook) -> list:
    """Call hook(number of writes so far) before each write of the sink: pwrite, and
    copy_file_range (the kernel copy of plain file bytes)."""
    calls = []

    def wrap(real):
        def write(*args):
            calls.append(args)
            hook(len(calls))
            return real(*args)

        return write

    monkeypatch.setattr(writing.os, "pwrite", wrap(os.pwrite))
    monkeypatch.setattr(writing.os, "copy_file_range", wrap(os.copy_file_range))
    return calls


def _failing_pwrite(monkeypatch, after: int, exc: BaseException):
    def fail(n: int) -> None:
        if n > after:
            raise exc

    return _on_writes(monkeypatch, fail)


def test_write_error_in_the_middle(image, tmp_path, monkeypatch):
    calls = _failing_pwrite(monkeypatch, 10, OSError(errno.ENOSPC, "No space left on device"))
    res = dump(image, tmp_path / "vmcore")
    assert len(calls) > 10  # it did fail in the middle
    assert res.exit_code == Exit.NOT_WRITTEN
    line = error_line(res)
    assert "No space left on device" in line and "nothing written under" in line
    assert leftovers(tmp_path) == []


def test_ctrl_c_in_the_middle(image, tmp_path, monkeypatch):
    _failing_pwrite(monkeypatch, 5, KeyboardInterrupt())
    res = dump(image, tmp_path / "vmcore")
    assert res.exit_code == Exit.INTERRUPTED
    assert "interrupted" in error_line(res) and "nothing written" in error_line(res)
    assert leftovers(tmp_path) == []


def test_read_error_in_the_middle(image, tmp_path, monkeypatch):
    real, calls = os.pread, []

    def pread(fd, n, offset):
        calls.append(offset)
        if len(calls) > 8:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, n, offset)

    monkeypatch.setattr(writing.os, "pread", pread)
    res = dump(image, tmp_path / "vmcore")
    assert res.exit_code == Exit.IMAGE_ERROR
    assert "Input/output error" in error_line(res)
    assert leftovers(tmp_path) == []


def test_image_shorter_than_its_header_claims(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    image = write_elf(ImageSpec(damage={"truncated"}), tmp_path / "short.img")
    res = dump(image, folder / "vmcore")
    assert res.exit_code == Exit.IMAGE_ERROR
    assert "nothing written" in error_line(res) or "shorter" in error_line(res)
    assert leftovers(folder) == []


def test_truncated_s390_dump_is_written_as_far_as_it_goes(tmp_path):
    """An s390 dump cut short is an incomplete dump (its end marker is missing): written as
    far as it goes, with the warning that says so (issue 18: never refused for that alone)."""
    folder = tmp_path / "out"
    folder.mkdir()
    image = write_s390(ImageSpec(damage={"truncated"}), tmp_path / "short.img")
    res = dump(image, folder / "vmcore")
    assert res.exit_code in (Exit.OK, Exit.FULL_DUMP), res.stderr
    assert "the input is incomplete" in res.stderr and "truncated" in res.stderr
    assert leftovers(folder) == ["vmcore"]


def test_kdump_file_cut_short(real_file, tmp_path):
    """A kdump file cut short: its page descriptors point past the end of the file."""
    src = real_file("rimg-kdump.makedumpfile-c-d31.kdump")
    cut = tmp_path / "cut.kdump"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(src.stat().st_size * 2 // 3))
    folder = tmp_path / "out"
    folder.mkdir()
    res = dump(cut, folder / "vmcore", "--mode", "full")
    assert res.exit_code == Exit.IMAGE_ERROR, res.stderr
    assert "nothing written" in error_line(res)
    assert leftovers(folder) == []


# ---- the sink itself ------------------------------------------------------------------------
def test_zero_pages_become_holes(tmp_path):
    out = tmp_path / "o"
    block = bytearray(BLOCK)
    block[5 * PAGE + 7] = 1  # one non-zero page in the MiB
    size = 64 * BLOCK

    def write(sink: Sink) -> None:
        sink.data(0, b"head" + bytes(PAGE - 4))
        for i in range(1, 64):
            sink.data(i * BLOCK, bytes(block) if i % 8 == 0 else bytes(BLOCK))

    res = write_output(str(out), size, size, False, write, progress=False)
    assert res.size == size == out.stat().st_size
    assert res.data_bytes == PAGE + 7 * PAGE  # the head page and one page per 8 MiB
    assert out.stat().st_blocks * 512 <= 64 * PAGE
    with open(out, "rb") as f:
        f.seek(8 * BLOCK)
        assert f.read(BLOCK) == bytes(block)


def test_progress_bar_does_not_change_the_output(tmp_path, capsys):
    out = tmp_path / "o"
    write_output(str(out), 2 * BLOCK, 2 * BLOCK, False,
                 lambda s: s.data(BLOCK, b"x" * BLOCK), progress=True)
    assert out.read_bytes() == bytes(BLOCK) + b"x" * BLOCK
    assert capsys.readouterr().out == ""


def test_a_folder_as_output(tmp_path):
    with pytest.raises(OutputError, match="is a folder"):
        write_output(str(tmp_path), 1, 1, True, lambda s: None, progress=False)


# ---- stdout --------------------------------------------------------------------------------
def _run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "sadump", *args], env=env, cwd=ROOT,
                          check=False, **kw)


def test_stdout_stream_through_a_pipe(image, tmp_path):
    assert dump(image, tmp_path / "vmcore").exit_code == Exit.OK
    with open(tmp_path / "streamed", "wb") as sink:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=sink)
        res = _run(["dump", str(image), "-o", "-", "--json"], stdout=cat.stdin,
                   stderr=subprocess.PIPE)
        cat.stdin.close()
        cat.wait()
    assert res.returncode == Exit.OK, res.stderr
    assert (tmp_path / "streamed").read_bytes() == (tmp_path / "vmcore").read_bytes()
    assert b'"bytes_written"' in res.stderr  # the summary goes to stderr with -o -


def test_stdout_reader_goes_away(image):
    head = subprocess.Popen(["head", "-c", "100"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    res = _run(["dump", str(image), "-o", "-"], stdout=head.stdin, stderr=subprocess.PIPE)
    head.stdin.close()
    head.wait()
    assert res.returncode == Exit.NOT_WRITTEN
    err = res.stderr.decode()
    assert "Traceback" not in err
    assert "stdout" in err and "incomplete" in err


def test_sigterm_cleans_up_like_ctrl_c(image, tmp_path, monkeypatch):
    """kill (or timeout) in the middle: the temporary file is removed, status 130."""
    before = signal.getsignal(signal.SIGTERM)

    def kill(n: int) -> None:
        if n == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    _on_writes(monkeypatch, kill)
    res = dump(image, tmp_path / "vmcore")
    assert res.exit_code == Exit.INTERRUPTED
    assert "interrupted" in error_line(res)
    assert leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back

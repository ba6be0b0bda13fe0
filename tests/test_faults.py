"""Faults while a dump is written (issue 9): whatever fails part-way, nothing is left under
the output name (an existing file that --force was to replace survives byte for byte), one
line says what happened, and the status is the documented one.

Faults are injected in-process by wrapping the calls sadump.writing makes (os.pwrite,
os.copy_file_range, os.fsync, os.open) for every output format.
"""

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
from sadump.writers import sink as writing
from tests.fixtures.builder import ImageSpec, MiB, write_raw

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

#: output format -> extra dump arguments
FORMATS = {
    "elf": ["--format", "elf"],
    "s390": ["--format", "s390"],
    "kdump": ["--format", "kdump", "--compress", "zlib", "--jobs", "1"],
    "kdump-flat": ["--format", "kdump", "--compress", "zlib", "--jobs", "1", "--flatten"],
}


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    """A 64 MiB raw image with data in every MiB (writes happen all along the output)."""
    path = write_raw(ImageSpec(cpus=[]), tmp_path_factory.mktemp("img") / "mem.raw")
    with open(path, "r+b") as f:
        for mib in range(1, 48):
            f.seek(mib * MiB + 0x800)
            f.write(os.urandom(64 << 10))  # incompressible: every block is written
    return path


def dump(image: Path, out: Path, fmt: str, *extra: str):
    return runner.invoke(app, ["dump", str(image), "--mode", "full", "-o", str(out),
                               *FORMATS[fmt], *extra])


def one_error(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("sadump: error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def inject(monkeypatch, names: str, after: int, exc: BaseException | None,
           action=None) -> list:
    """Make the writing.os calls named (space-separated; one count for all) raise exc, or
    run action, from their (after+1)th call on."""
    calls = []

    def wrap(real):
        def wrapped(*args, **kw):
            calls.append(1)
            if len(calls) > after:
                if action is not None:
                    action()
                elif exc is not None:
                    raise exc
            return real(*args, **kw)

        return wrapped

    for name in names.split():
        monkeypatch.setattr(writing.os, name, wrap(getattr(os, name)))
    return calls


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


#: the calls that put bytes into the output file
WRITES = "pwrite copy_file_range"
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
EIO = OSError(errno.EIO, os.strerror(errno.EIO))

#: (name, call wrapped, calls before the fault, exception, action, status, words in the line)
FAULTS = [
    ("enospc-write", WRITES, 3, ENOSPC, None, Exit.NOT_WRITTEN, "No space left on device"),
    ("eio-write", WRITES, 3, EIO, None, Exit.NOT_WRITTEN, "Input/output error"),
    ("eio-fsync", "fsync", 0, EIO, None, Exit.NOT_WRITTEN, "cannot finish"),
    ("sigint", WRITES, 3, KeyboardInterrupt(), None, Exit.INTERRUPTED, "interrupted"),
    ("sigterm", WRITES, 3, None, _sigterm, Exit.INTERRUPTED, "interrupted"),
]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("fault", FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "force"])
def test_fault_part_way_leaves_nothing(image, tmp_path, monkeypatch, fmt, fault, existing):
    _, call, after, exc, action, status, words = fault
    out = tmp_path / "out" / "vmcore"
    out.parent.mkdir()
    old = os.urandom(12345)
    if existing:
        out.write_bytes(old)
    before = signal.getsignal(signal.SIGTERM)
    calls = inject(monkeypatch, call, after, exc, action)
    res = dump(image, out, fmt, *(["--force"] if existing else []))
    assert len(calls) > after, "the fault never happened"
    assert res.exit_code == status, res.stderr
    line = one_error(res)
    assert words in line and "nothing written" in line
    assert sorted(p.name for p in out.parent.iterdir()) == (["vmcore"] if existing else [])
    if existing:
        assert out.read_bytes() == old
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("fmt", ["elf", "s390"])
def test_eio_from_the_kernel_copy(image, tmp_path, monkeypatch, fmt):
    """Plain memory bytes go through copy_file_range: an EIO there is a failed write."""
    out = tmp_path / "out" / "vmcore"
    out.parent.mkdir()
    calls = inject(monkeypatch, "copy_file_range", 2, EIO)
    res = dump(image, out, fmt)
    assert len(calls) > 2
    assert res.exit_code == Exit.NOT_WRITTEN
    assert "Input/output error" in one_error(res)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_read_only_folder(image, tmp_path, monkeypatch, fmt):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
    else:  # root writes anywhere: the file system says no instead
        real = os.open

        def ro_open(path, flags, *a):
            if flags & os.O_CREAT and str(path).startswith(str(folder)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            return real(path, flags, *a)

        monkeypatch.setattr(writing.os, "open", ro_open)
    try:
        res = dump(image, folder / "vmcore", fmt)
    finally:
        folder.chmod(0o755)
    assert res.exit_code == Exit.NOT_WRITTEN
    line = one_error(res)
    assert "cannot create a temporary file" in line and "nothing written" in line
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_stdout_closed_by_its_reader(image, fmt):
    """`| head -c 100`: the stream ends, one line says it is incomplete, status 5."""
    args = [a for a in FORMATS[fmt] if a != "--flatten"]
    head = subprocess.Popen(["head", "-c", "100"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-m", "sadump", "dump", str(image), "--mode", "full",
                          "-o", "-", *args], stdout=head.stdin, stderr=subprocess.PIPE,
                         env=env, cwd=ROOT, timeout=120, check=False)
    head.stdin.close()
    head.wait()
    err = res.stderr.decode()
    assert res.returncode == Exit.NOT_WRITTEN, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("sadump: error:")]
    assert len(lines) == 1 and "stdout" in lines[0] and "incomplete" in lines[0]

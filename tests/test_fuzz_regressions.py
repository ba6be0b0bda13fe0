"""Regressions found by the damage campaign (tests/fuzz_campaign.py): one test per class of
failure, each on the smallest input that showed it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sadump(*args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sadump", *args], cwd=ROOT,
                            stdout=stdout, stderr=subprocess.PIPE)


def test_inspect_to_a_closed_pipe_keeps_its_status():
    """`sadump inspect-meminfo IMG | head -c 10`: rich's own broken-pipe handler exited 1
    (undocumented); the command ends quietly with the status it has with a reader."""
    whole = sadump("inspect-meminfo", "--sample")
    out, _ = whole.communicate(timeout=120)
    assert out and whole.returncode in (0, 3)
    cut = sadump("inspect-meminfo", "--sample")
    cut.stdout.close()  # the reader is gone before a byte is written
    errs = cut.stderr.read().decode()
    assert cut.wait(timeout=120) == whole.returncode, errs
    assert "Traceback" not in errs and "error" not in errs


def test_since_boot_seconds_past_nanoseconds(tmp_path):
    """--since-boot-seconds -1e308 is finite but -inf in nanoseconds: it was an internal error
    (OverflowError); a bound that far keeps every record (or none, for +1e308)."""
    from typer.testing import CliRunner

    from sadump.cli import app
    from tests.fixtures.builder import ImageSpec
    from tests.fixtures.printk import PrbLog, write_with_log

    log = PrbLog(count_bits=4, size_bits=9)
    for i in range(20):
        log.add(f"message {i}", ts_nsec=1_000_003 * i)
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    runner = CliRunner()
    every = runner.invoke(app, ["dmesg", str(tmp_path / "mem")])
    assert every.exit_code == 0 and every.stdout.count("\n") == 16  # the ring keeps 16
    low = runner.invoke(app, ["dmesg", str(tmp_path / "mem"), "--since-boot-seconds=-1e308"])
    assert low.exit_code == 0 and low.stdout == every.stdout, low.stderr
    high = runner.invoke(app, ["dmesg", str(tmp_path / "mem"), "--since-boot-seconds", "1e308"])
    assert high.exit_code == 0 and high.stdout == "", high.stderr


def test_a_pipe_is_refused_not_waited_on(tmp_path):
    """`sadump info <(zstdcat dump.zst)`: the probe read the pipe, then the reader opened it
    again and waited for a writer forever. A FIFO, socket or device is one line, exit 4."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (["info", str(fifo)], ["dump", "--mode", "full", "-o", str(tmp_path / "out"),
                                       str(fifo)], ["info", "/dev/zero"]):
        p = sadump(*args)
        try:
            _, errs = p.communicate(timeout=60)
        finally:
            p.kill()
        lines = errs.decode().splitlines()
        assert p.returncode == 4 and len(lines) == 1, lines
        assert "not a file: sadump reads an image in place" in lines[0]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["fifo"]


def test_force_does_not_replace_a_device_or_pipe(tmp_path):
    """`dump -o /dev/full --force` renamed the dump over the device node (a 1 GiB file in
    /dev, as root). An output path that is (or links to) no regular file is refused, force
    or not, and left as it was; a link to a regular file is still replaced."""
    import os
    import stat

    from typer.testing import CliRunner

    from sadump.cli import Exit, app
    from tests.fixtures.builder import ImageSpec, write_raw

    image = write_raw(ImageSpec(cpus=[]), tmp_path / "mem.raw")
    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    runner = CliRunner()
    for target in (fifo, link):
        for force in ([], ["--force"]):
            res = runner.invoke(app, ["dump", str(image), "--mode", "full", "-o", str(target),
                                      *force])
            assert res.exit_code == Exit.NOT_WRITTEN, res.stderr
            assert "is a pipe (FIFO), not a file: not replaced" in res.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
    (tmp_path / "old").write_bytes(b"old")
    link.unlink()
    link.symlink_to(tmp_path / "old")
    res = runner.invoke(app, ["dump", str(image), "--mode", "full", "-o", str(link), "--force"])
    assert res.exit_code == Exit.OK and not link.is_symlink() and link.stat().st_size > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "mem.raw", "old"]


def test_an_empty_output_name_is_a_usage_error(tmp_path, monkeypatch):
    """`-o ""` (an unset shell variable: -o "$OUT") wrote ./vmcore as if -o were not given."""
    from typer.testing import CliRunner

    from sadump.cli import Exit, app
    from tests.fixtures.builder import ImageSpec, write_raw

    image = write_raw(ImageSpec(cpus=[]), tmp_path / "mem.raw")
    monkeypatch.chdir(tmp_path)
    for name in ("", " "):
        res = CliRunner().invoke(app, ["dump", str(image), "--mode", "full", "-o", name])
        assert res.exit_code == Exit.USAGE and "a file name, or - for stdout" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem.raw"]


@pytest.mark.parametrize("layout", [{}, {"kaslr_offset": 0x3FFE0000000,
                                         "identity_base": 0x10000000000}])
def test_a_read_across_the_top_of_the_address_space_ends(layout):
    """A damaged pointer (a task's kthread + an offset) read 8 bytes at 2^64 - 4: runs()
    reached 2^64, where no rule ends, and looped forever (`ps` hung). It is a
    TranslationError now, as is a negative address."""
    import signal

    from sadump.kernel.translate import KernelLayout, KernelMemory, TranslationError
    from tests.fixtures.builder import Memory
    from tests.synthetic_memory import SyntheticMemory

    kmem = KernelMemory(SyntheticMemory(Memory(), 1 << 20), KernelLayout(**layout))

    def hung(*_):
        raise TimeoutError("the read did not end")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        for vaddr, size in ((2**64 - 4, 8), (2**64 - 1, 2), (-8, 8), (2**64, 8)):
            with pytest.raises(TranslationError, match="past the 64-bit address space"):
                kmem.read(vaddr, size)
            assert not kmem.is_readable(vaddr, size)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_vmcoreinfo_address_below_zero_or_past_64_bits_is_no_address():
    """SYMBOL(lowcore_ptr)=-fffff48210 was read as a negative address ("memory
    [-0xfffff48210, ...) is not present"); %lx never prints one: it is unreadable, like zz."""
    from sadump.kernel.vmcoreinfo import VmcoreInfo

    info = VmcoreInfo("SYMBOL(a)=-fffff48210\nSYMBOL(b)=10000000000000000\n"
                      "SYMBOL(c)=ffffffffffffffff\nKERNELOFFSET=-1\nSYMBOL(d)=zz\n"
                      "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n")
    assert info.symbol("a") is None and info.symbol("b") is None and info.symbol("d") is None
    assert info.symbol("c") == (1 << 64) - 1 and info.hex("KERNELOFFSET") is None
    assert info.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129  # %ld: negative is fine


@pytest.mark.parametrize("cpus", [512, 0xFFFF])
def test_vmdump_cpu_count_is_bounded(real_file, tmp_path, cpus):
    """The FIR's online_cpus (a 16-bit count of the other CPUs' records) at 0xffff made
    65535 CPUs' register notes: `info` grew to 441 MiB, `dump -d 31` to 562 MiB. A count
    past what a machine can have (512 CPUs) is one line, exit 4."""
    import shutil
    import struct

    from typer.testing import CliRunner

    from sadump.cli import Exit, app

    path = tmp_path / "vmdump"
    shutil.copyfile(real_file("sa/rimg-kdump.vmdump"), path)
    with open(path, "r+b") as f:
        f.seek(4096 + 8)  # FMBK: the FIR's record number
        (fir_rec,) = struct.unpack(">I", f.read(4))
        f.seek((fir_rec - 1) * 4096 + 0x390)
        f.write(struct.pack(">H", cpus))
    res = CliRunner().invoke(app, ["info", str(path)])
    assert res.exit_code == Exit.IMAGE_ERROR, res.stderr
    assert f"the FIR lists {cpus} more CPUs: a machine has at most 512" in res.stderr

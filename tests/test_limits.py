"""Issue 9: work and memory bounded by what the file holds, on inputs aimed at the limits.

Each case runs the real CLI in a subprocess under RLIMIT_AS 1 GiB and asserts the status and
the one-line message; the subprocess timeout catches a hang. How long each case takes is a
benchmark's figure (benchmarks/limits.py), not a test's.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sadump.cli import Exit
from sadump.constants import MAX_PHYS_ADDR
from sadump.errors import ImageChanged, ImageError
from sadump.formats.elf import ElfCore
from sadump.formats.kdump import FlattenedKdumpFile, KdumpFile
from sadump.formats.raw import RawImage
from sadump.formats.s390 import S390Dump
from tests.fixtures import hostile
from tests.fixtures.builder import elf_note

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
BS = 4096
HANG = 60  # seconds: a subprocess still running then has hung (each case takes < 1 s alone)


def cli(*args, limit: int = 1 << 30, stdout=subprocess.PIPE, timeout: float = HANG):
    """Run sadump; a hang raises TimeoutExpired."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "sadump", *map(str, args)], env=env, cwd=ROOT,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout,
                          preexec_fn=cap, check=False)


def error_line(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("sadump: error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


# ---- 1: kdump bitmaps ---------------------------------------------------------------------

def test_alternating_bitmap_in_an_incomplete_file(tmp_path):
    """8 MiB, 2 + 2 MiB bitmaps, the 2nd 0x55..: memory ends at the last descriptor the
    file holds, one range per dumped page up to there."""
    path = hostile.alternating_kdump(tmp_path / "alt.kdump")
    desc_off = (1 + 1 + 2 * 2 * MiB // BS) * BS
    room = (8 * MiB - desc_off) // 24  # descriptors in the file
    with KdumpFile(str(path)) as m:
        ranges = m.ranges()
        assert len(ranges) == room
        assert ranges[0] == (0, BS) and ranges[-1] == (2 * (room - 1) * BS, (2 * room - 1) * BS)
        assert ranges[:2] == [(0, BS), (2 * BS, 3 * BS)]
        assert m.size == room * BS
        assert m.is_present(2 * BS) and not m.is_present(BS)
        assert not m.is_present(2 * room * BS)
        assert m.incomplete and any("descriptors of the" in w for w in m.warnings)
    r = cli("inspect-meminfo", path)
    assert r.returncode == Exit.FULL_DUMP, r.stderr
    assert "page not written (incomplete dump)" in r.stderr


def test_too_fragmented_bitmap_is_refused(tmp_path):
    path = hostile.alternating_kdump(tmp_path / "alt.kdump", size=64 * MiB,
                                     bitmap_bytes=16 * MiB)
    r = cli("inspect-meminfo", path)
    assert r.returncode == Exit.IMAGE_ERROR
    assert "more than 262144 runs of dumped pages" in error_line(r)


def test_complete_file_whose_descriptors_do_not_fit(tmp_path):
    path = hostile.alternating_kdump(tmp_path / "alt.kdump", incomplete=False)
    r = cli("info", path)
    assert r.returncode == Exit.IMAGE_ERROR
    assert "page descriptors end at" in error_line(r) and "past the end of the file" in \
        error_line(r)


def test_max_mapnr_past_what_s390x_can_address(tmp_path):
    """64 KiB blocks, 2^30 + 8 pfns: memory would reach past 2^46 (sparse file)."""
    bs, bits = 65536, (1 << 30) + 8
    blocks = 2 * -(-bits // (bs * 8))
    path = tmp_path / "big.kdump"
    with open(path, "wb") as f:
        f.write(hostile.kdump_header(bs, blocks, bits, 0))
        f.truncate((2 + blocks) * bs + BS)
    with pytest.raises(ImageError, match="past what s390x can address"):
        KdumpFile(str(path))


# ---- 2: printk ring ---------------------------------------------------------------------

@pytest.mark.parametrize("command", ["dmesg", "info"])
def test_printk_ring_of_2_31_descriptors(tmp_path, command):
    path = hostile.huge_printk_ring(tmp_path / "ring.raw")
    r = cli(command, path)
    assert r.returncode == Exit.OK, r.stderr
    assert "descriptor ids in a row" in r.stderr and "is not read" in r.stderr


# ---- 3: addresses past MAX_PHYSMEM_BITS --------------------------------------------------

@pytest.mark.parametrize("paddr", [1 << 46, 1 << 50, 1 << 63, (1 << 64) - 4096])
def test_elf_load_past_max_physmem(tmp_path, paddr):
    path = hostile.elf_load_at(tmp_path / "far.elf", paddr)
    r = cli("dump", "--format", "s390", "-o", "-", path)
    assert r.returncode == Exit.IMAGE_ERROR
    assert "past what s390x can address" in error_line(r)
    assert r.stdout == ""


def test_elf_load_just_below_the_limit_is_memory(tmp_path):
    path = hostile.elf_load_at(tmp_path / "top.elf", MAX_PHYS_ADDR - 4096)
    with ElfCore(str(path)) as m:
        assert m.ranges() == [(MAX_PHYS_ADDR - 4096, MAX_PHYS_ADDR)]
        assert m.read(MAX_PHYS_ADDR - 4096, 4) == b"\x5a" * 4


def _elf_with_vmcoreinfo(path, paddr: int, bits: int):
    """An ELF core with a VMCOREINFO note saying NUMBER(MAX_PHYSMEM_BITS)=bits."""
    note = elf_note("VMCOREINFO", 0, f"NUMBER(MAX_PHYSMEM_BITS)={bits}\n".encode())
    import struct

    ident = b"\x7fELF" + bytes([2, 2, 1]) + bytes(9)
    ehdr = ident + struct.pack(">HHIQQQIHHHHHH", 4, 22, 1, 0, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    note_off = 64 + 2 * 56
    phdrs = struct.pack(">IIQQQQQQ", 4, 0, note_off, 0, 0, len(note), 0, 4)
    phdrs += struct.pack(">IIQQQQQQ", 1, 7, 4096, paddr, paddr, 4096, 4096, 4096)
    with open(path, "wb") as f:
        f.write(ehdr + phdrs + note)
        f.seek(4096)
        f.write(b"\x5a" * 4096)
    return path


def test_vmcoreinfo_max_physmem_bits_sets_the_limit(tmp_path):
    with ElfCore(str(_elf_with_vmcoreinfo(tmp_path / "a.elf", 1 << 50, 52))) as m:
        assert m.ranges() == [(1 << 50, (1 << 50) + 4096)]
    with pytest.raises(ImageError, match=r"past what s390x can address \(0x40000000000\)"):
        ElfCore(str(_elf_with_vmcoreinfo(tmp_path / "b.elf", 1 << 45, 42)))
    with pytest.raises(ImageError, match="past what s390x can address"):  # 64: ignored
        ElfCore(str(_elf_with_vmcoreinfo(tmp_path / "c.elf", 1 << 50, 64)))


def test_sparse_raw_file_past_the_limit(tmp_path):
    """A raw file longer than 2^46 bytes (sparse: ext4 stops at 16 TiB, tmpfs does not)."""
    for folder in (tmp_path, Path("/dev/shm")):
        path = folder / f"huge-{os.getpid()}.raw"
        try:
            with open(path, "wb") as f:
                f.truncate(MAX_PHYS_ADDR + 4096)
            break
        except OSError:
            path.unlink(missing_ok=True)
    else:
        pytest.skip("no file system here holds a 64 TiB sparse file (not ext4, not /dev/shm)")
    try:
        with pytest.raises(ImageError, match="past what s390x can address"):
            RawImage(str(path))
    finally:
        path.unlink(missing_ok=True)


# ---- 4: a file that shrinks while it is read ----------------------------------------------

TRUNCATE_ON_CALL = """
import os, sys
from sadump.formats.raw import RawImage
from sadump.writers import sink as writing
where, n, image = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cls, name = (RawImage, "_read") if where == "read" else (writing.Sink, "copy_file")
orig, calls = getattr(cls, name), [0]
def wrapped(*a, **k):
    calls[0] += 1
    if calls[0] == n:
        os.truncate(image, os.path.getsize(image) // 2)
    return orig(*a, **k)
setattr(cls, name, wrapped)
sys.argv = ["sadump", *sys.argv[4:]]
from sadump.cli import main
main()
"""


@pytest.mark.parametrize("where,n", [("read", 3), ("read", 20), ("copy", 1)])
def test_image_shrinks_while_dump_runs(tmp_path, where, n):
    """Truncated during the analysis (3rd read), during the plan, or during the copy: one
    line, exit 4, nothing under the output name (no SIGBUS: no memory mapping)."""
    image = hostile.sample_raw(tmp_path / "mem.raw")
    out = tmp_path / "out" / "vmcore"
    out.parent.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", TRUNCATE_ON_CALL, where, str(n), str(image),
                        "dump", "--mode", "full", "-o", str(out), str(image)],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=HANG,
                       check=False)
    assert r.returncode == Exit.IMAGE_ERROR, r.stderr
    assert "the image changed or could not be read while it was read" in error_line(r)
    assert list(out.parent.iterdir()) == []


# ---- 5: Ctrl-C while a command is busy ----------------------------------------------------

BLOCK_IN_READ = """
import os, sys, time
from sadump.formats.raw import RawImage
marker = sys.argv[1]
def blocked(*a, **k):  # a read that never returns, as from a stalled device or mount
    open(marker, "w").close()
    time.sleep(3600)
RawImage._read = blocked
sys.argv = ["sadump", *sys.argv[2:]]
from sadump.cli import main
main()
"""


@pytest.mark.parametrize("command", ["inspect-meminfo", "dmesg", "info"])
def test_ctrl_c_prints_interrupted(tmp_path, command):
    """The command blocks in a read of the image that never returns; SIGINT then. (A FIFO
    did this before; sadump now refuses one by name instead of waiting on it.)"""
    image = hostile.sample_raw(tmp_path / "mem.raw")
    marker = tmp_path / "blocked"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", BLOCK_IN_READ, str(marker), command,
                          str(image)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.05)
        time.sleep(0.2)  # now asleep in the read
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == Exit.INTERRUPTED, err
    assert err.strip().splitlines()[-1] == "sadump: interrupted"


def test_too_many_elf_segments(tmp_path):
    """2^18 + 1 one-page PT_LOADs with gaps between them (a 14 MiB header, no data): too
    fragmented, refused in one line before any per-range work."""
    import struct

    n = (1 << 18) + 1
    ident = b"\x7fELF" + bytes([2, 2, 1]) + bytes(9)
    ehdr = ident + struct.pack(">HHIQQQIHHHHHH", 4, 22, 1, 0, 64, 0, 0, 64, 56, 0xFFFF, 64,
                               1, 0)
    shoff = 64 + n * 56
    path = tmp_path / "many.elf"
    with open(path, "wb") as f:
        f.write(ehdr[:40] + struct.pack(">Q", shoff) + ehdr[48:])
        load = struct.Struct(">IIQQQQQQ")
        f.write(b"".join(load.pack(1, 7, 0, 2 * i * BS, 2 * i * BS, 0, BS, BS)
                         for i in range(n)))
        f.write(struct.pack(">IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, n, 0, 0))  # section 0: sh_info
    r = cli("inspect-meminfo", path)
    assert r.returncode == Exit.IMAGE_ERROR
    assert "separate ranges of memory, more than sadump reads (262144)" in error_line(r)


def _shrink_then_read(m, path, paddr: int, size: int) -> str:
    os.truncate(path, 4096)
    with pytest.raises(ImageChanged) as e:
        m.read(paddr, size)
    return str(e.value)


@pytest.mark.parametrize("fmt", ["raw", "elf", "s390"])
def test_every_reader_notices_a_shrunk_file(tmp_path, fmt):
    from tests.fixtures.builder import ImageSpec, write_elf, write_raw, write_s390

    spec = ImageSpec(mem_size=4 * MiB, crashkernel=None, cpus=[])
    path = {"raw": write_raw, "elf": write_elf, "s390": write_s390}[fmt](spec, tmp_path / fmt)
    with {"raw": RawImage, "elf": ElfCore, "s390": S390Dump}[fmt](str(path)) as m:
        msg = _shrink_then_read(m, path, 2 * MiB, 8)
    assert msg.startswith("the image changed or could not be read while it was read")


@pytest.mark.parametrize("cls", [KdumpFile, FlattenedKdumpFile])
def test_kdump_readers_notice_a_shrunk_file(tmp_path, cls):
    from tests.test_format_kdump import flatten, sample

    blob, _ = sample()
    path = tmp_path / "k"
    path.write_bytes(blob if cls is KdumpFile else flatten(blob))
    with cls(str(path)) as m:
        msg = _shrink_then_read(m, path, 8 * BS, BS)
    assert msg.startswith("the image changed or could not be read while it was read")


def test_a_zero_tail_claimed_by_a_header_is_not_streamed(tmp_path):
    """One PT_LOAD of 4 KiB in the file whose p_memsz claims 32 TiB of zeros: no 32 TiB
    stream, exit 4 with the reason (a 32 TiB stream would run into the timeout)."""
    import struct

    path = tmp_path / "tail.elf"
    ehdr = struct.pack(">4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 2, 1, 0, 0, b"", 4, 22, 1,
                       0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack(">IIQQQQQQ", 1, 7, 4096, 0, 0, 4096, 1 << 45, 4096)
    path.write_bytes(ehdr + phdr + bytes(4096 - 120) + b"\x5a" * 4096)
    r = subprocess.run([sys.executable, "-m", "sadump", "dump", str(path), "--mode", "full",
                        "--format", "s390", "-o", "-"], check=False, capture_output=True,
                       timeout=HANG)
    assert r.returncode == Exit.IMAGE_ERROR and b"claim" in r.stderr and len(r.stdout) == 0

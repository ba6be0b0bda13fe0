"""The field's own tool as the oracle (spec sa-dump-formats.md section 9): zgetdump (Debian's
s390-tools for s390x, under qemu-user) converts dumps built by the fixture generators to ELF,
and sadump's reading of the same dump must give that ELF's memory and CPU registers.

Optional: runs when the sysroot of tests/oracle/zgetdump-sysroot.sh exists (or
$SADUMP_ZGETDUMP_SYSROOT names one) and qemu-s390x-static is installed, and skips otherwise.
CI does not build the sysroot (it needs network access to Debian and root), so under CI these
tests skip, they do not fail. s390_ext is read by zgetdump only from a block device: those
cases attach the dump to a read-only loop device (`losetup -r -b BLOCK`, root) and detach it
after; without root or loop devices they skip."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sadump.formats import open_image
from tests.fixtures import sa_dumps as sa
from tests.fixtures import vmdump as vm
from tests.fixtures.builder import Cpu
from tests.fixtures.sa_dumps import MIB

ROOT = Path(__file__).resolve().parents[1]
SYSROOT = Path(os.environ.get("SADUMP_ZGETDUMP_SYSROOT", ROOT / "tests" / "oracle" / "sysroot"))
ZGETDUMP = SYSROOT / "usr" / "sbin" / "zgetdump"
QEMU = shutil.which("qemu-s390x-static")

pytestmark = pytest.mark.skipif(
    not (ZGETDUMP.is_file() and QEMU),
    reason=f"zgetdump oracle absent: no {ZGETDUMP} or no qemu-s390x-static "
           "(build it with tests/oracle/zgetdump-sysroot.sh; CI does not)")


def zgetdump(*args, stdout=None) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU, "-L", str(SYSROOT), str(ZGETDUMP), *map(str, args)],
                          stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=600, check=False)


def convert(source, out: Path) -> str:
    """zgetdump SOURCE > out (ELF); returns its `-i` report (which it prints on stderr)."""
    info = zgetdump("-i", source)
    assert info.returncode == 0, info.stderr.decode()
    with open(out, "wb") as f:
        res = zgetdump(source, stdout=f)
    assert res.returncode == 0, res.stderr.decode()
    return (info.stdout + info.stderr).decode()


@contextlib.contextmanager
def loop_device(path, block: int):
    """A read-only loop device of `block`-byte sectors over path (zgetdump's BLKSSZGET)."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("s390_ext needs a loop device: not root or no losetup")
    res = subprocess.run(["losetup", "-r", "-b", str(block), "-f", "--show", str(path)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.skip(f"losetup failed: {res.stderr.strip()}")
    dev = res.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def register_notes(notes) -> list[dict[int, bytes]]:
    """Per CPU, in order, {note type: desc} of its register notes (PRSTATUS starts a CPU).
    By type, not in order: zgetdump writes VXRS_LOW before VXRS_HIGH, the kernel (and sadump,
    which follows it: see rimg-kdump.proc-vmcore.elf) HIGH before LOW."""
    cpus: list[dict[int, bytes]] = []
    for n in notes:
        if n.type == NT_PRSTATUS:
            cpus.append({})
        if n.type in REGISTER_NOTES and cpus:
            assert n.type not in cpus[-1], f"note {n.type:#x} twice for one CPU"
            cpus[-1][n.type] = bytes(n.desc)
    return cpus


NT_PRSTATUS, NT_FPREGSET, NT_S390_TODPREG = 1, 2, 0x303
REGISTER_NOTES = {NT_PRSTATUS, NT_FPREGSET, *range(0x301, 0x30B)}


def same_memory(ours, theirs, size: int) -> None:
    for a in range(0, size, MIB):
        assert ours.read(a, MIB) == theirs.read(a, MIB), hex(a)


def cli(*args):
    from typer.testing import CliRunner

    from sadump.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def sadump_notes(dump, tmp_path: Path) -> list[dict[int, bytes]]:
    """The register notes of sadump's full ELF dump of `dump` (sadump's whole path: the
    format reader, the CPUs from the dumper's save areas, the ELF writer)."""
    out = tmp_path / f"sadump-{len(list(tmp_path.glob('sadump-*.elf')))}.elf"
    res = cli("dump", *(dump if isinstance(dump, list) else [dump]), "--mode", "full", "-o", out)
    assert res.exit_code == 0, res.stderr
    with open_image(str(out)) as mem:
        return register_notes(mem.notes)


# ---- s390_ext ---------------------------------------------------------------------------------
SIZE = 32 * MIB
PREFIXES = (0x20000, 0x22000)


def machine(vx_low_bits: int = 0) -> tuple[dict[int, bytes], list[Cpu]]:
    """MEM of the format tests with two CPUs' status stored as the dumper stores it; lowcore
    0x11b0 of each names a vector save area (its low bits as vx_low_bits, as Linux sets them
    on machines with guarded storage: the dumper then stores no vector registers)."""
    from tests.test_format_s390_ext import MEM

    mem = {a: bytearray(b) for a, b in MEM.items()}
    cpus = [Cpu.distinct(n) for n in range(2)]
    for n, c in enumerate(cpus):
        vx_at = 0x30000 + 0x400 * n
        mem[0][c.prefix + 0x11B0:c.prefix + 0x11B8] = (vx_at | vx_low_bits).to_bytes(8, "big")
        if vx_low_bits:
            c.vx = None  # not stored: the area keeps what was there
        sa.store_status(mem, c)
    return {a: bytes(b) for a, b in mem.items()}, cpus


@pytest.mark.parametrize("block, compress, zlib_flag, raw_entries", [
    (4096, False, 0, ()), (4096, True, 1, ()), (512, True, 1, ()),
    (4096, True, 1, ((1, 0), (3, 0))), (512, False, 1, ()),
], ids=["raw", "zlib", "zlib-512", "zlib-raw-entries", "fba-flag-without-compression"])
def test_s390_ext(tmp_path, block, compress, zlib_flag, raw_entries):
    mem, _ = machine()
    path = Path(sa.write_ext(tmp_path / "d.s390", mem, SIZE, block=block, compress=compress,
                             zlib_flag=zlib_flag, raw_entries=raw_entries,
                             hdr={"prefixes": PREFIXES}))
    with loop_device(path, block) as dev:
        info = convert(dev, tmp_path / "z.elf")
    assert "Dump format........: s390_ext" in info and "CPU count (online).: 2" in info
    with open_image(str(path)) as ours, open_image(str(tmp_path / "z.elf")) as theirs:
        same_memory(ours, theirs, SIZE)
        zg = register_notes(theirs.notes)
    # PRSTATUS FPREGSET TIMER TODCMP TODPREG CTRS PREFIX VXRS_LOW VXRS_HIGH
    assert [len(c) for c in zg] == [9, 9]
    assert sadump_notes(path, tmp_path) == zg


def test_s390_ext_large_machine_mostly_zero(tmp_path):
    """2 TiB dumped of a 4 TiB machine (zipl's size limit), 3 MiB not zero: zgetdump maps all
    2 TiB, the skipped memory as zero chunks; so does sadump, the same bytes, the same holes."""
    data = {0: bytes(range(256)) * 8192, 512 * MIB: b"\x5a" * MIB}
    path = Path(sa.write_ext(tmp_path / "big.s390", data, 2 << 40,
                             hdr={"mem_size_real": 4 << 40}))
    with loop_device(path, 4096) as dev:
        info = convert(dev, tmp_path / "z.elf")
    assert "Dump memory range..: 2097152 MB" in info and "Real memory range..: 4194304 MB" in info
    assert (tmp_path / "z.elf").stat().st_size < 8 * MIB
    with open_image(str(path)) as ours, open_image(str(tmp_path / "z.elf")) as theirs:
        assert ours.ranges() == theirs.ranges() == [(0, 2 << 40)]
        assert ours.dumper.mem_size_real == 4 << 40

        def data_at(m):  # runs of non-hole extents, adjacent ones joined
            runs: list[list[int]] = []
            for e in m.extents(0, 2 << 40):
                if e.kind == "zero":
                    continue
                if runs and runs[-1][0] + runs[-1][1] == e.paddr:
                    runs[-1][1] += e.size
                else:
                    runs.append([e.paddr, e.size])
            return [tuple(r) for r in runs]
        assert data_at(ours) == data_at(theirs) == [(0, 2 * MIB), (512 * MIB, MIB)]
        for a in (0, MIB, 512 * MIB, 1 << 40, (2 << 40) - MIB):
            assert ours.read(a, MIB) == theirs.read(a, MIB), hex(a)


def test_s390_ext_vector_pointer_with_length_bits(tmp_path):
    """Lowcore 0x11b0 = area | 11 (Linux on a machine with guarded storage): the dumper stores
    no vector registers and zgetdump writes no VXRS notes; neither does sadump (it did, from
    the stale area, before it followed the dumper's rule)."""
    mem, _ = machine(vx_low_bits=11)
    mem[0] = mem[0][:0x30000] + b"\x5a" * 0x800 + mem[0][0x30800:]  # stale bytes there
    path = Path(sa.write_ext(tmp_path / "d.s390", mem, SIZE, hdr={"prefixes": PREFIXES}))
    with loop_device(path, 4096) as dev:
        convert(dev, tmp_path / "z.elf")
    with open_image(str(tmp_path / "z.elf")) as theirs:
        zg = register_notes(theirs.notes)
    assert [sorted(c) for c in zg] == [sorted(REGISTER_NOTES - {0x306, 0x307, 0x308, 0x309,
                                                                0x30A})] * 2
    assert sadump_notes(path, tmp_path) == zg


def test_s390_ext_without_stop_marker(tmp_path):
    """A dump cut short (no stop marker): zgetdump maps the memory up to the last segment and
    refuses to go on ("is not complete"); sadump maps the same memory and reads it, saying the
    dump is incomplete (a deliberate difference: what survived is the evidence)."""
    mem, _ = machine()
    path = Path(sa.write_ext(tmp_path / "d.s390", mem, SIZE, stop=False, end=False,
                             hdr={"prefixes": PREFIXES}))
    with loop_device(path, 4096) as dev:
        res = zgetdump("-i", dev)
    err = res.stderr.decode()
    assert res.returncode != 0 and "Dump cannot be processed (is not complete)" in err, err
    assert "0000000000000000 - 00000000014fffff (21 MB)" in err
    with open_image(str(path)) as ours:
        assert "no stop marker" in ours.incomplete
        assert ours.ranges() == [(0, 21 * MIB)]
        assert ours.read(20 * MIB, MIB) == mem[20 * MIB]


# ---- VMDUMP -------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", [vm.KEYS_REAL, (0x07, 0x06)], ids=["keys-real", "keys-0x07"])
def test_vmdump(tmp_path, keys):
    """Three CPUs, two storage ranges with a hole, a key page storing nothing; zgetdump reads
    VMDUMP from a file. zgetdump maps [0, highest range end) as one chunk, the hole as zeros
    (get_total_pages_count); sadump leaves the hole out, as the ASIZBK says the guest had no
    storage there: equal memory in the ranges, zeros from zgetdump in the hole."""
    from tests.test_format_vmdump import CPUS, RANGES, STORED, page

    path = tmp_path / "d.vmdump"
    path.write_bytes(vm.vmdump_bytes({n: page(n) for n in STORED}, RANGES, CPUS,
                                     empty_keys=(4,), keys=keys))
    info = convert(path, tmp_path / "z.elf")
    assert "Dump format........: vmdump" in info and "CPU count (online).: 3" in info
    top = max(e for _, e in RANGES)
    with open_image(str(path)) as ours, open_image(str(tmp_path / "z.elf")) as theirs:
        assert ours.ranges() == RANGES and theirs.ranges() == [(0, top)]
        for start, end in RANGES:
            for a in range(start, end, MIB):
                assert ours.read(a, MIB) == theirs.read(a, MIB), hex(a)
        for a in range(RANGES[0][1], RANGES[1][0], MIB):
            assert theirs.read(a, MIB) == bytes(MIB)
        zg = register_notes(theirs.notes)
        mine = register_notes(ours.notes)
    assert len(zg) == len(CPUS) == 3
    # zgetdump 2.40 copies no TOD programmable register from the FIR records (dfi_vmdump.c
    # leaves cpu->todpreg 0); sadump reads it (FIR 0x1dc, fir_other 0x134, df_vmdump.h)
    for z, m, cpu in zip(zg, mine, CPUS):
        assert z.pop(NT_S390_TODPREG) == bytes(4)
        assert m.pop(NT_S390_TODPREG) == cpu.todpreg.to_bytes(4, "big") != bytes(4)
    assert mine == zg


# ---- s390mv_ext ---------------------------------------------------------------------------------
@contextlib.contextmanager
def loop_devices(paths, block: int):
    """Read-only loop devices over the whole volumes; the first on a minor that is a multiple
    of 4 (zgetdump opens the whole disk of a DASD: minor - minor % 4)."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("multi-volume needs loop devices: not root or no losetup")
    devs: list[str] = []
    try:
        for i, p in enumerate(paths):
            tries = [f"/dev/loop{n}" for n in range(0, 32, 4)] if i == 0 else ["-f"]
            for t in tries:
                res = subprocess.run(["losetup", "-r", "-b", str(block), "--show", t, str(p)],
                                     capture_output=True, text=True, check=False)
                if res.returncode == 0:
                    devs.append(res.stdout.strip())
                    break
            else:
                pytest.skip(f"no free loop device for volume {i}: {res.stderr.strip()}")
        yield devs
    finally:
        for d in devs:
            subprocess.run(["losetup", "-d", d], check=False)


def convert_mv(paths, tmp_path: Path) -> str:
    """zgetdump's conversion of whole volumes (dasd head + partition) to tmp_path/z.elf: on
    loop devices, found through a sysfs tree (SYSFS_ROOT) naming each devno's device."""
    sysfs = tmp_path / "sysfs"
    with loop_devices(paths, 4096) as devs:
        for i, dev in enumerate(devs):
            st = os.stat(dev)
            d = sysfs / "bus" / "ccw" / "devices" / f"0.0.{0x5100 + i:04x}"
            (d / "block" / f"dasd{i}").mkdir(parents=True)
            (d / "online").write_text("1\n")
            (d / "block" / f"dasd{i}" / "dev").write_text(
                f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}\n")
        os.environ["SYSFS_ROOT"] = str(sysfs)
        try:
            return convert(devs[0], tmp_path / "z.elf")
        finally:
            del os.environ["SYSFS_ROOT"]


def test_s390mv_ext(tmp_path):
    """Four whole volumes, the last one unused."""
    sizes = [5 * MIB, 5 * MIB, 5 * MIB, 5 * MIB]
    mem, _ = machine()
    head = sa.dasd_head(sizes)
    paths = []
    for i, v in enumerate(sa.mv_volumes(mem, SIZE, sizes, prefixes=PREFIXES)):
        paths.append(tmp_path / f"vol{i}")
        paths[-1].write_bytes(head + v)
    info = convert_mv(paths, tmp_path)
    assert "Dump format........: s390mv_ext" in info, info
    with open_image([str(p) for p in paths]) as ours, \
            open_image(str(tmp_path / "z.elf")) as theirs:
        same_memory(ours, theirs, SIZE)
        zg = register_notes(theirs.notes)
    assert [len(c) for c in zg] == [9, 9]
    assert sadump_notes([str(p) for p in paths], tmp_path) == zg


# ---- sadump's outputs read by zgetdump, zgetdump's s390 read by sadump ----------------------------
@pytest.fixture
def ext_dump(tmp_path) -> Path:
    mem, _ = machine()
    return Path(sa.write_ext(tmp_path / "d.s390", mem, SIZE, hdr={"prefixes": PREFIXES}))


@pytest.mark.parametrize("fmt", ["elf", "s390"])
def test_sadump_output_read_by_zgetdump(tmp_path, ext_dump, fmt):
    """sadump's full dump of a generated s390_ext, as ELF and as s390, is read by zgetdump
    as the same memory and register notes as sadump reads from the s390_ext itself."""
    out = tmp_path / f"out.{fmt}"
    res = cli("dump", ext_dump, "--mode", "full", "--format", fmt, "-o", out)
    assert res.exit_code == 0, res.stderr
    info = convert(out, tmp_path / "z.elf")
    assert f"Dump format........: {fmt}" in info, info
    with open_image(str(ext_dump)) as ours, open_image(str(tmp_path / "z.elf")) as theirs:
        same_memory(ours, theirs, SIZE)
        zg = register_notes(theirs.notes)
    assert [len(c) for c in zg] == [9, 9]
    assert sadump_notes(ext_dump, tmp_path) == zg


def test_sadump_kdump_identified_by_zgetdump(tmp_path, ext_dump):
    """zgetdump converts no kdump ("Copying not possible for kdump dumps"): `-i` only."""
    out = tmp_path / "out.kdump"
    assert cli("dump", ext_dump, "--mode", "full", "--format", "kdump", "-o", out).exit_code == 0
    info = zgetdump("-i", out)
    text = (info.stdout + info.stderr).decode()
    assert info.returncode == 0, text
    assert "Dump format........: kdump" in text and "CPU count (real)...: 2" in text
    assert "Dump memory range..: 32 MB" in text


def test_zgetdump_s390_read_by_sadump(tmp_path, ext_dump):
    """`zgetdump -f s390` of the s390_ext, read by sadump, is the s390_ext's memory and CPUs;
    sadump's own s390 of it keeps the dump's moment and dumping CPU as zgetdump's does."""
    import struct

    with loop_device(ext_dump, 4096) as dev, open(tmp_path / "zg.s390", "wb") as f:
        res = zgetdump("-f", "s390", dev, stdout=f)
    assert res.returncode == 0, res.stderr.decode()
    with open_image(str(ext_dump)) as ours, open_image(str(tmp_path / "zg.s390")) as theirs:
        assert theirs.format == "s390"
        same_memory(ours, theirs, SIZE)
    zs = tmp_path / "zg.s390"
    assert sadump_notes(str(zs), tmp_path) == sadump_notes(ext_dump, tmp_path)
    out = tmp_path / "sadump.s390"
    assert cli("dump", ext_dump, "--mode", "full", "--format", "s390", "-o", out).exit_code == 0
    mine, theirs = out.read_bytes(), zs.read_bytes()
    for off, name in ((0x38, "tod"), (0x40, "cpu_id")):
        assert struct.unpack_from(">Q", mine, off) == struct.unpack_from(">Q", theirs, off), name
    assert mine[-16:] == theirs[-16:] == sa.end_marker()  # the source's end TOD
    # left different on purpose: mem_end (zgetdump mem_size - 1, sadump mem_size as the zipl
    # dumpers write it) and build_arch (zgetdump 0, sadump 2)
    assert len(mine) == len(theirs)


# ---- the real files of ../shared/real/sa ----------------------------------------------------------
GIB = 1 << 30


@pytest.mark.parametrize("kind", ["ext-zlib", "mv"])
def test_real_stand_alone_dumps(real_file, tmp_path, kind):
    """The real s390_ext (loop device, 4 KiB blocks) and two-volume set (whole volumes): the
    memory and register notes of zgetdump's ELF are sadump's, over all 1 GiB."""
    if kind == "ext-zlib":
        ours_in = [str(real_file("sa/rimg-kdump.ext-zlib.s390"))]
        with loop_device(ours_in[0], 4096) as dev:
            info = convert(dev, tmp_path / "z.elf")
    else:
        head = real_file("sa/rimg-kdump.mv.dasd-head").read_bytes()
        ours_in = []
        for n in range(2):
            w = tmp_path / f"vol{n}.dasd"
            w.write_bytes(head + real_file(f"sa/rimg-kdump.mv.vol{n}").read_bytes())
            ours_in.append(str(w))
        info = convert_mv(ours_in, tmp_path)
    assert "CPU count (online).: 2" in info and "Dump created.......: Thu, 26 Nov 2026" in info
    with open_image(ours_in) as ours, open_image(str(tmp_path / "z.elf")) as theirs:
        same_memory(ours, theirs, GIB)
        zg = register_notes(theirs.notes)
    assert [len(c) for c in zg] == [9, 9]
    assert sadump_notes(ours_in, tmp_path) == zg


def test_real_vmdump(real_file, tmp_path):
    path = real_file("sa/rimg-kdump.vmdump")
    info = convert(path, tmp_path / "z.elf")
    assert "Dump format........: vmdump" in info and "CPU count (online).: 2" in info
    with open_image(str(path)) as ours, open_image(str(tmp_path / "z.elf")) as theirs:
        same_memory(ours, theirs, GIB)
        zg, mine = register_notes(theirs.notes), register_notes(ours.notes)
    assert [len(c) for c in zg] == [7, 7]  # no VXRS in a VMDUMP
    for z, m in zip(zg, mine):  # zgetdump leaves TODPREG 0 (see test_vmdump)
        assert z.pop(NT_S390_TODPREG) == bytes(4)
        m.pop(NT_S390_TODPREG)
    assert mine == zg


def test_s390_ext_listed_cpu_without_status(tmp_path):
    """lc_vec lists a third lowcore whose save area holds no status: zgetdump writes a third
    CPU of zero registers (PREFIX 0); sadump leaves it out and names it in a warning. The
    two CPUs with status agree."""
    mem, _ = machine()
    m0 = bytearray(mem[0])
    m0[0x24000 + 0x1200:0x24000 + 0x1400] = bytes(512)
    mem[0] = bytes(m0)
    path = Path(sa.write_ext(tmp_path / "d.s390", mem, SIZE,
                             hdr={"prefixes": (*PREFIXES, 0x24000)}))
    with loop_device(path, 4096) as dev:
        info = convert(dev, tmp_path / "z.elf")
    assert "CPU count (online).: 3" in info
    with open_image(str(tmp_path / "z.elf")) as theirs:
        zg = register_notes(theirs.notes)
    assert len(zg) == 3 and zg[2][0x305] == bytes(4) and not any(zg[2][NT_FPREGSET])
    res = cli("dump", path, "--mode", "full", "-o", tmp_path / "ours.elf")
    assert res.exit_code == 0 and "lowcore 0x24000" in res.stderr
    with open_image(str(tmp_path / "ours.elf")) as ours:
        assert register_notes(ours.notes) == zg[:2]


# ---- NGDump ---------------------------------------------------------------------------------------
def test_ngdump(tmp_path, ext_dump):
    """An NGDump partition (ext4, made by mkfs.ext4 -d) holding sadump's ELF of a generated
    s390_ext: zgetdump mounts it read-only from a loop device (checking ngdump.meta's sha256)
    and converts its dump.elf; sadump reads the partition image with debugfs: the same
    memory and register notes."""
    from tests.fixtures.ngdump import e2fs_tool, ngdump_image

    if e2fs_tool("mkfs.ext4") is None or e2fs_tool("debugfs") is None:
        pytest.skip("e2fsprogs' mkfs.ext4 or debugfs not installed")
    elf = tmp_path / "vmcore.elf"
    assert cli("dump", ext_dump, "--mode", "full", "-o", elf).exit_code == 0
    img = ngdump_image(tmp_path, elf)
    with loop_device(img, 512) as dev:
        info = convert(dev, tmp_path / "z.elf")
    assert "Dump format........: elf" in info and "CPU count (online).: 2" in info
    with open_image(str(img)) as ours, open_image(str(tmp_path / "z.elf")) as theirs:
        assert ours.format == "ngdump"
        same_memory(ours, theirs, SIZE)
        assert register_notes(ours.notes) == register_notes(theirs.notes)
    assert [len(c) for c in register_notes(theirs.notes)] == [9, 9]

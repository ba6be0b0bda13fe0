"""s390_ext (zipl -d dump partitions): built from the spec by tests/fixtures/sa_dumps.py, and the
real dump of ../shared/real/sa."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from sadump.errors import ImageError
from sadump.formats import open_image
from tests.fixtures import sa_dumps as sa
from tests.fixtures.sa_dumps import MIB


def mib_of(seed: int) -> bytes:
    """A compressible MiB that differs by seed (text-like, as kernel memory mostly is)."""
    r = random.Random(seed)
    words = [r.randbytes(r.randrange(2, 12)) for _ in range(64)]
    out = bytearray()
    while len(out) < MIB:
        out += r.choice(words)
    return bytes(out[:MIB])


MEM = {0: mib_of(0), 1 * MIB: mib_of(1), 2 * MIB: mib_of(2), 7 * MIB: mib_of(7),
       8 * MIB: mib_of(8), 20 * MIB: mib_of(20)}
SIZE = 32 * MIB


def expected(addr: int, n: int) -> bytes:
    out = bytearray()
    for a in range(addr, addr + n):
        base = a // MIB * MIB
        out.append(MEM[base][a - base] if base in MEM else 0)
    return bytes(out)


def read_all(mem) -> dict[int, bytes]:
    return {a: mem.read(a, MIB) for a in range(0, SIZE, MIB)}


def check_memory(mem) -> None:
    got = read_all(mem)
    for a, data in got.items():
        assert data == MEM.get(a, bytes(MIB)), hex(a)


@pytest.mark.parametrize("block", [4096, 512])
@pytest.mark.parametrize("compress", [True, False])
def test_reads_back_every_mib(tmp_path, block, compress):
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE, block=block, compress=compress,
                        zlib_flag=int(compress))
    with open_image(path) as mem:
        assert mem.format == "s390_ext"
        assert mem.ranges() == [(0, SIZE)] and mem.incomplete is None
        check_memory(mem)
        assert mem.read(2 * MIB - 10, 20) == expected(2 * MIB - 10, 20)  # across entries
        assert mem.cpu_prefixes == [0x10000, 0x12000]
        d = mem.dumper
        assert (d.format, d.version, d.start_tod, d.end_tod) == ("s390_ext", 2, sa.TOD,
                                                                 sa.END_TOD)
        assert (d.mem_size, d.cpu_count, d.cpu_id) == (SIZE, 2, 0x85618000)
        assert d.compression == ("zlib" if compress else None)
        assert d.block_size == (block if compress else None)
        kinds = {(e.paddr, e.kind) for e in mem.extents(0, SIZE)}
        assert (3 * MIB, "zero") in kinds  # the skipped MiBs are holes, never read
        assert ((7 * MIB, "data") in kinds) == compress


def test_block_size_given_and_wrong(tmp_path):
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE, block=512)
    with open_image([path], block_size=512) as mem:
        check_memory(mem)
    with open_image([path], block_size=4096) as mem:  # the chain breaks after segment 1
        assert "no stop marker" in mem.incomplete
        assert mem.ranges()[-1][1] <= 3 * MIB  # what follows segment 1 is lost


def test_raw_entries_with_bit_31(tmp_path):
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE, raw_entries=((2, 1), (3, 0)))
    raw = Path(path).read_bytes()
    seg = raw.index(struct.pack(">QQ", 7 * MIB, 2 * MIB))  # the segment of 7-8 MiB
    assert struct.unpack_from(">I", raw, seg + 0x34 + 4)[0] & 0x80000000
    with open_image(path) as mem:
        check_memory(mem)
        kinds = {e.paddr: e.kind for e in mem.extents(0, SIZE)}
        assert kinds[8 * MIB] == "file" and kinds[7 * MIB] == "data"


def test_segments_split_at_the_entry_cap(tmp_path):
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE, cap=1)
    with open_image(path) as mem:
        check_memory(mem)


def test_fba_zlib_flag_is_not_trusted(tmp_path):
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE, block=512, compress=False, zlib_flag=1)
    with open_image(path) as mem:
        check_memory(mem)
        assert mem.dumper.compression is None
        assert any("no segment is compressed" in w for w in mem.warnings)


# ---- incomplete dumps: read as far as they go ----------------------------------------------
@pytest.mark.parametrize("kw, why", [
    ({"stop": False, "end": False}, "no stop marker"),
    ({"end": False}, "no end marker"),
    ({"end_tod": sa.TOD - 1}, "earlier than the header"),
])
def test_incomplete(tmp_path, kw, why):
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE, **kw)
    with open_image(path) as mem:
        assert why in mem.incomplete
        assert any(why in w for w in mem.warnings)
        for a in (0, 7 * MIB, 20 * MIB):
            assert mem.read(a, MIB) == MEM[a]


def test_cut_inside_a_segment(tmp_path):
    data = sa.Ext(MEM, SIZE, compress=False).build()
    cut = data.index(MEM[20 * MIB][:64]) + MIB // 2  # half of the last MiB is lost
    (tmp_path / "d.s390").write_bytes(data[:cut])
    with open_image(str(tmp_path / "d.s390")) as mem:
        assert "inside segment" in mem.incomplete
        assert mem.ranges() == [(0, 9 * MIB)]
        assert mem.read(8 * MIB, MIB) == MEM[8 * MIB]


# ---- damage and hostile fields: one line, bounded work ---------------------------------------
def build_with(tmp_path, patch) -> str:
    data = bytearray(sa.Ext(MEM, SIZE).build())
    segs = [0x1000]
    ext = sa.Ext(MEM, SIZE)
    for s in ext.segments()[:-1]:
        segs.append(segs[-1] + len(s))
    patch(data, segs)
    (tmp_path / "d.s390").write_bytes(bytes(data))
    return str(tmp_path / "d.s390")


def one_line(path, match, **kw):
    with pytest.raises(ImageError, match=match) as ei, open_image(path, **kw) as mem:
        read_all(mem)
    assert "\n" not in str(ei.value)


def test_chain_going_backwards(tmp_path):
    one_line(build_with(tmp_path, lambda d, s: struct.pack_into(">Q", d, s[2], 0)),
             "goes backwards or overlaps")


def test_overlapping_segments(tmp_path):
    one_line(build_with(tmp_path, lambda d, s: struct.pack_into(">Q", d, s[2], 2 * MIB)),
             "goes backwards or overlaps")


def test_entry_count_2_32(tmp_path):
    one_line(build_with(tmp_path, lambda d, s: struct.pack_into(">I", d, s[1] + 0x30,
                                                                0xFFFFFFFF)), "entry_count")


def test_len_2_63(tmp_path):
    one_line(build_with(tmp_path, lambda d, s: struct.pack_into(">Q", d, s[1] + 8, 1 << 63)),
             "past the dump's memory size")


def test_entry_offset_outside_the_segment(tmp_path):
    one_line(build_with(tmp_path, lambda d, s: struct.pack_into(">I", d, s[1] + 0x34 + 4,
                                                                0x7FFFFFFF)), "entry 1")


def test_damaged_stream_names_segment_and_entry(tmp_path):
    def smash(d, s):
        body = s[1] + 4096
        d[body + 100:body + 400] = bytes(300)
    path = build_with(tmp_path, smash)
    with open_image(path) as mem, pytest.raises(ImageError,
                                                match=r"segment at memory 0x100000, entry 0"):
            mem.read(MIB, MIB)


def test_stream_inflating_past_its_entry(tmp_path):
    from tests.fixtures.sa_dumps import seg_header
    big = zlib_of(bytes(2 * MIB))
    body = big + bytes(-len(big) % 4096)
    data = (sa.header(4 * MIB) + seg_header(0, MIB, False) + bytes(MIB)
            + seg_header(MIB, MIB, True, len(body) // 4096, [0]) + body + sa.end_marker())
    (tmp_path / "d.s390").write_bytes(data)
    with open_image(str(tmp_path / "d.s390")) as mem, pytest.raises(
            ImageError, match="inflates past its 1 MiB entry"):
            mem.read(MIB, 16)


def zlib_of(b: bytes) -> bytes:
    import zlib
    return zlib.compress(b, 1)


def test_not_a_dump_header_size(tmp_path):
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE, hdr={"prefixes": ()})
    data = bytearray(Path(path).read_bytes())
    struct.pack_into(">Q", data, 0x18, 1 << 63)  # mem_size 2^63
    (tmp_path / "d.s390").write_bytes(bytes(data))
    with pytest.raises(ImageError):
        open_image(path)


# ---- the real dump ---------------------------------------------------------------------------
EXT = "sa/rimg-kdump.ext-zlib.s390"
#: where the dumper stored status: each CPU's prefix page and its vector save areas
STATUS_MIBS = {0x1000000, 0x1100000}


def test_real_memory_page_for_page(real_file):
    with open_image(str(real_file(EXT))) as mem, open(real_file("rimg-kdump.raw"), "rb") as raw:
        assert mem.ranges() == [(0, 1 << 30)] and mem.incomplete is None
        assert mem.dumper.block_size == 4096 and mem.dumper.compression == "zlib"
        for a in range(0, 1 << 30, MIB):
            want = raw.read(MIB)
            got = mem.read(a, MIB)
            if a in STATUS_MIBS:
                continue  # compared below through the CPU states
            assert got == want, hex(a)


def real_cpus(path):
    from sadump.analysis import analyse

    a = analyse(path if isinstance(path, list) else str(path))
    try:
        found = a.cpus()
        return found.source, {c.prefix: c for c in found.cpus}
    finally:
        a.close()


@pytest.mark.parametrize("name", [EXT])
def test_real_registers_equal_qemus_notes(real_file, name):
    """The dumper's store-status pages give each CPU of lc_vec the registers of QEMU's notes
    (its clock comparator already >> 8 in sadump's CpuState, as the sa README says)."""
    source, ours = real_cpus(real_file(name))
    qsource, theirs = real_cpus(real_file("rimg-kdump.qemu.elf"))
    assert (source, qsource) == ("save areas", "notes")
    assert sorted(ours) == sorted(theirs) == [0x115A000, 0x115C000]
    for prefix, cpu in ours.items():
        q = theirs[prefix]
        for f in ("psw_mask", "psw_addr", "gprs", "acrs", "fprs", "fpc", "timer", "todcmp",
                  "todpreg", "ctrs", "prefix", "vxrs"):
            assert getattr(cpu, f) == getattr(q, f), (hex(prefix), f)


def cli(*args):
    from typer.testing import CliRunner

    from sadump.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", [EXT])
def test_real_bt_and_dmesg(real_file, name):
    ours = cli("bt", real_file(name))
    assert ours.exit_code == 0, ours.stderr
    assert ours.stdout == cli("bt", real_file("rimg-kdump.qemu.elf")).stdout
    assert "psw_idle_exit" in ours.stdout
    dmesg = cli("dmesg", real_file(name))
    assert dmesg.exit_code == 0 and dmesg.stdout == cli("dmesg", real_file("rimg-kdump.raw")).stdout


def test_real_d31_kdump_bitmaps(real_file, tmp_path):
    """On the kdump path the dump's -d 31 bitmaps are makedumpfile's of the same moment."""
    from tests.test_dump_levels import kdump_parts

    out = tmp_path / "d31.kdump"
    res = cli("dump", real_file(EXT), "-d", "31", "--format", "kdump", "-o", out)
    assert res.exit_code == 0, res.stderr
    ours, theirs = kdump_parts(out), kdump_parts(real_file("filter/rimg-kdump.d31.bitmaps"))
    assert ours["bitmap1"] == theirs["bitmap1"]
    assert ours["bitmap2"] == theirs["bitmap2"]


# ---- inflating ahead of a writer ------------------------------------------------------------
def test_writer_reads_entries_inflated_ahead_on_the_pool(tmp_path, monkeypatch):
    """memory_blocks (every writer's reader) gets the compressed entries from the pool that
    inflates them ahead, never more than AHEAD at once, and leaves nothing in flight."""
    import threading

    from sadump.formats import s390_ext
    from sadump.writers.blocks import memory_blocks

    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE)
    with open_image(path) as mem:
        where, most = [], [0]
        real = mem._inflate

        def spy(key):
            where.append(threading.current_thread().name)
            most[0] = max(most[0], len(mem._pending))
            return real(key)

        monkeypatch.setattr(mem, "_inflate", spy)
        got = {b.paddr: b for b in memory_blocks(mem, 0, SIZE)}
        for a, data in MEM.items():
            blk = got[a]
            assert blk.kind == "data" or a == 0
            if blk.kind == "data":
                assert blk.data == data
        assert where and all(w.startswith("inflate") for w in where)
        assert len(where) == 5  # each compressed MiB once: 1, 2, 7, 8, 20
        assert most[0] <= s390_ext.AHEAD and not mem._pending


def test_zlib_alone_without_libdeflate(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "deflate", None)  # import deflate fails
    path = sa.write_ext(tmp_path / "d.s390", MEM, SIZE)
    with open_image(path) as mem:
        check_memory(mem)


def test_real_full_dump_notes_equal_qemus(real_file, tmp_path):
    """What `sadump dump --mode full` writes from the compressed dump carries, per CPU, the
    register notes QEMU wrote at the same moment (read back from the output's notes)."""
    out = tmp_path / "full.elf"
    res = cli("dump", real_file(EXT), "--mode", "full", "-o", out)
    assert res.exit_code == 0, res.stderr
    source, ours = real_cpus(out)
    _, theirs = real_cpus(real_file("rimg-kdump.qemu.elf"))
    assert source == "notes" and sorted(ours) == sorted(theirs)
    for prefix, cpu in ours.items():
        q = theirs[prefix]
        for f in ("psw_mask", "psw_addr", "gprs", "acrs", "fprs", "fpc", "timer", "todcmp",
                  "todpreg", "ctrs", "prefix", "vxrs"):
            assert getattr(cpu, f) == getattr(q, f), (hex(prefix), f)


# ---- a large machine, mostly zero ------------------------------------------------------------
def test_large_mostly_zero_machine_is_dumped_not_refused(tmp_path):
    """A 2 TiB LPAR of which 3 MiB were not zero: the dumper skipped the rest, so a 3 MiB
    file truthfully describes 2 TiB; the full ELF dump keeps the skipped memory as holes."""
    data = {0: bytes(range(256)) * 8192, 512 * MIB: b"\x5a" * MIB}
    src = sa.write_ext(tmp_path / "big.s390", data, mem_size=2 << 40)
    out = tmp_path / "big.elf"
    res = cli("dump", src, "--mode", "full", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert out.stat().st_size > 2 << 40  # the memory, plus headers
    assert out.stat().st_blocks * 512 < 64 * MIB  # the skipped memory is holes
    mem = open_image(str(out))
    try:
        assert mem.ranges() == [(0, 2 << 40)]
        assert mem.read(512 * MIB, MIB) == b"\x5a" * MIB
        assert mem.read(MIB, 4096) == data[0][MIB:MIB + 4096]
        assert mem.read(1 << 40, 4096) == bytes(4096)
    finally:
        mem.close()


# ---- whose registers: the dumper's lc_vec, as zgetdump reads them ----------------------------
def test_cpus_are_lc_vec_only_and_vx_needs_an_aligned_pointer(tmp_path):
    """The CPUs of a stand-alone dump are the header's lc_vec, each from its prefix page; the
    bytes at absolute 0x1200 are the dumper's memory, not a CPU (here: text whose 'prefix' is
    not zero). Vector registers only through a 1 KiB aligned lowcore 0x11b0: with Linux's
    length bits (11) the dumper stores none, and zgetdump reads none (tests/oracle)."""
    from tests.fixtures.builder import Cpu

    mem = {a: bytearray(b) for a, b in MEM.items()}
    cpus = [Cpu.distinct(n) for n in range(2)]  # prefixes 0x20000, 0x22000
    for n, (c, low) in enumerate(zip(cpus, (0, 11))):
        mem[0][c.prefix + 0x11B0:c.prefix + 0x11B8] = (0x30000 + 0x400 * n | low).to_bytes(8,
                                                                                          "big")
        sa.store_status(mem, c)  # CPU 1: its VX area keeps the text that was there
    assert int.from_bytes(mem[0][0x1318:0x131C], "big") not in (0, 0x20000, 0x22000)
    path = sa.write_ext(tmp_path / "d.s390", {a: bytes(b) for a, b in mem.items()}, SIZE,
                        hdr={"prefixes": (0x20000, 0x22000)})
    source, ours = real_cpus(path)
    assert source == "save areas" and sorted(ours) == [0x20000, 0x22000]
    assert ours[0x20000].gprs == cpus[0].gprs and ours[0x22000].gprs == cpus[1].gprs
    assert ours[0x20000].vxrs == cpus[0].vx
    assert ours[0x22000].vxrs is None


# ---- the entry cap: 1011 entries fill a 4 KiB segment header ----------------------------------
def capped_segment(tmp_path, entries: int, entry_count: int) -> tuple[str, int]:
    """header | a raw first MiB | one compressed segment of `entries` MiB, MiB i all the u64
    i (compressible: 1011 MiB deflate to ~4 MiB), written MiB by MiB | end marker."""
    import zlib

    mem_size = (entries + 1) * MIB
    path = tmp_path / "cap.s390"
    offs, body = [], bytearray()
    for i in range(entries):
        blob = zlib.compress(struct.pack(">Q", i + 1) * (MIB // 8), 1)
        offs.append(len(body) // 4096)
        body += blob + bytes(-len(blob) % 4096)
    with open(path, "wb") as f:
        f.write(sa.header(mem_size) + sa.seg_header(0, MIB, False) + bytes(MIB))
        f.write(sa.seg_header(MIB, entries * MIB, True, len(body) // 4096, offs[:sa.MAX_ENTRIES],
                              entry_count=entry_count))
        f.write(body + sa.end_marker() + bytes(4096 - 16))
    return str(path), mem_size


def test_segment_of_1011_entries(tmp_path):
    path, size = capped_segment(tmp_path, 1011, 1011)
    with open_image(path) as mem:
        assert mem.ranges() == [(0, size)] and mem.incomplete is None
        for i in range(1011):  # every entry, the last one's offset at header byte 4092
            assert mem.read(MIB + i * MIB, MIB) == struct.pack(">Q", i + 1) * (MIB // 8), i
        assert mem.read(1011 * MIB + MIB - 8, 8) == struct.pack(">Q", 1011)  # the last u64


def test_segment_of_1012_entries_is_refused(tmp_path):
    """1012 entries cannot fit a segment header (0x34 + 4 x 1012 > 4096): the header claims
    more entries than it can hold, one line, nothing read."""
    path, _ = capped_segment(tmp_path, 1012, 1012)
    one_line(path, r"entry_count 1012 for 1012 MiB \(at most 1011")


def test_s390_output_keeps_the_dumps_moment(tmp_path):
    """`dump --format s390` of a stand-alone dump keeps its header TOD, dumping CPU and
    end-marker TOD (as `zgetdump -f s390` does: tests/test_zgetdump_oracle.py), not the time
    of the conversion."""
    src = sa.write_ext(tmp_path / "d.s390", MEM, SIZE)
    out = tmp_path / "out.s390"
    res = cli("dump", src, "--mode", "full", "--format", "s390", "-o", out)
    assert res.exit_code == 0, res.stderr
    data = out.read_bytes()
    assert struct.unpack_from(">QQ", data, 0x38) == (sa.TOD, 0x85618000)
    assert data[-16:] == sa.end_marker(sa.END_TOD)


def test_a_listed_cpu_without_stored_status_is_named(tmp_path):
    """lc_vec lists a third CPU whose save area holds nothing (prefix 0): left out with a
    warning naming its lowcore (zgetdump writes it as a CPU of zero registers)."""
    from sadump.analysis import analyse
    from tests.fixtures.builder import Cpu

    mem = {a: bytearray(b) for a, b in MEM.items()}
    for n in range(2):
        cpu = Cpu.distinct(n)
        cpu.vx = None  # lowcore 0x11b0 holds text here: no vector area to follow
        sa.store_status(mem, cpu)
    mem[0][0x24000 + 0x1200:0x24000 + 0x1400] = bytes(512)
    path = sa.write_ext(tmp_path / "d.s390", {a: bytes(b) for a, b in mem.items()}, SIZE,
                        hdr={"prefixes": (0x20000, 0x22000, 0x24000)})
    a = analyse(path)
    try:
        found = a.cpus()
    finally:
        a.close()
    assert [c.prefix for c in found.cpus] == [0x20000, 0x22000]
    assert any("lowcore 0x24000" in w and "no stored status" in w for w in found.warnings)

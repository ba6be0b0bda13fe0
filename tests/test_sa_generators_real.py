"""The fixture generators (tests/fixtures/sa_dumps.py, vmdump.py), fed the real dump's own facts
(../shared/real/sa/README.md: the memory of rimg-kdump.raw, the registers of rimg-kdump.qemu.elf
stored as a dumper stores them, the header's fields, the partition sizes), write what the real
files hold: the same header, the same segment map, the same volume split, the same VMDUMP
records. The generators build every synthetic case of the format tests; this ties them to the
real files, so a test that passes on a generated dump passes for the reason a real one would."""

from __future__ import annotations

import struct
import zlib

import pytest

from tests.fixtures import sa_dumps as sa
from tests.fixtures import vmdump as vm
from tests.fixtures.builder import Cpu
from tests.fixtures.sa_dumps import MIB

GIB = 1 << 30
PREFIXES = (0x115A000, 0x115C000)  # lc_vec of the real header, CPU 0 first
PARTITIONS = (7188 * 4096, 7440 * 4096)  # the real volumes' dump partitions


def qemu_cpus(real_file) -> list[Cpu]:
    """The registers of QEMU's notes (read by sadump: the ELF reader is not under test here),
    as the fixtures' Cpu, in lc_vec order."""
    from sadump.analysis import analyse

    a = analyse(str(real_file("rimg-kdump.qemu.elf")))
    try:
        by_prefix = {c.prefix: c for c in a.cpus().cpus}
    finally:
        a.close()
    out = []
    for p in PREFIXES:
        c = by_prefix[p]
        out.append(Cpu(prefix=c.prefix, psw=(c.psw_mask, c.psw_addr), gprs=list(c.gprs),
                       acrs=list(c.acrs), fprs=list(c.fprs), fpc=c.fpc, timer=c.timer,
                       todcmp=c.todcmp, todpreg=c.todpreg, ctrs=list(c.ctrs),
                       vx=list(c.vxrs) if c.vxrs else None))
    return out


@pytest.fixture(scope="module")
def machine(real_file):
    """(memory as the dumpers saw it: MiB address -> bytes of the non-zero MiBs, after store
    status; the raw image's non-zero MiBs; the CPUs)."""
    cpus = qemu_cpus(real_file)
    raw: dict[int, bytearray] = {}
    with open(real_file("rimg-kdump.raw"), "rb") as f:
        for a in range(0, GIB, MIB):
            b = f.read(MIB)
            if any(b):
                raw[a] = bytearray(b)
    stored = {a: bytearray(b) for a, b in raw.items()}
    for c in cpus:
        sa.store_status(stored, c)
    return ({a: bytes(b) for a, b in stored.items()}, {a: bytes(b) for a, b in raw.items()},
            cpus)


def segment_map(data: bytes, block: int = 4096) -> tuple[list[tuple], bytes]:
    """[(start, len, stop marker, size_on_disk != 0, entry count, raw flags, entry streams
    inflated)] of an s390_ext stream, and the 16 bytes after the last segment."""
    segs, off = [], 4096
    while True:
        start, length, stop, sod = struct.unpack_from(">QQQI", data, off)
        n = struct.unpack_from(">I", data, off + 0x30)[0]
        offs = struct.unpack_from(f">{n}I", data, off + 0x34)
        body = off + 4096
        inflated = [zlib.decompressobj().decompress(data[body + (o & 0x7FFFFFFF) * block:
                                                         body + (sod * block)])
                    for o in offs if not o & 0x80000000]
        segs.append((start, length, stop, sod != 0, n, [o >> 31 for o in offs], inflated))
        off = body + (sod * block if sod else length)
        if stop:
            return segs, data[off:off + 16]


def test_ext_zlib_header_segments_and_entries(machine, real_file):
    """Header field for field, segment map, entry flags and each entry's inflated MiB; the
    compressed bytes too when this zlib deflates as the one that made the file did (level 1)."""
    mem, _, _ = machine
    ours = sa.Ext(mem, GIB, hdr={"prefixes": PREFIXES}).build()
    real = real_file("sa/rimg-kdump.ext-zlib.s390").read_bytes()
    assert ours[:4096] == real[:4096]
    (mine, my_end), (theirs, their_end) = segment_map(ours), segment_map(real)
    assert [s[:6] for s in mine] == [s[:6] for s in theirs]
    assert [(s[0] >> 20, s[1] >> 20) for s in theirs] == [  # (start MiB, MiBs): 8 segments
        (0, 1), (1, 21), (24, 2), (28, 2), (860, 16), (888, 10), (904, 3), (1022, 1)]
    assert my_end == their_end == sa.end_marker()
    for m, t in zip(mine, theirs):
        assert m[6] == t[6], hex(m[0])
    stream = zlib.compress(mem[MIB], 1)
    body = 4096 + 4096 + MIB + 4096  # header, raw segment [0, 1 MiB), next segment's header
    if real[body:body + len(stream)] == stream:  # this zlib deflates as the dumper's did
        assert ours == real  # the whole file: sizes on disk, entry offsets, padding


def test_mv_volumes_and_dasd_head(machine, real_file):
    """The real partitions' sizes give the real split (22+2+2+2 MiB on volume 0, the rest of
    the run at 0x35c00000 on volume 1), byte for byte, and the same head of each volume."""
    mem, _, _ = machine
    vols = sa.mv_volumes(mem, GIB, list(PARTITIONS), prefixes=PREFIXES)
    for n, v in enumerate(vols):
        real = real_file(f"sa/rimg-kdump.mv.vol{n}").read_bytes()
        assert v[:4096] == real[:4096], n
        assert len(v) == len(real) == PARTITIONS[n]
        assert v == real, n
    head = real_file("sa/rimg-kdump.mv.dasd-head").read_bytes()
    assert sa.dasd_head(list(PARTITIONS)) == head


def test_vmdump_records(machine, real_file):
    """The raw image's non-zero pages and QEMU's registers give the real VMDUMP byte for byte:
    ADSR, FMBK, FIR and fir_other, ALBK, ASIZBK, index page, key pages, pages."""
    _, raw, cpus = machine
    pages = {(a + i) // 4096: b[i:i + 4096] for a, b in raw.items()
             for i in range(0, MIB, 4096) if any(b[i:i + 4096])}
    ours = vm.vmdump_bytes(pages, [(0, GIB)], cpus)
    real = real_file("sa/rimg-kdump.vmdump").read_bytes()
    assert len(pages) == 12_414 and len(ours) == len(real)
    for r in range(vm.INDEX_OFF // 4096 + 3):  # records 1-12 one by one: names the first wrong
        assert ours[r * 4096:(r + 1) * 4096] == real[r * 4096:(r + 1) * 4096], f"record {r + 1}"
    assert ours == real

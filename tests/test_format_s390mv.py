"""s390mv_ext (zipl -M multi-volume dumps) and tape copies, built from the spec by
tests/fixtures/sa_dumps.py, and the real two-volume dump of ../shared/real/sa."""

from __future__ import annotations

import pytest

from sadump.errors import ImageError
from sadump.formats import open_image
from tests.fixtures import sa_dumps as sa
from tests.fixtures.sa_dumps import MIB
from tests.test_format_s390_ext import MEM, SIZE, STATUS_MIBS, check_memory, cli, real_cpus

VOL = 3 * MIB  # room for 2 MiB of memory a volume: MEM takes all three


def write_set(tmp_path, sizes=(VOL, VOL, VOL), whole=False, **hdr) -> list[str]:
    vols = sa.mv_volumes(MEM, SIZE, list(sizes), **hdr)
    head = sa.dasd_head(list(sizes)) if whole else b""
    paths = []
    for i, v in enumerate(vols):
        p = tmp_path / f"vol{i}"
        p.write_bytes(head + v)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("whole", [False, True])
def test_volumes_in_any_order(tmp_path, whole):
    paths = write_set(tmp_path, whole=whole)
    with open_image(list(reversed(paths))) as mem:
        assert mem.format == "s390mv_ext"
        assert mem.incomplete is None and mem.ranges() == [(0, SIZE)]
        check_memory(mem)
        assert mem.dumper.volumes == 3 and mem.dumper.compression is None and not mem.warnings
        assert mem.path.split(" + ") == paths  # ordered by volnr


def test_run_split_across_volumes(tmp_path):
    """Runs split where a volume is full, more volumes than needed: the last ones unused."""
    paths = write_set(tmp_path, sizes=(5 * MIB, 5 * MIB, 5 * MIB, 5 * MIB))
    with open_image(paths) as mem:
        check_memory(mem)
        assert mem.incomplete is None
        assert any("volumes 2-3 follow the stop marker" in w for w in mem.warnings)


def one_line(paths, match):
    with pytest.raises(ImageError, match=match) as ei:
        open_image(paths)
    assert "\n" not in str(ei.value)
    return str(ei.value)


def test_missing_volume_partitions(tmp_path):
    paths = write_set(tmp_path)
    one_line([paths[0], paths[2]], r"^volume 1 missing")


def test_missing_volume_named_by_the_table(tmp_path):
    paths = write_set(tmp_path, whole=True)
    one_line(paths[:2], r"^volume 2 of 3 missing")


def test_last_volume_not_given_without_table_is_incomplete(tmp_path):
    paths = write_set(tmp_path)
    with open_image(paths[:2]) as mem:
        assert "volume 2 was not given" in mem.incomplete
        assert mem.read(7 * MIB, MIB) == MEM[7 * MIB]


def test_repeated_volume(tmp_path):
    paths = write_set(tmp_path)
    one_line([paths[0], paths[1], paths[1], paths[2]], "volume 1 given twice")


def test_foreign_volume(tmp_path):
    ours = write_set(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    theirs = write_set(other, tod=sa.TOD + (1 << 32))
    msg = one_line([ours[0], theirs[1], ours[2]], "belongs to another dump")
    assert "volume 1" in msg and "TOD" in msg


def patch(path: str, off: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def test_foreign_parameter_table(tmp_path):
    ours = write_set(tmp_path, whole=True)
    patch(ours[1], 3 * 4096 + 0x4000, (1).to_bytes(8, "big"))  # another zipl timestamp
    one_line(ours, "parameter table differs")


def test_volume_31_of_3(tmp_path):
    paths = write_set(tmp_path, whole=True)
    patch(paths[2], 24 * 4096 + 0x4C, (31).to_bytes(4, "big"))
    one_line(paths, "claims to be volume 31 of 3")
    (tmp_path / "p").mkdir()
    part = write_set(tmp_path / "p")
    patch(part[2], 0x4C, (31).to_bytes(4, "big"))
    one_line(part, r"^volumes 2-30 missing")
    patch(part[2], 0x4C, (32).to_bytes(4, "big"))
    one_line(part, "claims to be volume 32")


def test_not_a_volume_among_volumes(tmp_path):
    paths = write_set(tmp_path)
    ext = sa.write_ext(tmp_path / "ext", MEM, SIZE)
    one_line([paths[0], ext], "not a volume of a multi-volume dump")


# ---- tape -------------------------------------------------------------------------------------
def test_tape_copy(tmp_path):
    mem = b"".join(MEM.get(a, bytes(MIB)) for a in range(0, 4 * MIB, MIB))
    (tmp_path / "t").write_bytes(sa.tape(mem))
    with open_image(str(tmp_path / "t")) as d:
        assert d.format == "s390tape" and d.incomplete is None
        assert d.read(0, 4 * MIB) == mem and d.dumper.end_tod == sa.END_TOD
    (tmp_path / "t").write_bytes(sa.tape(mem, end=False))
    with open_image(str(tmp_path / "t")) as d:
        assert "no end marker" in d.incomplete and d.read(MIB, MIB) == mem[MIB:2 * MIB]


# ---- the real two-volume dump ----------------------------------------------------------------
VOLS = ("sa/rimg-kdump.mv.vol0", "sa/rimg-kdump.mv.vol1")


@pytest.fixture(scope="module")
def real_sets(real_file, tmp_path_factory):
    parts = [str(real_file(v)) for v in VOLS]
    head = real_file("sa/rimg-kdump.mv.dasd-head").read_bytes()
    folder = tmp_path_factory.mktemp("dasd")
    whole = []
    for p in parts:
        w = folder / (p.rsplit("/", 1)[1] + ".dasd")
        with open(w, "wb") as out, open(p, "rb") as src:
            out.write(head)
            while chunk := src.read(1 << 22):
                out.write(chunk)
        whole.append(str(w))
    return {"partitions": parts, "whole": whole}


@pytest.mark.parametrize("kind", ["partitions", "whole"])
def test_real_volumes_page_for_page(real_file, real_sets, kind):
    paths = real_sets[kind]
    with open_image(paths[::-1]) as mem, open(real_file("rimg-kdump.raw"), "rb") as raw:
        assert mem.format == "s390mv_ext" and mem.incomplete is None
        assert mem.ranges() == [(0, 1 << 30)] and mem.dumper.volumes == 2
        for a in range(0, 1 << 30, MIB):
            want = raw.read(MIB)
            if a not in STATUS_MIBS:
                assert mem.read(a, MIB) == want, hex(a)


@pytest.mark.parametrize("kind", ["partitions", "whole"])
def test_real_volumes_registers_bt_dmesg(real_file, real_sets, kind):
    paths = real_sets[kind]
    source, ours = real_cpus(paths)
    _, theirs = real_cpus(real_file("rimg-kdump.qemu.elf"))
    assert source == "save areas" and sorted(ours) == sorted(theirs)
    for prefix, cpu in ours.items():
        q = theirs[prefix]
        for f in ("psw_mask", "psw_addr", "gprs", "acrs", "fprs", "fpc", "timer", "todcmp",
                  "todpreg", "ctrs", "prefix", "vxrs"):
            assert getattr(cpu, f) == getattr(q, f), (hex(prefix), f)
    res = cli("bt", *paths)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == cli("bt", real_file("rimg-kdump.qemu.elf")).stdout
    assert cli("dmesg", *paths[::-1]).stdout == cli("dmesg", real_file("rimg-kdump.raw")).stdout


def test_real_single_volume_names_the_missing_one(real_sets):
    one_line(real_sets["whole"][1:], r"^volume 0 of 2 missing")


def test_old_data_at_a_volumes_end_is_not_a_segment(tmp_path):
    """Where a header and 1 MiB no longer fit, the dumper went on to the next volume: a
    header-like leftover there (old data) is not read as a segment."""
    import struct

    paths = write_set(tmp_path)
    with open(paths[0], "r+b") as f:  # volume 0: [0, 2 MiB) then less than 1 MiB free
        f.seek(0x1000 + 0x1000 + 2 * MIB)  # where the next header would be
        f.write(struct.pack(">QQQ", 0, MIB, 0))  # a would-be segment going backwards
    with open_image(paths) as mem:
        check_memory(mem)


@pytest.mark.parametrize("count", [0, 33, 0xFFFF])
def test_parameter_table_volume_count_out_of_range(tmp_path, count):
    paths = write_set(tmp_path, whole=True)
    patch(paths[0], 3 * 4096 + 0x4000 + 8, count.to_bytes(2, "big"))
    one_line([paths[0]], f"lists {count} volumes")


def test_input_format_names_the_readers(tmp_path):
    mem = b"".join(MEM.get(a, bytes(MIB)) for a in range(0, 4 * MIB, MIB))
    (tmp_path / "t").write_bytes(sa.tape(mem))
    with open_image(str(tmp_path / "t"), "s390tape") as d:
        assert d.format == "s390tape"
    paths = write_set(tmp_path)
    with open_image(paths, "s390mv_ext") as d:
        assert d.format == "s390mv_ext"
    with pytest.raises(ImageError, match="not a volume of a multi-volume dump"):
        open_image([str(tmp_path / "t")], "s390mv_ext")


@pytest.mark.parametrize("kind", ["partitions", "whole"])
def test_real_d31_kdump_bitmaps(real_file, real_sets, kind, tmp_path):
    """On the kdump path the two volumes' -d 31 bitmaps are makedumpfile's of the same moment
    (volumes given in reverse order: sadump orders them by volnr)."""
    from tests.test_dump_levels import kdump_parts

    out = tmp_path / "d31.kdump"
    res = cli("dump", *real_sets[kind][::-1], "-d", "31", "--format", "kdump", "-o", out)
    assert res.exit_code == 0, res.stderr
    ours, theirs = kdump_parts(out), kdump_parts(real_file("filter/rimg-kdump.d31.bitmaps"))
    for key in ("block_size", "bitmap_blocks", "max_mapnr", "dump_level"):
        assert ours[key] == theirs[key], key
    assert ours["bitmap1"] == theirs["bitmap1"]
    assert ours["bitmap2"] == theirs["bitmap2"]

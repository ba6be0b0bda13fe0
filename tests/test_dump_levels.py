"""`sadump dump -d LEVEL` (issue 11): the pages makedumpfile keeps, from the real vmcore, in
ELF and kdump-compressed output; the usage rules of the options; missing VMCOREINFO keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sadump.analysis import analyse
from sadump.cli import Exit, app
from sadump.formats.elf import ElfCore
from sadump.kernel.mem_section import MissingKeyError, pfn_ranges
from sadump.kernel.vmcoreinfo import VmcoreInfo
from sadump.page_filter import plan_page_filter
from tests.fixtures import import_drgn
from tests.fixtures.builder import ImageSpec, write_raw

runner = CliRunner()
PAGE = 4096
VMCORE = "rimg-kdump.proc-vmcore.elf"
#: makedumpfile's reference files: header block, 2 sub header blocks, 7 + 7 bitmap blocks
BITMAP = slice(3 * PAGE, 10 * PAGE), slice(10 * PAGE, 17 * PAGE)


def reference_bits(real_file, level: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.frombuffer(real_file(f"filter/rimg-kdump.d{level}.bitmaps").read_bytes(), np.uint8)
    return tuple(np.unpackbits(raw[s], bitorder="little") for s in BITMAP)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_elf_d31_keeps_every_page_makedumpfile_keeps(real_file, tmp_path):
    src = real_file(VMCORE)
    out = tmp_path / "d31.elf"
    res = run("dump", src, "-d", "31", "-o", out, "--json")
    assert res.exit_code == Exit.OK, res.stderr
    summary = json.loads(res.stdout)["output"]["dump_level"]
    assert summary["level"] == 31 and summary["zero_pages"] == 1155  # as makedumpfile -c says
    _, kept = reference_bits(real_file, 31)
    with ElfCore(str(src)) as theirs, ElfCore(str(out)) as ours:
        present = np.zeros(len(kept), bool)
        for s, e in ours.ranges():
            present[s // PAGE:e // PAGE] = True
        for pfn in np.flatnonzero(kept):
            page = theirs.read(int(pfn) * PAGE, PAGE)
            if any(page):  # every non-zero page that makedumpfile keeps, with its bytes
                assert present[pfn] and ours.read(int(pfn) * PAGE, PAGE) == page, hex(pfn)
        # what else is there lies in excluded runs shorter than 256 pages (makedumpfile -E)
        extra = present & ~kept.astype(bool)
        assert extra.sum() < 0.1 * len(kept)
        for s, e in ours.ranges():
            first, last = s // PAGE, e // PAGE - 1
            assert kept[first] and kept[last]  # a PT_LOAD starts and ends at a kept page


def test_dmesg_of_a_d31_dump(real_file, tmp_path):
    out = tmp_path / "d31.elf"
    assert run("dump", real_file(VMCORE), "-d", "31", "-o", out).exit_code == Exit.OK
    ours, theirs = run("dmesg", out), run("dmesg", real_file(VMCORE))
    assert ours.exit_code == Exit.OK and ours.stdout == theirs.stdout
    assert "sysrq_handle_crash" in ours.stdout


def test_level_rules_of_the_command_line(tmp_path):
    image = write_raw(ImageSpec(), tmp_path / "m.raw")
    assert run("dump", image, "-d", "32", "-o", tmp_path / "a").exit_code == Exit.USAGE
    res = run("dump", image, "-d", "1", "--format", "s390", "-o", tmp_path / "b")
    assert res.exit_code == Exit.USAGE and "s390" in res.stderr
    assert not (tmp_path / "b").exists()


def test_a_missing_key_refuses_or_falls_back(tmp_path):
    """The builder's kernel exports no mem_section: -d 31 names the key and writes nothing
    (exit 5); --dump-level-fallback writes level 1 (zero pages only) and says so."""
    image = write_raw(ImageSpec(), tmp_path / "m.raw")
    res = run("dump", image, "-d", "31", "-o", tmp_path / "v")
    assert res.exit_code == Exit.NOT_WRITTEN and "SYMBOL(mem_section)" in res.stderr
    assert not (tmp_path / "v").exists()
    res = run("dump", image, "-d", "31", "--dump-level-fallback", "-o", tmp_path / "v",
              "--json")
    assert res.exit_code == Exit.OK, res.stderr
    assert json.loads(res.stdout)["output"]["dump_level"]["level"] == 1
    assert "--dump-level-fallback" in res.stderr


@pytest.mark.parametrize("drop, level, allowed", [
    ("OFFSET(page.private)=", 31, 15),  # free pages need page.private: the rest still works
    ("OFFSET(page._mapcount)=", 31, 1),
])
def test_missing_keys_on_the_real_kernel(real_file, drop, level, allowed):
    a = analyse(str(real_file(VMCORE)))
    try:
        text = "".join(line + "\n" for line in a.vmcoreinfo.info.text.splitlines()
                       if not line.startswith(drop))
        info = VmcoreInfo(text)
        present = pfn_ranges(a.memory.ranges())
        with pytest.raises(MissingKeyError) as e:
            plan_page_filter(a.memory, a.kernel_memory, info, present, level, False, False)
        assert drop.rstrip("=") in str(e.value)
        pf = plan_page_filter(a.memory, a.kernel_memory, info, present, level, True, False)
        assert pf.level == allowed and pf.asked == level
        # no reference file holds level 15: a page is kept at 15 = 1|2|4|8 iff each of the
        # levels 1, 2, 4 and 8 keeps it
        parts = [1, 2, 4, 8] if allowed == 15 else [allowed]
        kept = np.logical_and.reduce([reference_bits(real_file, p)[1] for p in parts])
        ours = np.unpackbits(pf.bitmap2, bitorder="little")
        assert ours.size >= kept.size and not ours[kept.size:].any()
        assert np.array_equal(ours[:kept.size], kept.astype(np.uint8))
    finally:
        a.close()


def test_info_shows_the_memory_by_class(real_file):
    """The counts of filtering.md's reference table (2,552 cache, 16 user, 218,941 free) and
    the 1,155 zero pages that makedumpfile -c -d 31 points at its shared zero page."""
    res = run("info", real_file(VMCORE), "--json")
    assert res.exit_code == Exit.OK, res.stderr
    mc = json.loads(res.stdout)["memory_classes"]
    assert mc["pages"] == {"ZERO": 1155, "NON_PRI_CACHE": 2552, "PRI_CACHE": 0, "USER": 16,
                           "FREE": 218941, "KERN_DATA": 229376 - 1155 - 2552 - 16 - 218941}
    levels = {int(k): v["pages"] for k, v in mc["dump_levels"].items()}
    # the 2nd-bitmap counts of the references, less zero pages where bit 1 is set
    assert levels[0] == 229376 and levels[2] == levels[4] == 226824
    assert levels[8] == 229360 and levels[16] == 10435 and levels[31] == 7867 - 1155
    text = run("info", real_file(VMCORE)).stdout
    assert "memory class" in text and "FREE 218941" in text and "-d 31 writes 6712" in text
    # on a terminal: one rich bar per class
    import io

    from rich.console import Console

    from sadump.render.crashinfo import MemoryClasses, render_classes

    out = io.StringIO()
    levels = {int(k): v["pages"] for k, v in mc["dump_levels"].items()}
    render_classes(MemoryClasses(mc["pages"], mc["present_pages"], 0, levels), None,
                   Console(file=out, width=120))
    table = out.getvalue()
    assert all(name in table for name in mc["pages"]) and "━" in table


def test_info_without_the_keys_says_why(tmp_path):
    res = run("info", write_raw(ImageSpec(), tmp_path / "m.raw"), "--json")
    assert res.exit_code == Exit.OK, res.stderr
    mc = json.loads(res.stdout)["memory_classes"]
    assert mc["error"] and "mem_section" in mc["error"]


# ---- kdump-compressed output: makedumpfile's bitmaps bit for bit ---------------------------------------
def kdump_parts(path) -> dict:
    """Header geometry, sub header dump_level and both bitmaps, read as the spec lays them out
    (big-endian: block_size 0x1AC, sub_hdr_size 0x1B0, bitmap_blocks 0x1B4, max_mapnr 0x1B8;
    the sub header's dump_level at its offset 8) - not through sadump's reader."""
    data = path.read_bytes()[:1 << 20]
    bs, sub, blocks, mapnr = (int.from_bytes(data[o:o + 4], "big", signed=o != 0x1B8)
                              for o in (0x1AC, 0x1B0, 0x1B4, 0x1B8))
    first = (1 + sub) * bs
    half = blocks // 2 * bs
    return {"block_size": bs, "bitmap_blocks": blocks, "max_mapnr": mapnr,
            "dump_level": int.from_bytes(data[bs + 8:bs + 12], "big", signed=True),
            "bitmap1": data[first:first + half], "bitmap2": data[first + half:first + 2 * half]}


@pytest.mark.parametrize("level", [1, 2, 4, 8, 16, 31])
def test_kdump_bitmaps_equal_makedumpfile(real_file, tmp_path, level):
    out = tmp_path / f"d{level}.kdump"
    res = run("dump", real_file(VMCORE), "-d", level, "--format", "kdump", "-o", out)
    assert res.exit_code == Exit.OK, res.stderr
    ours = kdump_parts(out)
    theirs = kdump_parts(real_file(f"filter/rimg-kdump.d{level}.bitmaps"))
    for key in ("block_size", "bitmap_blocks", "max_mapnr", "dump_level"):
        assert ours[key] == theirs[key], key
    assert ours["bitmap1"] == theirs["bitmap1"]
    assert ours["bitmap2"] == theirs["bitmap2"]


def test_kdump_d31_holds_the_pages_with_their_bytes(real_file, tmp_path):
    """Every page in the 2nd bitmap reads back as the input's bytes (zero pages through the
    shared zero page, as makedumpfile -c writes 1,155 of them)."""
    from sadump.formats.kdump import KdumpFile

    out = tmp_path / "d31.kdump"
    res = run("dump", real_file(VMCORE), "-d", "31", "--format", "kdump", "-o", out, "--json")
    assert res.exit_code == Exit.OK, res.stderr
    kdump = json.loads(res.stdout)["output"]["kdump"]
    assert kdump["dump_level"] == 31 and kdump["pages"] == 7867
    assert kdump["zero_pages"] == 1155
    with ElfCore(str(real_file(VMCORE))) as src, KdumpFile(str(out)) as back:
        for s, e in back.ranges():
            for pos in range(s, e, 1 << 20):
                n = min(1 << 20, e - pos)
                assert back.read(pos, n) == src.read(pos, n)
    assert run("dmesg", out).stdout == run("dmesg", real_file(VMCORE)).stdout


def test_raw_image_on_the_kdump_path_differs_only_by_its_moment(real_file, tmp_path):
    """rimg-kdump.raw was taken before the crash: of its struct pages only two differ from the
    vmcore's (pfn 0x4e9: PG_mappedtodisk; pfn 0x1416: page.private), and neither changes a
    class, so its -d 31 bitmaps equal the vmcore's reference."""
    out = tmp_path / "raw-d31.kdump"
    res = run("dump", real_file("rimg-kdump.raw"), "-d", "31", "--format", "kdump", "-o", out)
    assert res.exit_code == Exit.OK, res.stderr
    ours = kdump_parts(out)
    theirs = kdump_parts(real_file("filter/rimg-kdump.d31.bitmaps"))
    assert ours["bitmap1"] == theirs["bitmap1"]  # the crashkernel left out, as /proc/vmcore
    a = np.unpackbits(np.frombuffer(ours["bitmap2"], np.uint8))
    b = np.unpackbits(np.frombuffer(theirs["bitmap2"], np.uint8))
    assert int((a != b).sum()) == 0


def test_drgn_opens_a_filtered_dump(real_file, tmp_path):
    drgn = import_drgn(kdump=True)
    from drgn.helpers.linux.printk import get_printk_records

    ours = json.loads(run("dmesg", "--json", real_file(VMCORE)).stdout)["records"]
    for fmt in ("kdump", "elf"):
        out = tmp_path / f"d31.{fmt}"
        assert run("dump", real_file(VMCORE), "-d", "31", "--format", fmt, "-o",
                   out).exit_code == Exit.OK
        prog = drgn.Program()
        prog.set_core_dump(str(out))
        assert prog.flags & drgn.ProgramFlags.IS_LINUX_KERNEL
        prog.load_debug_info([str(real_file("vmlinux-6.1.192-rimg"))])
        records = get_printk_records(prog)
        assert [(r.text.decode(), r.timestamp) for r in records] == \
            [(r["text"], r["ts_nsec"]) for r in ours], fmt


def test_every_input_format_filters_alike(real_file, tmp_path):
    """The same moment as QEMU's flattened kdump file and as sadump's own s390 dump of the raw
    image: -d 31 on the kdump path gives the reference bitmaps from each."""
    s390 = tmp_path / "full.s390"
    res = run("dump", real_file("rimg-kdump.raw"), "--mode", "full", "--format", "s390", "-o",
              s390)
    assert res.exit_code == Exit.OK, res.stderr
    theirs = kdump_parts(real_file("filter/rimg-kdump.d31.bitmaps"))
    for src in (real_file("rimg-kdump.qemu-kdump-zlib.flat"), real_file("rimg-kdump.qemu.elf"),
                s390):
        out = tmp_path / f"{src.name}.d31"
        res = run("dump", src, "-d", "31", "--format", "kdump", "-o", out)
        assert res.exit_code == Exit.OK, (src, res.stderr)
        ours = kdump_parts(out)
        assert ours["bitmap1"] == theirs["bitmap1"] and ours["bitmap2"] == theirs["bitmap2"], src


def test_full_path_keeps_the_crashkernel_in_the_first_bitmap(real_file, tmp_path):
    out = tmp_path / "full-d31.kdump"
    res = run("dump", real_file("rimg-kdump.raw"), "--mode", "full", "-d", "31", "--format",
              "kdump", "-o", out, "--json")
    assert res.exit_code == Exit.OK, res.stderr
    parts = kdump_parts(out)
    assert parts["max_mapnr"] == 0x40000  # 1 GiB: the crashkernel's sections have a mem_map
    first = np.unpackbits(np.frombuffer(parts["bitmap1"], np.uint8), bitorder="little")
    assert first[:0x40000].all()
    second = np.unpackbits(np.frombuffer(parts["bitmap2"], np.uint8), bitorder="little")
    ref = np.unpackbits(np.frombuffer(kdump_parts(real_file(
        "filter/rimg-kdump.d31.bitmaps"))["bitmap2"], np.uint8), bitorder="little")
    assert np.array_equal(second[:0x38000], ref[:0x38000])  # the same pages below it


def test_bitmaps_are_not_sized_by_a_wild_address():
    """Two pages present, one of them at 2^45: the bitmaps would take 4 GiB for 8 KiB of
    memory; refused before anything is allocated."""
    from sadump.kernel.mem_section import FilterError
    from sadump.page_filter import check_bitmap_size

    check_bitmap_size([(0, 0x40000)])  # 1 GiB of memory: 32 KiB bitmaps
    with pytest.raises(FilterError, match="bitmaps would take"):
        check_bitmap_size([(0, 1), ((1 << 45) >> 12, ((1 << 45) >> 12) + 1)])


@pytest.mark.parametrize("name, args", [
    ("rimg-kdump.makedumpfile-l-d31.kdump", []),  # LZO to zstd: a conversion, no level
    ("rimg-kdump.makedumpfile-c-d31.kdump", ["-d", "31"]),  # refiltered at the same level
    ("rimg-kdump.makedumpfile-c-d31.kdump", ["-d", "1"]),  # a lower level: ORed, as makedumpfile
])
def test_a_filtered_kdump_input_keeps_its_bitmaps(real_file, tmp_path, name, args):
    """makedumpfile's -d 31 file as input: its 1st bitmap (the memory the system had) and its
    level stay in sadump's output, so readers still see the left-out pages as excluded."""
    from sadump.formats.kdump import KdumpFile

    out = tmp_path / "out.kdump"
    res = run("dump", real_file(name), "--format", "kdump", "-o", out, *args)
    assert res.exit_code == Exit.OK, res.stderr
    ours, theirs = kdump_parts(out), kdump_parts(real_file("filter/rimg-kdump.d31.bitmaps"))
    for key in ("bitmap1", "bitmap2", "max_mapnr", "dump_level"):
        assert ours[key] == theirs[key], key
    with KdumpFile(str(real_file(name))) as src, KdumpFile(str(out)) as back:
        assert back.ranges() == src.ranges()
        for s, e in list(back.ranges())[:8]:
            assert back.read(s, min(e - s, 1 << 20)) == src.read(s, min(e - s, 1 << 20))

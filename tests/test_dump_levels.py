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
        _, kept = reference_bits(real_file, allowed) if allowed in (1, 2, 4, 8, 16, 31) \
            else (None, None)
        if kept is not None:
            assert np.array_equal(np.unpackbits(pf.bitmap2, bitorder="little")[:len(kept)],
                                  kept)
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
    assert "memory by class" in text and "FREE" in text and "█" in text


def test_info_without_the_keys_says_why(tmp_path):
    res = run("info", write_raw(ImageSpec(), tmp_path / "m.raw"), "--json")
    assert res.exit_code == Exit.OK, res.stderr
    mc = json.loads(res.stdout)["memory_classes"]
    assert mc["error"] and "mem_section" in mc["error"]

"""A dump given as input (issue 14): the kernel's /proc/vmcore, makedumpfile's and sadump's own
output are converted as they are (decision "dumped", exit 0); QEMU's dumps of a running or
stopped machine are memory images and keep the trigger's decision."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.formats.elf import ElfCore

runner = CliRunner()
MiB = 1 << 20
#: the crash of rimg-kdump as its VMCOREINFO CRASHTIME says (README of shared/real, issue 14)
CRASH = "crash time 2026-11-26 18:01:07 UTC"


def inspect(path) -> tuple[int, dict]:
    res = runner.invoke(app, ["inspect-meminfo", "--json", str(path)])
    return res.exit_code, json.loads(res.stdout)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name, words", [
    ("rimg-kdump.proc-vmcore.elf", ["/proc/vmcore", CRASH,
                                    "crashkernel [0x38000000, 0x40000000) left out"]),
    ("rimg-kdump.makedumpfile-c-d31.kdump", ["kdump-compressed", "dump level 31", CRASH]),
    ("rimg-kdump.makedumpfile-l-d31.kdump", ["kdump-compressed", "dump level 31", CRASH]),
])
def test_a_kernel_dump_is_already_dumped(real_file, name, words):
    status, report = inspect(real_file(name))
    assert status == Exit.OK
    decision = report["decision"]
    assert decision["path"] == "dumped" and decision["reason_code"] == 0
    for w in words:
        assert w in decision["reason"], (w, decision["reason"])
    # every os_info check it can make is still shown
    assert report["meminfo"]["valid"] and report["meminfo"]["checksum"]["ok"]
    assert report["meminfo"]["crashkernel"] == {"addr": 0x38000000, "size": 0x8000000}


@pytest.mark.parametrize("name", ["rimg-kdump.qemu.elf", "rimg-kdump.qemu-kdump-zlib.flat"])
def test_qemu_dumps_keep_the_trigger_decision(real_file, name):
    status, report = inspect(real_file(name))
    assert status == Exit.OK and report["decision"]["path"] == "kdump"
    assert report["decision"]["entry_point"] == 0x38010010


def test_converting_the_kernels_vmcore_exits_0(real_file, tmp_path):
    out = tmp_path / "vmcore.kdump"
    res = run("dump", real_file("rimg-kdump.proc-vmcore.elf"), "--format", "kdump", "-o", out,
              "--json")
    assert res.exit_code == Exit.OK, res.stderr
    assert "converting the input" in res.stderr and "0x4610" not in res.stderr
    summary = json.loads(res.stdout)
    assert summary["decision"]["path"] == "dumped" and summary["path"] == "kdump"
    # the converted file is a kernel dump too: converting it again is again "dumped"
    status, report = inspect(out)
    assert status == Exit.OK and report["decision"]["path"] == "dumped"


def test_info_says_what_the_file_is(real_file):
    res = run("info", real_file("rimg-kdump.proc-vmcore.elf"))
    assert res.exit_code == Exit.OK, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("decision"))
    assert "dumped" in line and "/proc/vmcore" in line and "fall back" not in line
    res = run("info", real_file("rimg-kdump.proc-vmcore.elf"), "--json")
    assert json.loads(res.stdout)["decision"]["path"] == "dumped"


def test_modes_keep_their_meaning_for_a_dump(real_file, tmp_path):
    vmcore = real_file("rimg-kdump.proc-vmcore.elf")
    res = run("dump", vmcore, "--mode", "kdump", "-o", tmp_path / "k", "--json")
    assert res.exit_code == Exit.OK, res.stderr
    kdump = json.loads(res.stdout)
    # the input is its own kdump-shaped view: written as it is, crashkernel still left out
    assert kdump["path"] == "kdump" and kdump["decision"]["path"] == "dumped"
    assert kdump["output"]["excluded"] == [0x38000000, 1 << 30]
    assert [(s["paddr"], s["size"]) for s in kdump["output"]["segments"]] == [(0, 0x38000000)]
    with ElfCore(str(vmcore)) as theirs, ElfCore(str(tmp_path / "k")) as ours:
        assert ours.ranges() == theirs.ranges() == [(0, 0x38000000)]
        for pos in range(0, 0x38000000, 4 * MiB):
            assert ours.read(pos, MiB) == theirs.read(pos, MiB), hex(pos)
    res = run("dump", vmcore, "--mode", "full", "-o", tmp_path / "f", "--json")
    assert res.exit_code == Exit.OK, res.stderr
    full = json.loads(res.stdout)["output"]
    assert full["excluded"] is None
    assert sum(s["size"] for s in full["segments"]) == 0x38000000  # every page of the input


def test_sadumps_own_output_of_the_raw_image(real_file, tmp_path):
    """The kdump-path ELF and kdump outputs are dumps; the full-path ELF (crashkernel kept)
    is a memory image again, judged as a trigger would."""
    raw = real_file("rimg-kdump.raw")
    for fmt in ("elf", "kdump"):
        out = tmp_path / f"vmcore.{fmt}"
        res = run("dump", raw, "--format", fmt, "-o", out)
        assert res.exit_code == Exit.OK, res.stderr
        status, report = inspect(out)
        assert status == Exit.OK and report["decision"]["path"] == "dumped", fmt
    full = tmp_path / "full.elf"
    assert run("dump", raw, "--mode", "full", "-o", full).exit_code == Exit.OK
    status, report = inspect(full)
    assert report["decision"]["path"] == "kdump"


def test_a_raw_image_without_crashkernel_still_falls_back(real_file):
    status, report = inspect(real_file("rimg-nokdump.qemu-kdump-zlib.kdump"))
    assert status == Exit.FULL_DUMP and report["decision"]["path"] == "full"

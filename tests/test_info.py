"""`sadump info`: the crash facts on one screen, checked against what the guest said about
itself, against the vmcore's own notes (read with pyelftools), and on builder images."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from sadump.cli import app
from tests.fixtures.builder import Cpu, ImageSpec
from tests.fixtures.printk import PrbLog, dmesg_line, write_with_log

GUEST = "rimg-kdump.guest-dmesg.txt"
MAKEDUMPFILE = "rimg-kdump.makedumpfile-s390x-dump-dmesg-of-proc-vmcore.txt"


def info_json(path) -> dict:
    result = CliRunner().invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def info_text(path) -> str:
    result = CliRunner().invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def guest_facts(real_text) -> dict:
    text = real_text("rimg-kdump.guest-info.txt")
    crash = re.search(r"^\s*([0-9a-f]+)-([0-9a-f]+) : Crash kernel", text, re.MULTILINE)
    return {"release": text.split("--- uname -a\n")[1].split()[2],
            "crashkernel": (int(crash.group(1), 16), int(crash.group(2), 16) + 1 -
                            int(crash.group(1), 16)),
            "cpus": int(re.search(r"# processors\s*:\s*(\d+)", text).group(1))}


def vmcore_notes(path) -> tuple[list[tuple[int, int, int]], int]:
    """(prefix, PSW mask, PSW address) per CPU and CRASHTIME, from the ELF notes."""
    from elftools.elf.elffile import ELFFile

    cpus, crashtime = [], None
    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] != "PT_NOTE":
                continue
            for note in seg.iter_notes():
                desc = note["n_desc"]
                if note["n_type"] == "NT_PRSTATUS":  # psw at 0x70 (spec 5.3)
                    cpus.append([0, int.from_bytes(desc[0x70:0x78], "big"),
                                 int.from_bytes(desc[0x78:0x80], "big")])
                elif note["n_type"] == 773:  # NT_S390_PREFIX
                    cpus[-1][0] = int.from_bytes(desc[:4], "big")
                elif note["n_name"] == "VMCOREINFO":
                    crashtime = int(re.search(rb"CRASHTIME=(\d+)", desc).group(1))
    return [tuple(c) for c in cpus], crashtime


def test_stop_moment_image(real_file, real_text):
    doc = info_json(real_file("rimg-kdump.raw"))
    facts = guest_facts(real_text)
    assert doc["osrelease"] == facts["release"]
    assert (doc["crashkernel"]["addr"], doc["crashkernel"]["size"]) == facts["crashkernel"]
    assert doc["crashtime"] is None  # VMCOREINFO gets CRASHTIME only when the kernel crashes
    assert doc["cpus"] == []  # README: no CPU status was stored in the raw image
    assert doc["memory"] == {"size": 1 << 30, "ranges": [[0, 1 << 30]]}
    assert doc["os_info"]["valid"] and doc["os_info"]["pointer"] == 0x409000
    assert doc["decision"]["path"] == "kdump"
    assert doc["log"]["tail_kind"] == "last lines"  # no panic yet
    assert doc["log"]["tail"] == real_text(GUEST).splitlines()[-10:]


def test_crash_moment_vmcore(real_file, real_text):
    path = real_file("rimg-kdump.proc-vmcore.elf")
    doc = info_json(path)
    cpus, crashtime = vmcore_notes(path)
    assert len(cpus) == guest_facts(real_text)["cpus"]
    assert [(c["prefix"], *c["psw"]) for c in doc["cpus"]] == cpus
    assert doc["crashtime"] == crashtime
    assert doc["crashtime_utc"] == datetime.fromtimestamp(crashtime, UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    # the guest's clock: after the kernel was built (its banner), on the same day
    built = datetime.strptime(re.search(r"#1 SMP (.*)$", real_text(GUEST).splitlines()[0])
                              .group(1), "%a %b %d %H:%M:%S UTC %Y").replace(tzinfo=UTC)
    assert 0 < crashtime - built.timestamp() < 86400
    log = real_text(MAKEDUMPFILE).splitlines()
    start = next(i for i, line in enumerate(log) if "Kernel panic - not syncing" in line)
    assert doc["log"]["tail_kind"] == "crash report"
    assert doc["log"]["tail"] == log[start:]
    assert doc["memory"]["ranges"] == [[0, 0x38000000]]  # the vmcore leaves the crashkernel out


def test_text_screen(real_file):
    out = info_text(real_file("rimg-kdump.proc-vmcore.elf"))
    assert "6.1.192-rimg" in out and "CRASHTIME=" in out
    assert re.search(r"CPUs\s+2 with a stored status", out)
    assert "PSW" in out and "os_info      valid at 0x409000" in out
    assert "Kernel panic - not syncing: sysrq triggered crash" in out
    assert len(out.splitlines()) <= 40  # one screen


def test_flat_and_elf_copies_show_cpus(real_file):
    for name in ("rimg-kdump.qemu.elf", "rimg-kdump.qemu-kdump-zlib.flat"):
        doc = info_json(real_file(name))
        assert len(doc["cpus"]) == 2 and all(c["prefix"] for c in doc["cpus"])


# ---- synthetic --------------------------------------------------------------------------

def oops_log(noise_after_bug: int = 3) -> PrbLog:
    log = PrbLog(count_bits=8, size_bits=14)
    t = 0
    for text in (["booting", "BUG: scheduling while atomic"] + [f"noise {i}" for i in
                                                                 range(noise_after_bug)]
                 + ["Unable to handle kernel pointer dereference", "Oops: 0004 ilc:3 [#1] SMP",
                    "Call Trace:", " [<0000000000123456>] do_it+0x12/0x40",
                    "Kernel panic - not syncing: Fatal exception"]):
        t += 1_000_000
        log.add(text, ts_nsec=t)
    return log


def test_synthetic_crash(tmp_path):
    cpus = [Cpu.distinct(0), Cpu.distinct(1), Cpu.distinct(2)]
    spec = ImageSpec(cpus=cpus, crashtime=1714564800, new_layout=True)
    write_with_log(spec, oops_log(200), tmp_path / "mem")
    doc = info_json(tmp_path / "mem")
    assert [tuple(c["psw"]) for c in doc["cpus"]] == [c.psw for c in cpus]
    assert [c["prefix"] for c in doc["cpus"]] == [c.prefix for c in cpus]
    assert doc["crashtime_utc"] == "2024-05-01 12:00:00 UTC"
    assert doc["osrelease"] == "6.1.0-synthetic"
    # the BUG is 200 records before the oops: not part of this crash report
    assert doc["log"]["tail"][0] == dmesg_line(204_000_000, "Oops: 0004 ilc:3 [#1] SMP")
    assert doc["log"]["tail"][-1].endswith("Kernel panic - not syncing: Fatal exception")
    assert len(doc["log"]["tail"]) == 4


def test_oops_and_earlier_bug_together(tmp_path):
    write_with_log(ImageSpec(), oops_log(3), tmp_path / "mem")
    tail = info_json(tmp_path / "mem")["log"]["tail"]
    assert tail[0].endswith("BUG: scheduling while atomic") and len(tail) == 9


@pytest.mark.parametrize("damage,omit,words", [
    (set(), {"SYMBOL(prb)"}, "kernel log   not readable: VMCOREINFO lacks SYMBOL(prb)"),
    ({"vmcoreinfo_bad_name"}, set(), "kernel       unknown: no VMCOREINFO"),
])
def test_facts_without_a_log(tmp_path, damage, omit, words):
    log = oops_log()
    log.omit |= omit
    write_with_log(ImageSpec(damage=damage), log, tmp_path / "mem")
    out = info_text(tmp_path / "mem")
    assert words in out
    assert "os_info      valid" in out and "decision     kdump" in out
    doc = info_json(tmp_path / "mem")
    assert doc["log"]["tail"] == [] and doc["log"]["error"]

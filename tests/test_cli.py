"""The command line as runbooks use it: exit statuses, one-line errors, JSON on stdout only."""

import json
import os
import subprocess
import sys

import pytest

from sadump.cli import Exit
from tests.fixtures.builder import ImageSpec, write_elf, write_raw


def sadump(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sadump", *map(str, args)],
                          check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_sample_image_runs_without_a_file():
    r = sadump("inspect-meminfo", "--sample", "--json")
    assert r.returncode == Exit.OK, r.stderr
    report = json.loads(r.stdout)
    assert report["decision"]["path"] == "kdump"
    assert "sample" in r.stderr


def test_human_report_names_the_decision(tmp_path):
    r = sadump("inspect-meminfo", write_raw(ImageSpec(), tmp_path / "m.raw"))
    assert r.returncode == Exit.OK
    assert "decision: kdump" in r.stdout and "OSINFOSZ" in r.stdout


def test_fallback_status_and_reason_on_stderr(tmp_path):
    r = sadump("inspect-meminfo", "--json",
               write_raw(ImageSpec(damage={"checksum_off_by_one_bit"}), tmp_path / "m.raw"))
    assert r.returncode == Exit.FULL_DUMP
    assert json.loads(r.stdout)["decision"]["reason_code"] == 0x4521
    assert "0x4521" in r.stderr


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: None, "cannot open"),
    (lambda p: p.write_bytes(b"\x7fELF\x02\x02\x01" + b"\0" * 9 + b"\0\x04\0\x16" + b"\xff" * 60),
     "bad: e_phnum is PN_XNUM (0xffff) but there is no section header 0"),
    (lambda p: p.write_bytes(b"KDUMP   " + b"\xff" * 100),
     "bad: truncated kdump header (108 of 464 bytes)"),
    (lambda p: p.write_bytes(bytes.fromhex("A8190173618F23FD") + b"\xff" * 100),
     "bad: file is 108 bytes, too short for the 4 KiB s390 dump header"),
])
def test_unreadable_image_is_one_line(tmp_path, make, words):
    path = tmp_path / "bad"
    make(path)
    r = sadump("inspect-meminfo", path)
    assert r.returncode == Exit.IMAGE_ERROR, r.stderr
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sadump: error:"), r.stderr
    assert words in lines[0]
    assert "Traceback" not in r.stderr


def test_truncated_elf_is_one_line(tmp_path):
    path = write_elf(ImageSpec(damage={"truncated"}), tmp_path / "m.elf")
    r = sadump("inspect-meminfo", path)
    assert r.returncode == Exit.IMAGE_ERROR
    assert "shorter than its header claims" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors():
    r = sadump("inspect-meminfo")
    assert r.returncode == Exit.USAGE and r.stdout == ""
    assert r.stderr.splitlines()[0] == \
        "sadump: error: missing IMAGE (or --sample for the bundled sample image)"
    r = sadump("inspect-meminfo", "--bogus")
    assert r.returncode == Exit.USAGE and r.stdout == ""
    assert "No such option '--bogus'" in r.stderr and "Traceback" not in r.stderr


def test_unknown_input_format(tmp_path):
    """A choice the command line does not offer is a usage error, like --format lkcd."""
    r = sadump("inspect-meminfo", "-F", "lkcd", write_raw(ImageSpec(), tmp_path / "m.raw"))
    assert r.returncode == Exit.USAGE and "lkcd" in r.stderr


def test_help_lists_the_choices():
    r = subprocess.run([sys.executable, "-m", "sadump", "dump", "--help"], check=False,
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert r.returncode == Exit.OK
    for choice in ("auto", "kdump", "full", "elf", "s390", "zstd", "lzo", "snappy", "kdump-flat"):
        assert choice in r.stdout, choice


@pytest.mark.parametrize("command", [[], ["dump"], ["inspect-meminfo"], ["info"], ["bt"]])
def test_help_on_a_pipe_is_plain_text_without_rich(command):
    """--help into a pipe is click's plain text (defaults in words, no escaped brackets)
    and never imports rich; on a terminal typer's rich panels stay."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "sadump", *command, "--help"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == Exit.OK
    assert r.stdout.startswith("Usage:") and "\\[" not in r.stdout and "╭" not in r.stdout
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines()
                if ln.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] == "rich"}


def test_dump_level_out_of_range_is_a_usage_error(tmp_path):
    r = sadump("dump", write_raw(ImageSpec(), tmp_path / "m.raw"), "-d", "32", "-o",
               tmp_path / "out")
    assert r.returncode == Exit.USAGE and "from 0 to 31" in r.stderr
    assert not (tmp_path / "out").exists()


def test_forced_input_format(tmp_path):
    """An ELF read as raw memory finds no os_info at 0xE18: a documented fallback."""
    path = write_elf(ImageSpec(), tmp_path / "m.elf")
    r = sadump("inspect-meminfo", "--json", "-F", "raw", path)
    assert r.returncode == Exit.FULL_DUMP
    assert json.loads(r.stdout)["image"]["format"] == "raw"


def test_verify_option(tmp_path):
    """--verify reaches the writers: kdump's read-back from the file, ELF's pyelftools check
    left out with none; the s390 format has no check to choose."""
    image = write_raw(ImageSpec(), tmp_path / "m.raw")
    r = sadump("dump", image, "--format", "kdump", "--verify", "file", "-o", tmp_path / "k",
               "--json")
    assert r.returncode == Exit.OK, r.stderr
    assert json.loads(r.stdout)["output"]["kdump"]["verified"].startswith("read back")
    r = sadump("dump", image, "--verify", "none", "-o", tmp_path / "e")
    assert r.returncode == Exit.OK, r.stderr
    assert (tmp_path / "e").read_bytes()[:4] == b"\x7fELF" and "wrote" in r.stderr
    r = sadump("dump", image, "--format", "s390", "--verify", "none", "-o", tmp_path / "s")
    assert r.returncode == Exit.USAGE and "--verify" in r.stderr
    assert not (tmp_path / "s").exists()
    r = sadump("dump", image, "--verify", "sometimes", "-o", tmp_path / "x")
    assert r.returncode == Exit.USAGE and "'sometimes' is not one of" in r.stderr
    assert not (tmp_path / "x").exists()


def test_verify_none_skips_the_elf_check(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sadump.cli import app
    from sadump.writers import elfcheck

    def refuse(*a, **k):
        raise AssertionError("pyelftools check ran")

    monkeypatch.setattr(elfcheck, "check_elf", refuse)
    image = write_raw(ImageSpec(), tmp_path / "m.raw")
    res = CliRunner().invoke(app, ["dump", str(image), "--verify", "none", "-o",
                                   str(tmp_path / "a")])
    assert res.exit_code == Exit.OK, res.stderr
    assert (tmp_path / "a").read_bytes()[:4] == b"\x7fELF"
    # without --verify none the check runs: the planted failure, no other, stops the dump
    res = CliRunner().invoke(app, ["dump", str(image), "-o", str(tmp_path / "b")])
    assert isinstance(res.exception, AssertionError), res.exception
    assert str(res.exception) == "pyelftools check ran"
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
@pytest.mark.parametrize("args", [["--json"], []], ids=["json", "report"])
def test_a_full_stdout_is_one_line_and_status_5(args):
    """`> report.json` on a full disk: one line and exit 5, not an internal error."""
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "sadump", "inspect-meminfo", "--sample",
                            *args], check=False, stdout=full, stderr=subprocess.PIPE,
                           text=True)
    assert r.returncode == Exit.NOT_WRITTEN, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("sadump: error:")]
    assert lines == ["sadump: error: cannot write to stdout: No space left on device"]
    assert "Traceback" not in r.stderr

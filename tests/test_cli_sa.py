"""The command line for stand-alone dumps: several volume files as SOURCE, --block-size,
--version and the version in every JSON output."""

from __future__ import annotations

import json

from sadump import __version__
from sadump.cli import Exit
from tests.fixtures import sa_dumps as sa
from tests.test_format_s390_ext import MEM, SIZE, cli
from tests.test_format_s390mv import write_set


def test_version():
    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"sadump {__version__}"


def test_every_command_takes_a_set_of_volumes(tmp_path):
    paths = write_set(tmp_path)
    out = tmp_path / "x.elf"
    res = cli("dump", paths[2], paths[0], paths[1], "--mode", "full", "-o", out, "--json")
    assert res.exit_code == Exit.OK, res.stderr
    summary = json.loads(res.stdout)
    assert summary["sadump_version"] == __version__
    from sadump.formats import open_image

    with open_image(str(out)) as back:
        for a, data in MEM.items():
            assert back.read(a, len(data)) == data
    for cmd in ("inspect-meminfo", "info"):
        res = cli(cmd, *paths, "--json")
        assert res.exit_code in (Exit.OK, Exit.FULL_DUMP), res.stderr
        assert json.loads(res.stdout)["sadump_version"] == __version__


def test_a_missing_volume_is_one_line_exit_4(tmp_path):
    paths = write_set(tmp_path)
    res = cli("info", paths[0], paths[2])
    assert res.exit_code == Exit.IMAGE_ERROR
    assert res.stderr.count("\n") == 1 and "volume 1 missing" in res.stderr


def test_block_size_option(tmp_path):
    path = sa.write_ext(tmp_path / "d", MEM, SIZE, block=512)
    assert cli("info", path, "--block-size", "1000").exit_code == Exit.USAGE
    res = cli("info", path, "--block-size", "512", "--json")
    assert res.exit_code in (Exit.OK, Exit.FULL_DUMP), res.stderr
    assert json.loads(res.stdout)["dumper"]["block_size"] == 512
    raw = tmp_path / "r"
    raw.write_bytes(bytes(8192))
    res = cli("info", raw, "--block-size", "4096")
    assert res.exit_code == Exit.IMAGE_ERROR and "--block-size is for s390_ext" in res.stderr


def test_an_incomplete_dump_is_written_and_marked(tmp_path):
    """No stop marker: every format is written as far as the dump goes; kdump's header says
    INCOMPLETE (status bit 0x8, read here as the spec lays it out), s390 has no end marker,
    and the JSON and a warning say so."""
    import struct

    path = sa.write_ext(tmp_path / "d", MEM, SIZE, stop=False, end=False)
    for fmt in ("kdump", "s390", "elf"):
        out = tmp_path / f"out.{fmt}"
        res = cli("dump", path, "--mode", "full", "--format", fmt, "-o", out, "--json")
        assert res.exit_code == Exit.OK, res.stderr
        summary = json.loads(res.stdout)
        assert "no stop marker" in summary["incomplete"]
        assert "incomplete" in res.stderr
        data = out.read_bytes()
        if fmt == "kdump":
            assert struct.unpack_from(">i", data, 0x1A8)[0] & 0x8  # disk_dump_header.status
        if fmt == "s390":
            assert b"DUMP_END" not in data[-16:]
    res = cli("info", path, "--json")
    facts = json.loads(res.stdout)["dumper"]
    assert facts["complete"] is False and "no stop marker" in facts["incomplete"]


def test_dumper_facts_rendered(tmp_path):
    """inspect-meminfo and info show the dump's own facts, text and JSON."""
    path = sa.write_ext(tmp_path / "d", MEM, SIZE, hdr={"mem_size_real": 4 * SIZE})
    for cmd in ("inspect-meminfo", "info"):
        res = cli(cmd, path, "--json")
        d = json.loads(res.stdout)["dumper"]
        assert (d["format"], d["version"], d["compression"], d["volumes"]) == \
            ("s390_ext", 2, "zlib", 1)
        assert (d["start_tod"], d["end_tod"], d["cpu_id"]) == (sa.TOD, sa.END_TOD, 0x85618000)
        assert (d["mem_size"], d["mem_size_real"], d["cpus"]) == (SIZE, 4 * SIZE, 2)
        assert d["start_utc"] == "2026-11-26 18:01:12 UTC" and d["complete"] is True
        text = cli(cmd, path).stdout
        assert "s390_ext version 2, zlib, 1 volume" in text
        assert "the dump holds 32 of 128 MiB" in text and "60.0 s later" in text
        assert "dumping CPU id 0x85618000" in text

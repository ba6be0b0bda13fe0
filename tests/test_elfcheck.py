"""pyelftools as the independent reader of each written ELF dump (writers/elfcheck.py): it
runs after every ELF dump to a file, and a header that says something other than the plan
is a failed dump with no file left."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from sadump.analysis import analyse
from sadump.cli import Exit, app
from sadump.dump_plan import plan_dump, write_dump
from sadump.writers import elf as elf_writer
from sadump.writers.elfcheck import check_elf
from sadump.writers.sink import OutputError
from tests.fixtures.builder import ImageSpec, MiB, write_raw
from tests.test_dump import ranges_of, read_elf


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("elfcheck")
    image = write_raw(ImageSpec(crashtime=1), folder / "mem.raw")
    analysis = analyse(str(image))
    plan = plan_dump(analysis, "full")
    write_dump(plan, str(folder / "vmcore"), progress=False)
    yield plan, folder / "vmcore", image
    analysis.close()


def test_the_written_dump_passes(written):
    """The check passes on the file, and the plan it checks against is the image's own: the
    file read by the tests' ELF reader (written from the ELF spec) holds the fixture's memory
    layout and notes, so check and plan cannot be wrong together."""
    plan, path, _ = written
    assert check_elf(str(path), plan.layout.segments, plan.layout.note_offset, plan.notes) \
        is None
    spec = ImageSpec(crashtime=1)
    elf = read_elf(path)
    assert ranges_of(elf) == spec.present == [(0, 64 * MiB)]  # full: all memory, one PT_LOAD
    assert elf["phdrs"][0]["offset"] == plan.layout.note_offset
    assert [(n.name, n.type, n.desc) for n in plan.notes] == elf["notes"]
    assert len([n for n in elf["notes"] if n[:2] == ("CORE", 1)]) == len(spec.cpus) == 2
    vmci = [desc for name, _, desc in elf["notes"] if name == "VMCOREINFO"]
    assert vmci == [spec.build().vmcoreinfo]


def test_other_segments_or_notes_fail(written):
    plan, path, _ = written
    segs = plan.layout.segments
    seg, off = segs[0]
    moved = [(dataclasses.replace(seg, vaddr=seg.vaddr + 0x1000), off), *segs[1:]]
    with pytest.raises(OutputError, match="pyelftools.*PT_LOAD"):
        check_elf(str(path), moved, plan.layout.note_offset, plan.notes)
    other = [*plan.notes[:-1], dataclasses.replace(plan.notes[-1], desc=b"x")]
    with pytest.raises(OutputError, match="pyelftools.*note"):
        check_elf(str(path), segs, plan.layout.note_offset, other)
    with pytest.raises(OutputError, match="pyelftools"):
        check_elf(str(path), segs, plan.layout.note_offset + 4096, plan.notes)


def test_a_wrong_header_leaves_no_file(written, tmp_path, monkeypatch):
    _, _, image = written
    real = elf_writer.layout

    def wrong(plan, options=None):
        lay = real(plan, options)
        head = bytearray(lay.header)
        head[5] = 1  # EI_DATA little-endian: the plan said big
        return dataclasses.replace(lay, header=bytes(head))

    monkeypatch.setattr(elf_writer, "layout", wrong)
    out = tmp_path / "out"
    out.mkdir()
    res = CliRunner().invoke(app, ["dump", str(image), "-o", str(out / "vmcore")])
    assert res.exit_code == Exit.NOT_WRITTEN, res.stderr
    assert "pyelftools" in res.stderr and "nothing written" in res.stderr
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("cut", [3, 40, 64 + 20])
def test_a_cut_or_foreign_file_fails(written, tmp_path, cut):
    """A file cut inside its header or program headers, or that is not ELF at all."""
    plan, path, _ = written
    short = tmp_path / "short"
    short.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(OutputError, match="pyelftools"):
        check_elf(str(short), plan.layout.segments, plan.layout.note_offset, plan.notes)
    foreign = tmp_path / "foreign"
    foreign.write_bytes(b"\x7fELG" + path.read_bytes()[4:4096])
    with pytest.raises(OutputError, match="pyelftools.*header"):
        check_elf(str(foreign), plan.layout.segments, plan.layout.note_offset, plan.notes)

"""`sadump dump` on the real images, checked against the kernel's own /proc/vmcore of the
same boot (rimg-kdump.proc-vmcore.elf). Each 1 GiB dump is written once per module."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.formats.s390 import S390Dump

runner = CliRunner()
MiB = 1 << 20
REFERENCE = "rimg-kdump.proc-vmcore.elf"
INPUTS = ["rimg-kdump.raw", "rimg-kdump.qemu.elf", "rimg-kdump.qemu-kdump-zlib.flat"]
PER_CPU = {1, 2, 0x301, 0x302, 0x303, 0x304, 0x305, 0x309, 0x30A}
#: pyelftools names the generic core note types; s390 ones stay numbers
CORE_TYPES = {"NT_PRSTATUS": 1, "NT_FPREGSET": 2, "NT_PRPSINFO": 3}
NT_S390_PREFIX = 0x305


def elf_info(path: Path) -> dict:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        segs = [(s["p_type"], s["p_offset"], s["p_vaddr"], s["p_paddr"], s["p_filesz"],
                 s["p_memsz"], s["p_flags"], s["p_align"]) for s in elf.iter_segments()]
        notes = [(n["n_name"], CORE_TYPES.get(n["n_type"], n["n_type"]), n["n_descsz"],
                  n["n_desc"])
                 for s in elf.iter_segments() if s["p_type"] == "PT_NOTE"
                 for n in s.iter_notes()]
        f.seek(0)
        ehdr = f.read(64)
    return {"segments": segs, "loads": [s for s in segs if s[0] == "PT_LOAD"],
            "notes": notes, "ehdr": ehdr}


def note_shape(notes) -> list[tuple]:
    return [(name, ntype, size) for name, ntype, size, _ in notes]


def vmcoreinfo_of(info: dict) -> str:
    [text] = [d for name, _, _, d in info["notes"] if name == "VMCOREINFO"]
    return text if isinstance(text, str) else text.decode()


@pytest.fixture(scope="module")
def reference(real_file) -> dict:
    return elf_info(real_file(REFERENCE))


@pytest.fixture(scope="module")
def outputs(real_file, tmp_path_factory) -> dict:
    """name -> (result, vmcore path) for each input, written once."""
    folder = tmp_path_factory.mktemp("vmcores")
    done = {}
    for name in INPUTS:
        out = folder / f"{name}.vmcore"
        res = runner.invoke(app, ["dump", str(real_file(name)), "-o", str(out)])
        done[name] = (res, out)
    return done


@pytest.mark.parametrize("name", INPUTS)
def test_kdump_vmcore_has_the_references_shape(outputs, reference, name):
    res, out = outputs[name]
    assert res.exit_code == Exit.OK, res.stderr
    got = elf_info(out)
    # the same ELF header (e_phnum included) and the same PT_LOAD ranges, vaddr, flags
    assert got["ehdr"] == reference["ehdr"]
    assert [s[2:] for s in got["loads"]] == [s[2:] for s in reference["loads"]]
    assert got["segments"][0][:2] == reference["segments"][0][:2] == ("PT_NOTE", 0x1000)
    assert all(s[1] % 4096 == 0 for s in got["loads"])
    # notes: the reference's types, names, sizes and order (less the per-CPU ones from raw),
    # VMCOREINFO's size aside (the reference's has CRASHTIME)
    want = [n for n in note_shape(reference["notes"]) if n[0] != "VMCOREINFO"]
    if name.endswith(".raw"):
        want = [n for n in want if n[1] not in PER_CPU]
        assert [n[1] for n in want] == [3]  # NT_PRPSINFO alone
        assert "no CPU has a stored status" in res.stderr
    assert [n for n in note_shape(got["notes"]) if n[0] != "VMCOREINFO"] == want
    assert note_shape(got["notes"])[-1][:2] == ("VMCOREINFO", reference["notes"][-1][1])
    assert got["notes"][0][3] == reference["notes"][0][3]  # NT_PRPSINFO, field by field


@pytest.mark.parametrize("name", INPUTS)
def test_vmcoreinfo_is_the_old_kernels(outputs, reference, real_text, name):
    _, out = outputs[name]
    text = vmcoreinfo_of(elf_info(out))
    ref = "".join(ln for ln in vmcoreinfo_of(reference).splitlines(keepends=True)
                  if not ln.startswith("CRASHTIME="))
    assert text == ref
    assert text == real_text("rimg-kdump.vmcoreinfo.txt")


@pytest.mark.parametrize("name", INPUTS)
def test_loads_hold_the_images_bytes(outputs, real_file, name):
    """Every MiB of the PT_LOAD equals the raw image at the same physical address (the
    QEMU ELF and flat files hold the same memory as the raw pmemsave)."""
    _, out = outputs[name]
    [load] = elf_info(out)["loads"]
    offset, paddr, size = load[1], load[3], load[4]
    with open(out, "rb") as f, open(real_file("rimg-kdump.raw"), "rb") as raw:
        raw.seek(paddr)
        f.seek(offset)
        for pos in range(0, size, MiB):
            assert f.read(MiB) == raw.read(MiB), f"MiB at {paddr + pos:#x}"


def test_loads_mostly_equal_the_kernels_own(outputs, real_file, reference):
    """The reference was taken later (about 11 of 896 MiB changed): the rest must match."""
    _, out = outputs["rimg-kdump.raw"]
    [load] = elf_info(out)["loads"]
    [ref_load] = reference["loads"]
    differ = 0
    with open(out, "rb") as f, open(real_file(REFERENCE), "rb") as ref:
        f.seek(load[1])
        ref.seek(ref_load[1])
        for _ in range(0, load[4], MiB):
            differ += f.read(MiB) != ref.read(MiB)
    assert differ <= 32


@pytest.mark.parametrize("name", INPUTS)
def test_cpu_notes_from_qemu_files(outputs, reference, name):
    _, out = outputs[name]
    notes = elf_info(out)["notes"]
    prefixes = [d for n, t, _, d in notes if t == NT_S390_PREFIX]
    if name.endswith(".raw"):
        assert prefixes == []
        return
    # the same CPUs in the same order as the kernel's notes, pr_pid 1, 2
    assert len(prefixes) == 2
    assert prefixes == [d for n, t, _, d in reference["notes"] if t == NT_S390_PREFIX]
    pids = [struct.unpack_from(">I", d, 0x20)[0] for n, t, _, d in notes if t == 1]
    assert pids == [1, 2]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf is not installed")
def test_readelf_reads_it_without_warnings(outputs):
    for _, out in outputs.values():
        res = subprocess.run(["readelf", "-h", "-l", "-n", str(out)], capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0
        assert res.stderr == "" and "warning" not in res.stdout.lower()
        assert "NT_PRPSINFO" in res.stdout and "VMCOREINFO" in res.stdout


def test_nokdump_falls_back_to_a_full_dump(real_file, real_text, tmp_path):
    out = tmp_path / "vmcore"
    res = runner.invoke(app, ["dump", str(real_file("rimg-nokdump.raw")), "-o", str(out),
                              "--json"])
    assert res.exit_code == Exit.FULL_DUMP
    summary = json.loads(res.stdout)
    assert summary["path"] == "full" and summary["decision"]["reason_code"] == 0x4523
    assert "0x4523" in res.stderr
    info = elf_info(out)
    assert [(s[3], s[5]) for s in info["loads"]] == [(0, 1 << 30)]  # all memory
    assert any(n[0] == "VMCOREINFO" for n in info["notes"])
    assert vmcoreinfo_of(info) == real_text("rimg-nokdump.vmcoreinfo.txt")


def test_s390_format_reads_back(real_file, tmp_path):
    raw = real_file("rimg-nokdump.raw")
    out = tmp_path / "dump.s390"
    res = runner.invoke(app, ["dump", str(raw), "-o", str(out), "--format", "s390"])
    assert res.exit_code == Exit.FULL_DUMP, res.stderr
    with S390Dump(str(out)) as back, open(raw, "rb") as f:
        assert back.incomplete is None and back.ranges() == [(0, 1 << 30)]
        for pos in range(0, 1 << 30, MiB):
            assert back.read(pos, MiB) == f.read(MiB), hex(pos)

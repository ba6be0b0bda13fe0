"""NGDump partition images, made with mkfs.ext4 -d (tests/fixtures/ngdump.py): the ELF
vmcore inside is read in place through the partition's blocks, the same as the ELF file
itself; the meta file and the file system are checked; the dump is "already dumped"."""

from __future__ import annotations

import json
import os
import struct
import subprocess

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.errors import ImageError
from sadump.formats import open_image
from sadump.formats.elf import ElfCore
from sadump.formats.ngdump import NgDump
from tests.fixtures.builder import ImageSpec, vmcoreinfo_text, write_elf
from tests.fixtures.ngdump import (
    block_size,
    e2fs_tool,
    inode_location,
    last_block,
    ngdump_image,
    sha256_file,
)

MiB = 1 << 20
runner = CliRunner()


@pytest.fixture(autouse=True)
def e2fsprogs():
    """mkfs.ext4 makes the images, debugfs reads them: required in CI, else a skip."""
    missing = [t for t in ("mkfs.ext4", "debugfs") if e2fs_tool(t) is None]
    if missing:
        msg = f"e2fsprogs' {', '.join(missing)} not installed: NGDump images cannot be made"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


SPEC = ImageSpec(mem_size=16 * MiB, ranges=[(0, 6 * MiB), (7 * MiB, 8 * MiB)],
                 kdump_kernel_loaded=False)  # the crashkernel [8, 16) MiB is left out


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    """A small sparse ELF vmcore with a VMCOREINFO note and two PT_LOADs."""
    path = tmp_path_factory.mktemp("ngdump") / "vmcore.elf"
    return write_elf(SPEC, path, notes=[("VMCOREINFO", 0, vmcoreinfo_text(SPEC).encode())])


def refused(img, match, *, fmt="ngdump"):
    """ImageError with one line naming the image, and exit 4 from the CLI."""
    with pytest.raises(ImageError, match=match) as e:
        NgDump(str(img))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(img))
    res = runner.invoke(app, ["inspect-meminfo", "-F", fmt, str(img)])
    assert res.exit_code == Exit.IMAGE_ERROR and res.stderr.count("\n") == 1, res.stderr


def test_memory_and_notes_are_the_elf_files(tmp_path, elf):
    img = ngdump_image(tmp_path, elf)
    with open_image(str(img)) as ng, ElfCore(str(elf)) as ref:
        assert isinstance(ng, NgDump) and ng.format == "ngdump"
        assert ng.ranges() == ref.ranges() == SPEC.present
        assert ng.notes == ref.notes and ng.notes[0].name == "VMCOREINFO"
        assert ng.warnings == ref.warnings
        for lo, hi in ng.ranges():
            assert ng.read(lo, hi - lo) == ref.read(lo, hi - lo) == SPEC.expected(lo, hi - lo)
        assert (ng.dump_level, ng.dumper.format, ng.dumper.version) == (31, "ngdump", 1)
        assert ng.stored_bytes == elf.stat().st_size


def test_extents_are_the_partitions_blocks(tmp_path, elf):
    """Memory is read in place: "file" extents point into the partition image itself."""
    img = ngdump_image(tmp_path, elf)
    part = img.read_bytes()
    with open_image(str(img)) as ng:
        kinds = set()
        for lo, hi in ng.ranges():
            for e in ng.extents(lo, hi):
                kinds.add(e.kind)
                want = SPEC.expected(e.paddr, e.size)
                if e.kind == "file":
                    assert part[e.file_offset:e.file_offset + e.size] == want
                else:
                    assert want == bytes(e.size)
        assert kinds == {"file", "zero"}  # the ELF's holes stay holes in ext4


def test_wrong_sha256(tmp_path, elf):
    meta = f"version=1\nfile=dump.elf\nsha256sum={'0' * 64}\n"
    refused(ngdump_image(tmp_path, elf, meta=meta), f"sha256 {sha256_file(elf)}, ngdump.meta "
            f"says {'0' * 64}: the dump is damaged")


@pytest.mark.parametrize("meta, match", [
    ("version=1\nfile=\nsha256sum=\n", "without a dump: ngdump.meta names no file"),
    ("version=2\nfile=dump.elf\n", "ngdump.meta says version '2'"),
    ("version=1\nfile=dump.elf\nsha256sum=xyz\n", "no valid sha256sum"),
    ("version=1\nfile=../etc/passwd\nsha256sum=" + "0" * 64 + "\n", "not a file name"),
])
def test_bad_meta(tmp_path, elf, meta, match):
    refused(ngdump_image(tmp_path, elf, meta=meta), match)


def test_missing_dump_file(tmp_path):
    meta = "version=1\nfile=dump.elf\nsha256sum=" + "0" * 64 + "\n"
    refused(ngdump_image(tmp_path, None, meta=meta), "dump.elf: .*File not found")


def test_no_meta_file(tmp_path):
    """An ext4 file system that is not an NGDump partition: no ngdump.meta."""
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x").write_text("x")
    other = tmp_path / "other.img"
    subprocess.run([e2fs_tool("mkfs.ext4"), "-q", "-F", "-d", str(plain), str(other), "4M"],
                   check=True)
    refused(other, "ngdump.meta: .*File not found")


def test_damaged_superblock(tmp_path, elf):
    img = ngdump_image(tmp_path, elf)
    data = bytearray(img.read_bytes())
    data[0x438:0x43a] = b"\0\0"  # the magic
    img.write_bytes(data)
    with open_image(str(img)) as mem:
        assert mem.format == "raw"  # no longer probed as ext4
    refused(img, "not a readable ext4 file system: .*[Bb]ad magic")
    data[0x438:0x43a] = b"\x53\xef"
    struct.pack_into("<I", data, 0x418, 20)  # s_log_block_size: 1 GiB blocks
    img.write_bytes(data)
    with open_image(str(img)) as mem:
        assert mem.format == "raw"
    refused(img, "not a readable ext4 file system")


def test_extent_outside_the_image(tmp_path, elf):
    """An extent whose blocks lie past the image's end (no checksums to stop it first)."""
    img = ngdump_image(tmp_path, elf, features="^metadata_csum")
    data = bytearray(img.read_bytes())
    node = inode_location(img, "/dump.elf") + 0x28  # i_block: the extent tree's root
    magic, _, _, depth = struct.unpack_from("<4H", data, node)
    assert magic == 0xF30A
    if depth:  # the first index entry's leaf block (ei_leaf_lo at +4)
        node = struct.unpack_from("<I", data, node + 12 + 4)[0] * block_size(img)
        assert struct.unpack_from("<4H", data, node)[0::3] == (0xF30A, 0)
    struct.pack_into("<HI", data, node + 12 + 6, 0, 0x7FFFFFF0)  # first extent's start
    img.write_bytes(data)
    refused(img, "dump.elf: its extent at blocks .* points outside the file system image")


def test_truncated_partition(tmp_path, elf):
    """A partition image cut inside dump.elf's blocks: the file system points past its end."""
    img = ngdump_image(tmp_path, elf)
    os.truncate(img, last_block(img, "/dump.elf") * block_size(img))
    refused(img, "its extent at blocks .* points outside the file system image")


def test_block_mapped_file_is_named(tmp_path, elf):
    """ext2/ext3-style block maps are not read (NGDump's mkfs.ext4 makes extents)."""
    img = ngdump_image(tmp_path, elf, features="^extent,^64bit,^flex_bg")
    refused(img, "ngdump.meta is not mapped by extents")


def test_without_debugfs(tmp_path, elf, monkeypatch):
    img = ngdump_image(tmp_path, elf)
    monkeypatch.setattr("shutil.which", lambda *a, **k: None)
    with pytest.raises(ImageError, match="debugfs is not installed"):
        NgDump(str(img))


def test_debugfs_output_is_capped(tmp_path, elf, monkeypatch):
    img = ngdump_image(tmp_path, elf)
    monkeypatch.setattr("sadump.formats.ngdump.MAX_DEBUGFS_OUTPUT", 40)
    with pytest.raises(ImageError, match="printed more than 0x28 bytes"):
        NgDump(str(img))


def test_already_dumped_at_level_31(tmp_path, elf):
    res = runner.invoke(app, ["inspect-meminfo", "--json", str(ngdump_image(tmp_path, elf))])
    decision = json.loads(res.stdout)["decision"]
    assert res.exit_code == Exit.OK, res.stderr
    assert decision["path"] == "dumped", decision
    assert "NGDump partition" in decision["reason"] and "dump level 31" in decision["reason"]


# ---- the real kernel's vmcore in an NGDump partition ---------------------------------------------
def test_real_vmcore_in_a_partition(tmp_path, real_file):
    """The kdump kernel's /proc/vmcore (940 MB, 45 MB of data) as dump.elf: mkfs.ext4 -d keeps
    it sparse; sadump reads the same memory and notes as from the ELF file itself."""
    vmcore = real_file("rimg-kdump.proc-vmcore.elf")
    img = ngdump_image(tmp_path, vmcore, size="128M")
    assert img.stat().st_blocks * 512 < 100 * MiB
    with open_image(str(img)) as ng, ElfCore(str(vmcore)) as ref:
        assert ng.format == "ngdump" and ng.ranges() == ref.ranges() == [(0, 0x38000000)]
        assert ng.notes == ref.notes
        step = 16 * MiB
        for off in range(0, 0x38000000, step):
            assert ng.read(off, step) == ref.read(off, step), hex(off)
    res = runner.invoke(app, ["inspect-meminfo", "--json", str(img)])
    assert res.exit_code == Exit.OK, res.stderr
    reason = json.loads(res.stdout)["decision"]["reason"]
    assert "dump level 31" in reason and "crash time 2026-11-26 18:01:07 UTC" in reason
    res = runner.invoke(app, ["bt", "--json", str(img)])
    ref_bt = runner.invoke(app, ["bt", "--json", str(vmcore)])
    assert res.exit_code == Exit.OK and json.loads(res.stdout)["cpus"] == \
        json.loads(ref_bt.stdout)["cpus"]

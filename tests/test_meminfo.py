"""os_info validation on synthetic images: every ABI failure class, every bad input."""

import pytest

from sadump.analysis import analyse
from sadump.formats import open_image
from sadump.meminfo_reader import (
    EOS_INFO_CSUM_FAILED,
    EOS_INFO_MISSING,
    EOS_INFO_NOCRASHKERNEL,
    EOS_INFO_VERSION,
)
from sadump.trigger.decision import NO_KDUMP_KERNEL
from tests.fixtures.builder import ImageSpec, MiB, write_elf, write_raw


def run(tmp_path, spec, writer=write_raw):
    path = writer(spec, tmp_path / "mem.img")
    a = analyse(str(path))
    a.close()
    return a


def test_valid_image_says_kdump(tmp_path):
    spec = ImageSpec()
    a = run(tmp_path, spec)
    crash_base, crash_size = spec.crash
    assert a.os_info.valid and a.os_info.error_code is None
    assert (a.os_info.crashkernel_addr, a.os_info.crashkernel_size) == (crash_base, crash_size)
    assert a.decision.path == "kdump"
    assert a.decision.entry_point == crash_base + 0x10010
    assert a.vmcoreinfo.source == "lowcore 0xE0C"
    assert a.vmcoreinfo.info.osrelease == "6.1.0-synthetic"


@pytest.mark.parametrize(
    "damage, code",
    [
        ("zero_pointer", EOS_INFO_MISSING),
        ("unaligned_pointer", EOS_INFO_MISSING),
        ("pointer_past_end", EOS_INFO_MISSING),
        ("bad_magic", EOS_INFO_MISSING),
        ("checksum_off_by_one_bit", EOS_INFO_CSUM_FAILED),
        ("version_2", EOS_INFO_VERSION),
        ("no_crashkernel", EOS_INFO_NOCRASHKERNEL),
        ("no_kdump_kernel", NO_KDUMP_KERNEL),
    ],
)
def test_damage_falls_back_with_abi_code(tmp_path, damage, code):
    a = run(tmp_path, ImageSpec(damage={damage}))
    assert a.decision.path == "full"
    assert a.decision.reason_code == code
    assert a.decision.entry_point is None
    if code != NO_KDUMP_KERNEL:
        assert a.os_info.error_code == code
        assert a.os_info.expected and a.os_info.actual  # each failure says what it saw


def test_checksum_failure_carries_both_values(tmp_path):
    a = run(tmp_path, ImageSpec(damage={"checksum_off_by_one_bit"}))
    m = a.os_info
    assert m.csum_stored ^ m.csum_computed == 1
    assert m.expected == f"{m.csum_stored:#010x}" and m.actual == f"{m.csum_computed:#010x}"


def test_pointer_into_hole(tmp_path):
    spec = ImageSpec(ranges=[(0, 32 * MiB), (40 * MiB, 64 * MiB)], damage={"pointer_into_hole"})
    a = run(tmp_path, spec, write_elf)
    assert a.image.ranges() == [(0, 32 * MiB), (40 * MiB, 64 * MiB)]
    assert a.decision.reason_code == EOS_INFO_MISSING
    assert "outside present memory" in a.os_info.error


def test_truncated_image_before_os_info(tmp_path):
    """A raw image cut before its os_info page: the pointer leads outside the file."""
    spec = ImageSpec(os_info_addr=48 * MiB, damage={"truncated"})
    a = run(tmp_path, spec)
    assert a.image.size == 32 * MiB
    assert a.decision.reason_code == EOS_INFO_MISSING


def test_truncated_to_nothing_but_lowcore(tmp_path):
    path = tmp_path / "tiny.raw"
    path.write_bytes(b"\0" * 0x100)
    a = analyse(str(path))
    assert a.lowcore.error and a.decision.reason_code == EOS_INFO_MISSING


@pytest.mark.parametrize("damage, status", [
    ("entry_size_huge", "too large"),
    ("entry_addr_outside", "outside memory"),
    ("entry_checksum_wrong", "checksum failed"),
])
def test_bad_entry_is_dropped_not_fatal(tmp_path, damage, status):
    a = run(tmp_path, ImageSpec(damage={damage}))
    entry = a.os_info.entries[0]
    assert status in entry.status and entry.checksum_ok is False
    assert a.decision.path == "kdump"  # entries are not checked for kdump (spec 4.4)
    assert a.vmcoreinfo.source == "lowcore 0xE0C"  # falls back to the note


def test_good_entry_zero_is_used(tmp_path):
    a = run(tmp_path, ImageSpec(entries={0, 1, 2}))
    assert [e.status for e in a.os_info.entries[:3]] == ["copied"] * 3
    assert a.vmcoreinfo.source == "os_info entry 0"
    assert a.vmcoreinfo.info.osrelease == "6.1.0-synthetic"


@pytest.mark.parametrize("damage, words", [
    ("vmcoreinfo_huge_descsz", "out of bounds"),
    ("vmcoreinfo_bad_name", "expected 'VMCOREINFO'"),
])
def test_bad_vmcoreinfo_note(tmp_path, damage, words):
    a = run(tmp_path, ImageSpec(damage={damage}))
    assert a.vmcoreinfo.info is None and words in a.vmcoreinfo.error
    assert a.decision.path == "kdump"


def test_new_layout_value_entries(tmp_path):
    spec = ImageSpec(new_layout=True)
    a = run(tmp_path, spec)
    values = {e.name: e.addr for e in a.os_info.entries if e.kind == "value"}
    assert values["IDENTITY_BASE"] == spec.identity_base
    assert values["KASLR_OFFSET"] == spec.kaslr_offset
    assert a.kernel_memory.layout.identity_base == spec.identity_base
    lowcore_ptr = a.vmcoreinfo.info.symbol("lowcore_ptr")
    assert lowcore_ptr >= spec.kaslr_offset  # a virtual address in the image mapping
    assert a.kernel_memory.to_physical(lowcore_ptr) == spec.build().symbols["lowcore_ptr"] - \
        spec.kaslr_offset + a.kernel_memory.layout.kaslr_offset_phys


def test_image_taken_after_handoff(tmp_path):
    spec = ImageSpec(swapped=True)
    a = run(tmp_path, spec)
    assert a.handoff is not None
    assert (a.handoff.oldmem_base, a.handoff.oldmem_size) == spec.crash
    # the crashed system's os_info, not the kdump kernel's (which has crashkernel 0/0)
    assert a.os_info.crashkernel_addr == spec.crash[0]
    assert a.vmcoreinfo.info.osrelease == "6.1.0-synthetic"


def test_reads_of_absent_memory_raise(tmp_path):
    from sadump.errors import AbsentMemoryError

    spec = ImageSpec(ranges=[(0, 32 * MiB), (40 * MiB, 64 * MiB)])
    with open_image(str(write_elf(spec, tmp_path / "m.elf"))) as mem:
        with pytest.raises(AbsentMemoryError):
            mem.read(32 * MiB - 4, 8)
        assert mem.read(40 * MiB, 4) == spec.expected(40 * MiB, 4)


def _rendered(a) -> str:
    import io

    from rich.console import Console

    from sadump.render import report

    out = io.StringIO()
    report.render_inspect(a, Console(file=out, width=200, highlight=False))
    return out.getvalue()


def _row(text: str, check: str) -> str:
    return next(line for line in text.splitlines() if check in line)


def test_report_blames_the_magic_not_the_pointer(tmp_path):
    """A good pointer to a page with the wrong magic: the pointer check passes, magic fails."""
    text = _rendered(run(tmp_path, ImageSpec(damage={"bad_magic"})))
    assert "pass" in _row(text, "pointer non-zero") and "FAIL" not in _row(text, "pointer non-zero")
    assert "FAIL" in _row(text, "magic OSINFOSZ")


def test_report_does_not_judge_an_unread_magic(tmp_path):
    """A zero pointer: the pointer check fails and the magic, never read, is not judged."""
    text = _rendered(run(tmp_path, ImageSpec(damage={"zero_pointer"})))
    assert "FAIL" in _row(text, "pointer non-zero")
    magic = _row(text, "magic OSINFOSZ")
    assert "FAIL" not in magic and "pass" not in magic

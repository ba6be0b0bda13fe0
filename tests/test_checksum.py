"""The CKSM worked examples of spec 2.5, and a cross-check with the real os_info page."""

import pytest

from sadump.checksum import cksm


def test_fresh_os_info_v11():
    page = bytearray(0x1000)
    page[0x00C:0x010] = bytes.fromhex("00010001")
    assert cksm(page[0x00C:]) == 0x00010001


def test_crashkernel_example():
    page = bytearray(0x1000)
    page[0x00C:0x010] = bytes.fromhex("00010001")
    page[0x010:0x020] = bytes.fromhex("00000000100000000000000010000000")
    assert cksm(page[0x00C:]) == 0x20010001


def test_end_around_carry():
    assert cksm(bytes.fromhex("FFFFFFFF00000002")) == 0x00000002


def test_zero_padded_tail():
    assert cksm(bytes([1, 2, 3, 4, 5])) == 0x06020304


@pytest.mark.parametrize("tail", [1, 2, 3])
def test_tail_is_left_justified(tail):
    # the tail byte lands in the high-order position, not the low one (libkdumpfile's bug)
    assert cksm(b"\x80" + b"\0" * (tail - 1)) == 0x80000000


def test_per_word_carry_matches_closed_form():
    words = [0xFFFFFFFF] * 3 + [0x12345678, 0x80000000, 0x80000000]
    s = 0
    for w in words:
        s += w
        if s > 0xFFFFFFFF:
            s = (s & 0xFFFFFFFF) + 1
    assert cksm(b"".join(w.to_bytes(4, "big") for w in words)) == s


def test_all_ones_stays_all_ones():
    assert cksm(b"\xff" * 8) == 0xFFFFFFFF


def test_empty_is_zero():
    assert cksm(b"") == 0


def test_real_os_info_checksum(real_file):
    """The 6.1 kernel's own value, 0x40010001, for crashkernel 0x38000000/0x8000000."""
    with open(real_file("rimg-kdump.raw"), "rb") as f:
        f.seek(0x409000)
        page = f.read(0x1000)
    assert page[:8] == b"OSINFOSZ"
    assert int.from_bytes(page[8:12], "big") == 0x40010001
    assert cksm(page[0x00C:]) == 0x40010001

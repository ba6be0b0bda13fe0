"""The builder's own CKSM (tests/fixtures/builder.py, from spec 2.5) against the spec's
worked examples, and against sadump's closed form on data with many carries."""

import os

import pytest

from sadump.checksum import cksm as sadump_cksm
from tests.fixtures.builder import cksm


def test_spec_worked_examples():
    page = bytearray(0x1000)
    page[0x00C:0x010] = bytes.fromhex("00010001")
    assert cksm(page[0x00C:]) == 0x00010001
    page[0x010:0x020] = bytes.fromhex("00000000100000000000000010000000")
    assert cksm(page[0x00C:]) == 0x20010001
    assert cksm(bytes.fromhex("FFFFFFFF00000002")) == 0x00000002
    assert cksm(bytes([1, 2, 3, 4, 5])) == 0x06020304


@pytest.mark.parametrize("size", [0, 1, 3, 4, 4084, 4097])
def test_two_implementations_agree(size):
    for fill in (os.urandom(size), b"\xff" * size, b"\x80" * size):
        assert cksm(fill) == sadump_cksm(fill)

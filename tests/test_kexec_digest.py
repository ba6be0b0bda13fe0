"""The kexec segment digest check (issue 6): find the list, hash the regions, decide.

Real facts (issue 6, shared/real/README.md): in rimg-kdump the crashkernel is 0x38000000 /
0x8000000; kexec-tools' segment list is at 0x3800C160 with the kernel (0x38010000 + 0x1b8000)
and the initrd (0x38800000 + 0x283000); the SHA-256 of those regions is at 0x3800C260.
Damaged copies of the 1 GiB image are never written: an overlay layer patches a few bytes.
"""

from __future__ import annotations

import hashlib
import io
import struct

import pytest
from rich.console import Console

from sadump.analysis import analyse_memory
from sadump.errors import ImageError
from sadump.formats import open_image
from sadump.formats.memory import Extent, PhysicalMemory
from sadump.render import report
from sadump.trigger import kexec_digest
from sadump.trigger.decision import KDUMP_KERNEL_DAMAGED, KDUMP_OK
from sadump.trigger.kexec_digest import verify_kexec_digest
from tests.fixtures.builder import ImageSpec, MiB, kexec_segments_block, write_raw

CRASH_BASE, CRASH_SIZE = 0x38000000, 0x8000000
LIST_AT, DIGEST_AT = 0x3800C160, 0x3800C260
SEGMENTS = [(0x38010000, 0x1B8000), (0x38800000, 0x283000)]
KDUMP_ENTRY = 0x38010010
REAL_COPIES = ["rimg-kdump.raw", "rimg-kdump.qemu.elf", "rimg-kdump.qemu-kdump-zlib.flat"]


class Overlay(PhysicalMemory):
    """Another layer with a few bytes replaced and, optionally, fewer ranges present."""

    def __init__(self, base: PhysicalMemory, patches: dict[int, bytes],
                 ranges: list[tuple[int, int]] | None = None):
        super().__init__(base.path)
        self.base, self.patches, self.format = base, patches, base.format
        self._set_ranges(base.ranges() if ranges is None else ranges)

    def _hits(self, paddr: int, size: int) -> bool:
        return any(at < paddr + size and paddr < at + len(b) for at, b in self.patches.items())

    def _read(self, paddr: int, size: int) -> bytes:
        data = self.base.read(paddr, size)
        if not self._hits(paddr, size):
            return data
        out = bytearray(data)
        for at, b in self.patches.items():
            for i, byte in enumerate(b):
                if paddr <= at + i < paddr + size:
                    out[at + i - paddr] = byte
        return bytes(out)

    def extents(self, start, end):
        for e in self.base.extents(start, end):
            patched = e.kind == "zero" and self._hits(e.paddr, e.size)
            yield Extent(e.paddr, e.size, "data") if patched else e

    def close(self) -> None:
        self.base.close()


def flipped(mem: PhysicalMemory, addr: int) -> dict[int, bytes]:
    return {addr: bytes([mem.read(addr, 1)[0] ^ 0xFF])}


def sha256_of(mem: PhysicalMemory, segments) -> bytes:
    """Independent of the module: one read per region."""
    return hashlib.sha256(b"".join(mem.read(s, n) for s, n in segments)).digest()


def rendered(analysis) -> str:
    out = io.StringIO()
    report.render_inspect(analysis, Console(file=out, width=200, highlight=False))
    return out.getvalue()


@pytest.fixture
def count_hashing(monkeypatch):
    """Every call of the module's hashing function, with its segment list."""
    calls: list[list[tuple[int, int]]] = []
    real = kexec_digest.hash_regions

    def counting(mem, segments):
        calls.append(list(segments))
        return real(mem, segments)

    monkeypatch.setattr(kexec_digest, "hash_regions", counting)
    return calls


# ---- real images ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_COPIES)
def test_real_images_verify(real_file, name):
    mem = open_image(str(real_file(name)))
    a = analyse_memory(mem)
    try:
        d = a.digest
        assert (d.found_at, d.digest_at, d.segments) == (LIST_AT, DIGEST_AT, SEGMENTS)
        assert d.ok is True and d.verdict == "verified"
        assert d.stored == d.computed == sha256_of(mem, SEGMENTS)
        assert a.decision.path == "kdump" and a.decision.reason_code == KDUMP_OK
        assert a.decision.entry_point == KDUMP_ENTRY
        k = report.analysis_json(a)["kdump_kernel"]
        assert k["entry_point"] == KDUMP_ENTRY
        assert k["segments"] == [list(s) for s in SEGMENTS]
        assert k["digest"]["found_at"] == LIST_AT
        assert k["digest"]["stored"] == k["digest"]["computed"] == d.stored.hex()
        assert k["digest"]["ok"] is True
        text = rendered(a)
        assert "verified" in text and d.stored.hex() in text
        assert "[0x38800000, 0x38a83000)" in text
    finally:
        a.close()


@pytest.mark.parametrize("where", [SEGMENTS[0][0] + 0x100000, SEGMENTS[1][0] + SEGMENTS[1][1] - 1],
                         ids=["kernel", "initrd"])
def test_one_flipped_byte_falls_back_to_a_full_dump(real_file, where):
    raw = open_image(str(real_file("rimg-kdump.raw")))
    good = raw.read(DIGEST_AT, 32)
    a = analyse_memory(Overlay(raw, flipped(raw, where)))
    try:
        d = a.digest
        assert d.ok is False and d.verdict == "damaged"
        assert d.found_at == LIST_AT and d.segments == SEGMENTS
        assert d.stored == good and d.computed == sha256_of(a.memory, SEGMENTS) != good
        assert a.decision.path == "full"
        assert a.decision.reason_code == KDUMP_KERNEL_DAMAGED == 0x4611
        assert good.hex() in a.decision.reason and d.computed.hex() in a.decision.reason
        j = report.analysis_json(a)
        assert j["decision"]["reason_code"] == 0x4611
        assert j["kdump_kernel"]["digest"]["ok"] is False
        assert j["kdump_kernel"]["digest"]["computed"] == d.computed.hex()
        text = rendered(a)
        assert "damaged" in text and good.hex() in text and d.computed.hex() in text
    finally:
        a.close()


@pytest.mark.parametrize("zeroed", [(DIGEST_AT, 32), (LIST_AT, 0x100)], ids=["digest", "list"])
def test_zeroed_digest_or_list_keeps_kdump_unverified(real_file, zeroed, count_hashing):
    raw = open_image(str(real_file("rimg-kdump.raw")))
    at, n = zeroed
    a = analyse_memory(Overlay(raw, {at: bytes(n)}))
    try:
        d = a.digest
        assert d.ok is None and d.verdict == "not verified"
        assert a.decision.path == "kdump" and a.decision.entry_point == KDUMP_ENTRY
        assert "kdump kernel could not be verified" in a.decision.reason
        assert "not verified" in rendered(a)
        assert report.analysis_json(a)["kdump_kernel"]["digest"]["ok"] is None
        if at == LIST_AT:
            assert d.found_at is None and count_hashing == []
        else:  # the list is still there: hashed, but nothing stored matches
            assert d.found_at == LIST_AT and d.stored is None
            assert d.computed == sha256_of(raw, SEGMENTS)
            assert count_hashing == [SEGMENTS]  # its tail (one entry at +0x10) is no list
    finally:
        a.close()


def test_real_image_without_crashkernel_is_not_scanned(real_file, count_hashing):
    a = analyse_memory(open_image(str(real_file("rimg-nokdump.raw"))))
    try:
        assert a.decision.reason_code == 0x4523 and a.digest is None and count_hashing == []
        assert report.analysis_json(a)["kdump_kernel"] is None
    finally:
        a.close()


# ---- synthetic images -------------------------------------------------------------------------


def built(tmp_path, patches: dict[int, bytes] | None = None, **spec_args):
    """A raw image from the fixture builder, bytes patched in the file, and its layout."""
    spec = ImageSpec(**spec_args)
    path = write_raw(spec, tmp_path / "mem.raw")
    with open(path, "r+b") as f:
        for at, data in (patches or {}).items():
            f.seek(at)
            f.write(data)
    return spec, spec.build(), str(path)


def block(segments, digest: bytes = b"") -> bytes:
    """The purgatory's 16 (start, len) pairs, packed by the fixture (not with ShaRegions)."""
    return kexec_segments_block(segments, digest)


@pytest.mark.parametrize("offset", [0x3008, 0x2F80, 0xFFF80, 0xFFFF8],
                         ids=["other offset", "across a page", "across a MiB block",
                              "first pair across a MiB block"])
def test_list_at_another_offset_is_found(tmp_path, offset):
    spec, image, path = built(tmp_path, kexec_segments=offset)
    base = spec.crash[0]
    a = analyse_memory(open_image(path))
    try:
        d = a.digest
        assert d.found_at == base + offset and d.digest_at == base + offset + 0x100
        assert d.segments == image.kexec_segments and d.stored == image.kexec_digest
        assert d.ok is True and a.decision.path == "kdump"
    finally:
        a.close()


def test_digest_stored_elsewhere_is_searched_for(tmp_path):
    """The digest neither after the list nor before it: found by searching the crashkernel
    (here across a 1 MiB read block)."""
    spec = ImageSpec(kexec_segments=0x3000)
    base = spec.crash[0]
    image = spec.build()
    elsewhere = base + 0x100000 - 16
    _, _, path = built(tmp_path, {base + 0x3100: bytes(32), elsewhere: image.kexec_digest},
                       kexec_segments=0x3000)
    d = verify_kexec_digest(open_image(path), base, spec.crash[1])
    assert (d.ok, d.found_at, d.digest_at) == (True, base + 0x3000, elsewhere)


def test_digest_before_the_list_kernel_purgatory_layout(tmp_path):
    spec = ImageSpec()
    base, image = spec.crash[0], spec.build()
    at = base + 0x5000
    _, _, path = built(tmp_path, {at - 32: image.kexec_digest + block(image.kexec_segments)})
    d = verify_kexec_digest(open_image(path), base, spec.crash[1])
    assert (d.ok, d.found_at, d.digest_at) == (True, at, at - 32)


def test_builder_corrupt_kdump_kernel_is_damaged(tmp_path):
    _, image, path = built(tmp_path, kexec_segments=True, damage={"kdump_kernel_corrupt"})
    a = analyse_memory(open_image(path))
    try:
        assert a.digest.ok is False and a.digest.stored == image.kexec_digest
        assert a.decision.path == "full" and a.decision.reason_code == KDUMP_KERNEL_DAMAGED
    finally:
        a.close()


def test_no_list_in_a_synthetic_image_is_not_verified(tmp_path):
    _, _, path = built(tmp_path, kexec_segments=False)
    a = analyse_memory(open_image(path))
    try:
        assert a.digest.found_at is None and a.digest.verdict == "not verified"
        assert a.decision.path == "kdump" and "could not be verified" in a.decision.reason
    finally:
        a.close()


def test_after_the_hand_off_the_check_does_not_apply(tmp_path, count_hashing):
    _, _, path = built(tmp_path, kexec_segments=True, swapped=True)
    a = analyse_memory(open_image(path))
    try:
        assert a.handoff is not None
        assert a.digest.applies is False and a.digest.verdict == "not applicable"
        assert a.decision.path == "kdump" and "does not apply" in a.decision.reason
        assert "hand-off" in a.digest.reason and count_hashing == []
        assert "not applicable" in rendered(a)
    finally:
        a.close()


U64 = 1 << 64


def bad_lists(base: int, size: int, kernel: int):
    """Lists that must be rejected before any hashing (name, segments)."""
    end = base + size
    return [
        ("length overflows u64", [(kernel, U64 - 0x1000)]),
        ("start + length wraps to the base", [(kernel, U64 - kernel + base)]),
        ("start below the crashkernel", [(base - 0x100000, 0x1000)]),
        ("runs past the crashkernel end", [(end - 0x1000, 0x2000)]),
        ("starts past the end", [(end, 0x1000)]),
        ("regions overlap", [(kernel, 0x4000), (kernel + 0x2000, 0x1000)]),
        ("start not page aligned", [(kernel + 8, 0x1000)]),
        ("length not page aligned", [(kernel, 0x1008)]),
        ("zero length", [(kernel, 0)]),
        ("the list lies inside its own region", [(base, 0x10000)]),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_lists_are_ignored_never_hashed(tmp_path, count_hashing, case):
    spec = ImageSpec(crashkernel=(32 * MiB, 16 * MiB))  # memory on both sides is present
    base, size = spec.crash
    name, segs = bad_lists(base, size, base + 0x10000)[case]
    at = base + 0x5000
    # the SHA-256 a careless reader would compute over the in-memory part, stored after it
    image = spec.build()
    inside = [(max(s, 0), min(n, 0x1000)) for s, n in segs]
    digest = hashlib.sha256(b"".join(image.memory.read(s, n) for s, n in inside)).digest()
    raw = b"".join(struct.pack(">QQ", s % U64, n % U64) for s, n in segs).ljust(0x100, b"\0")
    _, _, path = built(tmp_path, {at: raw + digest}, crashkernel=spec.crashkernel)
    d = verify_kexec_digest(open_image(path), base, size)
    assert d.found_at is None and d.ok is None, name
    assert count_hashing == [], name


def test_lists_naming_absent_memory_are_not_hashed(tmp_path, count_hashing):
    spec, image, path = built(tmp_path, kexec_segments=True)
    base, size = spec.crash
    initrd = image.kexec_segments[1]
    ranges = [(0, initrd[0]), (initrd[0] + initrd[1], spec.mem_size)]
    d = verify_kexec_digest(Overlay(open_image(path), {}, ranges), base, size)
    assert d.ok is None and d.found_at is None and "absent" in d.reason
    assert count_hashing == []


def test_candidate_checks_are_bounded(tmp_path, monkeypatch, count_hashing):
    spec = ImageSpec()
    base, size = spec.crash
    pair = struct.pack(">QQ", base + 0x10000, 0x1000)  # 16 equal pairs overlap: no list
    _, _, path = built(tmp_path, {base + 0x100000: pair * (0x10000 // 16)})
    monkeypatch.setattr(kexec_digest, "MAX_CHECKS", 100)
    d = verify_kexec_digest(open_image(path), base, size)
    assert "scan stopped" in d.reason and d.found_at is None and count_hashing == []


@pytest.mark.parametrize("base, size", [(0, 0x1000000), (0x3000000, 0), (U64 - 0x1000, 0x2000)])
def test_impossible_crashkernel_is_refused_without_reading(tmp_path, base, size):
    _, _, path = built(tmp_path)
    d = verify_kexec_digest(open_image(path), base, size)
    assert d.ok is None and d.found_at is None and "cannot hold" in d.reason


def test_unreadable_crashkernel_page_is_not_verified_not_fatal(tmp_path):
    _, image, path = built(tmp_path, kexec_segments=True)
    initrd = image.kexec_segments[1][0]

    class Broken(Overlay):
        def _read(self, paddr, size):
            if paddr <= initrd < paddr + size:
                raise ImageError(f"page {initrd:#x}: zlib data corrupt")
            return super()._read(paddr, size)

    a = analyse_memory(Broken(open_image(path), {}))
    try:
        assert a.digest.ok is None and "not readable" in a.digest.reason
        assert a.decision.path == "kdump" and "could not be verified" in a.decision.reason
    finally:
        a.close()

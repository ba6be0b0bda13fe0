"""The kexec purgatory's segment digest: is the loaded kdump kernel intact?

`kexec -p` (kexec-tools) and the kernel's kexec_file_load both leave, inside the crashkernel,
a list of the loaded segments (16 big-endian (start, length) pairs, unused ones zero) and the
SHA-256 over those regions in order; purgatory recomputes it before kdump starts. We do the
same from the image: find the list by scanning the present, non-zero crashkernel memory (no
fixed offset), hash the listed regions, and look for the stored digest (kexec-tools puts it
right after the list, the x86 kernel purgatory right before it; else anywhere in the
crashkernel). Pure: takes memory, returns findings.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise

from construct import Array, Int64ub, Struct

from sadump.constants import MIB, PAGE_SIZE
from sadump.errors import SadumpError
from sadump.formats.memory import PhysicalMemory

ShaRegion = Struct("start" / Int64ub, "len" / Int64ub)
SHA_REGIONS = 16
ShaRegions = Array(SHA_REGIONS, ShaRegion)
LIST_SIZE = ShaRegions.sizeof()  # 0x100
LIST_WORDS = struct.Struct(">32Q")  # the same 0x100 bytes as words, for the scan's hot path
assert LIST_WORDS.size == LIST_SIZE
DIGEST_SIZE = 32
#: where the digest sits relative to the list: kexec-tools (list, digest), x86 kernel purgatory
DIGEST_OFFSETS = (LIST_SIZE, -DIGEST_SIZE)

PAGE = PAGE_SIZE  # kexec segments are page aligned in start and length (kernel sanity check)
BLOCK = MIB  # read and zero-test unit
ZERO_BLOCK = bytes(BLOCK)
IS_ZERO = bytes([1] + [0] * 255)  # translate table: 0 -> 1, anything else -> 0
U64_MAX = (1 << 64) - 1
#: bounds on work an image can ask for: structural checks, hashed candidate lists
MAX_CHECKS = 1 << 16
MAX_HASHED = 8


@dataclass
class KexecDigest:
    """Where the segment list and digest were found, and whether the digest holds.

    ok: True verified, False damaged (stored digest differs), None not verified or not
    checked (see `reason`; `applies` False when the check makes no sense for the image).
    """

    applies: bool = True
    found_at: int | None = None  # the segment list
    segments: list[tuple[int, int]] = field(default_factory=list)
    digest_at: int | None = None
    stored: bytes | None = None
    computed: bytes | None = None
    reason: str = ""
    candidates: int = 0  # lists that passed the structural checks

    @property
    def ok(self) -> bool | None:
        if self.stored is None or self.computed is None:
            return None
        return self.stored == self.computed

    @property
    def verdict(self) -> str:
        if not self.applies:
            return "not applicable"
        return {True: "verified", False: "damaged", None: "not verified"}[self.ok]


def not_applicable(reason: str) -> KexecDigest:
    return KexecDigest(applies=False, reason=reason)


def hash_regions(mem: PhysicalMemory, segments: list[tuple[int, int]]) -> bytes:
    """SHA-256 over the regions in order, read in bounded blocks through the memory layer."""
    h = hashlib.sha256()
    for start, length in segments:
        pos, end = start, start + length
        while pos < end:
            n = min(BLOCK, end - pos)
            h.update(mem.read(pos, n))
            pos += n
    return h.digest()


def _blocks(mem: PhysicalMemory, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """Present, not all-zero blocks of [start, end); zero extents are skipped unread."""
    for rs, re_ in mem.ranges():
        lo, hi = max(rs, start), min(re_, end)
        if lo >= hi:
            continue
        for ext in mem.extents(lo, hi):
            if ext.kind == "zero":
                continue
            pos, stop = ext.paddr, ext.paddr + ext.size
            while pos < stop:
                n = min(BLOCK - pos % BLOCK, stop - pos)
                data = mem.read(pos, n)
                if data != ZERO_BLOCK[:n]:
                    yield pos, data
                pos += n


def _pair_offsets(data: bytes) -> Iterator[int]:
    """Indexes k of u64 words where words k and k+1 are non-zero and 4 KiB aligned (the shape
    of a (start, length) pair); the last word is offered when it alone has the shape.

    Byte-wise: the low byte of an aligned big-endian word is zero and one of its other seven
    is not. ORing big integers made from strided slices keeps this at C speed per MiB."""
    n = len(data) // 8
    high = 0
    for j in range(7):
        high |= int.from_bytes(data[j::8][:n], "big")
    mask = (int.from_bytes(data[7::8][:n], "big")
            | int.from_bytes(high.to_bytes(n, "big").translate(IS_ZERO), "big")).to_bytes(n, "big")
    k = mask.find(b"\0\0")
    while k >= 0:
        yield k
        k = mask.find(b"\0\0", k + 1)
    if n and mask[-1] == 0:
        yield n - 1


def check_list(words, base: int, end: int) -> list[tuple[int, int]] | None:
    """The used (start, length) pairs when 32 u64s look like a segment list, else None.

    Used pairs first, the rest zero; each page aligned, non-empty, inside [base, end);
    no two overlap (order is not required: kexec_file keeps load order).
    """
    segs: list[tuple[int, int]] = []
    i = 0
    while i < 2 * SHA_REGIONS and (words[i] or words[i + 1]):
        start, length = words[i], words[i + 1]
        if (start % PAGE or length % PAGE or length == 0 or start < base
                or start + length > end or start + length > U64_MAX):
            return None
        segs.append((start, length))
        i += 2
    if not segs or any(words[i:2 * SHA_REGIONS]):
        return None
    ordered = sorted(segs)
    if any(a[0] + a[1] > b[0] for a, b in pairwise(ordered)):
        return None
    return segs


def _overlaps(addr: int, size: int, segs: list[tuple[int, int]]) -> bool:
    return any(addr < s + n and s < addr + size for s, n in segs)


def _stored_digest(mem: PhysicalMemory, at: int) -> bytes | None:
    try:
        return mem.read(at, DIGEST_SIZE)
    except SadumpError:
        return None


def _lists(mem: PhysicalMemory, base: int, end: int, blocks: list[tuple[int, int]],
           result: KexecDigest) -> Iterator[tuple[int, list[tuple[int, int]]]]:
    """(address, segments) of every structurally valid list in the crashkernel, in order.

    Records the non-zero blocks it read in `blocks`; stops after MAX_CHECKS candidates."""
    checks, last = 0, None
    for addr, data in _blocks(mem, base, end):
        blocks.append((addr, len(data)))
        skew = -addr % 8
        words = data[skew:]
        for k in _pair_offsets(words):
            checks += 1
            if checks > MAX_CHECKS:
                result.reason = f"more than {MAX_CHECKS} candidate lists; scan stopped"
                return
            at = addr + skew + 8 * k
            if 8 * k + LIST_SIZE <= len(words):
                vals = LIST_WORDS.unpack_from(words, 8 * k)
            else:  # the list runs past this block: read it whole
                try:
                    vals = LIST_WORDS.unpack(mem.read(at, LIST_SIZE))
                except SadumpError:
                    continue
            segs = check_list(vals, base, end)
            if segs is None:
                continue
            suffix, last = last == at - 16, at
            if not suffix:  # the tail of a list found just before is not a list
                yield at, segs


def verify_kexec_digest(mem: PhysicalMemory, base: int, size: int) -> KexecDigest:
    """Find the segment list and digest in the crashkernel [base, base+size) and compare."""
    if size <= 0 or base <= 0 or base + size > U64_MAX + 1:
        return KexecDigest(reason=f"crashkernel {base:#x}/{size:#x} cannot hold a segment list")
    try:
        return _verify(mem, base, size)
    except SadumpError as e:  # a reader that cannot deliver a present page: not verifiable
        return KexecDigest(reason=f"crashkernel memory not readable: {e}")


def _verify(mem: PhysicalMemory, base: int, size: int) -> KexecDigest:
    result = KexecDigest()
    blocks: list[tuple[int, int]] = []  # non-zero blocks, for the digest search
    unmatched: list[tuple[int, list[tuple[int, int]], bytes]] = []  # (list addr, segs, digest)
    hashed: dict[tuple, bytes] = {}
    for at, segs in _lists(mem, base, base + size, blocks, result):
        if _overlaps(at, LIST_SIZE, segs):
            continue  # a real list is never inside the regions it hashes
        if not all(mem.is_present(s, n) for s, n in segs):
            result.reason = f"segment list at {at:#x} names memory absent from the image"
            continue
        result.candidates += 1
        key = tuple(segs)
        if key not in hashed:
            if len(hashed) >= MAX_HASHED:
                continue
            hashed[key] = hash_regions(mem, segs)
        computed = hashed[key]
        for rel in DIGEST_OFFSETS:
            d_at = at + rel
            if not _overlaps(d_at, DIGEST_SIZE, segs) and _stored_digest(mem, d_at) == computed:
                return _found(result, at, segs, d_at, computed, computed)
        unmatched.append((at, segs, computed))
    return _finish(mem, result, unmatched, blocks)


def _finish(mem: PhysicalMemory, result: KexecDigest, unmatched, blocks) -> KexecDigest:
    """No digest beside a list: search the crashkernel for one; else judge the first list."""
    if not unmatched:
        result.reason = result.reason or "no kexec segment list found in the crashkernel"
        return result
    wanted = {computed: (at, segs) for at, segs, computed in reversed(unmatched)}
    tail, tail_end = b"", None
    for addr, n in blocks:
        data = mem.read(addr, n)
        if tail_end != addr:
            tail = b""
        buf, buf_at = tail + data, addr - len(tail)
        for computed, (at, segs) in wanted.items():
            pos = buf.find(computed)
            while pos >= 0:
                d_at = buf_at + pos
                if not _overlaps(d_at, DIGEST_SIZE, segs) and not _overlaps(
                        d_at, DIGEST_SIZE, [(at, LIST_SIZE)]):
                    return _found(result, at, segs, d_at, computed, computed)
                pos = buf.find(computed, pos + 1)
        tail, tail_end = buf[-(DIGEST_SIZE - 1):], addr + n
    at, segs, computed = unmatched[0]
    for a, s, c in unmatched:  # a list with a digest where kexec-tools puts it
        stored = _stored_digest(mem, a + LIST_SIZE)
        if stored and any(stored) and not _overlaps(a + LIST_SIZE, DIGEST_SIZE, s):
            return _found(result, a, s, a + LIST_SIZE, stored, c,
                          "stored digest differs from the segments' SHA-256")
    return _found(result, at, segs, None, None, computed,
                  f"segment list at {at:#x} found, but no stored digest matches it")


def _found(result: KexecDigest, at, segs, digest_at, stored, computed, reason="") -> KexecDigest:
    return KexecDigest(found_at=at, segments=segs, digest_at=digest_at, stored=stored,
                       computed=computed, reason=reason, candidates=result.candidates)

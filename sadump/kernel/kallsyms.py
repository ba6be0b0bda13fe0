"""The kernel's own symbol table (kallsyms), found through VMCOREINFO (Linux 6.0+).

Decoded once from the tables `scripts/kallsyms` generates (spec backtrace.md 1.2-1.5): the
compressed names (one- or, from 6.1, two-byte lengths), the 256 tokens, and the offsets,
whose encoding is chosen by which formula reproduces SYMBOL(_stext) (1.4: relative to
kallsyms_relative_base up to 6.x, place-relative from 7.0). Nothing is trusted before the
checks pass: the count and every length are bounded, the addresses must be sorted and the
decoded `_stext` must sit at SYMBOL(_stext).

Lookups follow the kernel (1.6): `get_symbol_pos` (the first of the aliases at an address,
the size up to the next greater address, the last symbol ending at `_einittext`, `_end` or
`_etext`) and `%pSR` (the address itself, `name+0xoff/0xsize`).
"""

from __future__ import annotations

import bisect
import itertools
import re
import struct
from dataclasses import dataclass

from sadump.errors import SadumpError
from sadump.kernel.vmcoreinfo import VmcoreInfo

#: a cap on kallsyms_num_syms: allyesconfig kernels with KALLSYMS_ALL hold a few 100,000
MAX_SYMS = 4_000_000
#: a record's length is at most 0x3FFF tokens (two bytes of 7 and 8 bits)
MAX_RECORD = 0x3FFF
#: names are read in pieces of this size as the walk needs them
NAMES_CHUNK = 256 << 10
#: the whole token table is 256 short strings; a bound for the read
MAX_TOKEN_TABLE = 64 << 10
MODULES_LEN = 1 << 31  # 6.10+: modules in [MODULES_END - 2 GiB, MODULES_END)
MIB = 1 << 20

_TYPES = re.compile(r"[A-Za-z]*")  # nm type characters
_TYPES_BAD = re.compile(r"[^A-Za-z]")
_REQUIRED = ("kallsyms_names", "kallsyms_num_syms", "kallsyms_token_table",
             "kallsyms_token_index")


class KallsymsError(SadumpError):
    """kallsyms cannot be decoded or fails its checks: no symbols for this kernel."""


@dataclass(frozen=True)
class Symbolized:
    """One address as the kernel prints it: `name+0xoffset/0xsize`."""

    address: int
    name: str | None  # None: not a vmlinux symbol
    offset: int | None
    size: int | None
    module: bool = False  # inside the module area (no symbol known)

    def __str__(self) -> str:
        if self.name is not None:
            return f"{self.name}+{self.offset:#x}/{self.size:#x}"
        return f"[module] {self.address:#x}" if self.module else f"{self.address:#x}"


def kernel_version(osrelease: str | None) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", osrelease or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


class Kallsyms:
    """Decoded symbols: addresses ascending, with their type characters and names."""

    def __init__(self, addresses: list[int], types: str, names: list[str],
                 encoding: str, module_range: tuple[int, int] | None = None):
        self.addresses = addresses
        self.types = types
        self.names = names
        #: which formula gave the addresses: "relative-base" | "absolute-percpu" |
        #: "place-relative" | "absolute"
        self.encoding = encoding
        self._index: dict[str, int] | None = None
        self.stext = self.address("_stext")
        self.etext = self.address("_etext")
        self.sinittext = self.address("_sinittext")
        self.einittext = self.address("_einittext")
        self.end = self.address("_end")
        #: KALLSYMS_ALL: data symbols are in the table too
        self.all_symbols = bool(set(types) & set("dDbBrR"))
        self.module_range = module_range

    def __len__(self) -> int:
        return len(self.addresses)

    def address(self, name: str) -> int | None:
        """The address of the first symbol with this name."""
        if self._index is None:
            self._index = {}
            for i, n in enumerate(self.names):
                self._index.setdefault(n, i)
        i = self._index.get(name)
        return None if i is None else self.addresses[i]

    # ---- the kernel's tests -------------------------------------------------------------
    def is_core_text(self, addr: int) -> bool:
        """is_kernel_text() or is_kernel_inittext()."""
        return (self.stext is not None and self.etext is not None
                and self.stext <= addr < self.etext) or (
            self.sinittext is not None and self.einittext is not None
            and self.sinittext <= addr < self.einittext)

    def is_ksym_addr(self, addr: int) -> bool:
        """The kernel's is_ksym_addr(): with KALLSYMS_ALL [_stext, _end), else text only."""
        if self.all_symbols and self.stext is not None and self.end is not None:
            return self.stext <= addr < self.end
        return self.is_core_text(addr)

    def in_modules(self, addr: int) -> bool:
        return self.module_range is not None and \
            self.module_range[0] <= addr < self.module_range[1]

    def is_text(self, addr: int) -> bool:
        """What the unwinder takes for a code address: vmlinux text, init text, modules."""
        return self.is_core_text(addr) or self.in_modules(addr)

    # ---- lookup -------------------------------------------------------------------------
    def lookup(self, addr: int) -> Symbolized:
        """%pSR of addr: get_symbol_pos() on a vmlinux address, else raw or [module]."""
        if not self.is_ksym_addr(addr):
            return Symbolized(addr, None, None, None, self.in_modules(addr))
        a = self.addresses
        i = bisect.bisect_right(a, addr) - 1
        if i < 0:
            return Symbolized(addr, None, None, None)
        start = a[i]
        first = bisect.bisect_left(a, start, 0, i + 1)
        nxt = bisect.bisect_right(a, start, i)
        if nxt < len(a):
            end = a[nxt]
        elif self.sinittext is not None and self.einittext is not None and \
                self.sinittext <= addr < self.einittext:
            end = self.einittext
        elif self.all_symbols and self.end is not None:
            end = self.end
        else:
            end = self.etext if self.etext is not None else start
        return Symbolized(addr, self.names[first], addr - start, end - start)

    def caller_note(self, ra: int) -> Symbolized | None:
        """A return address at offset 0 of a symbol (after a noreturn call): the caller
        found at ra - 1, printed with offset + 1 as sprint_backtrace (%pB) does."""
        sym = self.lookup(ra)
        if sym.name is None or sym.offset != 0:
            return None
        before = self.lookup(ra - 1)
        if before.name is None:
            return None
        return Symbolized(ra, before.name, before.offset + 1, before.size)


# ---- decoding ---------------------------------------------------------------------------
def _read(kmem, vaddr: int, size: int, what: str) -> bytes:
    try:
        return kmem.read(vaddr, size)
    except SadumpError as e:
        raise KallsymsError(f"{what} at {vaddr:#x} is not readable: {e}") from None


def _tokens(kmem, table: int, index: int) -> list[bytes]:
    tix = struct.unpack(">256H", _read(kmem, index, 512, "kallsyms_token_index"))
    size = min(max(tix) + 256, MAX_TOKEN_TABLE)  # a token is one short string
    ttab = b""
    for chunk in (size, MAX_TOKEN_TABLE):  # the common case reads once
        try:
            ttab = kmem.read(table, chunk)
        except SadumpError:
            if chunk == MAX_TOKEN_TABLE:
                break
            continue
        if ttab.find(b"\0", max(tix)) >= 0:
            break
    if not ttab:
        raise KallsymsError(f"kallsyms_token_table at {table:#x} is not readable")
    tokens = []
    for b, off in enumerate(tix):
        end = ttab.find(b"\0", off)
        if end < 0:
            raise KallsymsError(f"kallsyms token {b} at offset {off} has no end")
        tokens.append(ttab[off:end])
    return tokens


def _names(kmem, names_at: int, count: int, tokens: list[bytes],
           two_byte: bool) -> tuple[list[bytes], int]:
    """The expanded records (type character first) and the length of kallsyms_names."""
    buf = b""
    base = 0  # offset of buf[0] in the table
    out: list[bytes] = []
    join, get = b"".join, tokens.__getitem__
    off = 0
    ended = False  # the readable memory ended: no more refills
    for _ in range(count):
        if not ended and off - base + 2 + MAX_RECORD > len(buf):  # keep the rest, read on
            buf = buf[off - base:]
            base = off
            want = 2 + MAX_RECORD + NAMES_CHUNK - len(buf)
            more = _read_some(kmem, names_at + base + len(buf), want)
            ended = len(more) < want
            buf += more
        p = off - base
        if p >= len(buf):
            raise KallsymsError(f"kallsyms_names ends after {len(out)} of {count} records")
        n = buf[p]
        p += 1
        if n & 0x80 and two_byte:
            if p >= len(buf):
                raise KallsymsError("kallsyms_names ends inside a length")
            n = (n & 0x7F) | (buf[p] << 7)
            p += 1
        if n == 0 or p + n > len(buf):
            raise KallsymsError(f"kallsyms record {len(out)} at offset {off} has a bad length "
                                f"{n}")
        out.append(join(map(get, buf[p:p + n])))
        off = base + p + n
    return out, off


def _read_some(kmem, vaddr: int, size: int) -> bytes:
    """As much of [vaddr, vaddr + size) as is readable from its start (the table may end
    near the end of mapped memory); at least nothing, never an exception."""
    while size > 0:
        try:
            return kmem.read(vaddr, size)
        except SadumpError:
            size //= 2
    return b""


def _candidates(info: VmcoreInfo, kmem, count: int) -> dict[str, list[int]]:
    """Address lists, one per encoding that VMCOREINFO makes possible (spec 1.4)."""
    out: dict[str, list[int]] = {}
    offsets_at = info.symbol("kallsyms_offsets")
    if offsets_at is not None:
        raw = _read(kmem, offsets_at, 4 * count, "kallsyms_offsets")
        unsigned = struct.unpack(f">{count}I", raw)
        rel_at = info.symbol("kallsyms_relative_base")
        if rel_at is not None:
            rel = int.from_bytes(_read(kmem, rel_at, 8, "kallsyms_relative_base"), "big")
            out["relative-base"] = [rel + o for o in unsigned]
            out["absolute-percpu"] = [o if o < 1 << 31 else rel - 1 - (o - (1 << 32))
                                      for o in unsigned]
        signed = struct.unpack(f">{count}i", raw)
        out["place-relative"] = [(offsets_at + 4 * i + o) & ((1 << 64) - 1)
                                 for i, o in enumerate(signed)]
    addresses_at = info.symbol("kallsyms_addresses")
    if addresses_at is not None:
        raw = _read(kmem, addresses_at, 8 * count, "kallsyms_addresses")
        out["absolute"] = list(struct.unpack(f">{count}Q", raw))
    return out


def module_range(info: VmcoreInfo, kmem, syms: Kallsyms) -> tuple[int, int] | None:
    """6.10+: [round_down(KERNELOFFSET, 1 MiB) - 2 GiB, that); 6.1: the MODULES_VADDR and
    MODULES_END variables, when kallsyms has them (KALLSYMS_ALL)."""
    version = kernel_version(info.osrelease)
    koff = info.kerneloffset
    if version is not None and version >= (6, 10) and koff:
        end = koff & ~(MIB - 1)
        return (end - MODULES_LEN, end)
    start_at, end_at = syms.address("MODULES_VADDR"), syms.address("MODULES_END")
    if start_at is None or end_at is None:
        return None
    try:
        start, end = kmem.read_u64(start_at), kmem.read_u64(end_at)
    except SadumpError:
        return None
    return (start, end) if 0 < start < end else None


def decode(info: VmcoreInfo | None, kmem) -> Kallsyms:
    """Decode the symbol table that VMCOREINFO points at; KallsymsError when it is absent
    (before Linux 6.0) or does not pass the checks."""
    if info is None:
        raise KallsymsError("no VMCOREINFO")
    missing = [k for k in _REQUIRED if info.symbol(k) is None]
    if missing:
        raise KallsymsError(f"VMCOREINFO has no SYMBOL({missing[0]}) (kallsyms lines came with "
                            "Linux 6.0)")
    stext = info.symbol("_stext")
    if stext is None:
        raise KallsymsError("VMCOREINFO has no SYMBOL(_stext) to check kallsyms against")
    count = int.from_bytes(_read(kmem, info.symbol("kallsyms_num_syms"), 4,
                                 "kallsyms_num_syms"), "big")
    if not 0 < count <= MAX_SYMS:
        raise KallsymsError(f"kallsyms_num_syms {count} is out of range")
    tokens = _tokens(kmem, info.symbol("kallsyms_token_table"),
                     info.symbol("kallsyms_token_index"))
    version = kernel_version(info.osrelease)
    two_byte = version is None or version >= (6, 1)
    records, _ = _names(kmem, info.symbol("kallsyms_names"), count, tokens, two_byte)
    try:
        at = [r[1:] for r in records].index(b"_stext")
    except ValueError:
        raise KallsymsError("kallsyms has no _stext") from None
    candidates = _candidates(info, kmem, count)
    if not candidates:
        raise KallsymsError("VMCOREINFO has neither SYMBOL(kallsyms_offsets) nor "
                            "SYMBOL(kallsyms_addresses)")
    for encoding, addresses in candidates.items():
        if addresses[at] == stext:
            break
    else:
        raise KallsymsError(f"no address encoding puts kallsyms' _stext at SYMBOL(_stext) "
                            f"{stext:#x}")
    if any(a > b for a, b in itertools.pairwise(addresses)):
        raise KallsymsError("kallsyms addresses are not sorted")
    types = "".join(r[:1].decode("latin-1") or "?" for r in records)
    if not _TYPES.fullmatch(types):
        bad = _TYPES_BAD.search(types).start()
        raise KallsymsError(f"kallsyms record {bad} has no nm type letter: the names table "
                            "does not decode (one- or two-byte lengths?)")
    names = [r[1:].decode("latin-1") for r in records]
    syms = Kallsyms(addresses, types, names, encoding)
    syms.module_range = module_range(info, kmem, syms)
    return syms

"""BTF, the kernel's own compact type description (include/uapi/linux/btf.h), read from
the image: struct layouts without vmlinux (spec tasks-btf.md 3-4).

No Python library reads BTF, so this is a reader of its own. `Btf.from_bytes` indexes the
type section in one pass (each record's offset and kind; nothing decoded); names, members
and enumerators are decoded when asked. Every walk is bounded for a damaged blob: the type
count, string offsets (a name must end in NUL inside the string section), the depth of
nested lookups and the hops through typedefs and qualifiers (a cycle is an error, not a
hang). Byte order is the target's, from the magic (big-endian on s390x).

`load_kernel_btf` finds the blob: `--btf FILE`, else [__start_BTF, __stop_BTF) from
kallsyms, else a scan of the kernel image that keeps only a candidate passing every check.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from sadump.constants import MIB
from sadump.errors import BtfError, NoBtfError, SadumpError

MAGIC = 0xEB9F
HEADER = 24  # sizeof(struct btf_header)
#: BTF_MAX_TYPE: a type ID has 20 bits
MAX_TYPES = 0xFFFFF
#: a vmlinux blob is a few MiB (Debian 13: 3.85 MiB); allyesconfig kernels stay far below
MAX_BTF_SIZE = 64 * MIB
#: typedef/qualifier hops before a chain counts as a cycle
MAX_RESOLVE = 64
#: nesting of arrays, anonymous members and path components
MAX_DEPTH = 32

KINDS = ("void", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef",
         "volatile", "const", "restrict", "func", "func_proto", "var", "datasec", "float",
         "decl_tag", "type_tag", "enum64")
KIND = {name: i for i, name in enumerate(KINDS)}
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, \
    FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
#: bytes after the 12-byte record: fixed, and per vlen item
_FIXED = (0, 4, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 4, 0, 0)
_PER_VLEN = (0, 0, 0, 0, 12, 12, 8, 0, 0, 0, 0, 0, 0, 8, 0, 12, 0, 0, 0, 12)
_MODIFIERS = frozenset((TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG))
_SIZED = frozenset((INT, STRUCT, UNION, ENUM, FLOAT, DATASEC, ENUM64))
_PATH_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")

HEADER_BYTES = bytes.fromhex("eb9f010000000018")  # what a big-endian blob starts with


@dataclass(frozen=True)
class Member:
    """A struct or union member; bit_offset from the start of the outermost struct asked."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int  # 0: not a bitfield


class Btf:
    """One BTF blob, indexed; decode on demand."""

    def __init__(self, blob: bytes, byteorder: str, types_at: int, types_len: int,
                 strs_at: int, strs_len: int):
        self.blob = blob
        self.byteorder = byteorder
        self._e = ">" if byteorder == "big" else "<"
        self._types_at, self._types_len = types_at, types_len
        self._strs_at, self._strs_len = strs_at, strs_len
        self._u32 = struct.Struct(self._e + "I").unpack_from
        self._rec = struct.Struct(self._e + "III").unpack_from
        self._offsets, self._kinds, self._name_offs = _index(blob, types_at, types_len,
                                                             self._e)
        self._enumerators: dict[str, int] | None = None
        self._packed_names: bytes | None = None
        self._members: dict[int, list[Member]] = {}  # decoded structs and unions
        #: the target's pointer size: that of `long` (8 on s390x)
        self.pointer_size = 8
        if self.has_type("long int", "int"):
            size = self.sizeof(self.type_id("long int", "int"))
            self.pointer_size = size if size in (4, 8) else 8

    @classmethod
    def from_bytes(cls, blob: bytes, base: Btf | None = None) -> Btf:
        """Check the header and the section bounds, index the types; BtfError on damage.

        base: the kernel's BTF for a module's split BTF (/sys/kernel/btf/<module>), whose
        type IDs and string offsets continue the base's; the result holds both, as one
        blob whose sections are the base's followed by the module's."""
        blob = bytes(blob)
        if base is not None:
            blob = _merge(base, blob)
        if len(blob) < HEADER:
            raise BtfError(f"BTF blob of {len(blob)} bytes is shorter than its header")
        if len(blob) > MAX_BTF_SIZE:
            raise BtfError(f"BTF blob of {len(blob)} bytes is larger than {MAX_BTF_SIZE}")
        magic = int.from_bytes(blob[:2], "big")
        if magic == MAGIC:
            order = "big"
        elif magic == 0x9FEB:
            order = "little"
        else:
            raise BtfError(f"no BTF magic: {blob[:2].hex()} (want eb9f)")
        e = ">" if order == "big" else "<"
        version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from(e + "BBIIIII", blob, 2)
        if version != 1:
            raise BtfError(f"BTF version {version} (only 1 is known)")
        if not HEADER <= hdr_len <= len(blob) or hdr_len % 4:
            raise BtfError(f"BTF header length {hdr_len} is out of range")
        if any(blob[HEADER:hdr_len]):
            raise BtfError("BTF header has unknown non-zero fields")
        data = len(blob) - hdr_len
        if type_off % 4 or type_len % 4 or type_off + type_len > str_off \
                or str_off + str_len > data:
            raise BtfError(f"BTF sections out of order or outside the blob (types "
                           f"{type_off}+{type_len}, strings {str_off}+{str_len}, data {data})")
        if str_len == 0 or blob[hdr_len + str_off] != 0:
            raise BtfError("BTF string section does not start with NUL")
        return cls(blob, order, hdr_len + type_off, type_len, hdr_len + str_off, str_len)

    # ---- basics -----------------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of types, void included (the highest ID + 1)."""
        return len(self._offsets)

    def _check_id(self, type_id: int) -> None:
        if not 0 <= type_id < len(self._offsets):
            raise BtfError(f"BTF type ID {type_id} is out of range (0..{len(self) - 1})")

    def _record(self, type_id: int) -> tuple[int, int, int, int]:
        """(name_off, info, size_or_type, offset of the trailing data) of a type."""
        self._check_id(type_id)
        if type_id == 0:
            raise BtfError("BTF type 0 is void")
        at = self._offsets[type_id]
        name_off, info, size = self._rec(self.blob, at)
        return name_off, info, size, at + 12

    def kind(self, type_id: int) -> str:
        self._check_id(type_id)
        return KINDS[self._kinds[type_id]]

    def kind_flag(self, type_id: int) -> bool:
        return bool(self._record(type_id)[1] >> 31)

    def vlen(self, type_id: int) -> int:
        return self._record(type_id)[1] & 0xFFFF

    def string(self, offset: int) -> str:
        """The NUL-terminated string at an offset of the string section."""
        if not 0 <= offset < self._strs_len:
            raise BtfError(f"BTF string offset {offset} is outside the string section "
                           f"({self._strs_len} bytes)")
        start = self._strs_at + offset
        end = self.blob.find(b"\0", start, self._strs_at + self._strs_len)
        if end < 0:
            raise BtfError(f"BTF string at offset {offset} has no NUL")
        return self.blob[start:end].decode("latin-1")

    def name(self, type_id: int) -> str:
        """The type's name ("" for anonymous types and void)."""
        if type_id == 0:
            return ""
        return self.string(self._record(type_id)[0])

    def type_ids(self, name: str, kind: str = "struct") -> list[int]:
        """Every type of this kind with this name, by ID: each copy of the name in the
        string section, then each type whose name offset is that copy's (both searches are
        bytes.find over the blob and over the name offsets packed as 32-bit words)."""
        k = _kind_number(kind)
        if not name:  # anonymous types are not looked up by name
            return []
        if self._packed_names is None:
            self._packed_names = struct.pack(f"={len(self._name_offs)}I", *self._name_offs)
        packed = self._packed_names
        key = b"\0" + name.encode("latin-1") + b"\0"
        start, end = self._strs_at, self._strs_at + self._strs_len
        out: list[int] = []
        at = self.blob.find(key, start, end)
        while at >= 0:  # a blob need not share its strings
            word = struct.pack("=I", at + 1 - start)
            hit = packed.find(word)
            while hit >= 0:
                if hit % 4 == 0 and self._kinds[hit // 4] == k:
                    out.append(hit // 4)
                hit = packed.find(word, hit + 1)
            at = self.blob.find(key, at + 1, end)
        return sorted(out)

    def has_type(self, name: str, kind: str = "struct") -> bool:
        return bool(self.type_ids(name, kind))

    def type_id(self, name: str, kind: str = "struct") -> int:
        """The (first) type of this kind with this name; BtfError when there is none."""
        ids = self.type_ids(name, kind)
        if not ids:
            raise BtfError(f"BTF has no {kind} {name}")
        return ids[0]

    def _type(self, t: int | str) -> int:
        """A type given by ID, or by name: a struct, else a union, else a typedef."""
        if not isinstance(t, str):
            return t
        for kind in ("struct", "union", "typedef"):
            ids = self.type_ids(t, kind)
            if ids:
                return ids[0]
        raise BtfError(f"BTF has no struct, union or typedef {t}")

    # ---- following types --------------------------------------------------------------------
    def resolve(self, type_id: int) -> int:
        """Through typedefs and qualifiers (const, volatile, restrict, type_tag) to the type
        they name; bounded, a cycle is a BtfError."""
        t = type_id
        for _ in range(MAX_RESOLVE):
            self._check_id(t)
            if self._kinds[t] not in _MODIFIERS:
                return t
            t = self._record(t)[2]
        raise BtfError(f"BTF type {type_id}: typedef/qualifier chain longer than "
                       f"{MAX_RESOLVE} (a cycle)")

    def target(self, type_id: int) -> int:
        """The one type a typedef, qualifier, type_tag, pointer, func, var or decl_tag
        refers to (one step; resolve() goes all the way); for a func_proto its return
        type."""
        k = self._kinds[type_id] if 0 < type_id < len(self._kinds) else 0
        if k not in _MODIFIERS and k not in (PTR, FUNC, VAR, DECL_TAG, FUNC_PROTO):
            raise BtfError(f"BTF type {type_id} ({self.kind(type_id)}) refers to no type")
        return self._record(type_id)[2]

    def params(self, t: int) -> list[tuple[str, int]]:
        """(name, type) of each parameter of a func_proto (type 0: varargs)."""
        if self.kind(t) != "func_proto":
            raise BtfError(f"BTF type {t} is a {self.kind(t)}, not a func_proto")
        _n, info, _s, at = self._record(t)
        return [(self.string(n), p) for n, p in
                struct.iter_unpack(self._e + "II", self.blob[at:at + 8 * (info & 0xFFFF)])]

    def datasec_vars(self, t: int) -> list[tuple[int, int, int]]:
        """(var type, offset, size) of each variable of a datasec."""
        if self.kind(t) != "datasec":
            raise BtfError(f"BTF type {t} is a {self.kind(t)}, not a datasec")
        _n, info, _s, at = self._record(t)
        return list(struct.iter_unpack(self._e + "III", self.blob[at:at + 12 * (info & 0xFFFF)]))

    def linkage(self, t: int) -> int:
        """A var's or func's linkage: 0 static, 1 global, 2 extern."""
        k = self.kind(t)
        if k == "func":
            return self.vlen(t)
        if k == "var":
            return self._u32(self.blob, self._record(t)[3])[0]
        raise BtfError(f"BTF type {t} is a {k}: no linkage")

    def component_idx(self, t: int) -> int:
        """A decl_tag's member or parameter index (-1: the type or func itself)."""
        if self.kind(t) != "decl_tag":
            raise BtfError(f"BTF type {t} is a {self.kind(t)}, not a decl_tag")
        return struct.unpack_from(self._e + "i", self.blob, self._record(t)[3])[0]

    def pointee(self, t: int) -> int:
        """The type a pointer points to (typedefs of the pointer followed)."""
        r = self.resolve(t)
        if self._kinds[r] != PTR:
            raise BtfError(f"BTF type {t} is a {self.kind(r)}, not a pointer")
        return self._record(r)[2]

    def array(self, t: int) -> tuple[int, int]:
        """(element type, number of elements) of an array type."""
        r = self.resolve(t)
        if self._kinds[r] != ARRAY:
            raise BtfError(f"BTF type {t} is a {self.kind(r)}, not an array")
        at = self._record(r)[3]
        elem, _index_type, nelems = struct.unpack_from(self._e + "III", self.blob, at)
        return elem, nelems

    def int_encoding(self, t: int) -> tuple[int, int, int]:
        """(encoding bits: 1 signed, 2 char, 4 bool; bit offset; bits) of an INT type."""
        r = self.resolve(t)
        if self._kinds[r] != INT:
            raise BtfError(f"BTF type {t} is a {self.kind(r)}, not an int")
        v = self._u32(self.blob, self._record(r)[3])[0]
        return (v >> 24) & 0xF, (v >> 16) & 0xFF, v & 0xFF

    def sizeof(self, t: int | str, _depth: int = 0) -> int:
        """Size in bytes of a type (a str names a struct, union or typedef)."""
        t = self._type(t)
        if _depth > MAX_DEPTH:
            raise BtfError(f"BTF type {t}: arrays nested deeper than {MAX_DEPTH}")
        r = self.resolve(t)
        k = self._kinds[r]
        if k in _SIZED:
            return self._record(r)[2]
        if k == PTR:
            return self.pointer_size
        if k == ARRAY:
            elem, n = self.array(r)
            return n * self.sizeof(elem, _depth + 1)
        raise BtfError(f"BTF type {t} ({self.kind(r)} {self.name(r)}) has no size")

    # ---- struct and union members ----------------------------------------------------------
    def members(self, t: int | str) -> list[Member]:
        """The members of a struct or union, bit offsets from its start; a bitfield's size
        comes from the member (kind_flag) or from its INT type's bits."""
        t = self._type(t)
        r = self.resolve(t)
        if self._kinds[r] not in (STRUCT, UNION):
            raise BtfError(f"BTF type {t} is a {self.kind(r)}, not a struct or union")
        cached = self._members.get(r)
        if cached is None:
            cached = self._members[r] = self._decode_members(r)
        return list(cached)

    def _decode_members(self, r: int) -> list[Member]:
        _name_off, info, _size, at = self._record(r)
        vlen, kflag = info & 0xFFFF, info >> 31
        out = []
        for name_off, mtype, offset in struct.iter_unpack(self._e + "III",
                                                          self.blob[at:at + 12 * vlen]):
            if kflag:
                bits, bit_offset = offset >> 24, offset & 0xFFFFFF
            else:
                bits, bit_offset = 0, offset
                try:
                    mr = self.resolve(mtype)
                    if self._kinds[mr] == INT:
                        _enc, int_off, int_bits = self.int_encoding(mr)
                        if int_off or int_bits != 8 * self._record(mr)[2]:
                            bits, bit_offset = int_bits, offset + int_off
                except BtfError:
                    pass  # a damaged member type is reported when it is used
            out.append(Member(self.string(name_off), mtype, bit_offset, bits))
        return out

    def _find(self, t: int, name: str, depth: int) -> Member | None:
        """A member by name, searched through anonymous struct and union members."""
        if depth > MAX_DEPTH:
            raise BtfError(f"BTF type {t}: anonymous members nested deeper than {MAX_DEPTH}")
        for m in self.members(t):
            if m.name == name:
                return m
            if not m.name:
                inner = self.resolve(m.type_id)
                if self._kinds[inner] in (STRUCT, UNION):
                    found = self._find(inner, name, depth + 1)
                    if found is not None:
                        return Member(found.name, found.type_id,
                                      m.bit_offset + found.bit_offset, found.bitfield_size)
        return None

    def member(self, struct_: int | str, path: str) -> Member:
        """A member by dotted path ("thread.ksp", "mem[1].base"): anonymous members are
        searched through, array indices are stepped over; bit_offset from the start of the
        outer struct."""
        t = self._type(struct_)
        parts = path.split(".")
        if not path or len(parts) > MAX_DEPTH:
            raise BtfError(f"bad member path {path!r}")
        offset, found = 0, None
        for part in parts:
            m = _PATH_PART.match(part)
            if m is None:
                raise BtfError(f"bad member path {path!r}")
            if found is not None:
                if found.bitfield_size:
                    raise BtfError(f"{self._describe(struct_)}.{path}: a bitfield has no members")
                t = found.type_id
            r = self.resolve(t)
            if self._kinds[r] not in (STRUCT, UNION):
                raise BtfError(f"{self._describe(struct_)}: {part} is not in a struct or "
                               f"union ({self.kind(r)})")
            found = self._find(r, m.group(1), 0)
            if found is None:
                raise BtfError(f"{self._describe(struct_)} has no member {path}")
            offset += found.bit_offset
            mtype = found.type_id
            for index in re.findall(r"\d+", m.group(2)):
                elem, n = self.array(mtype)
                if n and int(index) >= n:
                    raise BtfError(f"{self._describe(struct_)}.{path}: index {index} is past "
                                   f"the {n} elements")
                offset += 8 * int(index) * self.sizeof(elem)
                mtype = elem
            found = Member(found.name, mtype, found.bit_offset, found.bitfield_size)
        return Member(found.name, found.type_id, offset, found.bitfield_size)

    def _describe(self, t: int | str) -> str:
        if isinstance(t, str):
            return f"struct {t}"
        try:
            return f"{self.kind(self.resolve(t))} {self.name(self.resolve(t)) or t}"
        except BtfError:
            return f"type {t}"

    def offsetof(self, struct_: int | str, path: str) -> int:
        """The byte offset of a member that is not a bitfield."""
        m = self.member(struct_, path)
        if m.bitfield_size or m.bit_offset % 8:
            raise BtfError(f"{self._describe(struct_)}.{path} is a bitfield: no byte offset")
        return m.bit_offset // 8

    def has_member(self, struct_: int | str, path: str) -> bool:
        try:
            self.member(struct_, path)
        except BtfError:
            return False
        return True

    # ---- enums --------------------------------------------------------------------------
    def enumerators(self, t: int) -> list[tuple[str, int]]:
        """(name, value) of an enum or enum64; signed when the kind_flag says so."""
        r = self.resolve(t)
        k = self._kinds[r]
        if k not in (ENUM, ENUM64):
            raise BtfError(f"BTF type {t} is a {self.kind(r)}, not an enum")
        _name_off, info, _size, at = self._record(r)
        vlen, signed = info & 0xFFFF, bool(info >> 31)
        out = []
        if k == ENUM:
            for name_off, v in struct.iter_unpack(self._e + "II", self.blob[at:at + 8 * vlen]):
                if signed and v >= 1 << 31:
                    v -= 1 << 32
                out.append((self.string(name_off), v))
        else:
            for name_off, lo, hi in struct.iter_unpack(self._e + "III",
                                                       self.blob[at:at + 12 * vlen]):
                v = hi << 32 | lo
                if signed and v >= 1 << 63:
                    v -= 1 << 64
                out.append((self.string(name_off), v))
        return out

    def enum_value(self, name: str, enum: str | None = None) -> int:
        """The value of an enumerator, in the named enum or in any enum of the blob."""
        if enum is not None:
            ids = self.type_ids(enum, "enum") + self.type_ids(enum, "enum64")
            if not ids:
                raise BtfError(f"BTF has no enum {enum}")
            for t in ids:
                for n, v in self.enumerators(t):
                    if n == name:
                        return v
            raise BtfError(f"enum {enum} has no {name}")
        if self._enumerators is None:
            table: dict[str, int] = {}
            for k in (ENUM, ENUM64):
                t = self._kinds.find(k)
                while t >= 0:
                    try:
                        for n, v in self.enumerators(t):
                            table.setdefault(n, v)
                    except BtfError:
                        pass  # a damaged enum is not a reason to lose the others
                    t = self._kinds.find(k, t + 1)
            self._enumerators = table
        if name not in self._enumerators:
            raise BtfError(f"BTF has no enumerator {name}")
        return self._enumerators[name]

    # ---- checks for a scanned candidate ---------------------------------------------------
    def check(self) -> None:
        """Every type ID a record refers to is in range (what a scan must see to trust a
        candidate that merely starts with the right header)."""
        n = len(self._offsets)
        e = self._e
        for t in range(1, n):
            k = self._kinds[t]
            _name_off, info, size, at = self._record(t)
            vlen = info & 0xFFFF
            refs: tuple[int, ...] | list[int] = ()
            if k in _MODIFIERS or k in (PTR, FUNC, VAR, DECL_TAG):
                refs = (size,)
            elif k == ARRAY:
                refs = struct.unpack_from(e + "II", self.blob, at)
            elif k in (STRUCT, UNION):
                refs = struct.unpack_from(e + "III" * vlen, self.blob, at)[1::3]
            elif k == FUNC_PROTO:
                refs = (size, *struct.unpack_from(e + "II" * vlen, self.blob, at)[1::2])
            elif k == DATASEC:
                refs = struct.unpack_from(e + "III" * vlen, self.blob, at)[0::3]
            if refs and max(refs) >= n:
                raise BtfError(f"BTF type {t} refers to type {max(refs)}, past the last "
                               f"({n - 1})")


def _merge(base: Btf, split: bytes) -> bytes:
    """A split blob appended to its base: one header, the types, then the strings."""
    if len(split) < HEADER or int.from_bytes(split[:2], base.byteorder) != MAGIC:
        raise BtfError("split BTF: no BTF magic in the base's byte order")
    hdr_len, type_off, type_len, str_off, str_len = \
        struct.unpack_from(base._e + "IIIII", split, 4)
    data = len(split) - hdr_len
    if not HEADER <= hdr_len <= len(split) or type_off + type_len > str_off \
            or str_off + str_len > data:
        raise BtfError("split BTF: sections out of order or outside the blob")
    types = split[hdr_len + type_off:hdr_len + type_off + type_len]
    strs = split[hdr_len + str_off:hdr_len + str_off + str_len]
    base_types = base.blob[base._types_at:base._types_at + base._types_len]
    base_strs = base.blob[base._strs_at:base._strs_at + base._strs_len]
    all_types = len(base_types) + len(types)
    header = struct.pack(base._e + "HBBIIIII", MAGIC, 1, 0, HEADER, 0, all_types, all_types,
                         len(base_strs) + len(strs))
    return header + base_types + types + base_strs + strs


def _kind_number(kind: str) -> int:
    try:
        return KIND[kind]
    except KeyError:
        raise BtfError(f"unknown BTF kind {kind!r}") from None


def _index(blob: bytes, at: int, length: int, e: str) -> tuple[list[int], bytearray,
                                                               list[int]]:
    """One pass over the type section: each type's record offset, kind and name offset."""
    unpack = struct.Struct(e + "II").unpack_from
    offsets, kinds, names = [0], bytearray(1), [0]
    fixed, per = _FIXED, _PER_VLEN
    pos, end = at, at + length
    add_off, add_kind, add_name = offsets.append, kinds.append, names.append
    while pos < end:
        if pos + 12 > end:
            raise BtfError(f"BTF type {len(offsets)} is cut off at the end of the type "
                           "section")
        name_off, info = unpack(blob, pos)
        kind = (info >> 24) & 0x1F
        if not 0 < kind < 20:
            raise BtfError(f"BTF type {len(offsets)} has an unknown kind {kind}")
        add_off(pos)
        add_kind(kind)
        add_name(name_off)
        pos += 12 + fixed[kind] + per[kind] * (info & 0xFFFF)
        if len(offsets) > MAX_TYPES + 1:
            raise BtfError(f"BTF claims more than {MAX_TYPES} types")
    if pos != end:
        raise BtfError(f"BTF type {len(offsets) - 1} runs past the end of the type section")
    return offsets, kinds, names


# ---- finding the kernel's BTF ---------------------------------------------------------------
NO_BTF = ("no BTF in this kernel (CONFIG_DEBUG_INFO_BTF not set): give the same kernel's "
          "/sys/kernel/btf/vmlinux with --btf FILE")
#: how far past _stext a scan looks when kallsyms names no end of the read-only data
MAX_SCAN = 256 * MIB
SCAN_CHUNK = MIB


def read_btf_file(path: str) -> Btf:
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_BTF_SIZE + 1)
    except OSError as e:
        raise BtfError(f"cannot read --btf {path}: {e.strerror or e}") from None
    try:
        return Btf.from_bytes(blob)
    except BtfError as e:
        raise BtfError(f"--btf {path}: {e}") from None


def btf_from_symbols(kmem, symbols) -> Btf | None:
    """[__start_BTF, __stop_BTF) when kallsyms has both; None when it has not."""
    start, stop = symbols.address("__start_BTF"), symbols.address("__stop_BTF")
    if start is None or stop is None:
        return None
    if not HEADER <= stop - start <= MAX_BTF_SIZE:
        raise BtfError(f"__start_BTF {start:#x} .. __stop_BTF {stop:#x} is no BTF size")
    try:
        blob = _read_blob(kmem, start, stop - start)
    except SadumpError as e:
        raise BtfError(f"the kernel's BTF at {start:#x} is not readable: {e}") from None
    try:
        return Btf.from_bytes(blob)
    except BtfError as e:
        raise BtfError(f"the kernel's BTF at __start_BTF {start:#x}: {e}") from None


def _read_blob(kmem, vaddr: int, size: int) -> bytes:
    return b"".join(kmem.read(vaddr + o, min(MIB, size - o)) for o in range(0, size, MIB))


def scan_range(symbols) -> tuple[int, int] | None:
    """[_stext, end of the read-only data): _sdata, else _sinittext (after the data on
    s390), else _end, else MAX_SCAN."""
    stext = symbols.address("_stext")
    if stext is None:
        return None
    for name in ("_sdata", "_sinittext", "_end"):
        end = symbols.address(name)
        if end is not None and stext < end <= stext + MAX_SCAN:
            return stext, end
    return stext, stext + MAX_SCAN


def scan_for_btf(kmem, start: int, end: int) -> tuple[int, Btf] | None:
    """The first place in [start, end) where a whole, valid BTF blob starts (header
    eb9f010000000018, sections in order and inside the range, strings from NUL, every type
    ID in range); unreadable MiBs are skipped."""
    vaddr = start - start % 4
    keep = b""  # the tail of the previous chunk: a header across the boundary
    while vaddr < end:
        n = min(SCAN_CHUNK, end - vaddr)
        try:
            chunk = kmem.read(vaddr, n)
        except SadumpError:
            vaddr, keep = vaddr + n, b""
            continue
        data, base = keep + chunk, vaddr - len(keep)
        at = data.find(HEADER_BYTES)
        while at >= 0:
            where = base + at
            if where % 4 == 0:
                found = _candidate(kmem, where, end)
                if found is not None:
                    return where, found
            at = data.find(HEADER_BYTES, at + 1)
        keep = data[-(len(HEADER_BYTES) - 1):]
        vaddr += n
    return None


def _candidate(kmem, where: int, end: int) -> Btf | None:
    try:
        head = kmem.read(where, HEADER)
        _m, _v, _f, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack(">HBBIIIII", head)
        size = hdr_len + str_off + str_len
        if type_off != 0 or str_off != type_off + type_len or not HEADER < size <= \
                min(MAX_BTF_SIZE, end - where):
            return None
        btf = Btf.from_bytes(_read_blob(kmem, where, size))
        if btf.blob[-1] != 0:
            return None
        btf.check()
        return btf
    except SadumpError:
        return None


class VmcoreinfoSymbols:
    """address() over VMCOREINFO's SYMBOL() lines: where kallsyms cannot be decoded (before
    Linux 6.0, RHEL 9's 5.14 with BTF say), SYMBOL(_stext) still starts a scan."""

    def __init__(self, info):
        self.info = info

    def address(self, name: str) -> int | None:
        return self.info.symbol(name)


def load_kernel_btf(kmem, symbols, btf_file: str | None = None) -> Btf:
    """The kernel's BTF: --btf FILE when given, else [__start_BTF, __stop_BTF) from
    kallsyms, else a validated scan of the kernel image; NoBtfError when there is none.
    symbols: anything with address(name) -> int | None (Kallsyms, VmcoreinfoSymbols)."""
    if btf_file is not None:
        return read_btf_file(btf_file)
    if symbols is None:
        raise NoBtfError(NO_BTF)
    problem = None
    try:
        found = btf_from_symbols(kmem, symbols)
    except BtfError as e:
        found, problem = None, e
    if found is not None:
        return found
    where = scan_range(symbols)
    hit = scan_for_btf(kmem, *where) if where is not None else None
    if hit is not None:
        return hit[1]
    if problem is not None:
        raise problem
    raise NoBtfError(NO_BTF)

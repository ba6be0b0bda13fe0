"""The loaded modules, as /proc/modules lists them, and their own symbol tables
(spec tasks-btf.md 5; kernel/module/procfs.c, kernel/module/kallsyms.c).

The list head is kallsyms' `modules` (CONFIG_KALLSYMS_ALL); `struct module` is laid out by
the kernel's BTF: `list`, `name`, `state`, the memory ranges (`mem[]` from 6.4, the core and
init layouts before), `refcnt`, `source_list` (who uses the module), `init`/`exit`, `taints`
and `kallsyms` (each module's core symbol table, ELF symbols, big-endian on s390x).
Every walk is bounded and stops at a loop or an unreadable word with a warning; a name
without NUL is cut at its array's end, with a warning.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field

from sadump.constants import MIB, PAGE_SIZE
from sadump.errors import BtfError, SadumpError

#: no kernel loads more (a module is at least a few pages of vmalloc space)
MAX_MODULES = 8192
#: users of one module (module_use entries)
MAX_USERS = MAX_MODULES
#: symbols of one module's core table (ext4 has ~3,000)
MAX_MODULE_SYMS = 1 << 18
#: bytes of one module's string table
MAX_STRTAB = 16 * MIB
#: struct module is about 1.5 KiB (6.12); a BTF claiming far more is damaged
MAX_STRUCT_MODULE = 64 << 10
ELF64_SYM = struct.Struct(">IBBHQQ")  # st_name, st_info, st_other, st_shndx, st_value, st_size
SHN_UNDEF = 0
MODULE_REF_BASE = 1  # kernel/module/main.c: refcnt holds the count plus one
#: kernel/panic.c taint_flags: (bit, letter) of the flags a module can carry
MODULE_TAINTS = ((0, "P"), (1, "F"), (10, "C"), (12, "O"), (13, "E"), (15, "K"), (16, "X"),
                 (17, "T"), (18, "N"))
STATE_LIVE, STATE_COMING, STATE_GOING, STATE_UNFORMED = 0, 1, 2, 3


class ModuleError(SadumpError):
    """The module list cannot be read at all (no `modules` symbol, no struct module)."""


@dataclass
class Module:
    """One loaded module: what /proc/modules shows, and where its memory is."""

    struct_addr: int  # the struct module
    name: str
    state: int  # enum module_state
    size: int  # /proc/modules' size: every memory range (6.4+) or core + init layout
    address: int  # /proc/modules' address: the core text base
    refcount: int | None  # None: no CONFIG_MODULE_UNLOAD
    used_by: list[str]
    permanent: bool  # has init, no exit: cannot be unloaded
    taints: int
    text: tuple[int, int]  # [start, end) of the core text
    init_text: tuple[int, int]
    ranges: list[tuple[int, int]]  # every [start, end) of the module's memory
    kallsyms: int  # struct mod_kallsyms *
    _symbols: object = field(default=None, repr=False)  # ModuleSymbols, loaded on demand
    _loader: object = field(default=None, repr=False)

    @property
    def state_name(self) -> str:
        return {STATE_GOING: "Unloading", STATE_COMING: "Loading"}.get(self.state, "Live")

    def flags(self) -> str:
        """module_flags(mod, buf, true): the taint letters, '-' going, '+' coming."""
        if not self.taints:
            return ""
        out = "".join(c for bit, c in MODULE_TAINTS if self.taints >> bit & 1)
        out += "-" if self.state == STATE_GOING else "+" if self.state == STATE_COMING else ""
        return f"({out})"

    def proc_line(self) -> str:
        """The line /proc/modules shows for this module (as root)."""
        if self.refcount is None:
            unload = " - -"
        else:
            users = "".join(f"{u}," for u in self.used_by)
            if self.permanent:
                users += "[permanent],"
            unload = f" {self.refcount} {users or '-'}"
        line = f"{self.name} {self.size}{unload} {self.state_name} 0x{self.address:016x}"
        flags = self.flags()
        return f"{line} {flags}" if flags else line

    def contains(self, addr: int) -> bool:
        return any(s <= addr < e for s, e in self.ranges)

    def symbols(self) -> ModuleSymbols:
        """The module's own symbol table, read once (a damaged one: empty, with .error)."""
        if self._symbols is None:
            self._symbols = self._loader(self) if self._loader is not None \
                else ModuleSymbols([], [], "not read")
        return self._symbols


@dataclass
class ModuleSymbols:
    """Named, defined, non-mapping symbols of one module, by address (ascending, the first
    in table order kept among equal addresses, as find_kallsyms_symbol picks it)."""

    values: list[int]
    names: list[str]
    error: str | None = None


class Modules(list):
    """list[Module] in /proc/modules order, with the warnings of the walk."""

    def __init__(self, items=(), warnings: list[str] | None = None):
        super().__init__(items)
        self.warnings = warnings if warnings is not None else []


def is_mapping_symbol(name: str) -> bool:
    """include/linux/module_symbol.h: .L*, L0*, $* are not real symbols."""
    return name.startswith((".L", "L0", "$"))


@dataclass
class _Layout:
    """Offsets in struct module and the structs around it, from BTF."""

    list: int
    name: int
    name_len: int
    state: int
    source_list: int | None
    use_source_list: int
    use_source: int
    refcnt: int | None
    init: int | None
    exit: int | None
    taints: int | None
    kallsyms: int | None
    mem: tuple[int, int, int, int] | None  # mem offset, element size, base, size offsets
    text_type: int
    init_text_type: int
    kinds: int  # MOD_MEM_NUM_TYPES
    #: before 6.4: core_layout, init_layout, and base, size, text_size in struct module_layout
    layout: tuple[int, int, int, int, int] | None
    ks: tuple[int, int, int]  # mod_kallsyms symtab, num_symtab, strtab


def _layout(btf) -> _Layout:
    try:
        mod = btf.type_id("module")
        _elem, name_len = btf.array(btf.member(mod, "name").type_id)
        opt = {}
        for path in ("source_list", "refcnt", "init", "exit", "taints", "kallsyms"):
            opt[path] = btf.offsetof(mod, path) if btf.has_member(mod, path) else None
        mem = layout = None
        text_type, init_text_type, kinds = 0, 4, 0
        if btf.has_member(mod, "mem"):
            elem, kinds = btf.array(btf.member(mod, "mem").type_id)
            mem = (btf.offsetof(mod, "mem"), btf.sizeof(elem), btf.offsetof(elem, "base"),
                   btf.offsetof(elem, "size"))
            text_type = btf.enum_value("MOD_TEXT", "mod_mem_type")
            init_text_type = btf.enum_value("MOD_INIT_TEXT", "mod_mem_type")
        else:
            layout = (btf.offsetof(mod, "core_layout"), btf.offsetof(mod, "init_layout"),
                      btf.offsetof("module_layout", "base"),
                      btf.offsetof("module_layout", "size"),
                      btf.offsetof("module_layout", "text_size"))
        use = btf.type_id("module_use") if opt["source_list"] is not None else None
        lay = _Layout(
            btf.offsetof(mod, "list"), btf.offsetof(mod, "name"), name_len,
            btf.offsetof(mod, "state"), opt["source_list"],
            btf.offsetof(use, "source_list") if use else 0,
            btf.offsetof(use, "source") if use else 0,
            opt["refcnt"], opt["init"], opt["exit"], opt["taints"], opt["kallsyms"],
            mem, text_type, init_text_type, kinds, layout,
            (btf.offsetof("mod_kallsyms", "symtab"), btf.offsetof("mod_kallsyms", "num_symtab"),
             btf.offsetof("mod_kallsyms", "strtab")))
        _check_extent(btf, lay, btf.sizeof(mod))
        return lay
    except BtfError as e:
        raise ModuleError(f"struct module in BTF: {e}") from None


def _check_extent(btf, lay: _Layout, size: int) -> None:
    """Every field read lies inside struct module (whose size bounds the one read of it)."""
    if not 0 < size <= MAX_STRUCT_MODULE:
        raise BtfError(f"size {size} is out of range")
    ends = [lay.list + 16, lay.name + lay.name_len, lay.state + 4]
    ends += [at + n for at, n in ((lay.source_list, 16), (lay.refcnt, 4), (lay.init, 8),
                                  (lay.exit, 8), (lay.taints, 8), (lay.kallsyms, 8))
             if at is not None]
    if lay.mem is not None:
        at, step, base, n = lay.mem
        if base + 8 > step or n + 4 > step or not (0 <= lay.text_type < lay.kinds
                                                   and 0 <= lay.init_text_type < lay.kinds):
            raise BtfError("mem[] does not hold the text ranges")
        ends.append(at + lay.kinds * step)
    if lay.layout is not None:
        core, init, *fields = lay.layout
        step = btf.sizeof("module_layout")
        if max(fields) + 8 > step:
            raise BtfError("module_layout is too small for its members")
        ends += [core + step, init + step]
    if max(ends) > size:
        raise BtfError(f"members end at {max(ends)}, past its size {size}")


def _list(kmem, head: int, link: int, cap: int, what: str, warnings: list[str]) -> list[int]:
    """The entries of a kernel list (addresses of the list_head in each), bounded, stopping
    at a loop or an unreadable pointer with a warning."""
    out: list[int] = []
    seen = {head}
    try:
        node = kmem.read_u64(head)
    except SadumpError as e:
        warnings.append(f"{what}: list head at {head:#x} is not readable: {e}")
        return out
    while node != head:
        if node == 0 or node % 8:
            warnings.append(f"{what}: a {'NULL' if node == 0 else 'misaligned'} pointer "
                            f"{node:#x} after {len(out)} entries cuts the list")
            break
        if node in seen:
            warnings.append(f"{what}: the list loops at {node:#x} after {len(out)} entries")
            break
        if len(out) >= cap:
            warnings.append(f"{what}: more than {cap} entries; the rest is left out")
            break
        seen.add(node)
        out.append(node - link)
        try:
            node = kmem.read_u64(node)
        except SadumpError as e:
            warnings.append(f"{what}: entry {len(out)} at {node:#x} is not readable: {e}")
            break
    return out


def _name(raw: bytes, where: int, warnings: list[str]) -> str:
    end = raw.find(b"\0")
    if end < 0:
        warnings.append(f"module at {where:#x}: name without NUL; cut at {len(raw)} bytes")
        end = len(raw)
    return raw[:end].decode("latin-1")


def read_modules(kmem, symbols, btf) -> Modules:
    """Every module on the kernel's `modules` list, newest first as /proc/modules shows
    them (unformed ones left out, as the kernel does); ModuleError when the list cannot be
    found, warnings (Modules.warnings) for a walk cut short."""
    head = symbols.address("modules") if symbols is not None else None
    if head is None:
        raise ModuleError("kallsyms has no `modules` list head (CONFIG_KALLSYMS_ALL not set)")
    lay = _layout(btf)
    warnings: list[str] = []
    out = Modules(warnings=warnings)
    size = btf.sizeof("module")
    u64 = struct.Struct(">Q").unpack_from
    u32 = struct.Struct(">I").unpack_from
    for addr in _list(kmem, head, lay.list, MAX_MODULES, "modules", warnings):
        try:
            raw = kmem.read(addr, size)
        except SadumpError as e:
            warnings.append(f"module at {addr:#x} is not readable: {e}")
            continue
        state = u32(raw, lay.state)[0]
        if state == STATE_UNFORMED:
            continue
        name = _name(raw[lay.name:lay.name + lay.name_len], addr, warnings)
        ranges: list[tuple[int, int]] = []
        if lay.mem is not None:
            at, step, b, s = lay.mem
            mems = [(u64(raw, at + i * step + b)[0], u32(raw, at + i * step + s)[0])
                    for i in range(lay.kinds)]
            total = sum(n for _, n in mems) & 0xFFFFFFFF
            text, init_text = mems[lay.text_type], mems[lay.init_text_type]
            ranges = [(base, base + n) for base, n in mems if base and n]
        else:
            core, init, b, s, ts = lay.layout
            # /proc/modules: core + init size; symbols end at the text's end (text_size)
            (cbase, csize, ctext), (ibase, isize, itext) = (
                (u64(raw, at + b)[0], u32(raw, at + s)[0], u32(raw, at + ts)[0])
                for at in (core, init))
            total = (csize + isize) & 0xFFFFFFFF
            text, init_text = (cbase, ctext), (ibase, itext)
            ranges = [(base, base + n) for base, n in ((cbase, csize), (ibase, isize))
                      if base and n]
        users: list[str] = []
        if lay.source_list is not None:
            for use in _list(kmem, addr + lay.source_list, lay.use_source_list, MAX_USERS,
                             f"module {name} users", warnings):
                try:
                    source = kmem.read_u64(use + lay.use_source)
                    users.append(_name(kmem.read(source + lay.name, lay.name_len), source,
                                       warnings))
                except SadumpError as e:
                    warnings.append(f"module {name}: a user at {use:#x} is not readable: {e}")
        refcount = None
        if lay.refcnt is not None:
            refcount = struct.unpack_from(">i", raw, lay.refcnt)[0] - MODULE_REF_BASE
        permanent = lay.init is not None and bool(u64(raw, lay.init)[0]) and \
            (lay.exit is None or not u64(raw, lay.exit)[0])
        out.append(Module(
            addr, name, state, total, text[0], refcount, users, permanent,
            u64(raw, lay.taints)[0] if lay.taints is not None else 0,
            (text[0], text[0] + text[1]), (init_text[0], init_text[0] + init_text[1]),
            ranges, u64(raw, lay.kallsyms)[0] if lay.kallsyms is not None else 0,
            _loader=lambda m, kmem=kmem, lay=lay: _read_symbols(kmem, lay, m)))
    return out


def _read_upto(kmem, vaddr: int, size: int) -> bytes:
    """[vaddr, vaddr + size) up to the first unreadable page."""
    parts = []
    end = vaddr + size
    while vaddr < end:
        n = min(end - vaddr, PAGE_SIZE - vaddr % PAGE_SIZE)
        try:
            parts.append(kmem.read(vaddr, n))
        except SadumpError:
            break
        vaddr += n
    return b"".join(parts)


def _read_symbols(kmem, lay: _Layout, m: Module) -> ModuleSymbols:
    if not m.kallsyms:
        return ModuleSymbols([], [], "no kallsyms pointer")
    try:
        symtab = kmem.read_u64(m.kallsyms + lay.ks[0])
        count = kmem.read_u32(m.kallsyms + lay.ks[1])
        strtab = kmem.read_u64(m.kallsyms + lay.ks[2])
        if count > MAX_MODULE_SYMS:
            return ModuleSymbols([], [], f"{count} symbols claimed (more than "
                                 f"{MAX_MODULE_SYMS})")
        raw = _read_upto(kmem, symtab, count * ELF64_SYM.size)
    except SadumpError as e:
        return ModuleSymbols([], [], f"symbol table not readable: {e}")
    entries = list(ELF64_SYM.iter_unpack(raw[:len(raw) - len(raw) % ELF64_SYM.size]))
    error = None if len(entries) == count else \
        f"symbol table readable for {len(entries)} of {count} symbols"
    entries = entries[1:]  # ELF starts real symbols at 1
    want = min(MAX_STRTAB, max((e[0] for e in entries), default=0) + 512)
    strs = _read_upto(kmem, strtab, want)
    best: dict[int, str] = {}
    for st_name, _info, _other, shndx, value, _size in entries:
        if shndx == SHN_UNDEF or value in best:
            continue
        end = strs.find(b"\0", st_name)
        if end < 0:
            continue
        name = strs[st_name:end].decode("latin-1")
        if name and not is_mapping_symbol(name):
            best[value] = name
    values = sorted(best)
    return ModuleSymbols(values, [best[v] for v in values], error)


def module_of(modules: list[Module], addr: int) -> Module | None:
    """__module_address(): the module whose memory holds addr."""
    for m in modules:
        if m.contains(addr):
            return m
    return None


def module_symbol(modules: list[Module], addr: int) -> tuple[str, int, int, str] | None:
    """(symbol, offset, size, module name) as the kernel prints a module address
    (`symbol+0xoff/0xsize [module]`): find_kallsyms_symbol, whose size runs to the next
    symbol or the end of the module's (init) text; None outside every module or before its
    first symbol."""
    m = module_of(modules, addr)
    if m is None:
        return None
    syms = m.symbols()
    i = bisect.bisect_right(syms.values, addr) - 1
    if i < 0 or syms.values[i] == 0:
        return None
    start = syms.values[i]
    _lo, hi = m.init_text if m.init_text[0] <= addr < m.init_text[1] else m.text
    nxt = syms.values[i + 1] if i + 1 < len(syms.values) and syms.values[i + 1] < hi else hi
    return syms.names[i], addr - start, (nxt - start) & ((1 << 64) - 1), m.name

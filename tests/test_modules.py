"""`sadump modules` and the module symbol lookup (sadump/kernel/modules.py): against the
guest's own /proc/modules, /proc/kallsyms and Call Traces of the hung Debian 13 system, and
against hand-made module lists (a BTF from tests/fixtures/btf.py) that loop, point into
nowhere, carry a name without NUL or claim a million symbols."""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
import sys
from collections import defaultdict

import pytest

from sadump.cli import Exit
from sadump.kernel import modules as M
from sadump.kernel.btf import Btf
from sadump.kernel.modules import ModuleError, module_symbol, read_modules
from tests.fixtures.btf import BtfBuilder
from tests.test_btf import FakeKmem, FakeSymbols

DEB13 = ["deb13/deb13hung-a.raw", "deb13/deb13hung-a.qemu.elf",
         "deb13/deb13hung-a.qemu-kdump-zlib.flat"]


def sadump(*args):
    return subprocess.run([sys.executable, "-m", "sadump", *map(str, args)], check=False,
                          capture_output=True, text=True, timeout=300)


# ---- the real Debian 13 guest ---------------------------------------------------------------
@pytest.mark.parametrize("name", DEB13)
def test_modules_equal_proc_modules(real_file, real_text, name):
    r = sadump("modules", real_file(name))
    assert r.returncode == Exit.OK, r.stderr
    assert r.stdout == real_text("deb13/deb13hung-a.guest-modules.txt")


def test_modules_json(real_file, real_text):
    r = sadump("modules", "--json", real_file("deb13/deb13hung-a.raw"))
    assert r.returncode == Exit.OK, r.stderr
    rows = json.loads(r.stdout)["modules"]
    proc = [line.split() for line in
            real_text("deb13/deb13hung-a.guest-modules.txt").splitlines()]
    assert [m["name"] for m in rows] == [p[0] for p in proc]
    for m, p in zip(rows, proc, strict=True):
        assert m["size"] == int(p[1]) and m["refcount"] == int(p[2])
        assert m["used_by"] == [u for u in p[3].split(",") if u and u != "-"]
        assert m["state"] == p[4] and m["address"] == int(p[5], 16)


def test_btf_file_option(real_file, tmp_path, real_text):
    """--btf FILE is used instead of the image's own BTF (here the same bytes)."""
    r = sadump("modules", "--btf", real_file("deb13/deb13hung-a.btf-vmlinux.bin"),
               real_file("deb13/deb13hung-a.qemu.elf"))
    assert r.returncode == Exit.OK, r.stderr
    assert r.stdout == real_text("deb13/deb13hung-a.guest-modules.txt")
    bad = tmp_path / "bad.btf"
    bad.write_bytes(b"\0" * 64)
    r = sadump("modules", "--btf", bad, real_file("deb13/deb13hung-a.qemu.elf"))
    assert r.returncode == Exit.IMAGE_ERROR and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no BTF magic" in r.stderr


@pytest.mark.parametrize("name", ["rimg-kdump.raw", "rimg-nokdump.raw"])
def test_no_btf_is_one_line(real_file, name):
    r = sadump("modules", real_file(name))
    assert r.returncode == Exit.NO_TYPES and r.stdout == ""
    assert r.stderr == ("sadump: error: no BTF in this kernel (CONFIG_DEBUG_INFO_BTF not set): "
                        "give the same kernel's /sys/kernel/btf/vmlinux with --btf FILE\n")


@pytest.fixture(scope="module")
def raw_modules(real_file):
    from sadump.analysis import analyse

    a = analyse(str(real_file("deb13/deb13hung-a.raw")))
    try:
        mods = read_modules(a.kernel_memory, a.symbols(), a.kernel_btf())
        for m in mods:
            m.symbols()  # read while the image is open
        yield mods
    finally:
        a.close()


def test_module_frames_as_the_kernel_prints_them(raw_modules):
    """The two module frames of the guest's sysrq-t and /proc/PID/stack."""
    assert module_symbol(raw_modules, 0x3FF7E895D92) == ("kjournald2", 0x282, 0x2D0, "jbd2")
    assert module_symbol(raw_modules, 0x3FF7E934EB6) == ("ext4_lazyinit_thread", 0x1AE,
                                                         0x6F8, "ext4")
    assert module_symbol(raw_modules, 0x3FFFE8F8000) is None  # vmlinux's _stext


def test_module_symbols_match_kallsyms(raw_modules, real_file):
    """Every text symbol of every module in the guest's /proc/kallsyms is found at its own
    address with offset 0, and its size runs to the next symbol of that module."""
    by_module: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for line in real_file("deb13/deb13hung-a.guest-kallsyms.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3].startswith("["):
            name = parts[2]
            if not M.is_mapping_symbol(name):
                by_module[parts[3][1:-1]][int(parts[0], 16)].add(name if parts[1] in "tT"
                                                                 else "")
    assert sorted(by_module) == sorted(m.name for m in raw_modules)
    checked = 0
    for m in raw_modules:
        addrs = sorted(by_module[m.name])
        for i, addr in enumerate(addrs):
            names = by_module[m.name][addr] - {""}
            if not names or not m.text[0] <= addr < m.text[1]:
                continue
            sym, off, size, mod = module_symbol(raw_modules, addr)
            assert (sym in names, off, mod) == (True, 0, m.name), hex(addr)
            nxt = addrs[i + 1] if i + 1 < len(addrs) and addrs[i + 1] < m.text[1] \
                else m.text[1]
            assert size == nxt - addr, (sym, hex(addr))
            checked += 1
    assert checked > 1500  # 1,708 distinct text addresses in the nine modules


# ---- hand-made module lists -----------------------------------------------------------------
MOD_SIZE = 0xF8
NAME_AT, MEM_AT, REFCNT_AT, SOURCE_LIST_AT = 0x18, 0x50, 0xC0, 0xC8
INIT_AT, EXIT_AT, TAINTS_AT, KALLSYMS_AT = 0xD8, 0xE0, 0xE8, 0xF0
HEAD = 0x10000
BASE = 0x20000  # struct modules, 0x1000 apart


def module_btf(old: bool = False) -> Btf:
    """struct module as 6.4+ lays it out (the members sadump reads, at made-up offsets), or
    (old) as before 6.4: core_layout and init_layout at MEM_AT and MEM_AT + 0x20."""
    b = BtfBuilder()
    uint, ulong = b.int("unsigned int", 4), b.int("long unsigned int", 8)
    sint, char = b.int("int", 4, encoding=1), b.int("char", 1, encoding=2)
    void_p = b.ptr(0)
    lh = b.struct("list_head", 16, [("next", void_p, 0), ("prev", void_p, 64)])
    mm = b.struct("module_memory", 16, [("base", void_p, 0), ("size", uint, 64)])
    b.enum("mod_mem_type", 4, [("MOD_TEXT", 0), ("MOD_DATA", 1), ("MOD_RODATA", 2),
                               ("MOD_RO_AFTER_INIT", 3), ("MOD_INIT_TEXT", 4),
                               ("MOD_INIT_DATA", 5), ("MOD_INIT_RODATA", 6)])
    state = b.enum("module_state", 4, [("MODULE_STATE_LIVE", 0), ("MODULE_STATE_COMING", 1),
                                       ("MODULE_STATE_GOING", 2),
                                       ("MODULE_STATE_UNFORMED", 3)])
    b.struct("mod_kallsyms", 32, [("symtab", void_p, 0), ("num_symtab", uint, 64),
                                  ("strtab", void_p, 128), ("typetab", void_p, 192)])
    atomic = b.struct("", 4, [("counter", sint, 0)])
    atomic_t = b.ref("typedef", atomic, "atomic_t")
    b.struct("module_use", 48, [("source_list", lh, 0), ("target_list", lh, 128),
                                ("source", void_p, 256), ("target", void_p, 320)])
    name = b.array(char, sint, 56)
    mems = b.array(mm, sint, 7)
    layout = b.struct("module_layout", 0x20, [("base", void_p, 0), ("size", uint, 64),
                                              ("text_size", uint, 96),
                                              ("ro_size", uint, 128)])
    memory = [("core_layout", layout, 8 * MEM_AT), ("init_layout", layout, 8 * MEM_AT + 256)] \
        if old else [("mem", mems, 8 * MEM_AT)]
    b.struct("module", MOD_SIZE, [
        ("state", state, 0), ("list", lh, 64), ("name", name, 8 * NAME_AT),
        *memory, ("refcnt", atomic_t, 8 * REFCNT_AT),
        ("source_list", lh, 8 * SOURCE_LIST_AT), ("init", void_p, 8 * INIT_AT),
        ("exit", void_p, 8 * EXIT_AT), ("taints", ulong, 8 * TAINTS_AT),
        ("kallsyms", void_p, 8 * KALLSYMS_AT)])
    return Btf.from_bytes(b.blob())


class Machine:
    """A few pages of kernel memory holding a `modules` list."""

    def __init__(self):
        self.mem = bytearray(0x40000)

    def u64(self, at: int, v: int) -> None:
        self.mem[at:at + 8] = struct.pack(">Q", v)

    def module(self, i: int, name: bytes, *, text=0, text_size=0x3000, refcnt=1, taints=0,
               exit_=0x1, state=0) -> int:
        at = BASE + i * 0x1000
        struct.pack_into(">I", self.mem, at, state)
        self.mem[at + NAME_AT:at + NAME_AT + 56] = name[:56].ljust(56, b"\0")
        text = text or 0x100000 + i * 0x10000
        self.u64(at + MEM_AT, text)
        struct.pack_into(">I", self.mem, at + MEM_AT + 8, text_size)
        self.u64(at + MEM_AT + 16, text + 0x8000)  # MOD_DATA
        struct.pack_into(">I", self.mem, at + MEM_AT + 24, 0x1000)
        struct.pack_into(">i", self.mem, at + REFCNT_AT, refcnt)
        self.u64(at + SOURCE_LIST_AT, at + SOURCE_LIST_AT)  # empty
        self.u64(at + INIT_AT, 0x5)
        self.u64(at + EXIT_AT, exit_)
        self.u64(at + TAINTS_AT, taints)
        return at

    def link(self, *mods: int) -> None:
        """modules -> mods[0] -> ... -> modules."""
        nodes = [HEAD] + [m + 8 for m in mods] + [HEAD]
        for a, b in itertools.pairwise(nodes):
            self.u64(a, b)

    def uses(self, user: int, used: int, at: int) -> None:
        """A module_use at `at`: `user` uses `used` (on used's source_list)."""
        self.u64(used + SOURCE_LIST_AT, at)
        self.u64(at, used + SOURCE_LIST_AT)
        self.u64(at + 32, user)

    def symbols(self, mod: int, at: int, syms: list[tuple[str, int]], count=None) -> None:
        """A mod_kallsyms at `at`, its strings and ELF symbol table after it."""
        strtab, symtab = at + 0x40, at + 0x100
        strings = b"\0"
        table = bytes(24)  # symbol 0
        for name, value in syms:
            table += struct.pack(">IBBHQQ", len(strings), 0x12, 0, 1, value, 0)
            strings += name.encode() + b"\0"
        self.mem[symtab:symtab + len(table)] = table
        self.mem[strtab:strtab + len(strings)] = strings
        self.u64(at, symtab)
        struct.pack_into(">I", self.mem, at + 8, len(syms) + 1 if count is None else count)
        self.u64(at + 16, strtab)
        self.u64(mod + KALLSYMS_AT, at)

    def read(self, btf=None):
        kmem = FakeKmem({0: bytes(self.mem)})
        return read_modules(kmem, FakeSymbols(modules=HEAD), btf or module_btf())


def test_synthetic_list():
    m = Machine()
    a = m.module(0, b"alpha", taints=1 << 12 | 1 << 13, refcnt=3)
    b = m.module(1, b"beta", exit_=0)  # init, no exit: permanent
    c = m.module(2, b"gamma", state=1, taints=1)  # coming
    m.link(a, b, c)
    m.uses(a, b, 0x30000)
    m.symbols(a, 0x31000, [("alpha_init", 0x100000), ("alpha_work", 0x100040),
                           (".LC0", 0x100080), ("$x", 0x100090), ("alpha_end", 0x1000F0)])
    mods = m.read()
    assert mods.warnings == []
    assert [x.proc_line() for x in mods] == [
        "alpha 16384 2 - Live 0x0000000000100000 (OE)",
        "beta 16384 0 alpha,[permanent], Live 0x0000000000110000",
        "gamma 16384 0 - Loading 0x0000000000120000 (P+)",
    ]
    assert module_symbol(mods, 0x100044) == ("alpha_work", 4, 0xB0, "alpha")
    assert module_symbol(mods, 0x1000F2) == ("alpha_end", 2, 0x2F10, "alpha")
    assert module_symbol(mods, 0x108010) == ("alpha_end", 0x7F20, (0x103000 - 0x1000F0),
                                             "alpha")  # data: the kernel's own sum
    assert module_symbol(mods, 0x110000) is None  # beta has no symbols
    assert module_symbol(mods, 0x90000) is None  # in no module


def test_layout_before_6_4():
    """core_layout/init_layout: /proc/modules' size is core + init size, the address the
    core base; a symbol's size ends at the core text's end (text_size)."""
    m = Machine()
    a = m.module(0, b"alpha")
    at = a + MEM_AT
    m.u64(at, 0x100000)
    struct.pack_into(">II", m.mem, at + 8, 0x6000, 0x2000)  # size, text_size
    m.u64(at + 0x20, 0x180000)  # init_layout, still there
    struct.pack_into(">II", m.mem, at + 0x28, 0x1000, 0x800)
    m.link(a)
    m.symbols(a, 0x31000, [("alpha_a", 0x100000), ("alpha_b", 0x100100),
                           ("alpha_data", 0x104000)])
    mods = m.read(module_btf(old=True))
    assert mods.warnings == []
    assert mods[0].proc_line() == "alpha 28672 0 - Live 0x0000000000100000"
    assert module_symbol(mods, 0x100104) == ("alpha_b", 4, 0x1F00, "alpha")
    assert module_symbol(mods, 0x180010) == ("alpha_data", 0x7C010, (0x180800 - 0x104000),
                                             "alpha")


def test_damaged_module_btf():
    """A struct module whose members run past its size is refused, not read."""
    b = BtfBuilder()
    uint, void_p = b.int("unsigned int", 4), b.ptr(0)
    char = b.int("char", 1)
    lh = b.struct("list_head", 16, [("next", void_p, 0), ("prev", void_p, 64)])
    b.struct("mod_kallsyms", 32, [("symtab", void_p, 0), ("num_symtab", uint, 64),
                                  ("strtab", void_p, 128)])
    layout = b.struct("module_layout", 0x20, [("base", void_p, 0), ("size", uint, 64),
                                              ("text_size", uint, 96)])
    b.struct("module", 0x40, [("state", uint, 0), ("list", lh, 64),
                              ("name", b.array(char, uint, 56), 0xC0),
                              ("core_layout", layout, 0x400), ("init_layout", layout, 0x500)])
    with pytest.raises(ModuleError, match="past its size"):
        read_modules(FakeKmem({}), FakeSymbols(modules=HEAD), Btf.from_bytes(b.blob()))


def test_unformed_modules_are_left_out():
    m = Machine()
    a, b = m.module(0, b"alpha"), m.module(1, b"half", state=3)
    m.link(a, b)
    assert [x.name for x in m.read()] == ["alpha"]


def test_list_that_loops():
    m = Machine()
    a, b = m.module(0, b"alpha"), m.module(1, b"beta")
    m.link(a, b)
    m.u64(b + 8, a + 8)  # beta -> alpha again, never back to the head
    mods = m.read()
    assert [x.name for x in mods] == ["alpha", "beta"]
    assert len(mods.warnings) == 1 and "loops" in mods.warnings[0]


def test_list_into_nowhere():
    m = Machine()
    a = m.module(0, b"alpha")
    m.link(a)
    m.u64(a + 8, 0xDEAD0000000)
    mods = m.read()
    assert [x.name for x in mods] == ["alpha"]
    assert any("not readable" in w for w in mods.warnings)


@pytest.mark.parametrize("pointer, words", [(0, "NULL"), (0x20003, "misaligned")])
def test_list_cut_by_a_bad_pointer(pointer, words):
    m = Machine()
    a, b = m.module(0, b"alpha"), m.module(1, b"beta")
    m.link(a, b)
    m.u64(a + 8, pointer)
    mods = m.read()
    assert [x.name for x in mods] == ["alpha"]
    want = f"modules: a {words} pointer {pointer:#x} after 1 entries cuts the list"
    assert mods.warnings == [want]


def test_name_without_nul():
    m = Machine()
    a = m.module(0, b"x" * 60)
    m.link(a)
    mods = m.read()
    assert mods[0].name == "x" * 56
    assert mods.warnings == [f"module at {a:#x}: name without NUL; cut at 56 bytes"]


def test_many_modules_are_capped(monkeypatch):
    monkeypatch.setattr(M, "MAX_MODULES", 3)
    m = Machine()
    mods_at = [m.module(i, b"m%d" % i) for i in range(5)]
    m.link(*mods_at)
    mods = m.read()
    assert len(mods) == 3 and "more than 3" in mods.warnings[0]


def test_a_million_claimed_symbols():
    m = Machine()
    a = m.module(0, b"alpha")
    m.link(a)
    m.symbols(a, 0x31000, [("f", 0x100000)], count=10**6)
    mods = m.read()
    assert module_symbol(mods, 0x100000) is None
    assert "1000000 symbols claimed" in mods[0].symbols().error


def test_symbol_table_cut_short():
    m = Machine()
    a = m.module(0, b"alpha")
    m.link(a)
    m.symbols(a, 0x3F000, [("f", 0x100000)], count=1000)  # runs off the end of memory
    mods = m.read()
    assert module_symbol(mods, 0x100004) == ("f", 4, 0x3000, "alpha")
    assert "readable for" in mods[0].symbols().error


def test_no_modules_symbol():
    with pytest.raises(ModuleError, match="CONFIG_KALLSYMS_ALL"):
        read_modules(FakeKmem({}), FakeSymbols(), module_btf())


def test_btf_without_struct_module():
    b = BtfBuilder()
    b.int("int", 4)
    with pytest.raises(ModuleError, match="struct module"):
        read_modules(FakeKmem({}), FakeSymbols(modules=HEAD), Btf.from_bytes(b.blob()))


def test_image_without_kallsyms_is_one_line(tmp_path):
    from tests.fixtures.builder import ImageSpec, write_raw

    r = sadump("modules", write_raw(ImageSpec(), tmp_path / "m.raw"))
    assert r.returncode == Exit.IMAGE_ERROR and r.stdout == ""
    assert r.stderr.startswith("sadump: error: no kernel symbols:") and r.stderr.count("\n") == 1


def test_damaged_module_memory_gives_warnings_only():
    """Words of a good module list overwritten at random: read_modules and module_symbol
    give modules, warnings or None, never another exception or a hang."""
    import random

    m = Machine()
    a, b = m.module(0, b"alpha"), m.module(1, b"beta")
    m.link(a, b)
    m.uses(a, b, 0x30000)
    m.symbols(a, 0x31000, [("alpha_init", 0x100000), ("alpha_work", 0x100040)])
    good = bytes(m.mem)
    hot = [HEAD, a, a + 0x100, b, b + 0x100, 0x30000, 0x31000, 0x31100]
    rng = random.Random(19)
    btf = module_btf()
    for _ in range(300):
        m.mem = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            at = rng.choice(hot) + 8 * rng.randrange(32)
            m.u64(at, rng.choice((0, (1 << 64) - 1, HEAD, a + 8, rng.getrandbits(64),
                                  rng.getrandbits(20))))
        mods = m.read(btf)
        for addr in (0x100000, 0x100044, 0x110000, rng.getrandbits(21)):
            module_symbol(mods, addr)
        for x in mods:
            x.proc_line()

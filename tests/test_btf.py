"""The BTF reader (sadump/kernel/btf.py) against hand-made blobs in both byte orders
(tests/fixtures/btf.py, written from the spec) and the real Debian 13 kernel's BTF."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest

from sadump.errors import BtfError, NoBtfError, SadumpError
from sadump.kernel import btf as B
from sadump.kernel.btf import Btf, Member, load_kernel_btf, scan_for_btf
from tests.fixtures.btf import BtfBuilder

ORDERS = pytest.mark.parametrize("order", [">", "<"], ids=["big", "little"])


def sample(order: str) -> tuple[Btf, dict[str, int]]:
    """A small kernel-like type graph: every kind, anonymous members, bitfields."""
    b = BtfBuilder(order)
    t: dict[str, int] = {}
    t["uint"] = b.int("unsigned int", 4)
    t["int"] = b.int("int", 4, encoding=1)
    t["ulong"] = b.int("long unsigned int", 8)
    t["long"] = b.int("long int", 8, encoding=1)
    t["char"] = b.int("char", 1, encoding=2)
    t["u32"] = b.ref("typedef", t["uint"], "u32")
    t["cu32"] = b.ref("const", t["u32"])
    t["vcu32"] = b.ref("volatile", t["cu32"])
    t["comm"] = b.array(t["char"], t["int"], 16)
    t["thread"] = b.struct("thread_struct", 16, [("fpc", t["uint"], 0), ("ksp", t["ulong"], 64)])
    t["ts_fwd"] = b.fwd("task_struct")
    t["ts_ptr"] = b.ptr(t["ts_fwd"])
    t["anon_s"] = b.struct("", 8, [("pid", t["int"], 0), ("tgid", t["int"], 32)])
    t["anon_u"] = b.struct("", 8, [("", t["anon_s"], 0), ("both", t["ulong"], 0)], union=True)
    t["list"] = b.struct("list_head", 16, [("next", 0, 0), ("prev", 0, 64)])
    t["ts"] = b.struct("task_struct", 72, [
        ("__state", t["vcu32"], 0),
        ("flag_a", t["uint"], 32, 1), ("flag_b", t["uint"], 33, 3),
        ("", t["anon_u"], 64),
        ("thread", t["thread"], 128),
        ("comm", t["comm"], 256),
        ("parent", t["ts_ptr"], 384),
        ("tasks", t["list"], 448),
    ])
    t["enum"] = b.enum("pid_type", 4, [("PIDTYPE_PID", 0), ("PIDTYPE_TGID", 1),
                                       ("PIDTYPE_MAX", 4)])
    t["senum"] = b.enum("signed_e", 4, [("MINUS_ONE", -1)], signed=True)
    t["e64"] = b.enum64("big_e", [("HUGE", 1 << 40), ("NEG", -2)], signed=True)
    t["ue64"] = b.enum64("ubig_e", [("UHUGE", (1 << 64) - 1)])
    t["proto"] = b.func_proto(t["int"], [("tsk", t["ts_ptr"]), ("n", t["int"])])
    t["func"] = b.ref("func", t["proto"], "schedule")
    t["var"] = b.var("runqueues", t["ts"])
    t["sec"] = b.datasec(".data..percpu", 72, [(t["var"], 0, 72)])
    t["float"] = b.float("double", 8)
    t["tag"] = b.decl_tag("user", t["ts"], 2)
    t["ttag"] = b.ref("type_tag", t["ts"], "rcu")
    t["restrict"] = b.ref("restrict", t["ts_ptr"])
    # old-style bitfield: no kind_flag, the INT type carries bits and offset
    t["int3"] = b.int("int", 4, bits=3, offset=2)
    t["old"] = b.struct("oldbits", 4, [("x", t["uint"], 0), ("y", t["int3"], 0)])
    return Btf.from_bytes(b.blob()), t


@ORDERS
def test_every_kind(order):
    btf, t = sample(order)
    assert btf.byteorder == ("big" if order == ">" else "little")
    assert len(btf) == len(t) + 1
    kinds = {"uint": "int", "ts_ptr": "ptr", "comm": "array", "ts": "struct",
             "anon_u": "union", "enum": "enum", "ts_fwd": "fwd", "u32": "typedef",
             "vcu32": "volatile", "cu32": "const", "restrict": "restrict", "func": "func",
             "proto": "func_proto", "var": "var", "sec": "datasec", "float": "float",
             "tag": "decl_tag", "ttag": "type_tag", "e64": "enum64"}
    for key, kind in kinds.items():
        assert btf.kind(t[key]) == kind, key
    assert btf.kind(0) == "void" and btf.name(0) == ""
    assert btf.type_id("task_struct") == t["ts"]
    assert btf.type_id("task_struct", "fwd") == t["ts_fwd"]
    assert btf.type_id("u32", "typedef") == t["u32"]
    assert btf.type_id("schedule", "func") == t["func"]
    assert btf.name(t["var"]) == "runqueues" and btf.name(t["anon_u"]) == ""
    assert btf.resolve(t["vcu32"]) == t["uint"] and btf.resolve(t["ttag"]) == t["ts"]
    assert btf.pointee(t["ts_ptr"]) == t["ts_fwd"]
    assert btf.pointee(t["restrict"]) == t["ts_fwd"]
    assert btf.array(t["comm"]) == (t["char"], 16)
    assert btf.int_encoding(t["int"]) == (1, 0, 32)
    assert btf.vlen(t["proto"]) == 2 and btf.kind_flag(t["senum"])
    btf.check()


@ORDERS
def test_sizes(order):
    btf, t = sample(order)
    assert btf.sizeof("task_struct") == 72
    assert btf.sizeof(t["vcu32"]) == 4
    assert btf.sizeof(t["comm"]) == 16
    assert btf.sizeof(t["ts_ptr"]) == 8 == btf.pointer_size
    assert btf.sizeof(t["anon_u"]) == 8
    assert btf.sizeof(t["enum"]) == 4 and btf.sizeof(t["e64"]) == 8
    assert btf.sizeof(t["float"]) == 8 and btf.sizeof(t["sec"]) == 72
    for no_size in ("ts_fwd", "func", "proto"):
        with pytest.raises(BtfError):
            btf.sizeof(t[no_size])
    with pytest.raises(BtfError):
        btf.sizeof(0)


@ORDERS
def test_members_and_paths(order):
    btf, t = sample(order)
    assert btf.offsetof("task_struct", "__state") == 0
    assert btf.offsetof("task_struct", "thread.ksp") == 16 + 8
    assert btf.offsetof(t["ts"], "pid") == 8  # through the anonymous union and struct
    assert btf.offsetof(t["ts"], "tgid") == 12
    assert btf.offsetof(t["ts"], "both") == 8
    assert btf.offsetof(t["ts"], "comm[3]") == 32 + 3
    assert btf.offsetof(t["ts"], "tasks.prev") == 56 + 8
    assert btf.member("task_struct", "flag_b") == Member("flag_b", t["uint"], 33, 3)
    assert btf.member("task_struct", "flag_a").bitfield_size == 1
    with pytest.raises(BtfError, match="bitfield"):
        btf.offsetof("task_struct", "flag_b")
    assert btf.member("oldbits", "y") == Member("y", t["int3"], 2, 3)
    assert btf.has_member("task_struct", "thread.ksp")
    assert not btf.has_member("task_struct", "thread.nope")
    assert not btf.has_member("task_struct", "comm[16]")  # past the array's end
    assert not btf.has_member("task_struct", "__state.x")  # not a struct
    for bad in ("", "a..b", "1x", "comm[x]"):
        assert not btf.has_member("task_struct", bad)
    names = [m.name for m in btf.members(t["ts"])]
    assert names == ["__state", "flag_a", "flag_b", "", "thread", "comm", "parent", "tasks"]


@ORDERS
def test_enums(order):
    btf, _ = sample(order)
    assert btf.enum_value("PIDTYPE_MAX") == 4
    assert btf.enum_value("PIDTYPE_TGID", "pid_type") == 1
    assert btf.enum_value("MINUS_ONE") == -1
    assert btf.enum_value("HUGE", "big_e") == 1 << 40
    assert btf.enum_value("NEG") == -2
    assert btf.enum_value("UHUGE") == (1 << 64) - 1
    with pytest.raises(BtfError):
        btf.enum_value("PIDTYPE_PID", "big_e")
    with pytest.raises(BtfError):
        btf.enum_value("NOPE")
    with pytest.raises(BtfError):
        btf.enum_value("X", "no_such_enum")


def test_byte_orders_agree():
    big, _ = sample(">")
    little, _ = sample("<")
    assert big.blob[:2] == b"\xeb\x9f" and little.blob[:2] == b"\x9f\xeb"
    for t in range(1, len(big)):
        assert big.kind(t) == little.kind(t) and big.name(t) == little.name(t)
        if big.kind(t) in ("struct", "union"):
            assert big.members(t) == little.members(t)


# ---- damage ------------------------------------------------------------------------------
def blob_of(order=">"):
    return sample(order)[0].blob


def test_header_damage():
    good = blob_of()
    for bad, why in [
        (good[:10], "shorter"),
        (b"\x12\x34" + good[2:], "magic"),
        (good[:2] + b"\x02" + good[3:], "version"),
        (good[:4] + struct.pack(">I", 1 << 30) + good[8:], "header length"),
        (good[:4] + struct.pack(">I", 26) + good[8:], "header length"),
        (good[:12] + struct.pack(">I", 1 << 31) + good[16:], "outside"),  # type_len
        (good[:20] + struct.pack(">I", 1 << 31) + good[24:], "outside"),  # str_len
        (good[:len(good) - 1], "outside"),
    ]:
        with pytest.raises(BtfError, match=why):
            Btf.from_bytes(bad)
    # a header longer than 24 bytes is fine when the extra bytes are zero
    b = BtfBuilder()
    b.int("int", 4)
    assert len(Btf.from_bytes(b.blob(hdr_len=32))) == 2
    longer = bytearray(b.blob(hdr_len=32))
    longer[28] = 1
    with pytest.raises(BtfError, match="non-zero"):
        Btf.from_bytes(bytes(longer))


def test_type_damage():
    b = BtfBuilder()
    b.int("int", 4)
    b.add("struct", "cut", vlen=5, size_or_type=4)  # claims 5 members, has none
    with pytest.raises(BtfError, match="past the end|cut off"):
        Btf.from_bytes(b.blob())
    b = BtfBuilder()
    b.add("int", "x", size_or_type=4, extra=b"\0" * 4)
    b.types.append(struct.pack(">III", 0, 25 << 24, 0))  # kind 25
    with pytest.raises(BtfError, match="unknown kind"):
        Btf.from_bytes(b.blob())


def test_string_damage():
    b = BtfBuilder()
    t = b.int("int", 4)
    b.types.append(struct.pack(">III", 10_000, 4 << 24 | 1, 4) + struct.pack(">III", 20_000, t, 0))
    btf = Btf.from_bytes(b.blob())
    with pytest.raises(BtfError, match="outside the string section"):
        btf.name(2)
    with pytest.raises(BtfError, match="outside the string section"):
        btf.members(2)
    b = BtfBuilder()
    b.int("int", 4)
    b.strings += b"dangling"  # the last name has no NUL
    b.types.append(struct.pack(">III", len(b.strings) - 8, 7 << 24, 0))
    btf = Btf.from_bytes(b.blob())
    with pytest.raises(BtfError, match="no NUL"):
        btf.name(2)


def test_cycles_and_bounds():
    b = BtfBuilder()
    b.ref("typedef", 2, "a")
    b.ref("const", 1)
    b.ref("typedef", 99, "wild")
    arr = b.array(5, 1, 2)  # an array of itself through 5
    b.ref("typedef", arr, "loop_arr")
    btf = Btf.from_bytes(b.blob())
    with pytest.raises(BtfError, match="cycle"):
        btf.resolve(1)
    with pytest.raises(BtfError, match="out of range"):
        btf.resolve(3)
    with pytest.raises(BtfError, match="nested deeper"):
        btf.sizeof(arr)
    with pytest.raises(BtfError, match="past the last"):
        btf.check()
    with pytest.raises(BtfError, match="out of range"):
        btf.kind(10**6)
    # anonymous members that contain themselves
    b = BtfBuilder()
    b.int("int", 4)
    b.struct("", 4, [("", 2, 0)])
    b.struct("outer", 4, [("", 2, 0)])
    btf = Btf.from_bytes(b.blob())
    with pytest.raises(BtfError, match="nested deeper"):
        btf.member("outer", "x")


def test_a_million_types_is_refused():
    """More types than a BTF type ID can number: an error, after a bounded walk."""
    record = struct.pack(">III", 0, 7 << 24, 0)  # FWD, no trailing data
    types = record * (B.MAX_TYPES + 1)
    header = struct.pack(">HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), 1)
    with pytest.raises(BtfError, match="more than"):
        Btf.from_bytes(header + types + b"\0")


# ---- finding the blob ------------------------------------------------------------------------
class FakeKmem:
    """Kernel virtual memory made of a few byte regions; everything else is unreadable."""

    def __init__(self, regions: dict[int, bytes]):
        self.regions = regions

    def read(self, vaddr: int, size: int) -> bytes:
        for start, data in self.regions.items():
            if start <= vaddr and vaddr + size <= start + len(data):
                return data[vaddr - start:vaddr - start + size]
        raise SadumpError(f"not mapped: {vaddr:#x}+{size:#x}")

    def read_u64(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 8), "big")

    def read_u32(self, vaddr: int) -> int:
        return int.from_bytes(self.read(vaddr, 4), "big")


class FakeSymbols:
    def __init__(self, **addresses: int):
        self.addresses = addresses

    def address(self, name: str) -> int | None:
        return self.addresses.get(name)


STEXT = 0x3FFE0000000


def kernel_image(blob: bytes, at: int, decoys: bytes = b"") -> bytes:
    image = bytearray(3 << 20)
    image[0x1000:0x1000 + len(decoys)] = decoys
    image[at:at + len(blob)] = blob
    return bytes(image)


def decoys() -> bytes:
    """What a naive scan would take: a bare header (struct btf's copy), a header whose
    sections run past the image, a blob referring to type IDs it does not have (module BTF
    is split: its IDs continue the kernel's)."""
    bare = bytes.fromhex("eb9f010000000018") + bytes(16)
    past = struct.pack(">HBBIIIII", 0xEB9F, 1, 0, 24, 0, 12, 12, 1 << 30)
    split = BtfBuilder()
    split.ptr(5000)
    return bare + bytes(8) + past + bytes(8) + split.blob() + bytes(16)


def test_load_from_symbols_and_scan():
    blob = blob_of()
    image = kernel_image(blob, 0x200004, decoys())
    kmem = FakeKmem({STEXT: image})
    syms = FakeSymbols(_stext=STEXT, _sdata=STEXT + len(image),
                       __start_BTF=STEXT + 0x200004, __stop_BTF=STEXT + 0x200004 + len(blob))
    assert load_kernel_btf(kmem, syms).blob == blob
    # without __start_BTF: the scan finds the one valid candidate, across a MiB boundary
    bare = FakeSymbols(_stext=STEXT, _sdata=STEXT + len(image))
    assert load_kernel_btf(kmem, bare).blob == blob
    at = (1 << 20) - 3  # the header split between two chunks
    image = kernel_image(blob, at + 3 - 4, decoys())
    kmem = FakeKmem({STEXT: image})
    found = scan_for_btf(kmem, STEXT, STEXT + len(image))
    assert found is not None and found[0] == STEXT + at - 1 and found[1].blob == blob


def test_scan_from_stext_alone():
    """Only _stext known (VMCOREINFO's SYMBOL(_stext) when kallsyms cannot be decoded): the
    scan runs up to MAX_SCAN past it, over unreadable memory too."""
    blob = blob_of()
    image = kernel_image(blob, 0x200000, decoys())
    assert load_kernel_btf(FakeKmem({STEXT: image}), FakeSymbols(_stext=STEXT)).blob == blob
    with pytest.raises(NoBtfError):
        load_kernel_btf(FakeKmem({STEXT: bytes(len(image))}), FakeSymbols(_stext=STEXT))


def test_no_btf_is_one_line():
    image = kernel_image(b"", 0, decoys())
    kmem = FakeKmem({STEXT: image})
    for syms in (FakeSymbols(_stext=STEXT, _sdata=STEXT + len(image)), None):
        with pytest.raises(NoBtfError) as e:
            load_kernel_btf(kmem, syms)
        assert str(e.value) == ("no BTF in this kernel (CONFIG_DEBUG_INFO_BTF not set): give "
                                "the same kernel's /sys/kernel/btf/vmlinux with --btf FILE")


def test_unreadable_btf_section_falls_back_to_the_scan_then_says_why():
    blob = blob_of()
    image = kernel_image(blob, 0x100000)
    syms = FakeSymbols(_stext=STEXT, _sdata=STEXT + len(image),
                       __start_BTF=STEXT + 0x500000, __stop_BTF=STEXT + 0x500000 + len(blob))
    assert load_kernel_btf(FakeKmem({STEXT: image}), syms).blob == blob
    with pytest.raises(BtfError, match="not readable"):
        load_kernel_btf(FakeKmem({STEXT: bytes(len(image))}), syms)


def test_btf_file(tmp_path):
    blob = blob_of("<")
    path = tmp_path / "vmlinux"
    path.write_bytes(blob)
    assert load_kernel_btf(None, None, str(path)).byteorder == "little"
    with pytest.raises(BtfError, match="cannot read --btf"):
        load_kernel_btf(None, None, str(tmp_path / "absent"))
    path.write_bytes(b"not btf at all, really, not at all")
    with pytest.raises(BtfError, match="--btf .*magic"):
        load_kernel_btf(None, None, str(path))


# ---- the real Debian 13 kernel ---------------------------------------------------------------
DEB13 = ["deb13/deb13hung-a.raw", "deb13/deb13hung-a.qemu.elf",
         "deb13/deb13hung-a.qemu-kdump-zlib.flat"]


@pytest.fixture(scope="module")
def vmlinux_btf(real_file) -> bytes:
    return real_file("deb13/deb13hung-a.btf-vmlinux.bin").read_bytes()


def test_real_btf_types(vmlinux_btf):
    btf = Btf.from_bytes(vmlinux_btf)
    assert btf.byteorder == "big" and len(btf) == 88_137 + 1
    btf.check()
    # the offsets the image's README found by hand in task_structs of the raw image
    assert [btf.offsetof("task_struct", f) for f in ("__state", "exit_state", "pid", "comm")] \
        == [0x18, 0x718, 0x780, 0x920]
    assert btf.offsetof("thread_struct", "ksp") == 0x40
    assert btf.offsetof("task_struct", "thread.ksp") == \
        btf.offsetof("task_struct", "thread") + 0x40
    assert btf.enum_value("MOD_TEXT", "mod_mem_type") == 0
    assert btf.enum_value("MODULE_STATE_UNFORMED") == 3
    assert btf.sizeof("list_head") == 16
    assert btf.kind(btf.type_id("runqueues", "var")) == "var"


@pytest.mark.parametrize("name", DEB13)
def test_real_btf_from_memory_equals_sysfs(real_file, vmlinux_btf, name):
    """[__start_BTF, __stop_BTF) in each image, and the scan without those symbols, give
    the guest's /sys/kernel/btf/vmlinux byte for byte."""
    from sadump.analysis import analyse

    a = analyse(str(real_file(name)))
    try:
        assert a.kernel_btf().blob == vmlinux_btf
        syms = a.symbols()
        where = B.scan_range(syms)
        found = scan_for_btf(a.kernel_memory, *where)
        assert found is not None
        assert found[0] == syms.address("__start_BTF") and found[1].blob == vmlinux_btf
        # without kallsyms: VMCOREINFO's SYMBOL(_stext) starts the scan
        assert load_kernel_btf(a.kernel_memory, B.VmcoreinfoSymbols(a.vmcoreinfo.info)).blob \
            == vmlinux_btf
    finally:
        a.close()


def test_real_image_without_btf(real_file):
    """The 6.1 images have no BTF: one line naming the config and --btf."""
    from sadump.analysis import analyse

    a = analyse(str(real_file("rimg-kdump.raw")))
    try:
        with pytest.raises(NoBtfError, match="CONFIG_DEBUG_INFO_BTF"):
            a.kernel_btf()
    finally:
        a.close()


# ---- against bpftool (libbpf reads BTF of either byte order) --------------------------------
BPFTOOL = shutil.which("bpftool")
needs_bpftool = pytest.mark.skipif(BPFTOOL is None, reason="bpftool is not installed")
ENCODING = {0: "(none)", 1: "SIGNED", 2: "CHAR", 4: "BOOL"}
LINKAGE = {0: "static", 1: "global", 2: "extern"}


def bpftool_types(path) -> list[dict]:
    out = subprocess.run([BPFTOOL, "-j", "btf", "dump", "file", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["types"]


def assert_same_as_bpftool(btf: Btf, types: list[dict], first: int = 1) -> None:
    """Every type from ID `first` on, every field bpftool shows, decoded the same way."""
    assert len(types) == len(btf) - first
    for t in types:
        i, k = t["id"], t["kind"].lower()
        assert btf.kind(i) == k, t
        assert (btf.name(i) or "(anon)") == t["name"], t
        if "size" in t:
            assert btf.sizeof(i) == t["size"], t
        if k == "int":
            enc, off, bits = btf.int_encoding(i)
            assert (ENCODING.get(enc, "?"), off, bits) == \
                (t["encoding"], t["bits_offset"], t["nr_bits"]), t
        elif k == "array":
            elem, n = btf.array(i)
            assert (elem, n) == (t["type_id"], t["nr_elems"]), t
        elif k in ("struct", "union"):
            got = [(m.name or "(anon)", m.type_id, m.bit_offset, m.bitfield_size)
                   for m in btf.members(i)]
            want = [(m["name"], m["type_id"], m["bits_offset"], m.get("bitfield_size", 0))
                    for m in t["members"]]
            if btf.kind_flag(i):
                assert got == want, t
            else:  # bpftool shows the raw offset; sadump adds an INT bitfield's own offset
                assert [g[:2] for g in got] == [w[:2] for w in want], t
        elif k in ("enum", "enum64"):
            # bpftool sign-extends an unsigned 32-bit value (its __s32 val passed as u64):
            # 0xefffffff (PROC_IPC_INIT_INO) shows as 0xffffffffefffffff
            mask = 0xFFFFFFFF if k == "enum" and not btf.kind_flag(i) else -1
            assert [(n, v) for n, v in btf.enumerators(i)] == \
                [(v["name"], v["val"] & mask) for v in t["values"]], t
        elif k == "func_proto":
            assert btf.target(i) == t["ret_type_id"]
            assert [(n or "(anon)", p) for n, p in btf.params(i)] == \
                [(p["name"], p["type_id"]) for p in t["params"]], t
        elif k == "datasec":
            assert btf.datasec_vars(i) == [(v["type_id"], v["offset"], v["size"])
                                           for v in t["vars"]], t
        elif k == "fwd":
            assert ("union" if btf.kind_flag(i) else "struct") == t["fwd_kind"], t
        elif k == "decl_tag":
            assert (btf.target(i), btf.component_idx(i)) == (t["type_id"], t["component_idx"])
        if k in ("var", "func"):
            assert LINKAGE[btf.linkage(i)] == t["linkage"], t
        if "type_id" in t and k not in ("array", "struct", "union"):
            assert btf.target(i) == t["type_id"], t


@needs_bpftool
@ORDERS
def test_hand_made_blob_as_bpftool_reads_it(order, tmp_path):
    btf, _ = sample(order)
    path = tmp_path / "blob"
    path.write_bytes(btf.blob)
    assert_same_as_bpftool(btf, bpftool_types(path))


@needs_bpftool
def test_real_btf_as_bpftool_reads_it(real_file, vmlinux_btf):
    btf = Btf.from_bytes(vmlinux_btf)
    assert_same_as_bpftool(btf, bpftool_types(real_file("deb13/deb13hung-a.btf-vmlinux.bin")))


@pytest.mark.parametrize("start, stop", [(STEXT + 0x100, STEXT), (STEXT, STEXT + 10),
                                         (STEXT, STEXT + (1 << 40))])
def test_btf_symbols_that_are_no_size(start, stop):
    """__start_BTF/__stop_BTF that give no plausible size: an error naming them, after the
    scan found nothing either."""
    image = kernel_image(b"", 0, decoys())
    syms = FakeSymbols(_stext=STEXT, _sdata=STEXT + len(image), __start_BTF=start,
                       __stop_BTF=stop)
    with pytest.raises(BtfError, match="no BTF size"):
        load_kernel_btf(FakeKmem({STEXT: image}), syms)


def test_damaged_btf_at_the_symbols():
    blob = bytearray(blob_of())
    blob[28] = 0x1F  # the first type's kind: 31
    image = kernel_image(bytes(blob), 0x1000)
    syms = FakeSymbols(_stext=STEXT, _sdata=STEXT + len(image), __start_BTF=STEXT + 0x1000,
                       __stop_BTF=STEXT + 0x1000 + len(blob))
    with pytest.raises(BtfError, match="__start_BTF .*unknown kind"):
        load_kernel_btf(FakeKmem({STEXT: image}), syms)


def exercise(btf: Btf) -> None:
    """Every question a caller may ask of every type."""
    for t in range(len(btf) + 1):
        for q in (btf.kind, btf.name, btf.resolve, btf.sizeof, btf.members, btf.array,
                  btf.pointee, btf.enumerators, btf.target, btf.params, btf.datasec_vars,
                  btf.linkage, btf.component_idx, btf.int_encoding):
            try:
                q(t)
            except BtfError:
                pass
    for name in ("task_struct", "oldbits", "nope"):
        for path in ("__state", "thread.ksp", "pid", "comm[2]", "y", "tasks.next"):
            try:
                btf.member(name, path)
            except BtfError:
                pass
    for name in ("PIDTYPE_MAX", "HUGE"):
        try:
            btf.enum_value(name)
        except BtfError:
            pass
    try:
        btf.check()
    except BtfError:
        pass


@ORDERS
def test_damaged_blobs_give_btf_errors_only(order):
    """Bytes of a good blob overwritten at random: whatever the reader is asked, the only
    failure is a BtfError (no IndexError, struct.error, RecursionError, hang)."""
    import random

    good = blob_of(order)
    rng = random.Random(19)
    for _ in range(300):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(blob))
            blob[at] = rng.choice((0, 0xFF, rng.randrange(256)))
        try:
            btf = Btf.from_bytes(bytes(blob))
        except BtfError:
            continue
        exercise(btf)


@pytest.fixture(scope="module")
def module_btfs(real_file) -> dict[str, bytes]:
    """/sys/kernel/btf/<module> of the nine modules the guest had loaded."""
    import tarfile

    with tarfile.open(real_file("deb13/deb13hung-a.btf-modules.tar")) as tar:
        return {m.name.split("/")[-1]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile()}


def test_module_btf_is_split(module_btfs, vmlinux_btf):
    """A module's BTF continues the kernel's type IDs and strings: alone it does not parse
    (its strings do not start with NUL) or fails the scan's check; on its base it does."""
    base = Btf.from_bytes(vmlinux_btf)
    assert len(module_btfs) == 9
    for name, blob in module_btfs.items():
        with pytest.raises(BtfError):
            Btf.from_bytes(blob).check()
        btf = Btf.from_bytes(blob, base=base)
        btf.check()
        assert len(btf) > len(base), name
        assert btf.type_id("task_struct") == base.type_id("task_struct")
    ext4 = Btf.from_bytes(module_btfs["ext4"], base=base)
    assert ext4.type_id("ext4_sb_info") >= len(base)
    assert ext4.offsetof("ext4_sb_info", "s_es") == ext4.member("ext4_sb_info", "s_es") \
        .bit_offset // 8


@needs_bpftool
def test_module_btf_as_bpftool_reads_it(module_btfs, vmlinux_btf, real_file, tmp_path):
    base = Btf.from_bytes(vmlinux_btf)
    vmlinux = real_file("deb13/deb13hung-a.btf-vmlinux.bin")
    for name, blob in module_btfs.items():
        path = tmp_path / name
        path.write_bytes(blob)
        out = subprocess.run([BPFTOOL, "-j", "btf", "dump", "file", str(path), "--base-btf",
                              str(vmlinux)], check=True, capture_output=True, text=True).stdout
        types = json.loads(out)["types"]
        btf = Btf.from_bytes(blob, base=base)
        assert types[0]["id"] == len(base), name
        assert_same_as_bpftool(btf, types, first=len(base))


def test_scan_passes_over_module_btf(module_btfs):
    """Module BTF copies before the kernel's blob (as a naive scan would meet them)."""
    blob = blob_of()
    decoy = b"".join(b + bytes(-len(b) % 8) for b in module_btfs.values())
    image = kernel_image(blob, 0x280000, decoys() + decoy)
    found = scan_for_btf(FakeKmem({STEXT: image}), STEXT, STEXT + len(image))
    assert found is not None and found[0] == STEXT + 0x280000

"""kallsyms through VMCOREINFO: decoded against the real System.map and the kernel's own
Call Trace, and against tables built from the spec (tests/fixtures/kstack.py)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from sadump.analysis import analyse
from sadump.kernel.kallsyms import KallsymsError, decode
from sadump.kernel.translate import KernelLayout, KernelMemory
from sadump.kernel.vmcoreinfo import VmcoreInfo
from tests.fixtures.builder import Memory
from tests.fixtures.kstack import SYMBOLS, kallsyms_tables, sym
from tests.synthetic_memory import SyntheticMemory

#: the table labels scripts/kallsyms leaves out of its own output (spec 1.5)
LABELS = {"kallsyms_offsets", "kallsyms_relative_base", "kallsyms_num_syms", "kallsyms_names",
          "kallsyms_markers", "kallsyms_seqs_of_names", "kallsyms_token_table",
          "kallsyms_token_index"}
TABLES = 0x100000


# ---- the real 6.1.192 kernel ------------------------------------------------------------------

@pytest.fixture(scope="module")
def vmcore_syms(real_file):
    analysis = analyse(str(real_file("rimg-kdump.proc-vmcore.elf")))
    try:
        syms = decode(analysis.vmcoreinfo.info, analysis.kernel_memory)
    finally:
        analysis.close()
    return syms


def test_real_symbols_are_system_map_less_the_table_labels(vmcore_syms, real_text):
    """Every decoded (address, type, name) is a System.map line, and System.map less the
    decoded lines is exactly the 8 table labels (spec 1.5); duplicates counted as such."""
    system_map = Counter()
    for line in real_text("System.map-6.1.192-rimg").splitlines():
        addr, typ, name = line.split()
        system_map[(int(addr, 16), typ, name)] += 1
    decoded = Counter(zip(vmcore_syms.addresses, vmcore_syms.types, vmcore_syms.names,
                          strict=True))
    assert len(vmcore_syms) == 19365 and system_map.total() == 19373
    assert not decoded - system_map
    rest = system_map - decoded
    assert rest.total() == 8 and {name for _, _, name in rest} == LABELS
    assert vmcore_syms.encoding == "relative-base"
    assert vmcore_syms.all_symbols  # CONFIG_KALLSYMS_ALL=y (config-6.1.192-rimg)


def test_real_lookup_prints_the_kernels_own_call_trace(vmcore_syms, real_text):
    """The panic's Call Trace in the crashed kernel's log: address and %pSR as it printed."""
    log = real_text("rimg-kdump.makedumpfile-s390x-dump-dmesg-of-proc-vmcore.txt")
    lines = re.findall(r"\[<([0-9a-f]{16})>\] (\S+) $", log, re.MULTILINE)
    assert len(lines) == 10
    for addr, printed in lines:
        assert str(vmcore_syms.lookup(int(addr, 16))) == printed


def test_real_lookup_edges(vmcore_syms):
    k = vmcore_syms
    # the first alias at an address in kallsyms' order (fewer leading "_" first), not
    # System.map's: _stext, _text and startup_continue share 0x100000
    assert str(k.lookup(0x100000)) == "startup_continue+0x0/0x70"
    # ra - 1 note for a return address after a noreturn call (spec 1.6, QEMU ELF CPU 1)
    assert str(k.lookup(0x1117E0)) == "smp_add_present_cpu+0x0/0xb0"
    note = k.caller_note(0x1117E0)
    assert (note.name, note.offset, note.size) == ("smp_start_secondary", 0xE8, 0xE8)
    assert k.caller_note(0x1117E2) is None
    # past _end: not a kernel address; MODULES_VADDR/MODULES_END read through kallsyms
    assert k.lookup(0x585000).name is None
    start, end = k.module_range
    assert start < end and k.lookup(start).module
    assert str(k.lookup(start)) == f"[module] {start:#x}"
    assert k.is_text(0x35B526) and not k.is_text(0x413230)  # psw_idle_exit; panic_cpu (data)


# ---- synthetic tables -------------------------------------------------------------------------

def kmem_with(tables, extra: dict[int, bytes] | None = None) -> KernelMemory:
    mem = Memory()
    mem.write(tables.base, tables.blob)
    for at, data in (extra or {}).items():
        mem.write(at, data)
    return KernelMemory(SyntheticMemory(mem, 0x400000), KernelLayout())


def info_for(tables, release: str = "6.1.0", stext: int = 0x10000,
             drop: tuple[str, ...] = ()) -> VmcoreInfo:
    lines = [f"OSRELEASE={release}", f"SYMBOL(_stext)={stext:x}", *tables.lines]
    return VmcoreInfo("\n".join(line for line in lines
                                if not any(f"({d})" in line for d in drop)) + "\n")


@pytest.mark.parametrize("place_relative", [False, True])
def test_synthetic_tables_decode(place_relative):
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000,
                             place_relative=place_relative)
    k = decode(info_for(tables), kmem_with(tables))
    assert list(zip(k.addresses, k.types, k.names, strict=True)) == SYMBOLS
    assert k.encoding == ("place-relative" if place_relative else "relative-base")


def test_lookup_follows_get_symbol_pos():
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000)
    k = decode(info_for(tables), kmem_with(tables))
    # first alias, size to the next greater address
    assert str(k.lookup(0x10A04)) == "after_noreturn+0x4/0x100"
    assert str(k.lookup(0x10000)) == "_stext+0x0/0x100"
    # init text: the symbol before _einittext runs to it; _einittext itself is not text
    assert str(k.lookup(0x12104)) == "init_function+0x4/0x700"
    assert k.is_text(0x12104) and not k.is_text(sym("_einittext"))
    # KALLSYMS_ALL (data symbols): [_stext, _end) are kernel addresses; the last symbol
    # before _end is some_data
    assert str(k.lookup(0x2FFFF)) == "some_data+0xffff/0x10000"
    assert k.lookup(0x30000).name is None and str(k.lookup(0x30000)) == "0x30000"
    assert k.lookup(0xFFFF).name is None
    # the caller of a return address at offset 0 (noreturn call), as %pB prints it
    note = k.caller_note(0x10A00)
    assert (note.name, note.offset, note.size) == ("noreturn_caller", 0x100, 0x100)


def test_text_only_kernel():
    """Without KALLSYMS_ALL only text is a kallsyms address (is_ksym_addr)."""
    text_only = [s for s in SYMBOLS if s[1] in "TtW"]
    tables = kallsyms_tables(text_only, TABLES, relative_base=0x10000)
    k = decode(info_for(tables), kmem_with(tables))
    assert not k.all_symbols
    assert k.lookup(0x20000).name is None  # data is not a ksym address without KALLSYMS_ALL
    assert k.lookup(0x11000).name is None  # _etext itself: text ends there
    assert str(k.lookup(0x10FFF)) == "a_" + "very_long_" * 20 + "name+0x4ff/0x500"
    assert str(k.lookup(0x12200)) == "init_function+0x100/0x700"


def test_one_byte_lengths_before_6_1():
    short = [s for s in SYMBOLS if len(s[2]) < 100]
    tables = kallsyms_tables(short, TABLES, relative_base=0x10000)
    k = decode(info_for(tables, release="6.0.19"), kmem_with(tables))
    assert k.names == [n for _, _, n in short]


def test_two_byte_lengths_misread_as_one_byte_fail_the_checks():
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000)
    with pytest.raises(KallsymsError, match="type letter"):
        decode(info_for(tables, release="6.0.19"), kmem_with(tables))


@pytest.mark.parametrize("drop", ["kallsyms_names", "kallsyms_num_syms",
                                  "kallsyms_token_table", "kallsyms_token_index"])
def test_absent_keys_say_why(drop):
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000)
    with pytest.raises(KallsymsError, match=r"6\.0"):
        decode(info_for(tables, drop=(drop,)), kmem_with(tables))


def test_no_offsets_at_all():
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000)
    with pytest.raises(KallsymsError, match="kallsyms_offsets"):
        decode(info_for(tables, drop=("kallsyms_offsets", "kallsyms_relative_base")),
               kmem_with(tables))


def test_stext_must_match():
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000)
    with pytest.raises(KallsymsError, match="SYMBOL\\(_stext\\)"):
        decode(info_for(tables, stext=0x10100), kmem_with(tables))


def test_unsorted_addresses_are_refused():
    bad = list(SYMBOLS)
    bad[3], bad[4] = bad[4], bad[3]  # arch_cpu_idle after psw_idle_exit
    tables = kallsyms_tables(bad, TABLES, relative_base=0x10000)
    with pytest.raises(KallsymsError, match="not sorted"):
        decode(info_for(tables), kmem_with(tables))


@pytest.mark.parametrize("count", [0, 0xFFFFFFFF, 5_000_000])
def test_num_syms_out_of_range(count):
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000, num_syms=count)
    with pytest.raises(KallsymsError, match="out of range"):
        decode(info_for(tables), kmem_with(tables))


def test_num_syms_larger_than_the_names():
    """A count beyond the records: the walk runs into zeros (length 0) and stops."""
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000, num_syms=1000)
    with pytest.raises(KallsymsError):
        decode(info_for(tables), kmem_with(tables))


def test_names_cut_by_the_end_of_memory():
    """The names table runs to the end of memory: bounded reads, a clear error."""
    tables = kallsyms_tables(SYMBOLS, 0x3FF000, relative_base=0x10000, num_syms=100000)
    mem = Memory()
    mem.write(tables.base, tables.blob[:0x1000])
    kmem = KernelMemory(SyntheticMemory(mem, 0x400000), KernelLayout())
    with pytest.raises(KallsymsError):
        decode(info_for(tables), kmem)


def test_unreadable_tables():
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000)
    kmem = KernelMemory(SyntheticMemory(Memory(), 0x1000), KernelLayout())
    with pytest.raises(KallsymsError, match="not readable"):
        decode(info_for(tables), kmem)


def test_no_vmcoreinfo():
    with pytest.raises(KallsymsError, match="no VMCOREINFO"):
        decode(None, None)


@pytest.mark.parametrize("seed", range(40))
def test_random_damage_to_the_tables(seed):
    """Flipped bytes anywhere in the tables: a decode that passes its checks, or a
    KallsymsError; never another exception."""
    import random

    rnd = random.Random(seed)
    tables = kallsyms_tables(SYMBOLS, TABLES, relative_base=0x10000)
    blob = bytearray(tables.blob)
    for _ in range(rnd.randrange(1, 8)):
        blob[rnd.randrange(len(blob))] = rnd.randrange(256)
    damaged = type(tables)(bytes(blob), tables.base, tables.lines, tables.names_len)
    try:
        k = decode(info_for(tables), kmem_with(damaged))
    except KallsymsError:
        return
    assert k.address("_stext") == 0x10000
    assert all(a <= b for a, b in zip(k.addresses, k.addresses[1:], strict=False))

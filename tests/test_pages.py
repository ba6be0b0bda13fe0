"""Dump-level page classification (sadump.kernel.pages, mem_section) against makedumpfile.

Real data: makedumpfile 1.7.2's bitmaps of rimg-kdump.proc-vmcore.elf at levels 1-31 (spec
filtering.md "Reference data"). Synthetic: a tiny machine whose struct pages are written by hand
from the spec's rules (tests/fixtures/pagemachine.py); the expected classes below are worked out
from spec section 0 by hand, not from sadump's code.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sadump.kernel.mem_section import (
    MemSectionError,
    MissingKeyError,
    VmcoreinfoValueError,
    allowed_level,
    check_level,
    filter_keys,
    needed_keys,
    pfn_ranges,
    walk_sections,
)
from sadump.kernel.pages import (
    CACHE,
    CACHE_PRI,
    FREE,
    KEEP,
    NOT_EXAMINED,
    OFFLINE,
    USER,
    count_bits,
    count_zero_pages,
    filter_levels,
    filter_pages,
    read_struct_pages,
    set_bits,
    zero_pages,
)
from sadump.kernel.translate import kernel_memory
from sadump.kernel.vmcoreinfo import VmcoreInfo
from tests.fixtures.pagemachine import (
    BUDDY_61,
    OFFLINE_DEB,
    PGTY_BUDDY,
    PGTY_HUGETLB,
    PGTY_OFFLINE,
    PGTY_SLAB,
    SECTION_PAGES,
    VMEMMAP,
    PageMachine,
    reference_filter,
)
from tests.synthetic_memory import SyntheticMemory

LEVELS = (1, 2, 4, 8, 16, 31)
# spec "Reference data": 2nd-bitmap bits set per level, max_mapnr 0x38000
REF_SET = {1: 229_376, 2: 226_824, 4: 226_824, 8: 229_360, 16: 10_435, 31: 7_867}
REF_COUNTS = {  # makedumpfile's counters per level (the "excluded (class)" column)
    1: {}, 2: {"NON_PRI_CACHE": 2552}, 4: {"NON_PRI_CACHE": 2552}, 8: {"USER": 16},
    16: {"FREE": 218_941}, 31: {"NON_PRI_CACHE": 2552, "USER": 16, "FREE": 218_941},
}


def reference(path) -> dict:
    """Header fields and both bitmaps of a makedumpfile output head (dump-formats.md 3)."""
    data = path.read_bytes()
    block, sub_blocks, bm_blocks, max_mapnr = struct.unpack_from(">iiII", data, 0x1AC)
    assert data[:8] == b"KDUMP   " and block == 4096
    sub = data[block:block * (1 + sub_blocks)]
    start = block * (1 + sub_blocks)
    half = bm_blocks // 2 * block
    return {"max_mapnr": struct.unpack_from(">Q", sub, 96)[0], "max_mapnr32": max_mapnr,
            "dump_level": struct.unpack_from(">i", sub, 8)[0],
            "bitmap1": np.frombuffer(data[start:start + half], np.uint8),
            "bitmap2": np.frombuffer(data[start + half:start + 2 * half], np.uint8)}


def padded(bm: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size, np.uint8)
    out[:bm.size] = bm
    return out


@pytest.fixture(scope="module")
def vmcore(real_file):
    from sadump.analysis import analyse
    a = analyse(str(real_file("rimg-kdump.proc-vmcore.elf")))
    yield a
    a.close()


# ---- real data -------------------------------------------------------------------------------
@pytest.mark.parametrize("level", LEVELS)
def test_real_vmcore_bitmaps_equal_makedumpfile(vmcore, real_file, level):
    ref = reference(real_file(f"filter/rimg-kdump.d{level}.bitmaps"))
    keys = filter_keys(vmcore.vmcoreinfo.info)
    present = pfn_ranges(vmcore.memory.ranges())
    r = filter_pages(vmcore.kernel_memory, keys, present, level)
    assert ref["dump_level"] == level
    assert r.max_mapnr == ref["max_mapnr"] == ref["max_mapnr32"] == 0x38000
    assert np.array_equal(padded(r.bitmap1, ref["bitmap1"].size), ref["bitmap1"])
    assert np.array_equal(padded(r.bitmap2, ref["bitmap2"].size), ref["bitmap2"])
    assert r.present == 229_376 and r.dumpable == REF_SET[level]
    expected = dict.fromkeys(r.counts, 0) | REF_COUNTS[level]
    assert r.counts == expected
    assert r.unreadable == 0 and r.bad_buddy_orders == 0 and r.walked == (level != 1)


def test_real_vmcore_all_levels_in_one_pass(vmcore, real_file):
    keys = filter_keys(vmcore.vmcoreinfo.info)
    results = filter_levels(vmcore.kernel_memory, keys, pfn_ranges(vmcore.memory.ranges()),
                            LEVELS)
    for level in LEVELS:
        ref = reference(real_file(f"filter/rimg-kdump.d{level}.bitmaps"))
        r = results[level]
        assert np.array_equal(padded(r.bitmap2, ref["bitmap2"].size), ref["bitmap2"])
        assert r.counts == dict.fromkeys(r.counts, 0) | REF_COUNTS[level]


def test_real_vmcore_mem_usage(vmcore, real_file):
    """--mem-usage rows at level 31: ZERO counts the zero pages still dumpable; 1,155 is the
    number of descriptors of makedumpfile's -c -d 31 file that point to the zero page."""
    keys = filter_keys(vmcore.vmcoreinfo.info)
    r = filter_pages(vmcore.kernel_memory, keys, pfn_ranges(vmcore.memory.ranges()), 31)
    zero = count_zero_pages(vmcore.memory, r.bitmap2, r.max_mapnr)
    assert r.mem_usage(zero) == {"ZERO": 1155, "NON_PRI_CACHE": 2552, "PRI_CACHE": 0,
                                 "USER": 16, "FREE": 218_941, "KERN_DATA": 6712}
    # and the d31 bitmaps equal those of makedumpfile's complete -c / -l output files
    for name in ("rimg-kdump.makedumpfile-c-d31.kdump", "rimg-kdump.makedumpfile-l-d31.kdump"):
        ref = reference(real_file(name))
        assert np.array_equal(padded(r.bitmap2, ref["bitmap2"].size), ref["bitmap2"])
        assert np.array_equal(padded(r.bitmap1, ref["bitmap1"].size), ref["bitmap1"])


def test_real_raw_image_kdump_path(real_file):
    """The raw image (an earlier moment) on the kdump path, crashkernel left out: its struct
    pages differ from the vmcore's in 2 pages (pfn 0x4e9: PG_mappedtodisk; pfn 0x1416:
    page.private), and neither changes a class, so every level gives the reference bitmaps."""
    from sadump.analysis import analyse
    a = analyse(str(real_file("rimg-kdump.raw")))
    try:
        assert a.decision.path == "kdump"
        ck = (a.os_info.crashkernel_addr, a.os_info.crashkernel_size)
        assert ck == (0x38000000, 0x8000000)
        present = pfn_ranges(a.memory.ranges(), ck)
        assert present == [(0, 0x38000)]
        keys = filter_keys(a.vmcoreinfo.info)
        results = filter_levels(a.kernel_memory, keys, present, LEVELS)
        for level in LEVELS:
            ref = reference(real_file(f"filter/rimg-kdump.d{level}.bitmaps"))
            r = results[level]
            diff = np.unpackbits(padded(r.bitmap2, ref["bitmap2"].size) ^ ref["bitmap2"])
            assert int(diff.sum()) == 0
            assert np.array_equal(padded(r.bitmap1, ref["bitmap1"].size), ref["bitmap1"])
    finally:
        a.close()


# ---- helpers ---------------------------------------------------------------------------------
def test_set_bits_and_zero_pages():
    bm = np.zeros(4, np.uint8)
    set_bits(bm, 3, 21, True)
    assert np.unpackbits(bm, bitorder="little").tolist() == [0] * 3 + [1] * 18 + [0] * 11
    set_bits(bm, 5, 6, False)
    assert np.flatnonzero(np.unpackbits(bm, bitorder="little") == 0).tolist()[:4] == [0, 1, 2, 5]
    buf = bytearray(3 * 4096)
    buf[4096 + 4095] = 1
    assert zero_pages(bytes(buf)).tolist() == [True, False, True]


def test_pfn_ranges_leaves_out_crashkernel():
    assert pfn_ranges([(0, 1 << 30)], (0x38000000, 0x8000000)) == [(0, 0x38000)]
    assert pfn_ranges([(0, 0x1001), (0x3000, 0x4000)]) == [(0, 2), (3, 4)]
    assert pfn_ranges([(0, 1 << 30)], (0x10000000, 0x1000000)) == [(0, 0x10000),
                                                                    (0x11000, 0x40000)]


# ---- synthetic machine: 6.1 ----------------------------------------------------------------
def machine(m: PageMachine):
    """The machine's bytes as sadump reads them: its memory and its VMCOREINFO."""
    mem, present, text = m.build()
    return SyntheticMemory(mem, ranges=present), VmcoreInfo(text)


def run(m: PageMachine, level: int, **kw):
    mem, info = machine(m)
    kmem = kernel_memory(mem, info)
    keys = filter_keys(info)
    return filter_pages(kmem, keys, pfn_ranges(mem.ranges()), level, want_classes=True, **kw)


def kept(r, pfns) -> list[bool]:
    bits = np.unpackbits(r.bitmap2, bitorder="little")
    return [bool(bits[p]) for p in pfns]


@pytest.fixture
def m61() -> PageMachine:
    m = PageMachine("6.1", holes=[(0x2000000, 0x2100000)])  # pfns 0x2000-0x20ff absent
    f = m.flag
    m.page(104, mapcount=BUDDY_61, private=3)  # free [104, 112)
    m.page(200, flags=f("lru"), mapcount=BUDDY_61, private=11)  # bad order: kept outright
    m.compound(256, 2, flags=f("lru"), mapping=0x5000)  # file folio of 4: cache [256, 260)
    m.page(300, flags=f("lru"), mapping=0x6001)  # anon
    m.page(301, flags=f("slab"), mapping=0x6001)  # slab with an odd word at mapping: no anon
    m.page(302, flags=f("lru") | f("private"), mapping=0x5000)  # cache with PG_private
    m.page(303, flags=f("swapcache") | f("swapbacked"))  # swap cache: cache
    m.page(304, flags=f("swapcache"))  # PG_swapcache without swapbacked: not cache
    m.compound(512, 9, dtor=2)  # hugetlb (HUGETLB_PAGE_DTOR=2), user [512, 1024)
    m.page(2556, flags=f("head"))
    m.first_tail(2556, 1, dtor=2)  # order-1 hugetlb head: user [2556, 2558)
    m.page(2559, flags=f("head"))  # pfn % 512 == 511: first tail not looked at
    m.first_tail(2559, 0, dtor=2)
    m.page(3000, mapcount=BUDDY_61, private=3)  # free [3000, 3008)
    m.page(3002, flags=f("lru"), mapping=0x5000)  # inside: never visited
    m.page(3004, mapcount=BUDDY_61, private=5)  # inside: its range is never visited ...
    m.page(3020, flags=f("lru"), mapping=0x5000)  # ... so this one is (a walk-order case)
    m.page(4000, flags=f("head"))  # kernel compound page (kept) ...
    m.first_tail(4000, 1)
    m.page(4001, flags=f("lru"), mapping=0x5000,  # ... whose tail looks like cache
           compound_head=m.struct_page_vaddr(4000) | 1)
    m.page(5000, mapcount=OFFLINE_DEB)  # logically offline: any level that walks
    m.page(8190, mapcount=BUDDY_61, private=3)  # free range running into the hole
    m.page(8300, mapcount=BUDDY_61, private=0)  # in the hole: not examined
    m.page(SECTION_PAGES - 4, mapcount=BUDDY_61, private=3)  # range into the next section
    m.page(SECTION_PAGES + 1, flags=f("lru"), mapping=0x5000)  # re-examined by its section
    return m


def classes_of(r, pfns):
    return [int(r.classes[p]) for p in pfns]


def test_synthetic_61_level_31(m61):
    r = run(m61, 31)
    c = r.classes
    assert (c[104:112] == FREE).all() and c[103] == KEEP and c[112] == KEEP
    assert c[200] == KEEP and r.bad_buddy_orders == 1
    assert (c[256:260] == CACHE).all()
    assert classes_of(r, [300, 301, 302, 303, 304]) == [USER, KEEP, CACHE_PRI, CACHE, KEEP]
    assert (c[512:1024] == USER).all()
    assert classes_of(r, [2556, 2557, 2558, 2559, 2560]) == [USER, USER, KEEP, KEEP, KEEP]
    assert (c[3000:3008] == FREE).all() and (c[3008:3020] == KEEP).all()
    assert c[3020] == CACHE and (c[3021:3036] == KEEP).all()
    assert classes_of(r, [4000, 4001, 5000]) == [KEEP, KEEP, OFFLINE]
    assert (c[8190:8192] == FREE).all() and (c[0x2000:0x2100] == NOT_EXAMINED).all()
    assert (c[SECTION_PAGES - 4:SECTION_PAGES + 4] == [FREE] * 5 + [CACHE] + [FREE] * 2).all()
    assert r.max_mapnr == SECTION_PAGES + 4096 and r.present == r.max_mapnr - 256
    # makedumpfile's counters: whole ranges (8190's counts its 6 hole pfns), the page of the
    # next section that the range covered counts again as cache
    assert r.counts == {"NON_PRI_CACHE": 4 + 1 + 1 + 1, "PRI_CACHE": 1, "USER": 1 + 512 + 2,
                        "FREE": 8 + 8 + 8 + 8, "HWPOISON": 0, "OFFLINE": 1}
    bits = np.unpackbits(r.bitmap2, bitorder="little")[:r.max_mapnr]
    expect = (c == KEEP)
    assert np.array_equal(bits.astype(bool), expect)


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
@pytest.mark.parametrize("chain_min", [0, 64])
def test_synthetic_every_level_equals_a_slow_reference(m61, m612, kernel, chain_min,
                                                       monkeypatch):
    """All 32 levels against a plain per-pfn loop written from spec 0 (tests/fixtures)."""
    from sadump.kernel import pages
    monkeypatch.setattr(pages, "CHAIN_MIN", chain_min)
    m = m61 if kernel == "6.1" else m612
    mem, info = machine(m)
    kmem, keys = kernel_memory(mem, info), filter_keys(info)
    results = filter_levels(kmem, keys, pfn_ranges(mem.ranges()), range(32))
    for level in range(32):
        bm, counts = reference_filter(m, level)
        r = results[level]
        assert r.bitmap2.tobytes() == bytes(bm), level
        assert r.counts == counts, level


@pytest.mark.parametrize("unmapped", [set(), {300}])
def test_top_down_vmemmap_reads_the_same(m61, unmapped):
    """vmemmap pages on descending frames with gaps (as memblock lays them out; read in a
    few large pieces, pages gathered back in order): every level as from one ascending run,
    an unmapped vmemmap page among them too."""
    ascending = filter_levels(*_inputs(m61), range(32))
    m61.top_down_vmemmap, m61.unmapped_vmemmap = True, unmapped
    top_down = filter_levels(*_inputs(m61), range(32))
    for level in range(32):
        if not unmapped:
            assert top_down[level].bitmap2.tobytes() == ascending[level].bitmap2.tobytes()
            assert top_down[level].counts == ascending[level].counts
        else:  # the 64 pfns of that vmemmap page are kept, unexamined
            assert top_down[level].unreadable == (64 if ascending[level].walked else 0)
    kmem = _inputs(m61)[0]
    for pfn in (0, 63, 64, 4095, 5000):  # unaligned too: the records, as kmem reads them
        raw, ok = read_struct_pages(kmem, VMEMMAP + 64 * pfn, 700, 64)
        assert ok.all() and raw.tobytes() == kmem.read(VMEMMAP + 64 * pfn, 700 * 64)


def _inputs(m: PageMachine):
    mem, info = machine(m)
    return kernel_memory(mem, info), filter_keys(info), pfn_ranges(mem.ranges())


@pytest.mark.parametrize("chain_min", [0, 64, 10**9])
def test_overlapping_free_ranges_follow_the_walk(monkeypatch, chain_min):
    """Damage: 600 buddy heads whose ranges overlap the next heads; which heads the walk
    visits decides which pfns stay. Both ways of deciding (pointer doubling, the loop) agree
    with the reference."""
    from sadump.kernel import pages
    monkeypatch.setattr(pages, "CHAIN_MIN", chain_min)
    m = PageMachine("6.1")
    for p in range(20000, 20900):
        if p % 3 != 2:
            m.page(p, mapcount=BUDDY_61, private=2 if p % 5 else 1)
    m.page(20950, mapcount=BUDDY_61, private=3)
    mem, info = machine(m)
    results = filter_levels(kernel_memory(mem, info), filter_keys(info),
                            pfn_ranges(mem.ranges()), (16, 31))
    for level in (16, 31):
        bm, counts = reference_filter(m, level)
        assert results[level].bitmap2.tobytes() == bytes(bm)
        assert results[level].counts == counts
    bits = np.unpackbits(results[31].bitmap2, bitorder="little")
    assert 0 < int(bits[20000:20900].sum()) < 300  # some pfns between the visited ranges


def test_synthetic_61_levels_in_one_pass_equal_single_runs(m61):
    mem, info = machine(m61)
    kmem, keys = kernel_memory(mem, info), filter_keys(info)
    present = pfn_ranges(mem.ranges())
    levels = list(range(32))
    together = filter_levels(kmem, keys, present, levels, want_classes=True)
    for level in levels:
        alone = filter_pages(kmem, keys, present, level, want_classes=True)
        both = together[level]
        assert np.array_equal(both.bitmap2, alone.bitmap2), level
        assert np.array_equal(both.classes, alone.classes), level
        assert (both.counts, both.bad_buddy_orders, both.walked) == \
            (alone.counts, alone.bad_buddy_orders, alone.walked)


def test_synthetic_61_fragmented_present_memory(m61):
    """500 small holes (as in a filtered input) where no candidate lies: the same exclusions,
    judged in shared blocks."""
    mem, info = machine(m61)
    kmem, keys = kernel_memory(mem, info), filter_keys(info)
    whole = pfn_ranges(mem.ranges())
    holes = [(9000 + 32 * k, 9000 + 32 * k + 16) for k in range(500)]
    frag: list[tuple[int, int]] = []
    for s, e in whole:
        pos = s
        for hs, he in holes:
            if s <= hs < e:
                frag.append((pos, hs))
                pos = he
        frag.append((pos, e))
    full = filter_pages(kmem, keys, whole, 31)
    part = filter_pages(kmem, keys, frag, 31)
    assert part.present == full.present - 500 * 16
    assert np.array_equal(part.bitmap2, full.bitmap2 & part.bitmap1)
    assert part.counts == full.counts


def test_synthetic_61_single_levels(m61):
    r = run(m61, 2)  # cache without PG_private; offline too, as the walk runs
    assert kept(r, [256, 259, 302, 303, 300, 104, 5000]) == [False, False, True, False, True,
                                                              True, False]
    r4 = run(m61, 4)
    assert kept(r4, [302]) == [False] and r4.counts["PRI_CACHE"] == 1
    r8 = run(m61, 8)
    assert kept(r8, [300, 301, 512, 1023, 2556, 2559]) == [False, True, False, False, False,
                                                            True]
    r16 = run(m61, 16)
    assert kept(r16, [104, 111, 112, 200, 3004, 3008, 3020, 3035]) == [
        False, False, True, True, False, True, True, True]
    r1 = run(m61, 1)  # no walk: offline pages stay
    assert not r1.walked and r1.dumpable == r1.present


def test_synthetic_61_level2_counts(m61):
    r = run(m61, 2)
    # cache non-private: 256 (4), 303, 3002 and 200 (no buddy branch at level 2: they are
    # judged as LRU pages), 3020, 65537; 4001 is a tail: skipped
    assert r.counts["NON_PRI_CACHE"] == 4 + 1 + 1 + 1 + 1 + 1
    assert r.counts["OFFLINE"] == 1


# ---- synthetic machine: 6.12 page types --------------------------------------------------------
@pytest.fixture
def m612() -> PageMachine:
    m = PageMachine("6.12")
    f = m.flag
    m.page(104, mapcount=PGTY_BUDDY, private=3)  # free [104, 112)
    m.page(120, mapcount=PGTY_SLAB, mapping=0x6001)  # slab page type: never anon
    m.page(121, flags=f("lru") | f("waiters"), mapping=0x6001)  # PG_slab=7 quirk: not anon
    m.page(122, flags=f("lru"), mapping=0x6001)  # anon
    m.compound(256, 2, flags=f("lru"), mapping=0x5000)  # large file folio: order in flags1
    m.compound(1024, 9, mapcount=PGTY_HUGETLB)  # hugetlb by page type
    m.page(3000, mapcount=PGTY_OFFLINE)
    m.page(3001, mapcount=PGTY_BUDDY | 1)  # not exactly the type value: kept
    return m


def test_synthetic_612_level_31(m612):
    r = run(m612, 31)
    c = r.classes
    assert (c[104:112] == FREE).all()
    assert classes_of(r, [120, 121, 122]) == [KEEP, CACHE, USER]
    assert (c[256:260] == CACHE).all() and (c[1024:1536] == USER).all()
    assert classes_of(r, [3000, 3001]) == [OFFLINE, KEEP]
    assert r.counts["PRI_CACHE"] == 0 and r.counts["FREE"] == 8


def test_synthetic_612_quirk_at_level_8(m612):
    """6.10+: NUMBER(PG_slab) is absent, makedumpfile takes 7 = PG_waiters: a waiter-flagged
    anon LRU page counts as slab, so level 8 alone keeps it (spec 6)."""
    r = run(m612, 8)
    assert kept(r, [121, 122, 1024, 1535, 120]) == [True, False, False, False, True]
    keys = filter_keys(machine(m612)[1])
    assert keys.pg_slab == 7 and "NUMBER(PG_slab)" in keys.defaulted


# ---- keys, defaults, levels -----------------------------------------------------------------
def test_defaults_for_missing_keys():
    info = VmcoreInfo("OSRELEASE=5.0.0\nPAGESIZE=4096\n")
    k = filter_keys(info)
    assert (k.pg_lru, k.pg_private, k.pg_swapcache, k.pg_slab, k.pg_head_mask) == \
        (5, 11, 15, 7, 1 << 14)
    assert k.pg_swapbacked is None  # PG_swapcache 15 > PG_private 11: stays unknown
    assert k.buddy_mapcount == -128
    assert filter_keys(VmcoreInfo("OSRELEASE=2.6.38\nPAGESIZE=4096\n")).buddy_mapcount == -2
    k2 = filter_keys(VmcoreInfo("OSRELEASE=4.0\nPAGESIZE=4096\nNUMBER(PG_swapcache)=9\n"))
    assert k2.pg_swapbacked == 11 + 6
    # decimal first, then hex (read_vmcoreinfo_long)
    k3 = filter_keys(VmcoreInfo("OSRELEASE=6.1\nPAGESIZE=4096\nNUMBER(PG_lru)=0x10\n"))
    assert k3.pg_lru == 16


def test_invalid_values_are_typed_errors():
    with pytest.raises(VmcoreinfoValueError, match="PG_lru"):
        filter_keys(VmcoreInfo("OSRELEASE=6.1\nPAGESIZE=4096\nNUMBER(PG_lru)=zz\n"))
    with pytest.raises(VmcoreinfoValueError, match="SIZE\\(page\\)"):
        filter_keys(VmcoreInfo("OSRELEASE=6.1\nPAGESIZE=4096\nSIZE(page)=1000000\n"))
    with pytest.raises(MissingKeyError, match="PAGESIZE"):
        filter_keys(VmcoreInfo("OSRELEASE=6.1\n"))


def test_needed_keys_per_level():
    assert needed_keys(0) == needed_keys(1) == []
    assert "OFFSET(page.private)" not in needed_keys(8)
    assert {"SYMBOL(mem_section)", "OFFSET(page._mapcount)", "OFFSET(page.private)",
            "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)"} <= set(needed_keys(31))


def test_missing_keys_name_the_key_and_the_fallback():
    m = PageMachine("6.1", drop_keys=("OFFSET(page.private)",))
    keys = filter_keys(machine(m)[1])
    with pytest.raises(MissingKeyError, match=r"OFFSET\(page.private\)") as e:
        check_level(keys, 31)
    assert e.value.allowed == 15 and allowed_level(keys, 16) == 0
    check_level(keys, 15)
    m = PageMachine("6.1", drop_keys=("OFFSET(page._mapcount)",))
    keys = filter_keys(machine(m)[1])
    with pytest.raises(MissingKeyError, match=r"_mapcount") as e:
        check_level(keys, 31)
    assert e.value.allowed == 1
    check_level(keys, 1)
    with pytest.raises(MissingKeyError):
        run(m, 31)


# ---- damage: bounded, typed, or documented skips --------------------------------------------
def test_mem_section_pointer_form():
    m = PageMachine("6.1", mem_section_pointer=True)
    m.page(104, mapcount=BUDDY_61, private=3)
    r = run(m, 16)
    assert r.sections.roots == "pointer" and r.counts["FREE"] == 8


def counted_reads(monkeypatch) -> list[int]:
    """[reads, bytes] of the synthetic memory from now on: the work a damaged input costs."""
    seen = [0, 0]
    real = SyntheticMemory._read

    def read(self, paddr, size):
        seen[0] += 1
        seen[1] += size
        return real(self, paddr, size)

    monkeypatch.setattr(SyntheticMemory, "_read", read)
    return seen


def test_wild_root_is_a_clear_error(monkeypatch):
    m = PageMachine("6.1", root_override=0xDEAD00000000)
    seen = counted_reads(monkeypatch)
    with pytest.raises(MemSectionError, match="mem_map"):
        run(m, 31)
    assert seen[0] <= 16 and seen[1] <= 4096  # a few section words, no walk
    r = run(m, 1)  # level 1 needs no struct page
    assert r.dumpable == r.present


def test_wild_section_mem_map_keeps_pages_bounded(monkeypatch):
    m = PageMachine("6.1", section_map_override={0: 0x7FFF00000000 | 3})
    m.page(SECTION_PAGES + 8, mapcount=BUDDY_61, private=3)
    seen = counted_reads(monkeypatch)
    r = run(m, 31)
    # not a read per unreadable struct page: at most the one good section's struct pages
    assert seen[0] <= 64 and seen[1] <= SECTION_PAGES * 64
    assert r.unreadable == SECTION_PAGES  # section 0: no struct page readable, all kept
    assert r.counts["FREE"] == 8 and any("kept" in w for w in r.warnings)


def test_section_without_mem_map_is_skipped():
    m = PageMachine("6.1", section_map_override={1: 0})
    m.page(SECTION_PAGES + 8, mapcount=BUDDY_61, private=3)
    mem, info = machine(m)
    smap = walk_sections(kernel_memory(mem, info), filter_keys(info), pfn_ranges(mem.ranges()))
    # max_mapnr is capped at the last section with a mem_map (get_mem_map)
    assert [s.nr for s in smap.sections] == [0] and smap.max_mapnr == SECTION_PAGES


def test_sections_past_the_kernels_limits_are_not_read():
    """Present memory beyond NR_MEM_SECTIONS (2^(MAX_PHYSMEM_BITS - SECTION_SIZE_BITS)) has no
    section: it is not read, and max_mapnr is capped at the end of the last section with a
    mem_map (get_mem_map: the section's end, not the end of its present memory)."""
    m = PageMachine("6.1")
    m.page(104, mapcount=BUDDY_61, private=3)
    mem, info = machine(m)
    text = info.text.replace("NUMBER(MAX_PHYSMEM_BITS)=46", "NUMBER(MAX_PHYSMEM_BITS)=29")
    text = text.replace("LENGTH(mem_section)=1024", "LENGTH(mem_section)=1")
    info = VmcoreInfo(text)
    keys = filter_keys(info)
    assert keys.nr_mem_sections == 2
    present = pfn_ranges(mem.ranges()) + [(5 * SECTION_PAGES, 5 * SECTION_PAGES + 16)]
    smap = walk_sections(kernel_memory(mem, info), keys, present)
    assert [s.nr for s in smap.sections] == [0, 1] and smap.max_mapnr == 2 * SECTION_PAGES
    assert "first: section 5" in smap.warnings[0]


def test_absent_vmemmap_page_keeps_its_pages():
    m = PageMachine("6.1", unmapped_vmemmap={2})  # struct pages of pfns 128..191
    m.page(128, mapcount=BUDDY_61, private=2)
    m.page(192, mapcount=BUDDY_61, private=2)
    r = run(m, 31)
    assert r.unreadable == 64
    assert kept(r, [128, 192]) == [True, False]
    assert (r.classes[128:192] == NOT_EXAMINED).all()


def test_bad_buddy_orders_and_huge_orders_are_bounded():
    m = PageMachine("6.1")
    m.page(0, mapcount=BUDDY_61, private=(1 << 64) - 1)
    m.page(1, mapcount=BUDDY_61, private=60)
    m.page(2, flags=m.flag("head") | m.flag("lru"))
    m.first_tail(2, 255)  # order >= 64: order 0
    m.page(4096, flags=m.flag("head") | m.flag("lru"))
    m.first_tail(4096, 63)  # unaligned: order 0
    r = run(m, 31)
    assert kept(r, [0, 1, 2, 3, 4096, 4097]) == [True, True, False, True, False, True]
    assert r.bad_buddy_orders == 2


def test_vmemmap_translation_is_used():
    """The struct pages are read through the page tables at the vmemmap address."""
    m = PageMachine("6.1")
    mem, info = machine(m)
    kmem = kernel_memory(mem, info)
    assert kmem.to_physical(VMEMMAP + 64 * 5) == 0x1000000 + 64 * 5


def test_zero_count_on_synthetic(m61):
    mem, info = machine(m61)
    r = filter_pages(kernel_memory(mem, info), filter_keys(info), pfn_ranges(mem.ranges()), 31)
    zero = count_zero_pages(mem, r.bitmap2, r.max_mapnr)
    nonzero = {pno for pno, page in mem.mem.pages.items() if any(page)}
    expect = sum(1 for p in np.flatnonzero(np.unpackbits(r.bitmap2, bitorder="little")
                                           [:r.max_mapnr]) if int(p) not in nonzero)
    assert zero == expect and count_bits(r.bitmap2) == r.dumpable

"""VMCOREINFO as makedumpfile 1.7.9 reads it for filtering, and the sparse-memory section walk.

Spec: filtering.md section 1 (parsing, defaults for missing keys) and section 2 (memory model,
`mem_section` roots, `section_mem_map` decoding, `max_mapnr`). Everything the image supplies is
bounded by the memory that is present: only sections that hold present pages are visited, each
root and each `struct mem_section` is one small read, and an unreadable one means "no mem_map"
(as makedumpfile's `section_mem_map_addr` returns NOT_KV_ADDR), never a loop or an allocation
sized by a field of the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sadump.constants import PAGE_SHIFT, PAGE_SIZE
from sadump.errors import FilterError, SadumpError
from sadump.kernel.vmcoreinfo import VmcoreInfo

#: dump level bits (makedumpfile's DL_EXCLUDE_*)
DL_ZERO, DL_CACHE, DL_CACHE_PRI, DL_USER, DL_FREE = 1, 2, 4, 8, 16
MAX_DUMP_LEVEL = 31

# makedumpfile's defaults for old kernels (get_value_for_old_linux, makedumpfile.h)
PG_LRU_ORIGINAL, PG_PRIVATE_ORIGINAL, PG_SWAPCACHE_ORIGINAL = 5, 11, 15
PG_SLAB_ORIGINAL, PG_COMPOUND_ORIGINAL = 7, 14
BUDDY_MAPCOUNT_2_6_38, BUDDY_MAPCOUNT_2_6_39 = -2, -128
# s390x (arch/s390x.c, makedumpfile.h)
S390X_SECTION_SIZE_BITS = 28
S390X_MAX_PHYSMEM_BITS_ORIG, S390X_MAX_PHYSMEM_BITS_3_3 = 42, 46
SECTION_MARKED_PRESENT = 1
SECTION_MAP_MASK = ~0x1F & ((1 << 64) - 1)  # makedumpfile assumes SECTION_MAP_LAST_BIT 1<<5
U64 = (1 << 64) - 1


class VmcoreinfoValueError(FilterError):
    """A VMCOREINFO line that makedumpfile would reject ("Invalid data in ...")."""


class MissingKeyError(FilterError):
    """A VMCOREINFO key that the dump level needs is absent."""

    def __init__(self, keys: list[str], level: int, allowed: int):
        self.keys = list(keys)
        self.level = level
        #: the highest level at or below `level` (a subset of its bits) that the keys allow
        self.allowed = allowed
        super().__init__(f"dump level {level} needs {', '.join(keys)} in VMCOREINFO, which "
                         f"{'is' if len(keys) == 1 else 'are'} missing (level {allowed} is "
                         "possible)")


class MemSectionError(FilterError):
    """The mem_section array gives no usable mem_map (makedumpfile: "Could not validate
    mem_section")."""


# ---- VMCOREINFO as makedumpfile parses it ------------------------------------------------------
_DEC = re.compile(r"[+-]?[0-9]+\Z")
_HEX = re.compile(r"[+-]?(0[xX])?[0-9a-fA-F]+\Z")


def mdf_long(info: VmcoreInfo, key: str) -> int | None:
    """`read_vmcoreinfo_long`: decimal first, then hex when characters are left over; None
    when absent; VmcoreinfoValueError for a value makedumpfile rejects."""
    raw = info.values.get(key)
    if raw is None:
        return None
    if _DEC.match(raw):
        return int(raw, 10)
    if _HEX.match(raw):
        return int(raw, 16)
    raise VmcoreinfoValueError(f"VMCOREINFO {key}={raw!r} is not a number")


def mdf_symbol(info: VmcoreInfo, name: str) -> int | None:
    """`read_vmcoreinfo_symbol`: hex; 0 or junk is invalid."""
    key = f"SYMBOL({name})"
    raw = info.values.get(key)
    if raw is None:
        return None
    if not re.fullmatch(r"(0[xX])?[0-9a-fA-F]+", raw) or int(raw, 16) in (0, U64):
        raise VmcoreinfoValueError(f"VMCOREINFO {key}={raw!r} is not a symbol address")
    return int(raw, 16) & U64


def kernel_version(osrelease: str | None) -> tuple[int, int, int]:
    """(major, minor, patch) of OSRELEASE, as makedumpfile's get_kernel_version reads it."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", osrelease or "")
    if not m:
        raise MissingKeyError(["OSRELEASE"], 0, 0) if not osrelease else \
            VmcoreinfoValueError(f"VMCOREINFO OSRELEASE={osrelease!r} has no kernel version")
    return int(m[1]), int(m[2]), int(m[3] or 0)


@dataclass(frozen=True)
class FilterKeys:
    """The VMCOREINFO values that filtering uses, after makedumpfile's defaults (spec 1).

    None means NOT_FOUND. Offsets and sizes are in bytes; PG_* are bit numbers except
    pg_head_mask (a mask); *_mapcount values are the signed numbers as VMCOREINFO has them.
    """

    pagesize: int
    version: tuple[int, int, int]
    # memory model
    mem_section: int | None
    size_mem_section: int | None
    off_section_mem_map: int | None
    length_mem_section: int | None
    section_size_bits: int
    max_physmem_bits: int
    # struct page
    size_page: int | None
    off_flags: int | None
    off_refcount: int | None
    off_mapping: int | None
    off_mapcount: int | None
    off_private: int | None
    off_compound_head: int | None
    compound_order_offset: int  # within the first tail page; 0 = none (init_compound_offset)
    compound_dtor_offset: int
    free_area_length: int | None
    # page flags and page types
    pg_lru: int
    pg_private: int
    pg_swapcache: int
    pg_swapbacked: int | None
    pg_slab: int
    pg_head_mask: int
    pg_hwpoison: int | None
    pg_hugetlb: int | None
    pg_buddy: int | None
    buddy_mapcount: int | None
    offline_mapcount: int | None
    slab_mapcount: int | None
    hugetlb_mapcount: int | None
    unaccepted_mapcount: int | None
    hugetlb_page_dtor: int | None
    free_huge_page: int | None
    #: keys that were absent and took a default (for the report)
    defaulted: tuple[str, ...] = field(default=())

    @property
    def pages_per_section(self) -> int:
        return 1 << (self.section_size_bits - PAGE_SHIFT)

    @property
    def sparsemem_extreme(self) -> bool:
        """`is_sparsemem_extreme`: LENGTH(mem_section) absent or equal to the root count."""
        if self.length_mem_section is None:
            return True
        return self.length_mem_section == -(-self.nr_mem_sections // self.sections_per_root_x)

    @property
    def nr_mem_sections(self) -> int:
        return 1 << max(0, self.max_physmem_bits - self.section_size_bits)

    @property
    def sections_per_root_x(self) -> int:
        return max(1, self.pagesize // self.size_mem_section) if self.size_mem_section else 1

    @property
    def sections_per_root(self) -> int:
        return self.sections_per_root_x if self.sparsemem_extreme else 1

    @property
    def page_is_buddy(self) -> bool:
        """`setup_page_is_buddy`: v3 (mapcount == BUDDY) needs private, BUDDY and _mapcount.
        (v2, PG_buddy, is for kernels before 2.6.38 and not done here.)"""
        return (self.off_private is not None and self.buddy_mapcount is not None
                and self.off_mapcount is not None)


def filter_keys(info: VmcoreInfo) -> FilterKeys:
    """Read VMCOREINFO as makedumpfile does and apply `get_value_for_old_linux` and the s390x
    rules for SECTION_SIZE_BITS / MAX_PHYSMEM_BITS."""
    def num(name: str) -> int | None:
        return mdf_long(info, f"NUMBER({name})")

    def off(name: str) -> int | None:
        return mdf_long(info, f"OFFSET({name})")

    defaulted: list[str] = []
    pagesize = mdf_long(info, "PAGESIZE")
    if pagesize is None:
        raise MissingKeyError(["PAGESIZE"], 0, 0)
    if pagesize != PAGE_SIZE:
        raise VmcoreinfoValueError(f"VMCOREINFO PAGESIZE={pagesize}: s390x pages are "
                                   f"{PAGE_SIZE} bytes")
    version = kernel_version(info.osrelease)

    def default(name: str, value: int | None) -> int | None:
        v = num(name)
        if v is None and value is not None:
            defaulted.append(f"NUMBER({name})")
            return value
        return v

    pg_lru = default("PG_lru", PG_LRU_ORIGINAL)
    pg_private = default("PG_private", PG_PRIVATE_ORIGINAL)
    pg_swapcache = default("PG_swapcache", PG_SWAPCACHE_ORIGINAL)
    pg_swapbacked = num("PG_swapbacked")
    if pg_swapbacked is None and pg_swapcache < pg_private:
        pg_swapbacked = pg_private + 6
        defaulted.append("NUMBER(PG_swapbacked)")
    pg_slab = default("PG_slab", PG_SLAB_ORIGINAL)
    pg_head_mask = default("PG_head_mask", 1 << PG_COMPOUND_ORIGINAL)
    buddy = num("PAGE_BUDDY_MAPCOUNT_VALUE")
    if buddy is None:
        if version[:3] == (2, 6, 38):
            buddy = BUDDY_MAPCOUNT_2_6_38
        elif version >= (2, 6, 39):
            buddy = BUDDY_MAPCOUNT_2_6_39
        if buddy is not None:
            defaulted.append("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)")

    size_ms = mdf_long(info, "SIZE(mem_section)")
    length_ms = mdf_long(info, "LENGTH(mem_section)")
    # s390x: section size 28 unless NUMBER(SECTION_SIZE_BITS) > 0 (calibrate_machdep_info);
    # MAX_PHYSMEM_BITS from VMCOREINFO, else 42 or 46 by LENGTH(mem_section)
    ssb = num("SECTION_SIZE_BITS")
    section_size_bits = ssb if ssb is not None and ssb > 0 else S390X_SECTION_SIZE_BITS
    mpb = num("MAX_PHYSMEM_BITS")
    if mpb is not None and mpb > 0:
        max_physmem_bits = mpb
    else:
        max_physmem_bits = S390X_MAX_PHYSMEM_BITS_3_3
        per_root = max(1, pagesize // size_ms) if size_ms and size_ms > 0 else 1
        for bits in (S390X_MAX_PHYSMEM_BITS_ORIG, S390X_MAX_PHYSMEM_BITS_3_3):
            n = 1 << (bits - section_size_bits)
            if length_ms in (n // per_root, n):
                max_physmem_bits = bits
                break
    if not PAGE_SHIFT < section_size_bits <= 40 or not section_size_bits < max_physmem_bits <= 64:
        raise VmcoreinfoValueError(f"VMCOREINFO SECTION_SIZE_BITS {section_size_bits} / "
                                   f"MAX_PHYSMEM_BITS {max_physmem_bits} are not sane")

    size_page = mdf_long(info, "SIZE(page)")
    refcount = off("page._refcount")
    if refcount is None:
        refcount = off("page._count")
    chead = off("page.compound_head")
    if chead is None:  # Linux 7.1+ (makedumpfile f50c015, after 1.7.9)
        chead = off("page.compound_info")
    # init_compound_offset
    folio_order, folio_dtor = off("folio._folio_order"), off("folio._folio_dtor")
    if folio_order is not None and size_page is not None:
        order_off = folio_order - size_page
    elif off("page.compound_order") is not None:
        order_off = off("page.compound_order")
    elif version < (4, 4, 0) and off("page.lru") is not None and off("list_head.prev") is not None:
        order_off = off("page.lru") + off("list_head.prev")
    else:
        order_off = 0
    if folio_dtor is not None and size_page is not None:
        dtor_off = folio_dtor - size_page
    elif off("page.compound_dtor") is not None:
        dtor_off = off("page.compound_dtor")
    elif version < (4, 4, 0) and off("page.lru") is not None and off("list_head.next") is not None:
        dtor_off = off("page.lru") + off("list_head.next")
    else:
        dtor_off = 0

    keys = FilterKeys(
        pagesize=pagesize, version=version,
        mem_section=mdf_symbol(info, "mem_section"), size_mem_section=size_ms,
        off_section_mem_map=off("mem_section.section_mem_map"), length_mem_section=length_ms,
        section_size_bits=section_size_bits, max_physmem_bits=max_physmem_bits,
        size_page=size_page, off_flags=off("page.flags"), off_refcount=refcount,
        off_mapping=off("page.mapping"), off_mapcount=off("page._mapcount"),
        off_private=off("page.private"), off_compound_head=chead,
        compound_order_offset=order_off, compound_dtor_offset=dtor_off,
        free_area_length=mdf_long(info, "LENGTH(zone.free_area)"),
        pg_lru=pg_lru, pg_private=pg_private, pg_swapcache=pg_swapcache,
        pg_swapbacked=pg_swapbacked, pg_slab=pg_slab, pg_head_mask=pg_head_mask & U64,
        pg_hwpoison=num("PG_hwpoison"), pg_hugetlb=num("PG_hugetlb"), pg_buddy=num("PG_buddy"),
        buddy_mapcount=buddy, offline_mapcount=num("PAGE_OFFLINE_MAPCOUNT_VALUE"),
        slab_mapcount=num("PAGE_SLAB_MAPCOUNT_VALUE"),
        hugetlb_mapcount=num("PAGE_HUGETLB_MAPCOUNT_VALUE"),
        unaccepted_mapcount=num("PAGE_UNACCEPTED_MAPCOUNT_VALUE"),
        hugetlb_page_dtor=num("HUGETLB_PAGE_DTOR"), free_huge_page=None,
        defaulted=tuple(defaulted))
    _check_layout(keys)
    return keys


def _check_layout(k: FilterKeys) -> None:
    """Offsets and sizes that would make a struct page read run wild are damage."""
    if k.size_page is not None and not 8 <= k.size_page <= 1024:
        raise VmcoreinfoValueError(f"VMCOREINFO SIZE(page)={k.size_page} is not sane")
    if k.size_mem_section is not None and not 8 <= k.size_mem_section <= k.pagesize:
        raise VmcoreinfoValueError(f"VMCOREINFO SIZE(mem_section)={k.size_mem_section} is not "
                                   "sane")
    limit = k.size_page or 0
    for name, value, width in (("page.flags", k.off_flags, 8), ("page.mapping", k.off_mapping, 8),
                               ("page._mapcount", k.off_mapcount, 4),
                               ("page.private", k.off_private, 8),
                               ("page._refcount", k.off_refcount, 4),
                               ("page.compound_head", k.off_compound_head, 8)):
        if value is not None and k.size_page is not None and not 0 <= value <= limit - width:
            raise VmcoreinfoValueError(f"VMCOREINFO OFFSET({name})={value} lies outside "
                                       f"SIZE(page)={limit}")
    for name, value in (("compound order", k.compound_order_offset),
                        ("compound dtor", k.compound_dtor_offset)):
        if k.size_page is not None and not 0 <= value <= limit - 8:
            raise VmcoreinfoValueError(f"VMCOREINFO {name} offset {value} lies outside "
                                       f"SIZE(page)={limit}")
    if k.off_section_mem_map is not None and k.size_mem_section is not None and \
            not 0 <= k.off_section_mem_map <= k.size_mem_section - 8:
        raise VmcoreinfoValueError("VMCOREINFO OFFSET(mem_section.section_mem_map)="
                                   f"{k.off_section_mem_map} lies outside SIZE(mem_section)")


# ---- which keys a level needs --------------------------------------------------------------
def walk_runs(keys: FilterKeys, level: int) -> bool:
    """Does makedumpfile's per-page walk run at this level (`create_2nd_bitmap`, spec 4.1)?"""
    return bool(level & (DL_CACHE | DL_CACHE_PRI | DL_USER) or keys.pg_hwpoison is not None
                or (level & DL_FREE and keys.page_is_buddy))


#: keys every filtering level (any of 2|4|8|16) needs, with the FilterKeys field of each
WALK_KEYS = (("SYMBOL(mem_section)", "mem_section"), ("SIZE(mem_section)", "size_mem_section"),
             ("OFFSET(mem_section.section_mem_map)", "off_section_mem_map"),
             ("SIZE(page)", "size_page"), ("OFFSET(page.flags)", "off_flags"),
             ("OFFSET(page._refcount)", "off_refcount"), ("OFFSET(page.mapping)", "off_mapping"),
             ("OFFSET(page._mapcount)", "off_mapcount"),
             ("OFFSET(page.compound_head)", "off_compound_head"))
#: and level bit 16 (free pages by the buddy marker; the free-list walk is not done)
FREE_KEYS = (("OFFSET(page.private)", "off_private"),
             ("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)", "buddy_mapcount"))


def needed_keys(level: int) -> list[str]:
    """The VMCOREINFO keys that `level` needs (spec 9.5), besides PAGESIZE and OSRELEASE
    (always) and SYMBOL(swapper_pg_dir) (to reach the vmemmap through the page tables).
    Levels 0 and 1 read no struct page. NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE) has a default for
    kernels from 2.6.38 on; page.compound_head may be page.compound_info (Linux 7.1+)."""
    if not level & (DL_CACHE | DL_CACHE_PRI | DL_USER | DL_FREE):
        return []
    return [k for k, _ in WALK_KEYS + (FREE_KEYS if level & DL_FREE else ())]


def _missing(keys: FilterKeys, level: int) -> list[str]:
    fields = dict(WALK_KEYS + FREE_KEYS)
    return [k for k in needed_keys(level) if getattr(keys, fields[k]) is None]


def allowed_level(keys: FilterKeys, level: int) -> int:
    """The highest level made of `level`'s bits whose keys are all present (the fallback of
    --dump-level-fallback): first without free pages, then zero pages only."""
    for candidate in (level, level & ~DL_FREE, level & DL_ZERO):
        if not _missing(keys, candidate):
            return candidate
    return level & DL_ZERO  # pragma: no cover (level 1 needs nothing)


def check_level(keys: FilterKeys, level: int) -> None:
    """Raise MissingKeyError naming every key that `level` needs and VMCOREINFO lacks."""
    if not 0 <= level <= MAX_DUMP_LEVEL:
        raise FilterError(f"dump level {level} is not in 0..{MAX_DUMP_LEVEL}")
    missing = _missing(keys, level)
    if missing:
        raise MissingKeyError(missing, level, allowed_level(keys, level))


# ---- present memory as pfn ranges ------------------------------------------------------------
def pfn_ranges(byte_ranges: list[tuple[int, int]],
               leave_out: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Byte ranges (as PhysicalMemory.ranges()) -> sorted, merged pfn ranges, a partial last
    page counted (create_1st_bitmap); `leave_out` = (base, size) is cut out first (the
    crashkernel on the kdump path)."""
    pieces: list[tuple[int, int]] = []
    for start, end in byte_ranges:
        if leave_out is not None and leave_out[1] > 0:
            lo, hi = leave_out[0], leave_out[0] + leave_out[1]
            if start < lo:
                pieces.append((start, min(end, lo)))
            if end > hi:
                pieces.append((max(start, hi), end))
        else:
            pieces.append((start, end))
    out: list[tuple[int, int]] = []
    for start, end in sorted(p for p in pieces if p[1] > p[0]):
        s, e = start >> PAGE_SHIFT, -(-end >> PAGE_SHIFT)
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


# ---- the section walk ---------------------------------------------------------------------
@dataclass
class Section:
    nr: int
    mem_map: int  # virtual address of the struct page of the section's first pfn
    start_pfn: int
    end_pfn: int  # clipped to max_mapnr


@dataclass
class SectionMap:
    """Sections with a mem_map that hold present memory, and the resulting max_mapnr."""

    pages_per_section: int
    max_mapnr: int
    sections: list[Section]
    #: how the root array was taken: "array" (SYMBOL is the roots) or "pointer" (dereferenced)
    roots: str = "array"
    warnings: list[str] = field(default_factory=list)

    def section_of(self, pfn: int) -> Section | None:
        for s in self.sections:
            if s.start_pfn <= pfn < s.end_pfn:
                return s
        return None


def _section_numbers(present: list[tuple[int, int]], pps: int, limit: int):
    """Section numbers that hold present pfns below limit, ascending, each once."""
    last = -1
    for start, end in present:
        end = min(end, limit)
        if end <= start:
            continue
        for nr in range(max(start // pps, last + 1), (end - 1) // pps + 1):
            last = nr
            yield nr


def walk_sections(kmem, keys: FilterKeys, present: list[tuple[int, int]]) -> SectionMap:
    """`get_mm_sparsemem` + `get_mem_map` over the sections that present memory needs.

    kmem: a KernelMemory (read(vaddr, n) of kernel virtual memory). present: pfn ranges.
    Raises MemSectionError when no section has a mem_map, MissingKeyError without the
    mem_section keys.
    """
    need = [(n, v) for n, v in (("SYMBOL(mem_section)", keys.mem_section),
                                ("SIZE(mem_section)", keys.size_mem_section),
                                ("OFFSET(mem_section.section_mem_map)",
                                 keys.off_section_mem_map), ("SIZE(page)", keys.size_page))
            if v is None]
    if need:
        raise MissingKeyError([n for n, _ in need], DL_FREE, 0)
    pps = keys.pages_per_section
    max_mapnr = max((e for _, e in present), default=0)
    numbers = list(_section_numbers(present, pps, max_mapnr))
    per_root = keys.sections_per_root
    extreme = keys.sparsemem_extreme
    # a section past NR_MEM_SECTIONS, or whose root (array entry) lies past LENGTH(mem_section),
    # does not exist in the kernel: it has no mem_map (and nothing is read for it)
    length = keys.length_mem_section
    beyond = [nr for nr in numbers if nr >= keys.nr_mem_sections
              or (length is not None and nr // per_root >= length)]
    if beyond:
        numbers = [nr for nr in numbers if nr not in set(beyond)]

    def u64(vaddr: int) -> int | None:
        try:
            return int.from_bytes(kmem.read(vaddr & U64, 8), "big")
        except SadumpError:
            return None

    def attempt(base: int) -> dict[int, int]:
        roots: dict[int, int | None] = {}
        maps: dict[int, int] = {}
        for nr in numbers:
            if extreme:
                r = nr // per_root
                if r not in roots:
                    roots[r] = u64(base + 8 * r)
                root = roots[r]
                if not root:
                    continue
                ms = root + (nr % per_root) * keys.size_mem_section
            else:
                ms = base + nr * keys.size_mem_section
            smm = u64(ms + keys.off_section_mem_map)
            if smm is None or not smm & SECTION_MARKED_PRESENT:
                continue
            maps[nr] = ((smm & SECTION_MAP_MASK) + nr * pps * keys.size_page) & U64
        return maps

    how = "array"
    maps = attempt(keys.mem_section)
    if not maps and extreme:  # validate_mem_section failed: SYMBOL points at the pointer
        ptr = u64(keys.mem_section)
        if ptr:
            maps = attempt(ptr)
            how = "pointer"
    if not maps:
        raise MemSectionError(
            f"no memory section of the {len(numbers) + len(beyond)} that present memory needs "
            "has a mem_map "
            f"(mem_section at {keys.mem_section:#x}): the struct pages cannot be found")
    top = max(min((nr + 1) * pps, max_mapnr) for nr in maps)
    max_mapnr = min(max_mapnr, top)
    sections = [Section(nr, maps[nr], nr * pps, min((nr + 1) * pps, max_mapnr))
                for nr in numbers if nr in maps and nr * pps < max_mapnr]
    smap = SectionMap(pps, max_mapnr, sections, how)
    missing = sorted(beyond + [nr for nr in numbers if nr not in maps])
    if missing:
        smap.warnings.append(f"{len(missing)} memory section(s) with present memory have no "
                             f"mem_map (first: section {missing[0]}); their pages are kept")
    return smap

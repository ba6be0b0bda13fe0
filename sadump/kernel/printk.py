"""The kernel log read out of a crashed system's memory, the way makedumpfile --dump-dmesg
and the kernel's own reader do it, with every size and offset taken from VMCOREINFO.

Two record formats:
* the lockless printk ring buffer (Linux 5.10 and later): `prb` -> struct printk_ringbuffer,
  a descriptor ring (prb_desc + printk_info per record) and a text data ring;
* the variable-length `struct printk_log` records in `log_buf` (Linux 3.5 to 5.9; the struct
  was called `log` before 3.11).
Older kernels (a plain-text `log_buf` with `log_end`) are reported as not supported.

The structures are described by VMCOREINFO offsets, not by a fixed layout, so they are read
field by field instead of through one `construct` declaration. s390 is big-endian and 64-bit.
Virtual addresses (symbols and the pointers inside the structures) are read through
KernelMemory (the linear rules and the page tables).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sadump.errors import SadumpError
from sadump.kernel.translate import KernelMemory
from sadump.kernel.vmcoreinfo import VmcoreInfo

ULONG = 8  # sizeof(unsigned long) on s390x
U64 = (1 << 64) - 1  # lpos arithmetic is unsigned long: it wraps at 2^64

# kernel/printk/printk_ringbuffer.h: the top two bits of a descriptor's state_var are its
# state, the rest its id.
DESC_FLAGS_SHIFT = 64 - 2
DESC_ID_MASK = (1 << DESC_FLAGS_SHIFT) - 1
DESC_COMMITTED, DESC_FINALIZED = 1, 2
FAILED_LPOS, NO_LPOS = 0x1, 0x3  # data-less blocks: lost data / an empty record

#: bounds on image-supplied ring geometry (the kernel's own maximum log buffer is 2 GiB)
MAX_SIZE_BITS = 31
MAX_TEXT = 0xFFFF  # printk_info.text_len is a u16
#: per-record problems listed one by one before they are only counted
MAX_RECORD_WARNINGS = 10
#: records kept: the newest this many (a real log holds a few thousand; the kernel's largest
#: buffer, 2^25 bytes, holds fewer than 2^20 records of at least 32 bytes each)
MAX_RECORDS = 1 << 20
#: the ring loop gives up after this many descriptor ids in a row without a record (absent,
#: recycled or never written): a damaged head/tail or count must not cost 2^31 steps
MAX_EMPTY_RUN = 1 << 16

CALLER_CPU = 0x80000000  # printk_info.caller_id: CPU number when set, else a task id


class LogError(SadumpError):
    """The kernel log cannot be read at all (no VMCOREINFO, missing symbols, bad ring)."""


@dataclass
class Record:
    """One log record: metadata as the kernel stored it, the text as raw bytes."""

    seq: int | None
    ts_nsec: int
    level: int
    facility: int
    caller: str | None  # "T<pid>" or "C<cpu>", None when the kernel does not record it
    raw: bytes
    dictionary: dict[str, str] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The text as a string, bytes that are not UTF-8 replaced by U+FFFD."""
        return self.raw.decode("utf-8", "replace")

    @property
    def prefix(self) -> str:
        sec, nsec = divmod(self.ts_nsec, 1_000_000_000)
        return f"[{sec:5d}.{nsec // 1000:06d}] "

    def line(self) -> str:
        """makedumpfile's format: "[%5lu.%06lu] " + text; a line break inside the text goes
        on under the prefix, other control characters and bytes that are not UTF-8 as \\xNN."""
        prefix = self.prefix
        return prefix + escape_text(self.raw, len(prefix))

    def json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts_nsec": self.ts_nsec, "level": self.level,
                "facility": self.facility, "caller": self.caller, "text": self.text,
                "dictionary": self.dictionary}


@dataclass
class KernelLog:
    format: str  # "printk_ringbuffer" (5.10+) | "printk_log" (3.5..5.9)
    records: list[Record]
    warnings: list[str] = field(default_factory=list)


def escape_text(raw: bytes, indent: int) -> str:
    r"""makedumpfile keeps isprint()/isspace() bytes and writes others as \xNN; a line break
    continues under the prefix. Printable UTF-8 characters are kept as `dmesg` keeps them."""
    out = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if ch == "\n":
            out.append("\n" + " " * indent)
        elif ch in " \t\v\f\r" or (ch.isprintable() and not 0xDC80 <= code <= 0xDCFF):
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not part of valid UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8"))
    return "".join(out)


def _u(buf: bytes, off: int, size: int) -> int:
    return int.from_bytes(buf[off:off + size], "big")


def _caller(cid: int) -> str:
    return f"C{cid & ~CALLER_CPU}" if cid & CALLER_CPU else f"T{cid}"


def _cstr(buf: bytes) -> str:
    return buf.split(b"\0", 1)[0].decode("utf-8", "replace")


class _Kernel:
    """Reads kernel virtual memory and VMCOREINFO values, failing with one clear line."""

    def __init__(self, kmem: KernelMemory, info: VmcoreInfo):
        self.kmem, self.info = kmem, info

    def read(self, vaddr: int, size: int, what: str) -> bytes:
        try:
            return self.kmem.read(vaddr, size)
        except SadumpError as e:
            raise LogError(f"{what} at virtual {vaddr:#x} is not readable: {e}") from None

    def present(self, vaddr: int, size: int) -> bool:
        return self.kmem.is_readable(vaddr, size)

    def symbol(self, name: str) -> int:
        value = self.info.symbol(name)
        if value is None:
            raise LogError(f"VMCOREINFO lacks SYMBOL({name})")
        return value

    def need(self, kind: str, name: str) -> int:
        value = getattr(self.info, kind)(name)
        if value is None or value < 0:
            raise LogError(f"VMCOREINFO lacks {kind.upper()}({name})")
        return value

    def opt(self, kind: str, name: str, default: int | None = None) -> int | None:
        value = getattr(self.info, kind)(name)
        return default if value is None or value < 0 else value


class _Problems:
    """Per-record problems: the first few in words, the rest counted."""

    def __init__(self, warnings: list[str]):
        self.warnings, self.count = warnings, 0

    def add(self, message: str) -> None:
        self.count += 1
        if self.count <= MAX_RECORD_WARNINGS:
            self.warnings.append(message)

    def close(self) -> None:
        if self.count > MAX_RECORD_WARNINGS:
            self.warnings.append(f"... and {self.count - MAX_RECORD_WARNINGS} more "
                                 "damaged records")


def read_kernel_log(kmem: KernelMemory, info: VmcoreInfo | None) -> KernelLog:
    """The log of the kernel VMCOREINFO describes; LogError when none can be read."""
    if info is None:
        raise LogError("no VMCOREINFO found: the kernel log cannot be located")
    k = _Kernel(kmem, info)
    if info.symbol("prb") is not None:
        return _read_ringbuffer(k)
    if info.symbol("log_buf") is not None:
        if info.size("printk_log") is not None or info.size("log") is not None:
            return _read_printk_log(k)
        if info.symbol("log_end") is not None:
            raise LogError("the kernel is older than 3.5 (plain-text log_buf): "
                           "its log format is not supported")
        raise LogError("VMCOREINFO has SYMBOL(log_buf) but lacks SIZE(printk_log)")
    raise LogError("VMCOREINFO lacks SYMBOL(prb) and SYMBOL(log_buf): no kernel log to read")


# ---- Linux 5.10+: the lockless ring buffer ---------------------------------------------

@dataclass
class _Ring:
    """Everything the record loop needs, checked once."""

    count: int
    descs: int
    infos: int
    data: int
    data_size: int
    desc_size: int
    info_size: int
    state_var: int
    begin: int
    next: int
    seq: int
    ts_nsec: int
    text_len: int
    caller_id: int | None
    subsystem: tuple[int, int] | None  # (offset in printk_info, length)
    device: tuple[int, int] | None


def _ring_geometry(k: _Kernel, warnings: list[str]) -> tuple[_Ring, int, int]:
    prb = int.from_bytes(k.read(k.symbol("prb"), ULONG, "the pointer prb"), "big")
    o_desc_ring = k.need("offset", "printk_ringbuffer.desc_ring")
    o_text_ring = k.need("offset", "printk_ringbuffer.text_data_ring")
    o_count_bits = k.need("offset", "prb_desc_ring.count_bits")
    o_descs = k.need("offset", "prb_desc_ring.descs")
    o_infos = k.need("offset", "prb_desc_ring.infos")
    o_head = k.need("offset", "prb_desc_ring.head_id")
    o_tail = k.need("offset", "prb_desc_ring.tail_id")
    o_size_bits = k.need("offset", "prb_data_ring.size_bits")
    o_data = k.need("offset", "prb_data_ring.data")
    counter = k.opt("offset", "atomic_long_t.counter", 0)
    need = max(o_desc_ring + max(o_count_bits + 4, o_descs, o_infos, o_head + counter,
                                 o_tail + counter) + ULONG,
               o_text_ring + max(o_size_bits + 4, o_data + ULONG))
    size = max(k.opt("size", "printk_ringbuffer", 0), need)
    if size > 4096:
        raise LogError(f"SIZE(printk_ringbuffer) {size} is implausible")
    rb = k.read(prb, size, "struct printk_ringbuffer (prb)")
    d, t = o_desc_ring, o_text_ring
    count_bits, size_bits = _u(rb, d + o_count_bits, 4), _u(rb, t + o_size_bits, 4)
    if not 0 < size_bits <= MAX_SIZE_BITS or not 0 < count_bits <= size_bits:
        raise LogError(f"printk ring geometry is damaged: {1 << min(count_bits, 64)} "
                       f"descriptors over a text ring of 2^{size_bits} bytes")

    def entry(o: str) -> tuple[int, int] | None:
        dev = k.opt("offset", "printk_info.dev_info")
        off = k.opt("offset", f"dev_printk_info.{o}")
        length = k.opt("length", f"printk_info_{o}")
        return None if None in (dev, off, length) else (dev + off, length)

    ring = _Ring(
        count=1 << count_bits, descs=_u(rb, d + o_descs, ULONG), infos=_u(rb, d + o_infos, ULONG),
        data=_u(rb, t + o_data, ULONG), data_size=1 << size_bits,
        desc_size=k.need("size", "prb_desc"), info_size=k.need("size", "printk_info"),
        state_var=k.need("offset", "prb_desc.state_var") + counter,
        begin=k.need("offset", "prb_desc.text_blk_lpos") + k.need("offset",
                                                                 "prb_data_blk_lpos.begin"),
        next=k.need("offset", "prb_desc.text_blk_lpos") + k.need("offset",
                                                                "prb_data_blk_lpos.next"),
        seq=k.need("offset", "printk_info.seq"), ts_nsec=k.need("offset", "printk_info.ts_nsec"),
        text_len=k.need("offset", "printk_info.text_len"),
        caller_id=k.opt("offset", "printk_info.caller_id"),
        subsystem=entry("subsystem"), device=entry("device"))
    if ring.desc_size < max(ring.state_var, ring.begin, ring.next) + ULONG or \
            ring.info_size < max(ring.seq + 8, ring.ts_nsec + 8, ring.text_len + 4):
        raise LogError("SIZE(prb_desc) or SIZE(printk_info) is smaller than its fields")
    for what, addr, length in (("descriptor array", ring.descs, ring.count * ring.desc_size),
                               ("printk_info array", ring.infos, ring.count * ring.info_size),
                               ("text data ring", ring.data, ring.data_size)):
        if not k.present(addr, length):
            where = f"the {what} [{addr:#x}, +{length:#x})"
            if not k.present(addr, 1):
                raise LogError(f"{where} is not in the image")
            warnings.append(f"{where} is partly absent from the image: records there are lost")
    head = _u(rb, d + o_head + counter, ULONG) & DESC_ID_MASK
    tail = _u(rb, d + o_tail + counter, ULONG) & DESC_ID_MASK
    return ring, head, tail


def _read_ringbuffer(k: _Kernel) -> KernelLog:
    log = KernelLog("printk_ringbuffer", [])
    ring, head, tail = _ring_geometry(k, log.warnings)
    span = (head - tail) & DESC_ID_MASK
    if span >= ring.count:
        log.warnings.append(
            f"descriptor ids tail {tail:#x} .. head {head:#x} span more than the ring's "
            f"{ring.count} descriptors: reading only the last {ring.count}")
        span = ring.count - 1
        tail = (head - span) & DESC_ID_MASK
    problems = _Problems(log.warnings)
    kept: deque[Record] = deque(maxlen=MAX_RECORDS)
    empty = 0  # descriptor ids in a row that gave no record
    for step in range(span + 1):  # never more than the number of descriptors
        if empty == MAX_EMPTY_RUN:
            log.warnings.append(
                f"{MAX_EMPTY_RUN} descriptor ids in a row up to {(tail + step - 1) & DESC_ID_MASK:#x}"
                f" hold no readable record: the rest of the ring ({span + 1 - step} ids, up to "
                f"head {head:#x}) is not read")
            break
        try:
            record = _ring_record(k, ring, (tail + step) & DESC_ID_MASK, problems)
        except LogError as e:  # memory the image lacks: this record is lost, not the log
            problems.add(str(e))
            record = None
        if record is None:
            empty += 1
            continue
        empty = 0
        kept.append(record)
    problems.close()
    _keep_newest(log, kept, span + 1)
    if not log.records:
        log.warnings.append(f"no readable record between descriptor ids {tail:#x} and "
                            f"{head:#x}: the ring is empty or damaged")
    return log


def _ring_record(k: _Kernel, ring: _Ring, desc_id: int, problems: _Problems) -> Record | None:
    index = desc_id % ring.count
    desc = k.read(ring.descs + index * ring.desc_size, ring.desc_size, "a printk descriptor")
    state_var = _u(desc, ring.state_var, ULONG)
    if state_var & DESC_ID_MASK != desc_id:
        return None  # the descriptor was recycled or never written: no record
    if state_var >> DESC_FLAGS_SHIFT not in (DESC_COMMITTED, DESC_FINALIZED):
        return None  # still being written (reserved) or free (reusable)
    info = k.read(ring.infos + index * ring.info_size, ring.info_size, "a printk_info")
    seq = _u(info, ring.seq, 8)
    text_len = _u(info, ring.text_len, 2)
    begin, nxt = _u(desc, ring.begin, ULONG), _u(desc, ring.next, ULONG)
    raw = _ring_text(k, ring, desc_id, seq, begin, nxt, text_len, problems)
    if raw is None:
        return None
    caller = None
    if ring.caller_id is not None and ring.caller_id + 4 <= ring.info_size:
        caller = _caller(_u(info, ring.caller_id, 4))
    dictionary = {}
    for key, where in (("SUBSYSTEM", ring.subsystem), ("DEVICE", ring.device)):
        if where and where[0] + where[1] <= ring.info_size:
            value = _cstr(info[where[0]:where[0] + where[1]])
            if value:
                dictionary[key] = value
    flags_level = info[ring.text_len + 3]  # u8 flags:5, level:3 (big-endian: level low)
    return Record(seq, _u(info, ring.ts_nsec, 8), flags_level & 7, info[ring.text_len + 2],
                  caller, raw, dictionary)


def _ring_text(k: _Kernel, ring: _Ring, desc_id: int, seq: int, begin: int, nxt: int,
               text_len: int, problems: _Problems) -> bytes | None:
    """The kernel's get_data() and copy_data(): locate the block, check it, cut the text."""
    size = ring.data_size
    if begin & 1 and nxt & 1:  # data-less
        if begin == NO_LPOS and nxt == NO_LPOS:
            return b""  # an empty line
        return None  # the text was lost (FAILED_LPOS)
    if begin // size == nxt // size and begin < nxt:
        start, block = begin % size, nxt - begin
    elif ((begin + size) & U64) // size == nxt // size:  # wraps: restarts at the ring's start
        start, block = 0, nxt % size
    else:
        problems.add(f"record {seq}: data block [{begin:#x}, {nxt:#x}) is not inside the "
                     f"{size:#x}-byte text ring")
        return None
    if begin % ULONG or nxt % ULONG or block < ULONG:
        problems.add(f"record {seq}: data block [{begin:#x}, {nxt:#x}) is misaligned or "
                     "shorter than its id")
        return None
    avail = block - ULONG
    if text_len > avail:
        problems.add(f"record {seq}: text_len {text_len} runs past its {avail}-byte data "
                     "block: text cut")
        text_len = avail
    data = k.read(ring.data + start, ULONG + text_len, "a printk text block")
    block_id = _u(data, 0, ULONG)
    if block_id & DESC_ID_MASK != desc_id:
        problems.add(f"record {seq}: its data block belongs to descriptor {block_id:#x}, "
                     f"not {desc_id:#x}: text overwritten, skipped")
        return None
    return data[ULONG:]


# ---- Linux 3.5 .. 5.9: struct printk_log records in log_buf ----------------------------

def _read_printk_log(k: _Kernel) -> KernelLog:
    name = "printk_log" if k.info.size("printk_log") is not None else "log"
    hdr = k.need("size", name)
    o_ts, o_len = k.need("offset", f"{name}.ts_nsec"), k.need("offset", f"{name}.len")
    o_text_len = k.need("offset", f"{name}.text_len")
    # dict_len follows text_len, then u8 facility and u8 flags:5/level:3 (include/linux/printk.h
    # history); caller_id (CONFIG_PRINTK_CALLER, 5.1+) has its own VMCOREINFO offset.
    o_dict_len = k.opt("offset", f"{name}.dict_len", o_text_len + 2)
    o_caller = k.opt("offset", f"{name}.caller_id")
    if hdr > 256 or hdr < max(o_ts + 8, o_len + 2, o_text_len + 2, o_dict_len + 4,
                              o_caller + 4 if o_caller is not None else 0):
        raise LogError(f"SIZE({name}) {hdr} does not fit its fields")
    buf = int.from_bytes(k.read(k.symbol("log_buf"), ULONG, "the pointer log_buf"), "big")
    buf_len = int.from_bytes(k.read(k.symbol("log_buf_len"), 4, "log_buf_len"), "big")
    first = int.from_bytes(k.read(k.symbol("log_first_idx"), 4, "log_first_idx"), "big")
    nxt = int.from_bytes(k.read(k.symbol("log_next_idx"), 4, "log_next_idx"), "big")
    if not 0 < buf_len <= 1 << MAX_SIZE_BITS:
        raise LogError(f"log_buf_len {buf_len:#x} is implausible")
    log = KernelLog("printk_log", [])
    if not k.present(buf, buf_len):
        if not k.present(buf, 1):
            raise LogError(f"log_buf [{buf:#x}, +{buf_len:#x}) is not in the image")
        log.warnings.append(f"log_buf [{buf:#x}, +{buf_len:#x}) is partly absent from the "
                            "image: the log stops at the first record there")
    if first >= buf_len or nxt >= buf_len:
        raise LogError(f"log_first_idx {first:#x} / log_next_idx {nxt:#x} lie outside the "
                       f"{buf_len:#x}-byte log_buf")
    idx, wrapped = first, False
    kept: deque[Record] = deque(maxlen=MAX_RECORDS)
    seen = 0
    for _ in range(buf_len // hdr + 2):  # a record is at least one header long
        if idx == nxt:
            break
        if idx + hdr > buf_len:
            log.warnings.append(f"record at log_buf+{idx:#x} runs past the buffer: log cut")
            break
        try:
            head = k.read(buf + idx, hdr, "a printk_log record")
        except LogError as e:
            log.warnings.append(f"{e}: log cut")
            break
        length = _u(head, o_len, 2)
        if length == 0:  # the end-of-buffer marker: go on at the start
            if wrapped:
                log.warnings.append("log_buf wraps twice: log cut")
                break
            idx, wrapped = 0, True
            continue
        text_len, dict_len = _u(head, o_text_len, 2), _u(head, o_dict_len, 2)
        if length < hdr or idx + length > buf_len or hdr + text_len + dict_len > length:
            log.warnings.append(f"record at log_buf+{idx:#x} has length {length} "
                                f"(text {text_len}, dict {dict_len}) past the buffer: log cut")
            break
        try:
            body = k.read(buf + idx + hdr, text_len + dict_len, "a printk_log text")
        except LogError as e:
            log.warnings.append(f"{e}: log cut")
            break
        caller = None if o_caller is None else _caller(_u(head, o_caller, 4))
        dictionary = {}
        for item in body[text_len:].split(b"\0"):
            key, sep, value = item.decode("utf-8", "replace").partition("=")
            if sep:
                dictionary[key] = value
        kept.append(Record(None, _u(head, o_ts, 8), head[o_dict_len + 3] & 7,
                           head[o_dict_len + 2], caller, body[:text_len], dictionary))
        seen += 1
        idx += length
    else:
        log.warnings.append("log_buf records do not reach log_next_idx: log cut")
    _keep_newest(log, kept, seen)
    return log


def _keep_newest(log: KernelLog, kept: deque, seen: int) -> None:
    """The records kept (the newest MAX_RECORDS), and a warning when older ones were left."""
    log.records = list(kept)
    if len(kept) == kept.maxlen and seen > len(kept):
        log.warnings.append(f"more than {MAX_RECORDS} records: only the newest "
                            f"{MAX_RECORDS} are kept")

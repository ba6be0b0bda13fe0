"""`sadump dmesg`: the kernel log read from memory images and vmcores.

Real: every copy of the rimg-kdump machine gives, byte for byte, the log the guest's own `dmesg`
printed (images of the stop moment) or the one makedumpfile --dump-dmesg extracted from the
kernel's /proc/vmcore (the crash moment). Synthetic: ring buffers written by a model of the
kernel's writer (tests/fixtures/printk.py) into builder images, both address layouts, and
damaged in the ways the issue names.
"""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app
from sadump.formats import open_image
from tests.fixtures.builder import ImageSpec
from tests.fixtures.printk import (
    COMMITTED,
    RESERVED,
    LogBufLog,
    PrbLog,
    dmesg_line,
    write_with_log,
)

GUEST = "rimg-kdump.guest-dmesg.txt"
MAKEDUMPFILE = "rimg-kdump.makedumpfile-s390x-dump-dmesg-of-proc-vmcore.txt"
LINE = re.compile(r"^\[\s*(\d+)\.(\d{6})\] (.*)$")


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def dmesg_ok(*args) -> str:
    result = run("dmesg", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


# ---- real images ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rimg-kdump.raw", "rimg-kdump.qemu.elf",
                                  "rimg-kdump.qemu-kdump-zlib.flat"])
def test_stop_moment_images_give_the_guests_dmesg(real_file, real_text, name):
    """The guest ran `dmesg` right before the stop and logged nothing after it: the file has
    no header and the same 67 records, so the whole output must be equal."""
    assert dmesg_ok(real_file(name)) == real_text(GUEST)


@pytest.mark.parametrize("name", ["rimg-kdump.proc-vmcore.elf",
                                  "rimg-kdump.makedumpfile-c-d31.kdump"])
def test_crash_moment_vmcores_give_makedumpfiles_log(real_file, real_text, name):
    assert dmesg_ok(real_file(name)) == real_text(MAKEDUMPFILE)


def test_crash_log_continues_the_guests_dmesg(real_file, real_text):
    """The stop and the crash are moments of one boot: sadump's log of the crash-moment
    vmcore starts with every record sadump reads from the stop-moment image and adds the
    sysrq crash and the panic, as makedumpfile's log of it does after the guest's dmesg."""
    stop = dmesg_ok(real_file("rimg-kdump.raw")).splitlines()
    crash = dmesg_ok(real_file("rimg-kdump.proc-vmcore.elf")).splitlines()
    assert len(stop) == len(real_text(GUEST).splitlines()) and len(crash) > len(stop)
    assert crash[:len(stop)] == stop
    assert crash[len(stop)].endswith("sysrq: Trigger a crash")
    assert crash[len(stop):] == real_text(MAKEDUMPFILE).splitlines()[len(stop):]


def test_nokdump_machine(real_file, real_text):
    out = real_text("rimg-nokdump.guest-dmesg.txt")
    assert dmesg_ok(real_file("rimg-nokdump.raw")) == out
    assert dmesg_ok(real_file("rimg-nokdump.qemu-kdump-zlib.kdump")) == out


@pytest.mark.parametrize("args", [(), ("--format", "s390", "--mode", "full"),
                                  ("--format", "kdump"), ("--format", "kdump", "--flatten")])
def test_sadumps_own_output(real_file, real_text, tmp_path, args):
    out = tmp_path / "dump"
    result = run("dump", real_file("rimg-kdump.raw"), "-o", out, *args)
    assert result.exit_code == Exit.OK, result.stderr  # the kdump path, or the mode asked for
    fmt = args[1] if args else "elf"
    with open_image(str(out)) as written:
        assert written.format == ("kdump-flat" if "--flatten" in args else fmt)
    assert dmesg_ok(out) == real_text(GUEST)


def test_json_records_match_the_guest(real_file, real_text):
    result = run("dmesg", real_file("rimg-kdump.raw"), "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    records = doc["records"]
    guest = [LINE.match(line).groups() for line in real_text(GUEST).splitlines()]
    assert [r["text"] for r in records] == [g[2] for g in guest]
    assert [r["ts_nsec"] // 1000 for r in records] == [int(s) * 10**6 + int(us)
                                                       for s, us, _ in guest]
    assert [r["seq"] for r in records] == list(range(len(guest)))  # nothing lost since boot
    assert doc["source"]["osrelease"] == "6.1.192-rimg"
    assert doc["source"]["log_format"] == "printk_ringbuffer"
    assert doc["warnings"] == []
    assert records[0]["level"] == 5  # the banner is pr_notice
    for r in records:
        dev = re.match(r"virtio_blk (virtio\d+):", r["text"])
        # dev_printk's dictionary: SUBSYSTEM and DEVICE "+<subsystem>:<name>"
        want = {"SUBSYSTEM": "virtio", "DEVICE": f"+virtio:{dev.group(1)}"} if dev else {}
        assert r["dictionary"] == want


def test_panic_record_is_emergency_level(real_file):
    doc = json.loads(run("dmesg", real_file("rimg-kdump.proc-vmcore.elf"), "--json").stdout)
    panic = [r for r in doc["records"] if r["text"].startswith("Kernel panic")]
    assert len(panic) == 1 and panic[0]["level"] == 0  # panic() prints with pr_emerg
    assert panic[0]["caller"] == "T1"  # "CPU: 1 PID: 1 Comm: init" says init panicked


def test_since_boot_seconds(real_file, real_text):
    lines = real_text(MAKEDUMPFILE).splitlines()
    want = [line for line in lines if int(LINE.match(line).group(1)) >= 4]
    assert 0 < len(want) < len(lines)
    out = dmesg_ok(real_file("rimg-kdump.proc-vmcore.elf"), "--since-boot-seconds", "4")
    assert out.splitlines() == want


# ---- synthetic: the 5.10+ ring buffer ------------------------------------------------------

def expected_lines(log) -> list[str]:
    return [dmesg_line(m.ts_nsec, m.text.decode()) for _, m in log.expected()]


def filled(count_bits=4, size_bits=9, n=60, placement="static") -> PrbLog:
    log = PrbLog(count_bits=count_bits, size_bits=size_bits, placement=placement)
    for i in range(n):
        log.add(f"message {i} " + "-" * (i % 11), ts_nsec=1_000_003 * i)
    return log


@pytest.mark.parametrize("new_layout", [False, True])
@pytest.mark.parametrize("placement", ["static", "dynamic"])
@pytest.mark.parametrize("fmt", ["raw", "s390"])
def test_ring_in_both_layouts(tmp_path, new_layout, placement, fmt):
    """6.10+: symbols in the kernel image at KERNELOFFSET, a log_buf_len= ring in the identity
    map at a non-zero IDENTITYBASE; before 6.10 both are physical addresses."""
    log = filled(placement=placement)
    spec = ImageSpec(new_layout=new_layout)
    write_with_log(spec, log, tmp_path / "mem", fmt)
    if new_layout:
        p = log.placed(spec)
        assert p["prb"][1] != p["prb"][0] and p["data"][1] != p["data"][0]
        assert spec.identity_base != 0
    lines = dmesg_ok(tmp_path / "mem").splitlines()
    assert lines == expected_lines(log)
    assert len(lines) >= 5 and lines[-1].endswith("message 59 " + "-" * (59 % 11))


def test_ring_wraps_past_2_64(tmp_path):
    """Logical positions start at -ring size: the first wrap crosses 2^64; blocks that do not
    fit at the end restart at the start of the ring."""
    log = filled(size_bits=9, n=200)
    assert log.head_lpos < 1 << 20  # went past 2^64
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    assert dmesg_ok(tmp_path / "mem").splitlines() == expected_lines(log)


def test_descriptor_ring_is_the_limit(tmp_path):
    """Short texts in a big text ring: the 16 descriptors decide what is left."""
    log = PrbLog(count_bits=4, size_bits=12)
    for i in range(40):
        log.add(f"m{i}", ts_nsec=i)
    assert len(log.expected()) == 16
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    assert dmesg_ok(tmp_path / "mem").splitlines() == expected_lines(log)


def test_text_forms(tmp_path):
    """makedumpfile's rules: a line break goes on under the prefix, control characters as
    \\xNN; printable UTF-8 stays as dmesg shows it; bytes that are not UTF-8 are \\xNN (text)
    and U+FFFD (JSON); an empty record is a bare prefix."""
    log = PrbLog()
    log.add("first line\nsecond line", ts_nsec=1_000_000_000)
    log.add(b"bell\x07 tab\tend", ts_nsec=2_000_000_000)
    log.add("temp 40\u00b0C", ts_nsec=3_000_000_000)
    log.add(b"bad \xff\xfe utf8", ts_nsec=4_000_000_000)
    log.add("", ts_nsec=5_000_000_000)
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    out = dmesg_ok(tmp_path / "mem")
    indent = " " * len("[    1.000000] ")
    assert out == ("[    1.000000] first line\n" + indent + "second line\n"
                   "[    2.000000] bell\\x07 tab\tend\n"
                   "[    3.000000] temp 40\u00b0C\n"
                   "[    4.000000] bad \\xff\\xfe utf8\n"
                   "[    5.000000] \n")
    texts = [r["text"] for r in json.loads(run("dmesg", tmp_path / "mem", "--json").stdout)
             ["records"]]
    assert texts[3] == "bad \ufffd\ufffd utf8"
    assert texts[0] == "first line\nsecond line"


def test_metadata_in_json(tmp_path):
    log = PrbLog()
    log.add("from cpu", ts_nsec=7, level=3, facility=0, caller_id=0x80000001)
    log.add("from task", ts_nsec=8, level=7, facility=1, caller_id=4242,
            subsystem="virtio", device="+virtio:virtio3")
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    records = json.loads(run("dmesg", tmp_path / "mem", "--json").stdout)["records"]
    assert [(r["seq"], r["level"], r["facility"], r["caller"]) for r in records] == \
        [(0, 3, 0, "C1"), (1, 7, 1, "T4242")]
    assert records[0]["dictionary"] == {}
    assert records[1]["dictionary"] == {"SUBSYSTEM": "virtio", "DEVICE": "+virtio:virtio3"}


def test_committed_shown_reserved_skipped(tmp_path):
    """A record still open for continuation (committed) is part of the log, as makedumpfile
    prints it; one being written at the crash (reserved) is not."""
    log = PrbLog()
    log.add("done", ts_nsec=1)
    log.add("open", ts_nsec=2, state=COMMITTED)
    log.add("half-written", ts_nsec=3, state=RESERVED)
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    assert dmesg_ok(tmp_path / "mem").splitlines() == [dmesg_line(1, "done"),
                                                        dmesg_line(2, "open")]


# ---- synthetic: bad input -----------------------------------------------------------------

def bad(tmp_path, log, spec=None, writes=None, fmt="raw"):
    """Run dmesg on a damaged image: (exit code, stdout lines, stderr)."""
    write_with_log(spec or ImageSpec(), log, tmp_path / "mem", fmt, writes)
    result = run("dmesg", tmp_path / "mem")
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    return result.exit_code, result.stdout.splitlines(), result.stderr


@pytest.mark.parametrize("key", ["SYMBOL(prb)", "OFFSET(prb_desc.state_var)",
                                 "SIZE(printk_info)", "OFFSET(prb_data_ring.data)"])
def test_vmcoreinfo_lacks_a_key(tmp_path, key):
    log = filled()
    log.omit.add(key)
    code, out, err = bad(tmp_path, log)
    assert code == 4 and out == []
    assert key in err and err.count("\n") == 1


def test_no_vmcoreinfo(tmp_path):
    code, out, err = bad(tmp_path, filled(), ImageSpec(damage={"vmcoreinfo_bad_name"}))
    assert code == 4 and out == [] and "no VMCOREINFO" in err


def test_head_far_beyond_tail(tmp_path):
    """Ids whose distance exceeds the ring: only the last count descriptors are read."""
    log = filled()
    spec = ImageSpec()
    rb = log.ringbuffer(spec, tail_id=(log.head_id - 5 * log.count) & ((1 << 62) - 1))
    code, out, err = bad(tmp_path, log, spec, writes=_with(log, spec, rb))
    assert code == 0 and out == expected_lines(log)
    assert "span more than" in err


def test_ids_wild(tmp_path):
    log = filled()
    spec = ImageSpec()
    rb = log.ringbuffer(spec, head_id=(1 << 64) - 1, tail_id=12345)
    code, out, err = bad(tmp_path, log, spec, writes=_with(log, spec, rb))
    assert code == 0 and len(out) <= log.count  # bounded by the ring, records that match
    assert "span more than" in err


def test_text_len_past_the_block(tmp_path):
    log = filled()
    seq = log.expected()[2][0]
    log.patch_info(seq, text_len=0xFFFF)
    code, out, err = bad(tmp_path, log)
    want = expected_lines(log)
    assert code == 0 and len(out) == len(want)
    assert out[2].startswith(want[2]) and out[:2] == want[:2] and out[3:] == want[3:]
    assert f"record {seq}: text_len 65535 runs past" in err


def test_block_outside_the_ring(tmp_path):
    log = filled()
    seq = log.expected()[1][0]
    log.patch_desc(seq, begin=8, next=(1 << 63) + 16)
    code, out, err = bad(tmp_path, log)
    want = expected_lines(log)
    assert code == 0 and out == want[:1] + want[2:]
    assert f"record {seq}: data block" in err


def test_block_of_another_record(tmp_path):
    log = filled()
    first, second = log.expected()[0][0], log.expected()[1][0]
    at = log.desc_id_of(first) % log.count * 24
    begin, nxt = int.from_bytes(log.descs[at + 8:at + 16], "big"), \
        int.from_bytes(log.descs[at + 16:at + 24], "big")
    log.patch_desc(second, begin=begin, next=nxt)  # points at the first record's block
    code, out, err = bad(tmp_path, log)
    assert code == 0 and out == expected_lines(log)[:1] + expected_lines(log)[2:]
    assert "belongs to descriptor" in err


@pytest.mark.parametrize("field,value,words", [
    ("count_bits", 40, "geometry is damaged"),
    ("size_bits", 0, "geometry is damaged"),
    ("data", (1 << 64) - 4096, "text data ring"),
    ("descs", 1 << 40, "descriptor array"),
])
def test_ring_geometry_damage(tmp_path, field, value, words):
    log = filled()
    spec = ImageSpec()
    code, out, err = bad(tmp_path, log, spec, _with(log, spec, log.ringbuffer(spec,
                                                                            **{field: value})))
    assert code == 4 and out == [] and words in err


def test_descriptors_elsewhere(tmp_path):
    """Descriptors pointed at other memory (the lowcore): no id matches, the log is empty
    and the warning says why."""
    log = filled()
    spec = ImageSpec()
    code, out, err = bad(tmp_path, log, spec, _with(log, spec, log.ringbuffer(spec, descs=0)))
    assert code == 0 and out == [] and "empty or damaged" in err


def test_ring_partly_absent(tmp_path):
    """A text ring page missing from an ELF image: the records whose text lies there are
    lost (and said so), the others are read."""
    log = PrbLog(count_bits=5, size_bits=13, placement="dynamic")
    for i in range(30):
        log.add(f"record {i:02d} " + "=" * 200, ts_nsec=i)
    spec = ImageSpec()
    data = log.placed(spec)["data"][0]
    gap = (data + 4096, data + 8192)
    spec = ImageSpec(ranges=[(0, gap[0]), (gap[1], spec.mem_size)])
    code, out, err = bad(tmp_path, log, spec, fmt="elf")
    want = expected_lines(log)
    assert code == 0 and 0 < len(out) < len(want) and set(out) <= set(want)
    assert "partly absent" in err and "is not readable" in err


def test_prb_points_nowhere(tmp_path):
    log = filled()
    spec = ImageSpec()
    writes = log.writes(spec)
    writes[0] = (writes[0][0], (0x7FFF_FFFF_0000).to_bytes(8, "big"))
    code, out, err = bad(tmp_path, log, spec, writes)
    assert code == 4 and out == []
    assert "struct printk_ringbuffer" in err and "not readable" in err


def test_garbage_descriptors_end(tmp_path):
    """Random descriptors and infos: a bounded loop, a clear outcome, never a traceback."""
    import random

    rng = random.Random(4)
    for _ in range(5):
        log = filled()
        log.descs[:] = rng.randbytes(len(log.descs))
        log.infos[:] = rng.randbytes(len(log.infos))
        code, out, _ = bad(tmp_path, log)
        assert code == 0 and len(out) <= log.count


def _with(log, spec, ringbuffer: bytes):
    return log.writes(spec, ringbuffer)


# ---- synthetic: struct printk_log (3.5 .. 5.9) --------------------------------------------

@pytest.mark.parametrize("caller,name", [(True, "printk_log"), (False, "printk_log"),
                                         (False, "log")])
def test_printk_log_records(tmp_path, caller, name):
    """log_buf with the zero header that marks the wrap; the struct is `log` before 3.11 and
    has caller_id with CONFIG_PRINTK_CALLER (5.1+)."""
    log = LogBufLog(buf_len=512, caller=caller, struct_name=name)
    for i in range(50):
        log.add(f"old {i}", ts_nsec=i * 1_000_000, level=i % 8, caller_id=i,
                dictionary=b"SUBSYSTEM=pci\0DEVICE=+pci:0000:00:01.0" if i == 49 else b"")
    assert log.next_idx < log.first_idx  # wrapped
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    assert dmesg_ok(tmp_path / "mem").splitlines() == expected_lines(log)
    doc = json.loads(run("dmesg", tmp_path / "mem", "--json").stdout)
    last = doc["records"][-1]
    assert doc["source"]["log_format"] == "printk_log"
    assert last["level"] == 49 % 8 and last["caller"] == ("T49" if caller else None)
    assert last["dictionary"] == {"SUBSYSTEM": "pci", "DEVICE": "+pci:0000:00:01.0"}


def test_printk_log_index_outside(tmp_path):
    log = LogBufLog(buf_len=512)
    log.add("x", ts_nsec=1)
    spec = ImageSpec()
    writes = log.writes(spec)
    writes[2] = (writes[2][0], (4096).to_bytes(4, "big"))  # log_first_idx
    code, out, err = bad(tmp_path, log, spec, writes)
    assert code == 4 and out == [] and "outside" in err


def test_printk_log_record_length_past_the_buffer(tmp_path):
    log = LogBufLog(buf_len=512)
    for i in range(5):
        log.add(f"r{i}", ts_nsec=i)
    spec = ImageSpec()
    buf = bytearray(log.buf)
    second = int.from_bytes(buf[8:10], "big")  # record 0's len: where record 1 starts
    buf[second + 8:second + 10] = (4000).to_bytes(2, "big")
    log.buf = buf
    code, out, err = bad(tmp_path, log, spec)
    assert code == 0 and out == expected_lines(log)[:1]
    assert "past the buffer" in err


def test_printk_log_zero_loop_ends(tmp_path):
    """Every header zero (len 0 everywhere): the wrap is taken once, then the log ends."""
    log = LogBufLog(buf_len=512)
    log.add("x", ts_nsec=1)
    log.buf = bytearray(512)
    log.next_idx = 64
    code, out, err = bad(tmp_path, log)
    assert code == 0 and out == [] and "wraps twice" in err


def test_plain_text_log_buf_is_not_supported(tmp_path):
    log = PrbLog()
    log.omit.update({"SYMBOL(prb)", "SYMBOL(printk_rb_static)"})
    log.vmcoreinfo_extra = "SYMBOL(log_buf)=100000\nSYMBOL(log_end)=100008\n"
    code, out, err = bad(tmp_path, log)
    assert code == 4 and out == [] and "older than 3.5" in err and "not supported" in err


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_since_must_be_a_number_of_seconds(tmp_path, value):
    write_with_log(ImageSpec(), filled(), tmp_path / "mem")
    result = run("dmesg", tmp_path / "mem", "--since-boot-seconds", value)
    assert result.exit_code == 2 and "not a number of seconds" in result.stderr


def test_only_the_newest_records_are_kept(tmp_path, monkeypatch):
    """A ring that holds more records than sadump keeps: the newest ones, and a warning."""
    from sadump.analysis import analyse
    from sadump.kernel import printk

    log = PrbLog(count_bits=6, size_bits=12)
    for i in range(40):
        log.add(f"m{i}", ts_nsec=i)
    write_with_log(ImageSpec(), log, tmp_path / "mem")
    monkeypatch.setattr(printk, "MAX_RECORDS", 7)
    a = analyse(str(tmp_path / "mem"))
    try:
        got = printk.read_kernel_log(a.kernel_memory, a.vmcoreinfo.info)
    finally:
        a.close()
    assert [r.text for r in got.records] == [f"m{i}" for i in range(33, 40)]
    assert any("only the newest 7" in w for w in got.warnings)

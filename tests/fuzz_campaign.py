#!/usr/bin/env python3
"""Damage campaign: real dumps damaged at their structural places, run through the CLI.

Every case copies a real file (sparse) or damages a shared scratch copy in place and puts
the bytes back afterwards, runs one sadump command in a subprocess with a timeout and an
address-space cap, and judges the outcome: a traceback, exit 70, an exit status outside
the command's documented set, a timeout, a memory blow-up (MemoryError, killed by a signal),
or a file left in the output folder by a dump that failed (or a temporary left by one that
succeeded) is a finding. Not collected by pytest (no test_ prefix); tests/test_fuzz_sample.py
runs a small seeded sample of it.

    SADUMP_REAL_CACHE=/work/real-cache python tests/fuzz_campaign.py --group sa_ext --seed 1
    python tests/fuzz_campaign.py --group all --max-cases 400 --jobs 2 --log /tmp/fuzz.log

Groups: sa_ext (s390_ext zlib), mv (the two zipl -M volumes, partitions and whole-volume
copies), vmdump, btf (damaged --btf FILE blobs), kernel (the deb13 raw image: BTF in
memory, task list, a task's stack, the module list).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
VALUES = (0, 1, 1 << 31, (1 << 32) - 1, 1 << 63, (1 << 64) - 1)
#: documented exit statuses per command (README's exit table, cli.Exit)
ALLOWED = {
    "info": {0, 4},
    "inspect": {0, 3, 4},
    "dump-full": {0, 4, 5},
    "dump-d31": {0, 3, 4, 5},
    "bt": {0, 4},
    "dmesg": {0, 4},
    "ps": {0, 4, 7},
    "modules": {0, 4, 7},
    "bt-all": {0, 4, 7},
    "bt-D": {0, 4, 7},
    "ps-json": {0, 4, 7},
    "bt-all-json": {0, 4, 7},
    "modules-json": {0, 4, 7},
    "bt-json": {0, 4},
    "info-text": {0, 4},
    "inspect-text": {0, 3, 4},
}
TIMEOUT = 60
MEM_CAP = 2 << 30
#: peak resident memory (KiB) past which a run is a finding: a healthy one stays under 100 MiB
RSS_LIMIT = 300 << 10
#: GNU time reports each run's peak RSS where it is installed
TIME = shutil.which("time", path="/usr/bin:/bin")


def real_dir() -> Path:
    cache = os.environ.get("SADUMP_REAL_CACHE")
    return Path(cache) if cache else ROOT.parent / "real-cache"


def sadump_argv(cmd: str, inputs: list[str], out_dir: str, extra: list[str]) -> list[str]:
    exe = [sys.executable, "-m", "sadump"]
    out = os.path.join(out_dir, "vmcore")
    return exe + {
        "info": ["info", "--json"],
        "inspect": ["inspect-meminfo", "--json"],
        "dump-full": ["dump", "--mode", "full", "-o", out],
        "dump-d31": ["dump", "-d", "31", "--format", "kdump", "-o", out, "--compress", "zlib"],
        "bt": ["bt"],
        "dmesg": ["dmesg"],
        "ps": ["ps"],
        "modules": ["modules"],
        "bt-all": ["bt", "--all"],
        "bt-D": ["bt", "--state", "D"],
        "ps-json": ["ps", "--json"],
        "bt-all-json": ["bt", "--all", "--json"],
        "modules-json": ["modules", "--json"],
        "bt-json": ["bt", "--json"],
        "info-text": ["info"],
        "inspect-text": ["inspect-meminfo"],
    }[cmd] + extra + inputs


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEM_CAP, MEM_CAP))


@dataclass
class Outcome:
    case: str
    cmd: str
    rc: int | None
    verdict: str  # "ok" or what is wrong
    detail: str = ""
    rss: int = 0  # peak resident KiB (GNU time), 0 when unknown


def run(cmd: str, inputs: list[str], case: str, extra: list[str] | None = None,
        timeout: int = TIMEOUT) -> Outcome:
    """Run one command on the inputs and judge it."""
    out_dir = tempfile.mkdtemp(prefix="rfuzz-out-", dir=os.environ.get("RFUZZ_TMP", "/tmp"))
    try:
        argv = sadump_argv(cmd, inputs, out_dir, extra or [])
        if TIME:
            argv = [TIME, "-f", "RFUZZ_MAXRSS=%M", *argv]
        try:
            p = subprocess.run(argv, check=False, capture_output=True, timeout=timeout, preexec_fn=_limit,
                               cwd=ROOT, env={**os.environ, "COLUMNS": "200"})
        except subprocess.TimeoutExpired:
            return Outcome(case, cmd, None, "TIMEOUT")
        err = p.stderr.decode(errors="replace")
        rss = 0
        if TIME and "RFUZZ_MAXRSS=" in err:
            err, _, tail = err.rpartition("RFUZZ_MAXRSS=")
            rss = int(tail.strip() or 0)
            lines = err.rstrip("\n").split("\n")
            if lines and lines[-1].startswith("Command terminated by signal"):
                return Outcome(case, cmd, None, f"SIGNAL {lines[-1].split()[-1]}")
            if lines and lines[-1].startswith("Command exited with non-zero status"):
                err = "\n".join(lines[:-1])
        last = err.strip().splitlines()[-1] if err.strip() else ""
        left = sorted(os.listdir(out_dir))
        if rss > RSS_LIMIT:
            return Outcome(case, cmd, p.returncode, "RSS", f"{rss >> 10} MiB {last}")
        if p.returncode < 0:
            return Outcome(case, cmd, p.returncode, f"SIGNAL {-p.returncode}", last)
        if "MemoryError" in err:
            return Outcome(case, cmd, p.returncode, "MEMORY", last)
        if "Traceback" in err or p.returncode == 70:
            return Outcome(case, cmd, p.returncode, "TRACEBACK", _cause(err))
        if p.returncode not in ALLOWED[cmd]:
            return Outcome(case, cmd, p.returncode, "EXIT", last)
        if cmd.startswith("dump"):
            want = ["vmcore"] if p.returncode in (0, 3) else []
            if left != want:
                return Outcome(case, cmd, p.returncode, "LEFTOVER", f"{left} {last}")
        if (cmd.endswith("json") or cmd in ("info", "inspect")) and p.returncode in (0, 3):
            try:
                json.loads(p.stdout)
            except ValueError as e:
                return Outcome(case, cmd, p.returncode, "BADJSON", f"{e} {last}")
        if p.returncode == 4 and not any(ln.startswith("sadump: error:")
                                         for ln in err.splitlines()):
            return Outcome(case, cmd, p.returncode, "NOMESSAGE", last)
        return Outcome(case, cmd, p.returncode, "ok", last[:160], rss)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def _cause(err: str) -> str:
    """The innermost frame and the exception line of a traceback."""
    lines = err.strip().splitlines()
    frames = [ln.strip() for ln in lines if ln.strip().startswith("File ")]
    return (frames[-1] if frames else "") + " | " + (lines[-1] if lines else "")


# ---- the damage ------------------------------------------------------------------------------

@dataclass
class Damage:
    """What to do to one file: writes (offset, bytes), then a truncation."""

    name: str
    writes: list = field(default_factory=list)
    truncate: int | None = None


def field_damage(tag: str, off: int, width: int, order: str = "big") -> list[Damage]:
    out = []
    for v in VALUES:
        v &= (1 << (8 * width)) - 1
        out.append(Damage(f"{tag}={v:#x}", [(off, v.to_bytes(width, order))]))
    return out


def flips(rng: random.Random, tag: str, lo: int, hi: int, n: int) -> list[Damage]:
    out = []
    for _ in range(n):
        k = rng.randint(1, 8)
        w = []
        for _ in range(k):
            o = rng.randrange(lo, hi)
            w.append((o, bytes([rng.randrange(256)])))
        out.append(Damage(f"{tag} flip {[hex(o) for o, _ in w]}", w))
    return out


def apply(src: str, dst: str, d: Damage) -> None:
    """A sparse copy of src at dst with the damage done."""
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)
    with open(dst, "r+b") as f:
        for off, b in d.writes:
            f.seek(off)
            f.write(b)
        if d.truncate is not None:
            f.truncate(d.truncate)


def u64(b: bytes, o: int) -> int:
    return int.from_bytes(b[o:o + 8], "big")


def u32(b: bytes, o: int) -> int:
    return int.from_bytes(b[o:o + 4], "big")


# ---- s390_ext / s390mv_ext -----------------------------------------------------------------
HDR_FIELDS = [("version", 0x8, 4), ("hdr_size", 0xc, 4), ("page_size", 0x14, 4),
              ("mem_size", 0x18, 8), ("mem_start", 0x20, 8), ("mem_end", 0x28, 8),
              ("num_pages", 0x30, 4), ("tod", 0x38, 8), ("arch", 0x48, 4), ("volnr", 0x4c, 4),
              ("mem_size_real", 0x54, 8), ("mvdump", 0x5c, 1), ("cpu_cnt", 0x5d, 2),
              ("real_cpu_cnt", 0x5f, 2), ("zlib_entry_size", 0x62, 4),
              ("mvdump_sign", 0x200, 8), ("zipl_time", 0x208, 8), ("lc_vec0", 0x800, 4),
              ("lc_vec1", 0x804, 4)]


def segment_headers(path: str, first: int = 4096) -> list[tuple[int, dict]]:
    """(file offset, fields) of each segment header, found by following the chain (4 KiB
    blocks): written from the spec, not from sadump."""
    out = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        off = first
        while off + 4096 <= size and len(out) < 64:
            f.seek(off)
            h = f.read(4096)
            start, ln, stop, sod = struct.unpack_from(">QQQI", h)
            count = u32(h, 0x30)
            if ln == 0 or ln % MIB or start % MIB:
                break
            ents = [u32(h, 0x34 + 4 * i) for i in range(min(count, 1011))]
            out.append((off, {"start": start, "len": ln, "stop": stop, "sod": sod,
                              "count": count, "entries": ents}))
            off = off + 4096 + (sod * 4096 if sod else ln)
            if stop:
                break
    return out


def sa_ext_cases(rng: random.Random, path: str, n_flips: int) -> list[Damage]:
    cases: list[Damage] = []
    size = os.path.getsize(path)
    for name, off, w in HDR_FIELDS:
        cases += field_damage(f"hdr.{name}", off, w)
    segs = segment_headers(path)
    for k, (off, s) in enumerate(segs):
        for name, o, w in [("start", 0, 8), ("len", 8, 8), ("stop", 16, 8),
                           ("size_on_disk", 24, 4), ("entry_count", 0x30, 4)]:
            cases += field_damage(f"seg{k}.{name}", off + o, w)
        ents = s["entries"]
        for i in sorted({0, 1, len(ents) // 2, len(ents) - 1}):
            if 0 <= i < len(ents):
                cases += field_damage(f"seg{k}.entry{i}", off + 0x34 + 4 * i, 4)
                data = off + 4096 + (ents[i] & 0x7FFFFFFF) * 4096
                nxt = (off + 4096 + (ents[i + 1] & 0x7FFFFFFF) * 4096 if i + 1 < len(ents)
                       else off + 4096 + s["sod"] * 4096)
                # the zlib stream: header, body, adler32 (at the stream's end, roughly)
                for where, o in [("zhdr", data), ("zhdr1", data + 1),
                                 ("zbody", data + (nxt - data) // 2)]:
                    cases.append(Damage(f"seg{k}.entry{i}.{where}^ff",
                                        [(o, b"\xff")]))
                cases.append(Damage(f"seg{k}.entry{i}.zeroed",
                                    [(data, bytes(min(4096, nxt - data)))]))
        cases.append(Damage(f"seg{k}.zero-header", [(off, bytes(4096))]))
    # the end marker
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        em = mm.rfind(b"DUMP_END")
        mm.close()
    if em >= 0:
        cases += field_damage("em.magic", em, 8) + field_damage("em.tod", em + 8, 8)
    # truncations: structural points and random ones
    points = {0, 1, 8, 0x1000, 0x1001, 0x2000, size - 1, size - 16, size // 2}
    for off, s in segs:
        points |= {off, off + 0x30, off + 4096, off + 4096 + 0x11}
    points |= {rng.randrange(size) for _ in range(12)}
    cases += [Damage(f"truncate@{p:#x}", truncate=p) for p in sorted(points) if 0 <= p < size]
    cases += flips(rng, "hdr", 0, 4096, n_flips)
    for off, _ in segs:
        cases += flips(rng, f"seghdr@{off:#x}", off, off + 0x34 + 64, n_flips // 2)
    cases += flips(rng, "anywhere", 0, size, n_flips)
    return cases


def vmdump_cases(rng: random.Random, path: str, n_flips: int) -> list[Damage]:
    P = 4096
    cases: list[Damage] = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64 * P)
    fir_rec, _, acc = struct.unpack_from(">III", head, P + 8)
    fir = (fir_rec - 1) * P
    asiz = acc * P
    cases += field_damage("adsr.tod", 0x10, 8)
    for name, o, w in [("rec_nr_fir", 8, 4), ("rec_nr_vector", 12, 4), ("rec_nr_access", 16, 4),
                       ("num_acc_recs", 20, 4), ("num_addr_spaces", 24, 4),
                       ("rec_nr_asibk", 28, 4)]:
        cases += field_damage(f"fmbk.{name}", P + o, w)
    for name, o, w in [("prefix", 0x90, 4), ("fir_format", 0xbb, 1), ("storage_size", 0x280, 8),
                       ("online_cpus", 0x390, 2), ("cpu_addr", 0x392, 2), ("psw", 0xc0, 8),
                       ("gpr15", 0x10 + 15 * 8, 8)]:
        cases += field_damage(f"fir.{name}", fir + o, w)
    cases += field_damage("fir_other.prefix", fir + 1104 + 0x128, 4)
    cases += field_damage("albk.id", (acc - 1) * P, 8)
    for name, o, w in [("id", 0, 8), ("storage_size_def", 0x48, 8), ("range_count", 0xd8, 4),
                       ("range0.start", 0x160, 8), ("range0.end", 0x168, 8),
                       ("range1.start", 0x170, 8), ("range1.end", 0x178, 8)]:
        cases += field_damage(f"asizbk.{name}", asiz + o, w)
    index = asiz + P
    cases += [Damage("index.all-ones", [(index, b"\xff" * P)]),
              Damage("index.zero", [(index, bytes(P))]),
              Damage("index.last-bit", [(index + P - 1, b"\x01")])]
    cases += flips(rng, "index", index, index + 64, n_flips // 2)
    key = index + P
    cases += [Damage("key0.all-stored", [(key, b"\x01" * P)]),
              Damage("key0.none-stored", [(key, bytes(P))]),
              Damage("key0.last", [(key + P - 1, b"\x07")])]
    cases += flips(rng, "key0", key, key + P, n_flips // 2)
    points = {0, 1, 0x40, P, P + 8, fir, fir + 1104, asiz, asiz + 0x160, index, index + 1, key,
              key + P, key + 2 * P, size - 1, size - P, size // 2}
    points |= {rng.randrange(size) for _ in range(12)}
    cases += [Damage(f"truncate@{p:#x}", truncate=p) for p in sorted(points) if 0 <= p < size]
    cases += flips(rng, "records", 0, index, n_flips)
    cases += flips(rng, "anywhere", 0, size, n_flips // 2)
    return cases


def mv_param_cases(rng: random.Random, head_path: str) -> list[Damage]:
    """The parameter table of a whole-volume copy (3 blocks + 0x4000 in)."""
    pt = 3 * 4096 + 0x4000
    cases = field_damage("parm.timestamp", pt, 8) + field_damage("parm.vol_cnt", pt + 8, 2)
    for v in range(2):
        base = pt + 10 + 13 * v
        for name, o, w in [("devno", 0, 2), ("start_blk", 2, 4), ("end_blk", 6, 4),
                           ("blk_size", 10, 1)]:
            cases += field_damage(f"parm.vol{v}.{name}", base + o, w)
    cases += flips(rng, "parm", pt, pt + 10 + 13 * 3, 10)
    return cases


# ---- BTF ------------------------------------------------------------------------------------

def btf_cases(rng: random.Random, blob: bytes, n_flips: int) -> list[Damage]:
    """Damage to a BTF blob (at offset 0 of the damaged file)."""
    e = "big" if blob[:2] == b"\xeb\x9f" else "little"  # s390x writes it big-endian
    E = ">" if e == "big" else "<"
    hdr_len = int.from_bytes(blob[4:8], e)
    type_off, type_len, str_off, str_len = struct.unpack_from(E + "IIII", blob, 8)
    cases: list[Damage] = []
    for name, o in [("hdr_len", 4), ("type_off", 8), ("type_len", 12), ("str_off", 16),
                    ("str_len", 20)]:
        for v in VALUES:
            v &= 0xFFFFFFFF
            cases.append(Damage(f"btf.{name}={v:#x}", [(o, v.to_bytes(4, e))]))
    cases.append(Damage("btf.magic", [(0, blob[1::-1])]))  # the other byte order
    cases.append(Damage("btf.version", [(2, b"\x07")]))
    # type records: info (kind/vlen) and size of the first types, huge vlens
    types = hdr_len + type_off
    t = types
    for i in range(1, 40):
        if t + 12 > len(blob):
            break
        info = int.from_bytes(blob[t + 4:t + 8], e)
        kind = (info >> 24) & 0x1F
        vlen = info & 0xFFFF
        for v in (0xFFFF, 0x8000, 1):
            new = (info & ~0xFFFF) | v
            cases.append(Damage(f"type{i}.vlen={v:#x}", [(t + 4, new.to_bytes(4, e))]))
        for k in (0, 19, 31, 4, 10):
            new = (info & ~(0x1F << 24)) | (k << 24)
            cases.append(Damage(f"type{i}.kind={k}", [(t + 4, new.to_bytes(4, e))]))
        for v in (0, 1 << 31, 0xFFFFFFFF):
            cases.append(Damage(f"type{i}.size_type={v:#x}", [(t + 8, v.to_bytes(4, e))]))
        cases.append(Damage(f"type{i}.name_off=ff", [(t, b"\xff\xff\xff\x7f")]))
        extra = {1: 4, 3: 12, 4: 12 * vlen, 5: 12 * vlen, 6: 8 * vlen, 13: 8 * vlen,
                 14: 4, 15: 12 * vlen, 17: 4, 19: 12 * vlen}.get(kind, 0)
        t += 12 + extra
    # a struct member's type pointing to itself (a loop) / out of range
    cases += btf_targeted(blob)
    cases += flips(rng, "btf.types", types, types + min(type_len, 200_000), n_flips)
    strs = hdr_len + str_off
    cases += [Damage("btf.strings.zeroed", [(strs, bytes(min(str_len, 1 << 20)))]),
              Damage("btf.strings.no-nul", [(strs + str_len - 1, b"x")])]
    size = len(blob)
    points = {0, 1, 4, hdr_len, hdr_len + 12, types + 100, strs, strs + 1, size - 1,
              size // 2}
    cases += [Damage(f"truncate@{p:#x}", truncate=p) for p in sorted(points)]
    cases += flips(rng, "btf.anywhere", 0, size, n_flips)
    return cases


# ---- an input that shrinks while it is dumped ------------------------------------------------

SHRINK_FORMATS = {"elf": ["--mode", "full"], "s390": ["--mode", "full", "--format", "s390"],
                  "kdump": ["-d", "31", "--format", "kdump", "--compress", "zlib"],
                  "stdout": ["--mode", "full"]}


def shrink_case(srcs: list[str], work: str, fmt: str, delay: float, cut: int,
                tag: str) -> Outcome:
    """Dump copies of srcs while the first is cut to `cut` bytes after `delay` seconds: a
    dump that fails must leave nothing in the output folder, one that finished its file."""
    import time

    case = f"{tag}: cut to {cut:#x} after {delay}s ({fmt})"
    out_dir = tempfile.mkdtemp(prefix="rfuzz-out-", dir=work)
    copies = []
    try:
        for i, s in enumerate(srcs):
            dst = os.path.join(out_dir, f"in{i}")
            subprocess.run(["cp", "--sparse=always", s, dst], check=True)
            copies.append(dst)
        out = "-" if fmt == "stdout" else os.path.join(out_dir, "vmcore")
        sink = open(os.path.join(out_dir, "stdout"), "wb")  # noqa: SIM115 - closed below
        p = subprocess.Popen([sys.executable, "-m", "sadump", "dump", *copies, "-o", out,
                              *SHRINK_FORMATS[fmt]], stdout=sink, stderr=subprocess.PIPE,
                             preexec_fn=_limit, cwd=ROOT)  # noqa: PLW1509 - setrlimit only
        time.sleep(delay)
        os.truncate(copies[0], cut)
        try:
            _, err_b = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            return Outcome(case, "dump-shrink", None, "TIMEOUT")
        finally:
            sink.close()
        err = err_b.decode(errors="replace")
        last = err.strip().splitlines()[-1] if err.strip() else ""
        left = sorted(set(os.listdir(out_dir)) - {f"in{i}" for i in range(len(srcs))}
                      - {"stdout"})
        if p.returncode < 0:
            return Outcome(case, "dump-shrink", p.returncode, f"SIGNAL {-p.returncode}", last)
        if "Traceback" in err or p.returncode == 70:
            return Outcome(case, "dump-shrink", p.returncode, "TRACEBACK", _cause(err))
        if p.returncode not in (0, 3, 4, 5):
            return Outcome(case, "dump-shrink", p.returncode, "EXIT", last)
        want = ["vmcore"] if p.returncode in (0, 3) and fmt != "stdout" else []
        if left != want:
            return Outcome(case, "dump-shrink", p.returncode, "LEFTOVER", f"{left} {last}")
        return Outcome(case, "dump-shrink", p.returncode, "ok", last[:160])
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def shrink_jobs(rng: random.Random) -> list:
    R = real_dir()
    sets = [[str(R / "sa/rimg-kdump.ext-zlib.s390")], [str(R / "sa/rimg-kdump.vmdump")],
            [str(R / "sa/rimg-kdump.mv.vol1"), str(R / "sa/rimg-kdump.mv.vol0")],
            [str(R / "deb13/deb13hung-a.qemu-kdump-zlib.flat")]]
    jobs = []
    for srcs in sets:
        size = os.path.getsize(srcs[0])
        for fmt in SHRINK_FORMATS:
            for delay in (0.25, 0.35, 0.45, 0.6, 0.8):
                jobs.append((srcs, fmt, delay, rng.randrange(4096, size)))
    return jobs


# ---- NGDump -----------------------------------------------------------------------------------

def ngdump_source(work: str, features: str | None = None) -> str:
    """An NGDump partition (mkfs.ext4 -d) holding a small ELF vmcore, from the fixtures;
    without metadata_csum the damage reaches sadump's side instead of debugfs's checks."""
    from tests.fixtures.builder import ImageSpec, vmcoreinfo_text, write_elf
    from tests.fixtures.ngdump import ngdump_image

    spec = ImageSpec(mem_size=16 * MIB, ranges=[(0, 6 * MIB), (7 * MIB, 8 * MIB)],
                     kdump_kernel_loaded=False)
    elf = write_elf(spec, Path(work) / "vmcore.elf",
                    notes=[("VMCOREINFO", 0, vmcoreinfo_text(spec).encode())])
    return str(ngdump_image(Path(work), elf, features=features,
                            name=f"ngdump{'-nocsum' if features else ''}.img"))


def ngdump_cases(rng: random.Random, img: str, n_flips: int) -> list[Damage]:
    from tests.fixtures.ngdump import _debugfs, block_size, inode_location

    le = "little"
    cases: list[Damage] = []
    sb = 1024
    for name, o, w in [("inodes_count", 0, 4), ("blocks_count", 4, 4),
                       ("log_block_size", 0x18, 4), ("blocks_per_group", 0x20, 4),
                       ("inodes_per_group", 0x28, 4), ("magic", 0x38, 2),
                       ("inode_size", 0x58, 2), ("feature_incompat", 0x60, 4),
                       ("desc_size", 0xFE, 2), ("first_data_block", 0x14, 4)]:
        cases += field_damage(f"sb.{name}", sb + o, w, le)
    bs = block_size(Path(img))
    for f in ("dump.elf", "ngdump.meta"):
        ino = inode_location(Path(img), f"/{f}")
        for name, o, w in [("size_lo", 4, 4), ("size_high", 0x6C, 4), ("flags", 0x20, 4),
                           ("eh_entries", 0x2A, 2), ("eh_max", 0x2C, 2), ("eh_depth", 0x2E, 2),
                           ("ee_block", 0x34, 4), ("ee_len", 0x38, 2), ("ee_start_hi", 0x3A, 2),
                           ("ee_start_lo", 0x3C, 4)]:
            cases += field_damage(f"{f}.inode.{name}", ino + o, w, le)
        cases += flips(rng, f"{f}.inode", ino, ino + 256, n_flips // 3)
    m = _debugfs(Path(img), "bmap /ngdump.meta 0").strip()
    if m.isdigit():
        meta = int(m) * bs
        cases += [Damage("meta.zeroed", [(meta, bytes(64))]),
                  Damage("meta.no-newline", [(meta, b"version=1 file=dump.elf" + b"x" * 200)]),
                  Damage("meta.file=../", [(meta, b"version=1\nfile=../../etc/passwd\n")]),
                  Damage("meta.version=99", [(meta, b"version=99\n")])]
        cases += flips(rng, "meta", meta, meta + 120, n_flips // 3)
    cases += flips(rng, "gdt", bs, 2 * bs, n_flips // 2)
    cases += flips(rng, "metadata", 0, 256 * 1024, n_flips)
    size = os.path.getsize(img)
    points = {0, 1024, 2048, bs, 2 * bs, size // 4, size // 2, size - 1}
    points |= {rng.randrange(size) for _ in range(8)}
    cases += [Damage(f"truncate@{p:#x}", truncate=p) for p in sorted(points)]
    return cases


TARGET_MEMBERS = {
    "task_struct": ("pid", "comm", "tasks", "stack", "thread", "signal", "real_parent",
                    "__state", "thread_node", "worker_private", "se"),
    "module": ("list", "name", "state", "mem", "refcnt", "kallsyms", "source_list"),
    "worker": ("desc", "pool", "id", "current_work"),
    "workqueue_struct": ("name",),
    "list_head": ("next", "prev"),
    "thread_struct": ("ksp",),
    "mod_kallsyms": ("symtab", "num_symtab", "strtab"),
    "rq": ("clock_task", "idle"),
}


def btf_targeted(blob: bytes) -> list[Damage]:
    """The records the task and module walks use: each struct's size, each member's type and
    offset, and the element count of array members, set to 0 / huge / the struct itself."""
    from sadump.kernel.btf import Btf

    btf = Btf.from_bytes(blob)
    e = btf.byteorder
    cases: list[Damage] = []
    for struct_name, members in TARGET_MEMBERS.items():
        ids = btf.type_ids(struct_name)
        if not ids:
            continue
        t = ids[0]
        _n, _info, _size, at = btf._record(t)
        rec = at - 12
        for v in (0, 1, 1 << 31, (1 << 32) - 1):
            cases.append(Damage(f"{struct_name}.size={v:#x}", [(rec + 8, v.to_bytes(4, e))]))
        for i, m in enumerate(btf.members(t)):
            if m.name not in members:
                continue
            mrec = at + 12 * i
            for v, what in ((0, "void"), (t, "itself"), ((1 << 32) - 1, "past")):
                cases.append(Damage(f"{struct_name}.{m.name}.type={what}",
                                    [(mrec + 4, v.to_bytes(4, e))]))
            for v in ((1 << 31) - 8, (1 << 32) - 64, 8 * 0x100000):
                cases.append(Damage(f"{struct_name}.{m.name}.offset={v:#x}",
                                    [(mrec + 8, v.to_bytes(4, e))]))
            r = btf.resolve(m.type_id)
            if btf.kind(r) == "array":
                arec = btf._record(r)[3]
                for v in (0, (1 << 32) - 1, 1 << 28):
                    cases.append(Damage(f"{struct_name}.{m.name}.nelems={v:#x}",
                                        [(arec + 8, v.to_bytes(4, e))]))
    return cases


# ---- kdump-compressed (flattened and plain) ------------------------------------------------

def kdump_cases(rng: random.Random, path: str, n_flips: int) -> list[Damage]:
    """The headers (disk_dump_header, kdump_sub_header, the notes) and bitmaps at the front,
    the page descriptors and pages behind, by flips, field values and truncations."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(0x20000)
    cases: list[Damage] = []
    if head.startswith(b"makedumpfile"):  # flattened: 4 KiB header, then (offset, size) records
        pos = 4096
        for k in range(6):
            if pos + 16 > len(head):
                break
            cases += field_damage(f"rec{k}.offset", pos, 8) + field_damage(f"rec{k}.size",
                                                                            pos + 8, 8)
            pos += 16 + int.from_bytes(head[pos + 8:pos + 16], "big")
    else:
        for name, o, w in [("block_size", 0x1ac, 4), ("sub_hdr_size", 0x1b0, 4),
                           ("bitmap_blocks", 0x1b4, 4), ("max_mapnr", 0x1b8, 4),
                           ("total_ram_blocks", 0x1bc, 4), ("device_blocks", 0x1c0, 4),
                           ("written_blocks", 0x1c4, 4), ("current_cpu", 0x1c8, 4),
                           ("nr_cpus", 0x1cc, 4), ("sub.phys_base", 0x1000, 8),
                           ("sub.dump_level", 0x1008, 4), ("sub.split", 0x100c, 4),
                           ("sub.offset_vmcoreinfo", 0x1020, 8),
                           ("sub.size_vmcoreinfo", 0x1028, 8), ("sub.offset_note", 0x1030, 8),
                           ("sub.size_note", 0x1038, 8), ("sub.offset_eraseinfo", 0x1040, 8),
                           ("sub.size_eraseinfo", 0x1048, 8), ("sub.max_mapnr_64", 0x1060, 8)]:
            cases += field_damage(f"hdr.{name}", o, w)  # s390x: big-endian
    cases += flips(rng, "head", 0, min(size, 0x20000), n_flips)
    cases += flips(rng, "anywhere", 0, size, n_flips)
    points = {0, 16, 4096, 4096 + 16, 0x1000 * 3, size // 3, size // 2, size - 1}
    points |= {rng.randrange(size) for _ in range(8)}
    cases += [Damage(f"truncate@{p:#x}", truncate=p) for p in sorted(points)]
    return cases


# ---- tape copies and the classic s390 format ------------------------------------------------

def tape_source(work: str) -> list[str]:
    """A tape copy (tests.fixtures.sa_dumps.tape) of the deb13 image's first 64 MiB, and the
    classic s390 dump sadump writes of the VMDUMP (1 GiB, sparse)."""
    from tests.fixtures.sa_dumps import tape

    with open(real_dir() / "deb13/deb13hung-a.raw", "rb") as f:
        mem = f.read(64 * MIB)
    path = os.path.join(work, "deb13-64m.tape")
    with open(path, "wb") as out:
        out.write(tape(mem))
    classic = os.path.join(work, "vmdump.s390")
    subprocess.run([sys.executable, "-m", "sadump", "dump", str(real_dir() / "sa/rimg-kdump.vmdump"),
                    "--mode", "full", "--format", "s390", "-o", classic],
                   check=True, capture_output=True, cwd=ROOT)
    return [path, classic]


def tape_cases(rng: random.Random, path: str, n_flips: int) -> list[Damage]:
    cases: list[Damage] = []
    for name, off, w in HDR_FIELDS:
        cases += field_damage(f"hdr.{name}", off, w)
    size = os.path.getsize(path)
    cases += field_damage("em.magic", size - 16, 8) + field_damage("em.tod", size - 8, 8)
    points = {0, 1, 0x1000, 0x1001, 0x9000, size - 1, size - 16, size // 2}
    points |= {rng.randrange(size) for _ in range(8)}
    cases += [Damage(f"truncate@{p:#x}", truncate=p) for p in sorted(points)]
    cases += flips(rng, "hdr", 0, 4096, n_flips)
    return cases


# ---- groups -----------------------------------------------------------------------------------

CMDS_SA = ["info", "inspect", "dump-full", "dump-d31", "bt", "dmesg", "info-text",
           "inspect-text"]
CMDS_KERNEL = ["ps", "bt-all", "bt-D", "modules", "info"]


def file_group(rng, work: str, src: str, cases: list[Damage], cmds: list[str],
               extra_files=(), wrap=None, extra_args=None) -> list:
    """Jobs: each case on one command picked in turn (all commands on the first cases)."""
    jobs = []
    for n, d in enumerate(cases):
        chosen = cmds if n < 3 else [cmds[n % len(cmds)], "info"] if cmds[n % len(cmds)] != \
            "info" else ["info"]
        jobs.append((src, d, chosen, list(extra_files), wrap, extra_args))
    return jobs


def run_job(job, work: str, index: int) -> list[Outcome]:
    src, d, cmds, extra_files, wrap, extra_args = job
    dst = os.path.join(work, f"case{index}")
    apply(src, dst, d)
    try:
        inputs = wrap(dst) if wrap else [dst] + extra_files
        if extra_args:  # a damaged --btf FILE on an intact image
            args = [a if a != "{}" else dst for a in extra_args]
            inputs = list(extra_files)
        else:
            args = []
        return [run(c, inputs, f"{Path(src).name}: {d.name}", args) for c in cmds]
    finally:
        for p in [dst, dst + ".whole"]:
            if os.path.exists(p):
                os.unlink(p)


def build_jobs(group: str, rng: random.Random, work: str, n_flips: int) -> list:
    R = real_dir()
    jobs = []
    if group in ("sa_ext", "all"):
        src = str(R / "sa/rimg-kdump.ext-zlib.s390")
        jobs += file_group(rng, work, src, sa_ext_cases(rng, src, n_flips), CMDS_SA)
    if group in ("mv", "all"):
        v0, v1 = str(R / "sa/rimg-kdump.mv.vol0"), str(R / "sa/rimg-kdump.mv.vol1")
        for src, other in ((v0, v1), (v1, v0)):
            cases = sa_ext_cases(rng, src, n_flips // 2)
            jobs += file_group(rng, work, src, cases, ["info", "inspect", "dump-full"],
                               extra_files=[other])
        head = str(R / "sa/rimg-kdump.mv.dasd-head")

        def whole(dst, v0=v0, v1=v1):
            # damaged head + volume 0's partition, intact head + volume 1
            a, b = dst + ".whole", os.path.join(work, "whole1")
            with open(a, "wb") as out, open(dst, "rb") as h, open(v0, "rb") as p:
                shutil.copyfileobj(h, out)
                shutil.copyfileobj(p, out)
            if not os.path.exists(b):
                with open(b, "wb") as out, open(head, "rb") as h, open(v1, "rb") as p:
                    shutil.copyfileobj(h, out)
                    shutil.copyfileobj(p, out)
            return [a, b]

        jobs += file_group(rng, work, head, mv_param_cases(rng, head), ["info", "dump-full"],
                           wrap=whole)
    if group in ("vmdump", "all"):
        src = str(R / "sa/rimg-kdump.vmdump")
        jobs += file_group(rng, work, src, vmdump_cases(rng, src, n_flips), CMDS_SA)
    if group in ("ngdump", "all"):
        for features in (None, "^metadata_csum"):
            src = ngdump_source(work, features)
            jobs += file_group(rng, work, src, ngdump_cases(rng, src, n_flips),
                               ["info", "inspect", "dump-full", "dmesg"])
    if group in ("tape", "all"):
        for src in tape_source(work):
            jobs += file_group(rng, work, src, tape_cases(rng, src, n_flips),
                               ["info", "inspect", "dump-full", "bt"])
    if group in ("kdump", "all"):
        flat = str(R / "deb13/deb13hung-a.qemu-kdump-zlib.flat")
        plain = os.path.join(work, "deb13.kdump")
        subprocess.run([sys.executable, "-m", "sadump", "dump", flat, "--mode", "full",
                        "--format", "kdump", "--compress", "zlib", "-d", "1", "-o", plain],
                       check=True, capture_output=True, cwd=ROOT)
        for src in (flat, plain):
            jobs += file_group(rng, work, src, kdump_cases(rng, src, n_flips),
                               ["info", "dump-d31", "dump-full", "dmesg", "ps", "bt"])
    if group in ("btf", "all"):
        src = str(R / "deb13/deb13hung-a.btf-vmlinux.bin")
        img = str(R / "deb13/deb13hung-a.qemu-kdump-zlib.flat")
        cases = btf_cases(rng, Path(src).read_bytes(), n_flips)
        for n, d in enumerate(cases):
            cmd = ["ps", "modules", "bt-D", "bt-all"][n % 4]
            jobs.append((src, d, [cmd], [img], None, ["--btf", "{}"]))
    return jobs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", default="all",
                    choices=["all", "sa_ext", "mv", "vmdump", "ngdump", "kdump", "tape",
                             "btf", "kernel", "shrink"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flips", type=int, default=30, help="random flip cases per region")
    ap.add_argument("--max-cases", type=int, default=0, help="a random sample of the cases")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--log", default=None, help="one JSON line per outcome")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = tempfile.mkdtemp(prefix="rfuzz-", dir=os.environ.get("RFUZZ_TMP", "/tmp"))
    os.environ["RFUZZ_TMP"] = work
    try:
        if a.group == "shrink":
            jobs = shrink_jobs(rng)
            if a.max_cases and len(jobs) > a.max_cases:
                jobs = rng.sample(jobs, a.max_cases)
            with ThreadPoolExecutor(a.jobs) as pool:
                outcomes = list(pool.map(lambda j: shrink_case(
                    j[0], work, j[1], j[2], j[3], Path(j[0][0]).name), jobs))
            for o in outcomes:
                if o.verdict != "ok":
                    print(f"{o.verdict} rc={o.rc} [{o.cmd}] {o.case}: {o.detail}", flush=True)
        elif a.group == "kernel":
            from tests.fuzz_kernel import kernel_campaign

            outcomes = kernel_campaign(rng, work, a.flips, a.max_cases, a.jobs)
        else:
            jobs = build_jobs(a.group, rng, work, a.flips)
            if a.max_cases and len(jobs) > a.max_cases:
                jobs = rng.sample(jobs, a.max_cases)
            with ThreadPoolExecutor(a.jobs) as pool:
                futs = [pool.submit(run_job, j, work, i) for i, j in enumerate(jobs)]
                outcomes = []
                for f in futs:
                    for o in f.result():
                        outcomes.append(o)
                        if o.verdict != "ok":
                            print(f"{o.verdict} rc={o.rc} [{o.cmd}] {o.case}: {o.detail}",
                                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(outcomes, a.log)
    return 1 if any(o.verdict != "ok" for o in outcomes) else 0


def report(outcomes: list[Outcome], log: str | None) -> None:
    if log:
        with open(log, "a") as f:
            f.writelines(json.dumps(o.__dict__) + "\n" for o in outcomes)
    by = Counter((o.cmd, o.verdict) for o in outcomes)
    rcs = Counter((o.cmd, o.rc) for o in outcomes)
    print(f"{len(outcomes)} runs")
    for (cmd, v), n in sorted(by.items(), key=str):
        print(f"  {cmd:10} {v:10} {n}")
    print("  exit statuses:", dict(sorted(rcs.items(), key=str)))
    peak: dict[str, int] = {}
    for o in outcomes:
        peak[o.cmd] = max(peak.get(o.cmd, 0), o.rss)
    print("  peak RSS (MiB):", {c: r >> 10 for c, r in sorted(peak.items())})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())

"""The kernel group of tests/fuzz_campaign.py: the deb13 raw image damaged where the task walk,
the task unwinder, the module walk and BTF read it.

The places are found with sadump's own code on the intact image (init_task's tasks list, a
blocked task's thread.ksp and stack, the module list, the BTF section), then each damage is
written into a sparse scratch copy, the commands run, and the bytes put back.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.fuzz_campaign import VALUES, Damage, Outcome, real_dir, run

CMDS = ["ps", "bt-all", "bt-D", "modules", "info", "ps-json", "bt-all-json", "modules-json",
        "bt-json", "info-text"]


def locate(raw: str) -> dict:
    """Physical places in the intact image, by name: (paddr, size) or a list of them."""
    from sadump.analysis import analyse
    from sadump.render.tasks import analysis_tasks

    a = analyse([raw])
    km, syms, btf = a.kernel_memory, a.symbols(), a.kernel_btf()
    phys = km.to_physical
    off = btf.offsetof
    places: dict = {}
    init = syms.address("init_task")
    places["init.tasks.next"] = phys(init + off("task_struct", "tasks"))
    places["init.tasks.prev"] = phys(init + off("task_struct", "tasks") + 8)
    tl = analysis_tasks(a)
    d = next(t for t in tl.tasks if t.state == "D")
    places["D.addr_v"] = d.addr
    for path in ("tasks", "thread.ksp", "stack", "real_parent", "signal", "pid", "comm",
                 "thread_node", "__state", "se.exec_start"):
        if btf.has_member("task_struct", path):
            places[f"D.{path}"] = phys(d.addr + off("task_struct", path))
    places["D.ksp_v"] = d.ksp
    places["D.stack_at_ksp"] = phys(d.ksp)
    places["D.task_struct"] = phys(d.addr)
    places["D.task_size"] = btf.sizeof("task_struct")
    page = d.ksp & ~0xFFF  # the stack is vmalloc'ed: page by page
    places["D.ksp_pages"] = [phys(page), phys(page - 4096)]
    head = syms.address("modules")
    places["modules.next"] = phys(head)
    first = km.read_u64(head) - off("module", "list")
    places["mod0.list.next"] = phys(first + off("module", "list"))
    places["mod0.struct"] = phys(first)
    places["mod0.list_v"] = first + off("module", "list")
    start, stop = syms.address("__start_BTF"), syms.address("__stop_BTF")
    places["btf"] = (start, stop - start,
                     [phys(v) for v in range(start & ~0xFFF, stop, 4096)])
    lc = syms.address("lowcore_ptr")
    places["lowcore_ptr"] = phys(lc)
    places["lowcore0"] = phys(km.read_u64(lc))
    places["lowcore0.current_task"] = places["lowcore0"] + off("lowcore", "current_task")
    a.close()
    return places


def vmcoreinfo_copies(raw: str) -> tuple[list[int], bytes]:
    """Physical addresses of every copy of the VMCOREINFO text, and the text."""
    import mmap

    with open(raw, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        found, text = [], b""
        at = m.find(b"OSRELEASE=")
        while at >= 0 and len(found) < 8:
            end = m.find(b"\0", at, at + 65536)
            if end - at > 1000:  # the note's text, not the printf format in the image
                found.append(at)
                text = m[at:end]
            at = m.find(b"OSRELEASE=", at + 1)
    return found, text


def vmcoreinfo_cases(rng: random.Random, copies: list[int], text: bytes,
                     n: int) -> list[Damage]:
    """Each KEY=VALUE's value replaced by one as long: all 9s, all 0s, all f (huge hex),
    a minus sign: in every copy at once."""
    cases = []
    pos = 0
    for line in text.split(b"\n"):
        key, eq, value = line.partition(b"=")
        if eq and value and key != b"OSRELEASE":
            at = pos + len(key) + 1
            for name, new in (("9s", b"9" * len(value)), ("0s", b"0" * len(value)),
                              ("fs", b"f" * len(value)), ("minus", b"-" + value[1:])):
                cases.append(Damage(f"vmcoreinfo {key.decode()}={name}",
                                    [(c + at, new) for c in copies]))
        pos += len(line) + 1
    return rng.sample(cases, min(n, len(cases)))


def btf_paddr(places: dict, o: int) -> int:
    start, _, pages = places["btf"]
    return pages[(start + o) // 4096 - start // 4096] + (start + o) % 4096


def kernel_cases(rng: random.Random, places: dict, blob: bytes, n_flips: int) -> list[Damage]:
    from tests.fuzz_campaign import btf_cases, flips

    cases: list[Damage] = []

    def ptr(tag: str, paddr: int, extra: dict | None = None):
        vals = {f"{v:#x}": v for v in VALUES}
        vals.update(extra or {})
        for name, v in vals.items():
            cases.append(Damage(f"{tag}={name}", [(paddr, v.to_bytes(8, "big"))]))

    d_tasks_v = places["D.addr_v"] + 0  # the task_struct itself
    ptr("init.tasks.next", places["init.tasks.next"],
        {"D.task_struct": d_tasks_v, "misaligned": d_tasks_v + 4})
    ptr("init.tasks.prev", places["init.tasks.prev"])
    for f in ("tasks", "thread.ksp", "stack", "real_parent", "signal", "thread_node"):
        if f"D.{f}" in places:
            ptr(f"D.{f}", places[f"D.{f}"], {"ksp+8": places["D.ksp_v"] + 8})
    for f in ("pid", "__state"):
        if f"D.{f}" in places:
            for v in VALUES:
                v &= 0xFFFFFFFF
                cases.append(Damage(f"D.{f}={v:#x}", [(places[f"D.{f}"], v.to_bytes(4, "big"))]))
    if "D.comm" in places:
        cases.append(Damage("D.comm=no NUL", [(places["D.comm"], b"\xff" * 16)]))
    # the blocked task's stack from its last switch: the back chain, saved r14/r15
    for k in range(20):
        ptr(f"D.stack[ksp+{8 * k:#x}]", places["D.stack_at_ksp"] + 8 * k,
            {"self": places["D.ksp_v"] + 8 * k, "ksp": places["D.ksp_v"]})
    cases += flips(rng, "D.task_struct", places["D.task_struct"],
                   places["D.task_struct"] + places["D.task_size"], n_flips)
    for k, pg in enumerate(places["D.ksp_pages"]):
        cases += flips(rng, f"D.stack page {k}", pg, pg + 4096, n_flips // 2)
    ptr("modules.next", places["modules.next"])
    ptr("mod0.list.next", places["mod0.list.next"], {"self": places["mod0.list_v"]})
    cases += flips(rng, "mod0.struct", places["mod0.struct"], places["mod0.struct"] + 0x400,
                   n_flips)
    ptr("lowcore_ptr[0]", places["lowcore_ptr"])
    # the store-status save area (absolute 0x1200..0x1400: PSW, prefix, registers) and
    # CPU 0's lowcore (stack pointers, current task, per-CPU offset)
    for name, o in [("psw.addr", 0x1308), ("prefix", 0x1318 - 4), ("gpr15", 0x1380 + 15 * 8)]:
        ptr(f"save_area.{name}", o)
    cases += flips(rng, "save_area", 0x1200, 0x1400, n_flips // 2)
    cases += flips(rng, "lowcore0", places["lowcore0"] + 0x300, places["lowcore0"] + 0x400,
                   n_flips // 2)
    ptr("lowcore0.current_task", places["lowcore0.current_task"])
    # BTF in memory: the damage of a --btf FILE, at the section's physical pages
    for b in btf_cases(rng, blob, n_flips):
        if b.truncate is not None:
            continue
        cases.append(Damage("mem " + b.name, [(btf_paddr(places, o), v) for o, v in b.writes
                                              if o < places["btf"][1]]))
    return cases


def kernel_campaign(rng: random.Random, work: str, n_flips: int, max_cases: int = 0,
                    jobs: int = 2, report=print) -> list[Outcome]:
    raw = str(real_dir() / "deb13/deb13hung-a.raw")
    places = locate(raw)
    _, size, _ = places["btf"]
    with open(raw, "rb") as f:
        blob = b"".join(_pread(f, btf_paddr(places, o), min(4096, size - o))
                        for o in range(0, size, 4096))
    cases = kernel_cases(rng, places, blob, n_flips)
    copies, text = vmcoreinfo_copies(raw)
    cases += vmcoreinfo_cases(rng, copies, text, 10 * n_flips)
    if max_cases and len(cases) > max_cases:
        cases = rng.sample(cases, max_cases)
    copies = []
    for i in range(jobs):
        dst = os.path.join(work, f"raw{i}")
        subprocess.run(["cp", "--sparse=always", raw, dst], check=True)
        copies.append(dst)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        copy = copies[i]
        for n, d in enumerate(cases[i::jobs]):
            with open(copy, "r+b") as f:
                old = [(o, _pread(f, o, len(b))) for o, b in d.writes]
                for o, b in d.writes:
                    os.pwrite(f.fileno(), b, o)
            try:
                cmds = CMDS if n < 2 else [CMDS[n % len(CMDS)]]
                if d.name.startswith("vmcoreinfo"):  # the filter and the log read it too
                    cmds = [["dump-d31", "dmesg", "bt", "info"][n % 4]]
                got = [run(c, [copy], f"deb13hung-a.raw: {d.name}") for c in cmds]
            finally:
                with open(copy, "r+b") as f:
                    for o, b in reversed(old):
                        os.pwrite(f.fileno(), b, o)
            with lock:
                for o in got:
                    outcomes.append(o)
                    if o.verdict != "ok":
                        report(f"{o.verdict} rc={o.rc} [{o.cmd}] {o.case}: {o.detail}")

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(worker, range(jobs)))
    return outcomes


def _pread(f, off: int, n: int) -> bytes:
    return os.pread(f.fileno(), n, off)

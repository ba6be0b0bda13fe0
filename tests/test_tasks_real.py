"""`sadump ps` and `sadump bt --pid/--state/--all` on the hung Debian 13 guest of
../shared/real/deb13, against the guest's own reports (its ps listing from /proc, sysrq-w,
sysrq-t, /proc/PID/stack and /proc/kallsyms), parsed here independently of sadump.

Taken from the README of deb13: pid 1 (the shell that wrote the listing) shows R in it but
sleeps at the dump; spinner (pid 207) runs on CPU 1; the idle tasks (pid 0) are in no /proc
listing. Tasks the guest's listing shows running are the ones that ran after its reports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from sadump.cli import Exit, app

INPUTS = ["deb13/deb13hung-a.raw", "deb13/deb13hung-a.qemu.elf",
          "deb13/deb13hung-a.qemu-kdump-zlib.flat"]
GUEST = "deb13/deb13hung-a"
FRAME = re.compile(r"\]\s+\(?\[<([0-9a-f]{16})>\] (\S+)( \[\w+\])?")
TASK = re.compile(r"task:.{15} state:(\S).*? pid:(\d+)\s+tgid:(\d+)\s+ppid:(\d+)")


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def guest_ps(text: str) -> dict[int, dict]:
    """deb13hung-a.guest-ps.txt: tgid tid ppid state cpu nthreads flags wchan comm."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        tgid, tid, ppid, state, cpu, _, flags, _, comm = line.split(maxsplit=8)
        out[int(tid)] = {"tgid": int(tgid), "ppid": int(ppid), "state": state,
                         "cpu": int(cpu), "comm": comm, "kthread": bool(int(flags, 16) & 0x200000)}
    return out


def kernel_traces(text: str) -> dict[int, list[str]]:
    """pid -> the frames of a sysrq-w / sysrq-t dump, `symbol+0xoff/0xsize [module]`."""
    out: dict[int, list[str]] = {}
    pid = None
    for line in text.splitlines():
        m = TASK.search(line)
        if m:
            pid = int(m.group(2))
            out[pid] = []
            continue
        m = FRAME.search(line)
        if m and pid is not None:
            out[pid].append(m.group(2) + (m.group(3) or ""))
        elif not any(k in line for k in ("Call Trace", "Workqueue:", "Stopper:")):
            pid = None  # the end of this task's block (sched debug or the end marker)
    return out


def printed(frames: list[dict]) -> list[str]:
    return [(f"{f['symbol']}+{f['offset']:#x}/{f['size']:#x}" if f["symbol"]
             else f"{f['pc']:#x}") + (f" [{f['module']}]" if f["module"] else "")
            for f in frames]


def base_name(comm: str) -> str:
    """A workqueue worker's name without the work it last did (-desc, +desc), which changes
    as it runs; rescuers (kworker/R-wq) are named by their workqueue."""
    if comm.startswith("kworker/") and not comm.startswith("kworker/R-"):
        return re.split(r"[-+]", comm, maxsplit=1)[0]
    return comm


def read_latin1(real_text, name: str) -> str:
    """The kernel log holds bytes that are not UTF-8 (a rescuer's garbage Workqueue line)."""
    return real_text(name, "latin-1")


@pytest.mark.parametrize("name", INPUTS)
def test_ps_lists_the_guests_tasks(real_file, real_text, name):
    code, out, err = run("ps", "--json", str(real_file(name)))
    assert code == 0, err
    ours = json.loads(out)["tasks"]
    ref = guest_ps(real_text(f"{GUEST}.guest-ps.txt"))
    assert len(ref) == 79
    idle = [t for t in ours if t["pid"] == 0]
    assert len(idle) == 2 and all(t["kthread"] and t["state"] == "R" for t in idle)
    listed = {t["pid"]: t for t in ours if t["pid"]}
    assert set(listed) == set(ref)
    renamed = []
    for pid, r in ref.items():
        t = listed[pid]
        want_state = "S" if pid == 1 else r["state"]  # README: pid 1 read /proc, then slept
        assert (t["tgid"], t["ppid"], t["state"], t["kthread"]) == \
            (r["tgid"], r["ppid"], want_state, r["kthread"]), (pid, t, r)
        assert t["cpu"] == r["cpu"], (pid, t, r)
        if t["comm"] != r["comm"]:
            assert base_name(t["comm"]) == base_name(r["comm"]), (pid, t, r)
            renamed.append(pid)
    # only a worker that ran again in the 2 s before the stop may show other work
    assert len(renamed) <= 2, renamed
    running = {t["pid"] for t in ours if t["running"]}
    assert 207 in running and 1 not in running
    counts = {}
    for t in listed.values():
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    assert counts == {"D": 3, "I": 44, "R": 1, "S": 29, "T": 1, "Z": 1}


@pytest.mark.parametrize("name", INPUTS)
def test_bt_state_d_is_sysrq_w(real_file, real_text, name):
    code, out, err = run("bt", "--state", "D", "--json", str(real_file(name)))
    assert code == 0, err
    ours = {t["pid"]: printed(t["frames"]) for t in json.loads(out)["tasks"]}
    ref = kernel_traces(read_latin1(real_text, f"{GUEST}.guest-sysrq-w.txt"))
    assert sorted(ref) == [196, 200, 201]
    assert ours == ref
    assert all(f["reliable"] for t in json.loads(out)["tasks"] for f in t["frames"])


@pytest.mark.parametrize("name", INPUTS)
def test_bt_all_is_sysrq_t(real_file, real_text, name):
    code, out, err = run("bt", "--all", "--json", str(real_file(name)))
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    ours = {t["pid"]: printed(t["frames"]) for t in tasks if t["pid"]}
    ref = kernel_traces(read_latin1(real_text, f"{GUEST}.guest-sysrq-t.txt"))
    assert len(ref) == 78
    ran = {pid for pid, r in guest_ps(real_text(f"{GUEST}.guest-ps.txt")).items()
           if r["state"] == "R"}
    assert ran == {1, 207}
    compared = [pid for pid in ref if pid not in ran]
    assert len(compared) == 76
    for pid in compared:
        assert ours[pid] == ref[pid], pid
    # module frames as the kernel prints them
    assert "kjournald2+0x282/0x2d0 [jbd2]" in ours[190]
    # the zombie has no stack left: sysrq-t skips it, sadump shows it without frames
    assert 208 not in ref and ours[208] == []
    assert [t["pid"] for t in tasks].count(0) == 2


def sched_range(kallsyms: str) -> tuple[int, int]:
    found = {}
    for line in kallsyms.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] in ("__sched_text_start", "__sched_text_end"):
            found[parts[2]] = int(parts[0], 16)
    return found["__sched_text_start"], found["__sched_text_end"]


def proc_stacks(text: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    tid = None
    for line in text.splitlines():
        m = re.match(r"--- tgid \d+ tid (\d+)", line)
        if m:
            tid = int(m.group(1))
            out[tid] = []
        elif line.startswith("[<") and tid is not None:
            out[tid].append(line.split("] ", 1)[1].strip())
    return out


def test_bt_d_tasks_match_proc_stack(real_file, real_text):
    """/proc/PID/stack: the same frames without the scheduler's own (.sched.text)."""
    lo, hi = sched_range(real_file(f"{GUEST}.guest-kallsyms.txt").read_text())
    code, out, err = run("bt", "--state", "D", "--json", str(real_file(INPUTS[0])))
    assert code == 0, err
    stacks = proc_stacks(real_text(f"{GUEST}.guest-stacks.txt"))
    for t in json.loads(out)["tasks"]:
        kept = [f for f in t["frames"] if not lo <= f["pc"] < hi]
        assert printed(kept) == stacks[t["pid"]], t["pid"]


def test_bt_pid_text(real_file):
    code, out, err = run("bt", "--pid", "190", str(real_file(INPUTS[0])))
    assert code == 0, err
    assert out.splitlines()[0].startswith("task:jbd2/vdb-8      state:S pid:190")
    assert " [<000003ffff4053d8>] __schedule+0x428/0xb98 " in out.splitlines()
    code, _, err = run("bt", "--pid", "99999", str(real_file(INPUTS[0])))
    assert code == Exit.USAGE and "no such task" in err


def test_ps_text_and_state_filter(real_file):
    code, out, err = run("ps", "--state", "DZ", str(real_file(INPUTS[1])))
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()[1:-1]]
    assert sorted((int(r[1]), r[3], r[5]) for r in rows) == [
        (196, "D", "hungwriter1"), (200, "D", "hungwriter2"), (201, "D", "hungwriter3"),
        (208, "Z", "zchild")]
    code, out, _ = run("ps", str(real_file(INPUTS[1])))
    lines = out.splitlines()
    assert any(line.startswith(">") and line.endswith(" spinner") for line in lines)
    assert any(line.endswith(" [kthreadd]") for line in lines)
    code, _, err = run("ps", "--state", "Q", str(real_file(INPUTS[1])))
    assert code == Exit.USAGE and "--state" in err


def test_running_task_from_its_cpu(real_file):
    """The ELF has the CPUs' registers: spinner runs in user mode on CPU 1, swapper/0 idles
    on CPU 0; the raw image has none, so the running spinner is shown from its last switch."""
    code, out, err = run("bt", "--pid", "207", "--json", str(real_file(INPUTS[1])))
    assert code == 0, err
    (t,) = json.loads(out)["tasks"]
    assert t["running"] and t["frames"] == []
    code, out, err = run("bt", "--pid", "0", "--json", str(real_file(INPUTS[1])))
    cpu0 = next(t for t in json.loads(out)["tasks"] if t["cpu"] == 0)
    assert "arch_cpu_idle" in [f["symbol"] for f in cpu0["frames"]]
    code, out, err = run("bt", "--pid", "207", str(real_file(INPUTS[0])))
    assert code == 0 and "registers the image lacks" in out


def test_no_btf_is_one_line(real_file):
    """rimg-kdump (6.1, no CONFIG_DEBUG_INFO_BTF): ps and bt --all say why in one line and
    exit 7; plain bt and info keep working."""
    img = str(real_file("rimg-kdump.raw"))
    for args in (["ps"], ["bt", "--all"], ["bt", "--state", "D"]):
        code, out, err = run(*args, img)
        assert code == Exit.NO_TYPES, (args, err)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "CONFIG_DEBUG_INFO_BTF" in lines[0] and "--btf" in lines[0]
    code, out, err = run("bt", img)
    assert code == 0 and "CPU 0" in out
    code, out, err = run("info", img)
    assert code == 0, err


def test_info_hung_tasks(real_file, real_text):
    """info: the D tasks where sysrq-w shows them waiting (the first frame outside the
    scheduler: percpu_rwsem_wait), off CPU since before khungtaskd's report (blocked > 10 s
    at 21.35 s, the dump after 52.18 s); states counted; the modules of /proc/modules."""
    code, out, err = run("info", "--json", str(real_file(INPUTS[2])))
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    assert tasks["error"] is None and tasks["total"] == 81
    assert tasks["counts"] == {"R": 3, "S": 29, "D": 3, "T": 1, "Z": 1, "I": 44}
    assert [b["pid"] for b in tasks["blocked"]] == [196, 200, 201]
    for b in tasks["blocked"]:
        assert b["waiting_in"] == {"symbol": "percpu_rwsem_wait", "offset": 0x142,
                                   "size": 0x188, "module": None}
        assert 52.18 - 11.36 <= b["last_ran_seconds"] <= 120
    modules = [line.split()[0] for line in
               real_text(f"{GUEST}.guest-modules.txt").splitlines() if line.strip()]
    assert tasks["modules"] == modules
    code, out, err = run("info", str(real_file(INPUTS[0])))
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("tasks        81 (") for line in lines)
    assert sum("waits in percpu_rwsem_wait+0x142/0x188" in line for line in lines) == 3


def test_info_without_btf_says_why(real_file):
    code, out, err = run("info", "--json", str(real_file("rimg-kdump.raw")))
    assert code == 0, err
    tasks = json.loads(out)["tasks"]
    assert tasks["blocked"] is None and "CONFIG_DEBUG_INFO_BTF" in tasks["error"]


def test_dump_level_31_output_keeps_what_the_walk_needs(real_file, real_text, tmp_path):
    """sadump's own -d 31 kdump output of the raw image: task_structs, stacks, page tables
    and module memory are kernel pages, kept; the same tasks and sysrq-w frames."""
    out = tmp_path / "d31.kdump"
    code, _, err = run("dump", str(real_file(INPUTS[0])), "--format", "kdump", "-d", "31",
                       "-o", str(out))
    assert code in (0, 3), err
    code, text, err = run("ps", "--json", str(out))
    assert code == 0, err
    ref = guest_ps(real_text(f"{GUEST}.guest-ps.txt"))
    assert {t["pid"] for t in json.loads(text)["tasks"] if t["pid"]} == set(ref)
    code, text, err = run("bt", "--state", "D", "--json", str(out))
    assert code == 0, err
    want = kernel_traces(read_latin1(real_text, f"{GUEST}.guest-sysrq-w.txt"))
    assert {t["pid"]: printed(t["frames"]) for t in json.loads(text)["tasks"]} == want


def test_damaged_btf_file_is_one_line(real_file, tmp_path):
    blob = real_file(f"{GUEST}.btf-vmlinux.bin").read_bytes()
    for name, data in (("cut.btf", blob[:len(blob) // 2]), ("zero.btf", b"\0" * 64),
                       ("empty.btf", b"")):
        (tmp_path / name).write_bytes(data)
        code, out, err = run("ps", "--btf", str(tmp_path / name), str(real_file(INPUTS[0])))
        assert code == Exit.IMAGE_ERROR, (name, err)
        assert out == "" and len(err.strip().splitlines()) == 1, (name, err)
    # the guest's own file works as --btf for a kernel that has it in memory too
    code, out, err = run("ps", "--btf", str(real_file(f"{GUEST}.btf-vmlinux.bin")),
                         str(real_file(INPUTS[0])))
    assert code == 0 and "hungwriter1" in out


def test_init_task_from_a_cpus_current_task(real_file):
    """Without init_task in kallsyms (KALLSYMS_ALL=n): a CPU's current task, up real_parent
    to pid 0, gives the same walk."""
    from sadump.analysis import analyse
    from sadump.kernel.tasks import walk_tasks

    a = analyse(str(real_file(INPUTS[1])))
    try:
        syms = a.symbols()

        class NoInitTask:
            def address(self, name):
                return None if name == "init_task" else syms.address(name)

        btf = a.kernel_btf()
        full = walk_tasks(a.kernel_memory, btf, syms, a.vmcoreinfo.info)
        found = walk_tasks(a.kernel_memory, btf, NoInitTask(), a.vmcoreinfo.info)
    finally:
        a.close()
    assert full.init_from == "kallsyms" and found.init_from.endswith("current task")
    assert found.init_task == full.init_task
    assert [(t.pid, t.comm) for t in found.tasks] == [(t.pid, t.comm) for t in full.tasks]


# task_struct offsets of this kernel, from `bpftool btf dump file deb13hung-a.btf-vmlinux.bin`
# (tasks 13696 bits, thread 26688 bits + ksp 64 bits) and the README's spot check (comm 0x920);
# physical addresses of the task_structs from the README's spot check
TASKS_OFF, KSP_OFF, COMM_OFF = 0x6B0, 0xD48, 0x920
HUNGWRITER1, HUNGWRITER2, HUNGWRITER3, NAPPER = 0x2E3A800, 0x2E39400, 0x2E3D000, 0x2E3E400


def damaged_copy(real_file, tmp_path, patches: dict[int, bytes]):
    src = real_file(INPUTS[0])
    dst = tmp_path / "damaged.raw"
    if subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=False).returncode:
        shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        for where, data in patches.items():
            f.seek(where)
            f.write(data)
    return dst


def test_damaged_tasks_in_a_real_image(real_file, tmp_path):
    """A wild tasks pointer, a comm without NUL, a ksp outside the task's stack: warnings,
    the tasks read up to there, the other stacks as before; never a traceback."""
    wild = (0x3FFDEAD0000).to_bytes(8, "big")
    img = damaged_copy(real_file, tmp_path, {
        NAPPER + TASKS_OFF: wild,
        NAPPER + COMM_OFF: b"A" * 16,
        HUNGWRITER1 + KSP_OFF: (0x1000).to_bytes(8, "big")})
    code, out, err = run("ps", "--json", str(img))
    assert code == 0, err
    tasks = {t["pid"]: t for t in json.loads(out)["tasks"]}
    assert {196, 200, 201, 202} <= set(tasks) and 203 not in tasks and 206 not in tasks
    assert tasks[202]["comm"] == "A" * 16 and "comm has no NUL" in err
    assert "task list: cut after" in err and "0x3ffdead0000" in err
    code, out, err = run("bt", "--state", "D", str(img))
    assert code == 0, err
    assert "saved stack pointer 0x1000 is outside the task's stack" in out
    assert "percpu_rwsem_wait+0x142/0x188" in out  # hungwriter2 as before


def test_looping_task_list_in_a_real_image(real_file, tmp_path):
    """hungwriter3's tasks.next pointed back at hungwriter2: the walk stops at the loop."""
    with open(real_file(INPUTS[0]), "rb") as f:
        f.seek(HUNGWRITER2 + TASKS_OFF)
        to_hw3 = int.from_bytes(f.read(8), "big")  # hungwriter2 -> hungwriter3's node
    identity = to_hw3 - (HUNGWRITER3 + TASKS_OFF)
    back = (identity + HUNGWRITER2 + TASKS_OFF).to_bytes(8, "big")
    img = damaged_copy(real_file, tmp_path, {HUNGWRITER3 + TASKS_OFF: back})
    code, out, err = run("ps", "--json", str(img))
    assert code == 0, err
    pids = [t["pid"] for t in json.loads(out)["tasks"]]
    assert pids.count(200) == 1 and 201 in pids and 202 not in pids
    assert "seen before (a loop)" in err


def test_btf_of_another_kernel_is_one_line(real_file):
    """The Debian 13 BTF given for the 6.1 rimg kernel: its offsets do not fit."""
    code, out, err = run("ps", "--btf", str(real_file(f"{GUEST}.btf-vmlinux.bin")),
                         str(real_file("rimg-kdump.raw")))
    assert code == Exit.IMAGE_ERROR and out == ""
    assert "does not describe this kernel" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


# ---- the CPUs' backtraces name module frames as the tasks' do -------------------------------

def sysrq_t_module_frame(real_text) -> tuple[int, str]:
    """(pc, `symbol+0xoff/0xsize [module]`) of the first frame in a module that the guest's
    own sysrq-t printed (jbd2's kjournald2)."""
    for line in read_latin1(real_text, f"{GUEST}.guest-sysrq-t.txt").splitlines():
        m = FRAME.search(line)
        if m and m.group(3):
            return int(m.group(1), 16), m.group(2) + m.group(3)
    raise AssertionError("the guest's sysrq-t shows no frame in a module")


def test_no_cpu_of_the_deb13_images_is_in_a_module(real_file):
    """Why the next test crafts one: at the dump CPU 0 idles in vmlinux and CPU 1 runs a
    user program (deb13 README), so `bt` has no frame in a module to name."""
    code, out, err = run("bt", "--json", str(real_file(INPUTS[1])))
    assert code == 0, err
    frames = [f for c in json.loads(out)["cpus"] for f in c["frames"]]
    assert frames and all(f["module"] is None for f in frames)
    assert [f["symbol"] for f in frames if f["symbol"] is None] == [None]  # the user PSW


def test_cpu_frame_in_a_module_is_named_as_sysrq_t_names_it(real_file, real_text, tmp_path):
    """CPU 1's PSW set to an address in jbd2 that the guest's sysrq-t printed (a crafted
    copy of the QEMU ELF: only the PSW of CPU 1's NT_PRSTATUS changes): `bt` prints it as the
    kernel did, `[module]` and all, the same text `bt --pid` prints for that task's frame,
    and its JSON frame names the module."""
    pc, kernel_printed = sysrq_t_module_frame(real_text)
    assert kernel_printed == "kjournald2+0x282/0x2d0 [jbd2]"
    src = real_file(INPUTS[1])
    with open(src, "rb") as f:
        head = f.read(0x1000)  # the PT_NOTE (0x130, 0x9b0 bytes) lies in it
    user_psw = (0x0705200180000000).to_bytes(8, "big") + (0x1000C80).to_bytes(8, "big")
    assert head.count(user_psw) == 1  # CPU 1's prstatus (qemu-elf.notes.txt)
    kernel_psw = (0x0704C00180000000).to_bytes(8, "big") + pc.to_bytes(8, "big")
    img = tmp_path / "cpu1-in-jbd2.elf"
    if subprocess.run(["cp", "--sparse=always", str(src), str(img)], check=False).returncode:
        shutil.copyfile(src, img)
    with open(img, "r+b") as f:
        f.seek(head.index(user_psw))
        f.write(kernel_psw)

    code, out, err = run("bt", "--cpu", "1", str(img))
    assert code == 0, err
    line = f"[<{pc:016x}>] {kernel_printed}"
    assert line in out.splitlines()[3], out  # frame 0, after symbols, blank and CPU lines
    assert "modules" not in err  # read without a warning
    code, out, err = run("bt", "--cpu", "1", "--json", str(img))
    assert code == 0, err
    frame0 = json.loads(out)["cpus"][0]["frames"][0]
    assert (frame0["pc"], frame0["symbol"], frame0["offset"], frame0["size"],
            frame0["module"]) == (pc, "kjournald2", 0x282, 0x2D0, "jbd2")
    assert list(frame0) == ["pc", "symbol", "offset", "size", "sp", "stack", "reliable",
                            "module"]
    # the task side names the same address the same way (the one symbolizer)
    code, out, err = run("bt", "--pid", "190", str(src))
    assert code == 0, err
    assert f" {line} " in out.splitlines()
    # a damaged --btf: the frame stays as kallsyms has it, one warning, still exit 0
    bad = tmp_path / "bad.btf"
    bad.write_bytes(b"\x9f\xeb\x01\x00" + bytes(20))
    code, out, err = run("bt", "--cpu", "1", "--btf", str(bad), str(img))
    assert code == 0, err
    assert f"[<{pc:016x}>] [module] {pc:#x}" in out.splitlines()[3]
    assert "warning: modules not read, their frames stay raw: --btf" in err


def test_cpu_frame_in_a_module_stays_raw_without_btf(real_file):
    """rimg (6.1, no BTF): a frame kallsyms cannot name stays as it was printed before
    module names came, and no warning is added for the missing BTF."""
    from sadump.analysis import analyse
    from sadump.kernel.unwind import Frame
    from sadump.render.backtraces import backtraces_json, name_module_frames, text_lines

    analysis = analyse(str(real_file("rimg-kdump.qemu.elf")))
    try:
        bt = analysis_backtraces_of(analysis)
        unnamed = (bt.symbols.module_range[0] + 0x1000 if bt.symbols.module_range
                   else 0x3FF80001000)
        assert bt.symbols.lookup(unnamed).name is None
        bt.cpus[0].walk.frames.insert(0, Frame(unnamed, 0, "task", True, "psw"))
        before_text, before_json = text_lines(bt), backtraces_json(bt)
        warnings = list(bt.warnings)
        name_module_frames(analysis, bt)
        assert bt.symbolize is None and bt.warnings == warnings
        assert text_lines(bt) == before_text and backtraces_json(bt) == before_json
        assert before_json["cpus"][0]["frames"][0]["module"] is None
    finally:
        analysis.close()


def analysis_backtraces_of(analysis):
    from sadump.render.backtraces import analysis_backtraces

    return analysis_backtraces(analysis)

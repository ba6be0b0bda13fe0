"""Command line: parse, call the pipeline, render, map outcomes to exit statuses.

All exit statuses live here, in one place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from enum import Enum, IntEnum
from pathlib import Path
from typing import Annotated

import click
import typer

from sadump.constants import FULL, KDUMP
from sadump.errors import FilterError, ImageChanged, SadumpError


class Exit(IntEnum):
    OK = 0  # inspect: kdump possible; dump: kdump vmcore (or the requested dump) written
    USAGE = 2  # bad command line (typer/click's own status)
    FULL_DUMP = 3  # inspect: a trigger would fall back to a full dump; dump: full dump written as fallback
    IMAGE_ERROR = 4  # the image cannot be read
    NOT_WRITTEN = 5  # dump: nothing written (output exists, no room, I/O error, ...)
    KDUMP_REFUSED = 6  # dump --mode kdump: kdump is not possible, nothing written
    NO_TYPES = 7  # ps, modules, bt --pid/--state/--all: no BTF in the kernel (and no --btf FILE)
    INTERNAL = 70  # a bug in sadump (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C


app = typer.Typer(
    help="Stand-alone dump trigger model for IBM Z (s390x) Linux. "
    "Not Fujitsu's x86 'sadump' dump format.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # rich's help panels for a person at a terminal; plain click text for pipes and scripts
    # (`sadump dump --help | grep`), which also spares them rich's import (about 60 ms)
    rich_markup_mode="rich" if sys.stdout.isatty() else None,
)

ImageArg = Annotated[
    list[Path] | None,
    typer.Argument(help="memory image: raw, ELF core, s390 dump (classic, s390_ext, tape), "
                   "kdump-compressed (flat too); several files: the volumes of one "
                   "multi-volume dump, in any order", show_default=False),
]
class InputFormatName(str, Enum):
    """The readers of sadump.formats.READERS, by name."""

    raw = "raw"
    elf = "elf"
    s390 = "s390"
    kdump = "kdump"
    kdump_flat = "kdump-flat"
    s390_ext = "s390_ext"
    s390mv_ext = "s390mv_ext"
    s390tape = "s390tape"
    vmdump = "vmdump"
    ngdump = "ngdump"


class DumpMode(str, Enum):
    auto = "auto"
    kdump = "kdump"
    full = "full"


class OutputFormat(str, Enum):
    elf = "elf"
    s390 = "s390"
    kdump = "kdump"


class Codec(str, Enum):
    zstd = "zstd"
    zlib = "zlib"
    lzo = "lzo"
    snappy = "snappy"
    none = "none"


InputFormat = Annotated[
    InputFormatName | None,
    typer.Option("--input-format", "-F", help="skip probing: read IMAGE as this format"),
]
BlockSizeOpt = Annotated[int | None, typer.Option(
    "--block-size", metavar="BYTES", help="s390_ext: the dump device's block size (4096 ECKD, "
    "512 FBA; default: found from the dump's segment chain)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object on stdout")]
BtfOpt = Annotated[
    Path | None,
    typer.Option("--btf", metavar="FILE", help="the same kernel's /sys/kernel/btf/vmlinux, "
                 "for a kernel without BTF in memory (CONFIG_DEBUG_INFO_BTF not set)",
                 show_default=False),
]
SampleOpt = Annotated[bool, typer.Option("--sample", help="use the small sample image shipped "
                                         "with sadump")]


def _version(value: bool) -> None:
    if value:
        from sadump import __version__

        print(f"sadump {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print sadump's version")] = False,
         ) -> None:
    """sadump: models the s390 external dump trigger on memory images."""


def json_text(obj: dict) -> str:
    """A command's JSON, led by the version of sadump that wrote it."""
    from sadump import __version__

    return json.dumps({"sadump_version": __version__, **obj}, indent=2) + "\n"


def err(message: str) -> None:
    """One line on stderr: the only way sadump talks besides its report."""
    print(f"sadump: {message}", file=sys.stderr)


def fail(status: Exit, message: str) -> typer.Exit:
    err(f"error: {message}")
    return typer.Exit(int(status))


def resolve_image(image: list[Path] | None, sample: bool | None) -> list[str]:
    """sample None: the command has no --sample."""
    if sample:
        from sadump.sample import sample_image_path

        path = sample_image_path()
        err(f"using the bundled sample image {path}")
        return [str(path)]
    if not image:
        raise fail(Exit.USAGE, "missing SOURCE" if sample is None else
                   "missing IMAGE (or --sample for the bundled sample image)")
    return [str(p) for p in image]


def open_analysis(image: list[Path] | None, sample: bool | None,
                  input_format: InputFormatName | None, block_size: int | None = None):
    from sadump.analysis import analyse
    from sadump.libc import reuse_block_memory

    reuse_block_memory()  # every command reads MiB blocks: no fresh pages for each one

    paths = resolve_image(image, sample)
    if block_size is not None and block_size not in (512, 1024, 2048, 4096):
        raise fail(Exit.USAGE, f"--block-size {block_size}: a device block size of 512, 1024, "
                   "2048 or 4096 bytes")
    try:
        return analyse(paths, input_format.value if input_format else None, block_size)
    except (SadumpError, ImageChanged) as e:
        raise fail(Exit.IMAGE_ERROR, str(e)) from None


@app.command("inspect-meminfo")
def inspect_meminfo(
    image: ImageArg = None,
    json_out: JsonOpt = False,
    input_format: InputFormat = None,
    sample: SampleOpt = False,
    block_size: BlockSizeOpt = None,
) -> None:
    """Find, decode and validate os_info (the 2011 design's meminfo); say what a trigger would do."""
    from sadump.render import report

    analysis = open_analysis(image, sample, input_format, block_size)
    try:
        for w in analysis.warnings:
            err(f"warning: {w}")
        if json_out:
            write_stdout(json_text(report.analysis_json(analysis)))
        else:
            with to_stdout():
                report.render_inspect(analysis, stdout_console())
        if analysis.decision.path != KDUMP:
            err(report.trigger_sentence(analysis))
    finally:
        analysis.close()
    raise typer.Exit(int(Exit.FULL_DUMP if analysis.decision.path == FULL else Exit.OK))


# optional to typer (the command says "missing SOURCE"): typer's "[required]" would pull
# rich into plain --help
SourceArg = Annotated[
    list[Path] | None,
    typer.Argument(help="memory image or vmcore: raw, ELF core, s390 dump (classic, s390_ext, "
                   "tape), kdump-compressed (flat too), sadump's own output; several files: "
                   "the volumes of one multi-volume dump", metavar="SOURCE...",
                   show_default=False),
]


@contextlib.contextmanager
def to_stdout():
    """Output to stdout: a reader that goes away (`| head`) ends the command quietly; a full
    disk behind `> report.json` is one line and exit 5, not an internal error."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as e:
        raise fail(Exit.NOT_WRITTEN, f"cannot write to stdout: {e.strerror or e}") from None


def stdout_console():
    """rich's Console on stdout, for use inside to_stdout(): rich's own answer to a reader
    that went away is SystemExit(1), which would replace the command's status."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _Console(highlight=False)


def write_stdout(text: str) -> None:
    with to_stdout():
        sys.stdout.write(text)


@app.command("dmesg")
def dmesg(
    source: SourceArg = None,
    json_out: JsonOpt = False,
    since: Annotated[float | None, typer.Option(
        "--since-boot-seconds", metavar="X",
        help="only records logged X seconds after boot or later")] = None,
    input_format: InputFormat = None,
    block_size: BlockSizeOpt = None,
) -> None:
    """Print the crashed kernel's log, found through VMCOREINFO (makedumpfile --dump-dmesg)."""
    from sadump.kernel import printk
    from sadump.render import crashinfo

    if since is not None and not math.isfinite(since):
        raise fail(Exit.USAGE, f"--since-boot-seconds {since}: not a number of seconds")
    analysis = open_analysis(source, None, input_format, block_size)
    try:
        try:
            log = printk.read_kernel_log(analysis.kernel_memory, analysis.vmcoreinfo.info)
        except printk.LogError as e:
            raise fail(Exit.IMAGE_ERROR, f"no kernel log: {e}") from None
        records = log.records
        if since is not None:
            # +-1e300 s are finite, but not in nanoseconds: an infinite bound keeps or drops all
            limit = since * 1e9
            limit = round(limit) if math.isfinite(limit) else limit
            records = [r for r in records if r.ts_nsec >= limit]
        for w in analysis.warnings + log.warnings:
            err(f"warning: {w}")
        if json_out:
            write_stdout(json_text(crashinfo.dmesg_json(analysis, log, records)))
        else:
            write_stdout("".join(r.line() + "\n" for r in records))
    finally:
        analysis.close()


@app.command("info")
def info(source: SourceArg = None, json_out: JsonOpt = False, input_format: InputFormat = None,
         block_size: BlockSizeOpt = None) -> None:
    """What crashed: kernel, crash time, CPUs and PSWs, memory, os_info, decision, last words."""
    from sadump.render import crashinfo

    analysis = open_analysis(source, None, input_format, block_size)
    try:
        ci = crashinfo.crash_info(analysis)
        for w in analysis.warnings + ci.warnings:
            err(f"warning: {w}")
        if json_out:
            write_stdout(json_text(crashinfo.info_json(analysis, ci)))
        elif sys.stdout.isatty():  # the class table with rich bars
            from sadump.render.tasks import render_summary

            write_stdout("\n".join(crashinfo.info_lines(analysis, ci, False, False)) + "\n")
            with to_stdout():
                console = stdout_console()
                render_summary(ci.tasks, ci.tasks_error, console)
                crashinfo.render_classes(ci.classes, ci.classes_error, console)
        else:
            write_stdout("\n".join(crashinfo.info_lines(analysis, ci)) + "\n")
    finally:
        analysis.close()


StatesOpt = Annotated[
    str | None,
    typer.Option("--state", metavar="LETTERS", help="only tasks in these states (R S D T t X "
                 "Z P I); for bt, D is what sysrq-w lists: uninterruptible, not TASK_IDLE "
                 "(a frozen task shows D, sysrq-w skips it)", show_default=False),
]


def task_list(analysis, btf: Path | None):
    """The image's tasks, or one line and exit 7 (no BTF) / 4 (no task list)."""
    from sadump.errors import NoBtfError
    from sadump.render import tasks

    try:
        return tasks.analysis_tasks(analysis, str(btf) if btf else None)
    except NoBtfError as e:
        raise fail(Exit.NO_TYPES, f"{e}") from None
    except SadumpError as e:
        raise fail(Exit.IMAGE_ERROR, f"no task list: {e}") from None


def check_states(states: str | None) -> None:
    from sadump.render.tasks import bad_states

    if states is not None and (not states or bad_states(states)):
        raise fail(Exit.USAGE, f"--state {states!r}: letters of R S D T t X Z P I")


@app.command("ps")
def ps(
    source: SourceArg = None,
    json_out: JsonOpt = False,
    states: StatesOpt = None,
    btf: BtfOpt = None,
    input_format: InputFormat = None,
    block_size: BlockSizeOpt = None,
) -> None:
    """Every task of the image (threads, kernel threads and idle tasks too), as ps -eL
    shows them; > marks the tasks running on a CPU. Needs the kernel's BTF.

    Exit: 0 listed; 4 image or task list unreadable; 7 no BTF (give --btf FILE)."""
    from sadump.render import tasks

    check_states(states)
    analysis = open_analysis(source, None, input_format, block_size)
    try:
        tl = task_list(analysis, btf)
        for w in analysis.warnings + tl.warnings:
            err(f"warning: {w}")
        shown = tasks.select(tl.tasks, states=states, sysrq=False)
        if json_out:
            write_stdout(json_text(tasks.ps_json(shown)))
        else:
            write_stdout("\n".join(tasks.ps_lines(tl, shown)) + "\n")
    finally:
        analysis.close()


@app.command("bt")
def bt(
    source: SourceArg = None,
    json_out: JsonOpt = False,
    cpu: Annotated[int | None, typer.Option("--cpu", metavar="N",
                                            help="only CPU N")] = None,
    pid: Annotated[int | None, typer.Option("--pid", metavar="N", help="the task with id N "
                                            "(a thread's TID) instead of the CPUs")] = None,
    states: StatesOpt = None,
    every: Annotated[bool, typer.Option("--all", help="every task, as sysrq-t prints "
                                        "them")] = False,
    btf: BtfOpt = None,
    input_format: InputFormat = None,
    block_size: BlockSizeOpt = None,
) -> None:
    """Every CPU's backtrace from the image alone (kallsyms, no vmlinux; frames in modules
    named when the kernel has BTF); with --pid, --state or --all the tasks' backtraces
    instead (needs the kernel's BTF).

    Exit: 0 shown; 2 no such CPU or task; 4 image unreadable; 7 no BTF (give --btf FILE)."""
    from sadump.render import backtraces

    if pid is not None or states is not None or every:
        if cpu is not None:
            raise fail(Exit.USAGE, "--cpu: not with --pid, --state or --all")
        check_states(states)
        task_bt(source, json_out, pid, states, every, btf, input_format, block_size)
        return
    analysis = open_analysis(source, None, input_format, block_size)
    try:
        result = backtraces.analysis_backtraces(analysis, cpu)
        if cpu is not None and not result.cpus:
            raise fail(Exit.USAGE, f"--cpu {cpu}: no such CPU in this image")
        backtraces.name_module_frames(analysis, result, str(btf) if btf else None)
        if not result.cpus:
            why = "; ".join(dict.fromkeys(result.warnings)) or "lowcore_ptr lists none"
            raise fail(Exit.IMAGE_ERROR, f"no CPUs found: {why}")
        for w in analysis.warnings + result.warnings:
            err(f"warning: {w}")
        if json_out:
            write_stdout(json_text(backtraces.backtraces_json(result)))
        else:
            write_stdout("\n".join(backtraces.text_lines(result)) + "\n")
    finally:
        analysis.close()


def task_bt(source, json_out: bool, pid: int | None, states: str | None, every: bool,
            btf: Path | None, input_format, block_size: int | None) -> None:
    from sadump.render import tasks

    analysis = open_analysis(source, None, input_format, block_size)
    try:
        tl = task_list(analysis, btf)
        chosen = tasks.select(tl.tasks, pid, states, every)
        if pid is not None and not chosen:
            raise fail(Exit.USAGE, f"--pid {pid}: no such task in this image")
        types = analysis.kernel_btf(str(btf) if btf else None)
        sym, warnings = tasks.symbolizer(analysis, types)
        traces = tasks.task_traces(analysis, chosen, sym)
        for w in analysis.warnings + tl.warnings + warnings + traces.warnings:
            err(f"warning: {w}")
        if json_out:
            write_stdout(json_text(tasks.traces_json(traces)))
        else:
            write_stdout("\n".join(tasks.text_lines(traces)) + "\n")
    finally:
        analysis.close()


def kernel_types(analysis, btf_file: Path | None):
    """(kallsyms, BTF) of the analysed kernel, or one line saying which is missing and
    why: exit 7 when the kernel has no BTF (NoBtfError names the config and --btf), else 4."""
    from sadump.errors import NoBtfError
    from sadump.kernel.kallsyms import KallsymsError

    try:
        symbols = analysis.symbols()
    except KallsymsError as e:
        raise fail(Exit.IMAGE_ERROR, f"no kernel symbols: {e}") from None
    try:
        btf = analysis.kernel_btf(str(btf_file) if btf_file is not None else None)
    except NoBtfError as e:
        raise fail(Exit.NO_TYPES, str(e)) from None
    except SadumpError as e:
        raise fail(Exit.IMAGE_ERROR, str(e)) from None
    return symbols, btf


@app.command("modules")
def modules(source: SourceArg = None, json_out: JsonOpt = False, btf: BtfOpt = None,
            input_format: InputFormat = None, block_size: BlockSizeOpt = None) -> None:
    """The loaded modules as /proc/modules lists them (kallsyms and the kernel's BTF).

    Exit: 0 listed; 4 image, symbols or module list unreadable; 7 no BTF (give --btf FILE)."""
    from sadump.kernel.modules import ModuleError, read_modules

    analysis = open_analysis(source, None, input_format, block_size)
    try:
        symbols, types = kernel_types(analysis, btf)
        try:
            found = read_modules(analysis.kernel_memory, symbols, types)
        except ModuleError as e:
            raise fail(Exit.IMAGE_ERROR, str(e)) from None
        for w in analysis.warnings + found.warnings:
            err(f"warning: {w}")
        if json_out:
            rows = [{"name": m.name, "size": m.size, "state": m.state_name,
                     "address": m.address, "refcount": m.refcount, "used_by": m.used_by,
                     "taints": m.flags()} for m in found]
            write_stdout(json_text({"modules": rows}))
        else:
            write_stdout("".join(m.proc_line() + "\n" for m in found))
    finally:
        analysis.close()


class Verify(str, Enum):
    memory = "memory"
    file = "file"
    none = "none"


def writer_options(fmt: str, compress: str | None, jobs: int | None, flatten: bool,
                   stdout: bool, verify: str | None):
    """--compress, --jobs, --flatten: kdump only; a codec whose package is missing is a
    usage error. -o - implies --flatten (a plain kdump file is written out of order).
    --verify: kdump (memory, file, none) and ELF (none skips the pyelftools check)."""
    if fmt != "kdump":
        given = [o for o, v in (("--compress", compress is not None),
                                ("--jobs", jobs is not None), ("--flatten", flatten)) if v]
        if given:
            raise fail(Exit.USAGE, f"{', '.join(given)}: only with --format kdump")
        if fmt == "s390" and verify is not None:
            raise fail(Exit.USAGE, "--verify: only with --format kdump or elf")
        if fmt == "elf":
            from sadump.writers.elf import ElfOptions

            return ElfOptions(verify)
        return None
    from sadump.writers.kdump import CodecUnavailable, KdumpOptions, page_compressor

    if jobs is not None and not 1 <= jobs <= 1024:
        raise fail(Exit.USAGE, f"--jobs {jobs}: a number of threads from 1 to 1024")
    if compress is not None:
        try:
            page_compressor(compress)
        except CodecUnavailable as e:
            raise fail(Exit.USAGE, str(e)) from None
    return KdumpOptions(compress, jobs, flatten or stdout, verify)


@app.command("dump")
def dump(
    image: ImageArg = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="output file, '-' for stdout (default: vmcore; dump.s390 "
        "with --format s390, vmcore.flat with --flatten)", show_default=False)] = None,
    mode: Annotated[DumpMode, typer.Option(
        "--mode", help="auto: the kdump vmcore when a trigger would start kdump, else a full "
        "dump; kdump: the kdump vmcore or nothing; full: all memory (default: auto)",
        show_default=False)] = DumpMode.auto,
    fmt: Annotated[OutputFormat, typer.Option(
        "--format", help="elf (vmcore), s390 (zgetdump -f s390) or kdump (makedumpfile's "
        "kdump-compressed; default: elf)", show_default=False)] = OutputFormat.elf,
    compress: Annotated[Codec | None, typer.Option(
        "--compress", help="kdump: how each page is compressed (default: zstd)",
        show_default=False)] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", help="kdump: compression threads (default: all CPUs)",
        show_default=False)] = None,
    flatten: Annotated[bool, typer.Option(
        "--flatten", help="kdump: makedumpfile's flattened format, for streams (implied by "
        "-o -)")] = False,
    dump_level: Annotated[int, typer.Option(
        "--dump-level", "-d", metavar="LEVEL",
        help="leave pages out as makedumpfile -d does: the sum of 1 zero, 2 cache, 4 cache "
        "private, 8 user, 16 free (31: all of them; 0, the default: every page)",
        show_default=False)] = 0,
    dump_level_fallback: Annotated[bool, typer.Option(
        "--dump-level-fallback", help="when VMCOREINFO lacks a key that the level needs, "
        "write the highest level it allows instead of refusing")] = False,
    verify: Annotated[Verify | None, typer.Option(
        "--verify", help="check what was written: kdump: memory (each compressed page "
        "decoded again, the default), file (read back from the file) or none; ELF: none "
        "skips the pyelftools read of the finished file", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output")] = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help="one JSON summary on stdout (on stderr with -o -)")] = False,
    input_format: InputFormat = None,
    sample: SampleOpt = False,
    block_size: BlockSizeOpt = None,
) -> None:
    """Write the vmcore the kdump kernel would have written, or a full dump, and say why.

    Exit: 0 kdump vmcore (or the asked --mode full dump) written; 3 full dump written as
    the fallback; 4 image unreadable; 5 nothing written (output exists, no room, I/O error);
    6 --mode kdump but kdump is not possible; 130 interrupted (nothing written).
    """
    from sadump.dump_plan import plan_dump, summary_json, summary_line, write_dump
    from sadump.writers.sink import DumpInterrupted, OutputError

    mode, fmt = mode.value, fmt.value
    if not 0 <= dump_level <= 31:
        raise fail(Exit.USAGE, f"--dump-level {dump_level}: a level from 0 to 31")
    if dump_level and fmt == "s390":
        raise fail(Exit.USAGE, f"--dump-level {dump_level}: the s390 format cannot mark a page "
                   "as left out (use --format kdump or elf)")
    if output is not None and not output.strip():
        raise fail(Exit.USAGE, f"--output {output!r}: a file name, or - for stdout")
    options = writer_options(fmt, compress.value if compress else None, jobs, flatten,
                             output == "-", verify.value if verify else None)
    target = output or ("dump.s390" if fmt == "s390" else "vmcore.flat" if flatten
                        else "vmcore")
    analysis = open_analysis(image, sample, input_format, block_size)
    try:
        for w in analysis.warnings:
            err(f"warning: {w}")
        decision = analysis.decision
        if mode == "kdump" and decision.path == FULL:
            raise fail(Exit.KDUMP_REFUSED, f"kdump is not possible: {decision.reason} "
                       f"({decision.reason_code:#x}): nothing written")
        # a dump given as input is converted as it is: its kdump-shaped view is the input
        path = FULL if mode == "full" or decision.path == FULL else KDUMP
        try:
            plan = plan_dump(analysis, path, fmt, options, dump_level, dump_level_fallback)
        except FilterError as e:
            raise fail(Exit.NOT_WRITTEN, f"cannot filter at dump level {dump_level}: {e}: "
                       "nothing written") from None
        except (SadumpError, ImageChanged) as e:
            raise fail(Exit.IMAGE_ERROR, f"{e}: nothing written") from None
        for w in plan.warnings:
            err(f"warning: {w}")
        err(plan.describe())
        try:
            result = write_dump(plan, target, force)
        except OutputError as e:
            raise fail(Exit.NOT_WRITTEN, str(e)) from None
        except DumpInterrupted as e:
            raise fail(Exit.INTERRUPTED, str(e)) from None
        except (SadumpError, ImageChanged) as e:
            raise fail(Exit.IMAGE_ERROR, str(e)) from None
        err(summary_line(plan, result))
        if json_out and target == "-":  # stdout holds the dump
            print(json_text(summary_json(plan, result)), end="", file=sys.stderr)
        elif json_out:
            write_stdout(json_text(summary_json(plan, result)))
    finally:
        analysis.close()
    status = Exit.FULL_DUMP if path == FULL and mode == "auto" else Exit.OK
    raise typer.Exit(int(status))


def main() -> None:
    """Entry point: no traceback ever reaches the user; the process then ends at once."""
    leave(run())


def run() -> int:
    """The command's exit status; every failure becomes one line on stderr."""
    try:
        app()
    except KeyboardInterrupt:
        err("interrupted")
        return int(Exit.INTERRUPTED)
    except SystemExit as e:
        # typer turns Ctrl-C inside a command into a silent Exit(130) raised `from` it
        if e.code == Exit.INTERRUPTED and isinstance(e.__context__, click.exceptions.Exit) \
                and isinstance(e.__context__.__cause__, KeyboardInterrupt):
            err("interrupted")
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        err(str(e.code))
        return 1
    except (SadumpError, ImageChanged) as e:
        err(f"error: {e}")
        return int(Exit.IMAGE_ERROR)
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        err(f"internal error: {type(e).__name__}: {e} (please report this)")
        return int(Exit.INTERNAL)
    return 0


def leave(status: int) -> None:
    """Flush stdout and stderr and end the process without the interpreter's teardown: by
    now every output file is written, fsynced, renamed and closed, and the worker threads
    are joined, so freeing every object one by one (10-30 ms, as long as a small command
    itself) would only delay the operator's prompt."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # a reader that went away (`| head`) wanted no more
    except (OSError, ValueError) as e:  # a full disk behind `> report.json`
        err(f"error: cannot write to stdout: {getattr(e, 'strerror', None) or e}")
        status = status or int(Exit.NOT_WRITTEN)
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(status)

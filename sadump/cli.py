"""Command line: parse, call the pipeline, render, map outcomes to exit statuses.

All exit statuses live here, in one place.
"""

from __future__ import annotations

import json
import sys
from enum import IntEnum
from pathlib import Path
from typing import Annotated

import typer

from sadump.errors import SadumpError


class Exit(IntEnum):
    OK = 0  # inspect: kdump possible; dump: kdump vmcore (or the requested dump) written
    USAGE = 2  # bad command line (typer/click's own status)
    FULL_DUMP = 3  # inspect: a trigger would fall back to a full dump; dump: full dump written as fallback
    IMAGE_ERROR = 4  # the image cannot be read
    NOT_WRITTEN = 5  # dump: nothing written (output exists, no room, I/O error, ...)
    KDUMP_REFUSED = 6  # dump --mode kdump: kdump is not possible, nothing written
    INTERNAL = 70  # a bug in sadump (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C


app = typer.Typer(
    help="Stand-alone dump trigger model for IBM Z (s390x) Linux. "
    "Not Fujitsu's x86 'sadump' dump format.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ImageArg = Annotated[
    Path | None,
    typer.Argument(help="memory image: raw, ELF core, s390 dump, kdump-compressed (flat too)",
                   show_default=False),
]
InputFormat = Annotated[
    str | None,
    typer.Option("--input-format", "-F",
                 help="skip probing: raw | elf | s390 | kdump | kdump-flat"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="one JSON object on stdout")]
SampleOpt = Annotated[bool, typer.Option("--sample", help="use the small sample image shipped "
                                         "with sadump")]


@app.callback()
def root() -> None:
    """sadump: models the s390 external dump trigger on memory images."""


def err(message: str) -> None:
    """One line on stderr: the only way sadump talks besides its report."""
    print(f"sadump: {message}", file=sys.stderr)


def fail(status: Exit, message: str) -> typer.Exit:
    err(f"error: {message}")
    return typer.Exit(int(status))


def resolve_image(image: Path | None, sample: bool) -> str:
    if sample:
        from sadump.sample import sample_image_path

        path = sample_image_path()
        err(f"using the bundled sample image {path}")
        return str(path)
    if image is None:
        raise fail(Exit.USAGE, "missing IMAGE (or --sample for the bundled sample image)")
    return str(image)


def open_analysis(image: Path | None, sample: bool, input_format: str | None):
    from sadump.pipeline import analyse

    path = resolve_image(image, sample)
    try:
        return analyse(path, input_format)
    except SadumpError as e:
        raise fail(Exit.IMAGE_ERROR, str(e)) from None


@app.command("inspect-meminfo")
def inspect_meminfo(
    image: ImageArg = None,
    json_out: JsonOpt = False,
    input_format: InputFormat = None,
    sample: SampleOpt = False,
) -> None:
    """Find, decode and validate os_info (meminfo); say what a trigger would do."""
    from sadump import report

    analysis = open_analysis(image, sample, input_format)
    try:
        for w in analysis.warnings:
            err(f"warning: {w}")
        if json_out:
            print(json.dumps(report.analysis_json(analysis), indent=2))
        else:
            from rich.console import Console

            report.render_inspect(analysis, Console(highlight=False))
        if analysis.decision.path != "kdump":
            err(report.trigger_sentence(analysis))
    finally:
        analysis.close()
    raise typer.Exit(int(Exit.OK if analysis.decision.path == "kdump" else Exit.FULL_DUMP))


def main() -> None:
    """Entry point: no traceback ever reaches the user."""
    try:
        app()
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(int(Exit.INTERRUPTED))
    except SadumpError as e:
        err(f"error: {e}")
        sys.exit(int(Exit.IMAGE_ERROR))
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        err(f"internal error: {type(e).__name__}: {e} (please report this)")
        sys.exit(int(Exit.INTERNAL))

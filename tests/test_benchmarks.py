"""benchmarks/run.py's own arithmetic: the fixed cost of a kdump file that its size row takes
off is what the writer laid out before the page data (headers, bitmaps, descriptors, zero
page)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from sadump.analysis import analyse
from sadump.dump_plan import plan_dump, write_dump
from tests.fixtures.builder import ImageSpec, write_raw

_spec = importlib.util.spec_from_file_location(
    "sadump_bench_run", Path(__file__).resolve().parents[1] / "benchmarks" / "run.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # its dataclasses look their module up
_spec.loader.exec_module(bench)


def test_kdump_fixed_cost_is_everything_before_the_page_data(tmp_path):
    image = write_raw(ImageSpec(crashtime=1), tmp_path / "mem.raw")
    analysis = analyse(str(image))
    try:
        plan = plan_dump(analysis, "full", "kdump")
        write_dump(plan, str(tmp_path / "vmcore"), progress=False)
    finally:
        analysis.close()
    lay = plan.layout
    assert bench.kdump_fixed(tmp_path / "vmcore") == lay.data_start + 4096
    assert lay.data_start == lay.desc_off + 24 * lay.pages
    assert bench.kdump_fixed(image) == 0  # not a kdump file

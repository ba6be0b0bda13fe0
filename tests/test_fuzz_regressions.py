"""Regressions found by the damage campaign (tests/fuzz_campaign.py): one test per class of
failure, each on the smallest input that showed it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sadump(*args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sadump", *args], cwd=ROOT,
                            stdout=stdout, stderr=subprocess.PIPE)


def test_inspect_to_a_closed_pipe_keeps_its_status():
    """`sadump inspect-meminfo IMG | head -c 10`: rich's own broken-pipe handler exited 1
    (undocumented); the command ends quietly with the status it has with a reader."""
    whole = sadump("inspect-meminfo", "--sample")
    out, errs = whole.communicate(timeout=120)
    assert out and whole.returncode in (0, 3)
    cut = sadump("inspect-meminfo", "--sample")
    cut.stdout.close()  # the reader is gone before a byte is written
    errs = cut.stderr.read().decode()
    assert cut.wait(timeout=120) == whole.returncode, errs
    assert "Traceback" not in errs and "error" not in errs

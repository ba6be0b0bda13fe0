"""A small seeded sample of the damage campaign (tests/fuzz_campaign.py) on the real
stand-alone dumps: every damaged copy ends with a documented exit status and one error line,
never a traceback, a timeout or a memory blow-up, and a dump that fails leaves no file.
The whole campaign (thousands of cases) is run by hand: see the script's docstring."""

from __future__ import annotations

import random

import pytest

from tests.fuzz_campaign import run_job, sa_ext_cases, vmdump_cases

#: (real file, cases taken, commands)
SAMPLES = [("sa/rimg-kdump.ext-zlib.s390", 6, ["info", "dump-full"]),
           ("sa/rimg-kdump.vmdump", 6, ["info", "dump-full"])]


@pytest.mark.parametrize("name,count,cmds", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_damaged_real_dumps_fail_cleanly(real_file, tmp_path, monkeypatch, name, count, cmds):
    monkeypatch.setenv("RFUZZ_TMP", str(tmp_path))
    src = str(real_file(name))
    rng = random.Random(20261206)
    make = sa_ext_cases if name.endswith(".s390") else vmdump_cases
    cases = rng.sample(make(rng, src, 4), count)
    bad = []
    for i, d in enumerate(cases):
        for o in run_job((src, d, cmds, [], None, None), str(tmp_path), i):
            if o.verdict != "ok":
                bad.append(f"{o.verdict} rc={o.rc} [{o.cmd}] {o.case}: {o.detail}")
    assert not bad, "\n".join(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # copies and outputs removed

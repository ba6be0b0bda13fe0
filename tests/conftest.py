"""Shared fixtures: the real s390x images of ../shared/real, decompressed once per test run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_DIR = ROOT.parent / "shared" / "real"
ABSENT = f"{REAL_DIR} is absent: real s390x images not available"

# `import sadump` and `import tests.fixtures` work however pytest was started.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures import IN_CI, decompress_zst_sparse


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real: uses the real s390x images of ../shared/real (skipped when absent, but "
        "failed under CI=true)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that ask for real data are marked `real` (so `-m "not real"` leaves them out)."""
    for item in items:
        if {"real_file", "real_text"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)


def real_dir_present() -> None:
    """Skip when ../shared/real is absent, but fail under CI (CI=true), where it must be."""
    if REAL_DIR.is_dir():
        return
    if IN_CI:
        pytest.fail(f"{ABSENT} (CI is set: the real data must be there)", pytrace=False)
    pytest.skip(ABSENT)


@pytest.fixture(scope="session")
def real_file(tmp_path_factory: pytest.TempPathFactory):
    """name -> Path of the decompressed real file, e.g. real_file("rimg-kdump.raw").

    Each file is decompressed (sparse) on first request, once per run. SADUMP_REAL_CACHE may
    name a folder that already holds decompressed files (a developer speed-up).
    """
    done: dict[str, Path] = {}
    cache = os.environ.get("SADUMP_REAL_CACHE")
    folder: list[Path] = []

    def get(name: str) -> Path:
        if name in done:
            return done[name]
        if cache and (Path(cache) / name).is_file():
            done[name] = Path(cache) / name
            return done[name]
        real_dir_present()
        src = REAL_DIR / f"{name}.zst"
        if not src.is_file():
            pytest.fail(f"no real file {name}: {src} does not exist")
        if not folder:
            folder.append(tmp_path_factory.mktemp("real"))
        done[name] = decompress_zst_sparse(src, folder[0] / name)
        return done[name]

    return get


@pytest.fixture(scope="session")
def real_text():
    """name -> str of one of the real text files, e.g. real_text("rimg-kdump.osinfo.txt")."""

    def get(name: str, encoding: str = "utf-8") -> str:
        real_dir_present()
        path = REAL_DIR / name
        if not path.is_file():
            pytest.fail(f"no real text {name}: {path} does not exist")
        return path.read_text(encoding=encoding)  # latin-1: kernel log bytes

    return get

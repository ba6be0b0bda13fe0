"""The small sample image shipped inside the package (made by tests/fixtures/builder.py)."""

from __future__ import annotations

import gzip
import shutil
import tempfile
from importlib import resources
from pathlib import Path

SAMPLE = "sample.img.gz"


def sample_image_path() -> Path:
    """Decompress the sample once per user into the temp folder; return its path."""
    target = Path(tempfile.gettempdir()) / "sadump-sample.img"
    source = resources.files("sadump") / "data" / SAMPLE
    if not target.exists():
        tmp = target.with_suffix(".tmp")
        with source.open("rb") as raw, gzip.open(raw) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)
    return target

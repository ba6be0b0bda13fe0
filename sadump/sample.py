"""The small sample image shipped inside the package (made by tests/fixtures/builder.py)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

SAMPLE = "sample.img.gz"


def sample_image_path() -> Path:
    """Decompress the sample once per version of it into the temp folder; return its path."""
    source = resources.files("sadump") / "data" / SAMPLE
    tag = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"sadump-sample-{tag}.img"
    if not target.exists():
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        with source.open("rb") as raw, gzip.open(raw) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(target)
    return target

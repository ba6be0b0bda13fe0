"""Memory-image readers, chosen by probing magic (zgetdump's dfi_vec order, raw last)."""

from __future__ import annotations

import importlib

from sadump.errors import ImageError
from sadump.formats.memory import PhysicalMemory

#: probe order: name -> (module, class). Each class has `probe(head: bytes) -> bool`.
READERS: dict[str, tuple[str, str]] = {
    "s390": ("sadump.formats.s390", "S390Dump"),
    "vmdump": ("sadump.formats.vmdump", "VmDump"),
    "kdump": ("sadump.formats.kdump", "KdumpFile"),
    "kdump-flat": ("sadump.formats.kdump", "FlattenedKdumpFile"),
    "elf": ("sadump.formats.elf", "ElfCore"),
    "ngdump": ("sadump.formats.ngdump", "NgDump"),
    "raw": ("sadump.formats.raw", "RawImage"),
}

PROBE_BYTES = 4096


def reader_class(name: str):
    module, cls = READERS[name]
    return getattr(importlib.import_module(module), cls)


def open_image(path: str, input_format: str | None = None) -> PhysicalMemory:
    """Open path with the named reader, or the first whose magic matches."""
    try:
        with open(path, "rb") as f:
            head = f.read(PROBE_BYTES)
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot open: {e.strerror or e}") from None
    if not head:
        raise ImageError(f"{path}: empty file")
    if input_format is not None:
        if input_format not in READERS:
            raise ImageError(
                f"unknown input format {input_format!r}; known: {', '.join(READERS)}"
            )
        return reader_class(input_format)(path)
    for name in READERS:
        cls = reader_class(name)
        if cls.probe(head):
            return cls(path)
    raise ImageError(f"{path}: no reader recognises it")  # pragma: no cover - raw takes all


"""Memory-image readers, chosen by probing magic (zgetdump's dfi_vec order, raw last)."""

from __future__ import annotations

import importlib
import os
import stat
from collections.abc import Sequence

from sadump.errors import ImageError
from sadump.formats.memory import PhysicalMemory

#: probe order: name -> (module, class). Each class has `probe(head: bytes) -> bool`.
READERS: dict[str, tuple[str, str]] = {
    "s390mv_ext": ("sadump.formats.s390_ext", "S390MvDump"),
    "s390_ext": ("sadump.formats.s390_ext", "S390ExtDump"),
    "s390tape": ("sadump.formats.s390_ext", "S390TapeDump"),
    "s390": ("sadump.formats.s390", "S390Dump"),
    "vmdump": ("sadump.formats.vmdump", "VmDump"),
    "kdump": ("sadump.formats.kdump", "KdumpFile"),
    "kdump-flat": ("sadump.formats.kdump", "FlattenedKdumpFile"),
    "elf": ("sadump.formats.elf", "ElfCore"),
    "ngdump": ("sadump.formats.ngdump", "NgDump"),
    "raw": ("sadump.formats.raw", "RawImage"),
}

#: enough for an s390_ext segment header and a whole volume's multi-volume parameter table
PROBE_BYTES = 0x8000


def reader_class(name: str):
    module, cls = READERS[name]
    return getattr(importlib.import_module(module), cls)


#: what a path that is no regular file is, for the message (opening a FIFO would block)
_NOT_REGULAR = ((stat.S_ISFIFO, "pipe (FIFO)"), (stat.S_ISSOCK, "socket"),
                (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def _head(path: str) -> bytes:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG  # open() below says why
    for test, kind in _NOT_REGULAR:
        if test(mode):
            raise ImageError(f"{path}: is a {kind}, not a file: sadump reads an image in "
                             "place; copy it into a file first (dd, zstdcat > FILE)")
    try:
        with open(path, "rb") as f:
            head = f.read(PROBE_BYTES)
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot open: {e.strerror or e}") from None
    if not head:
        raise ImageError(f"{path}: empty file")
    return head


def probe(path: str, head: bytes | None = None) -> str:
    """The name of the first reader whose magic matches the file."""
    head = _head(path) if head is None else head
    for name in READERS:
        if reader_class(name).probe(head):
            return name
    raise ImageError(f"{path}: no reader recognises it")  # pragma: no cover - raw takes all


def open_image(path: str | os.PathLike | Sequence, input_format: str | None = None,
               block_size: int | None = None) -> PhysicalMemory:
    """Open an image with the named reader, or the first whose magic matches. Several files
    are the volumes of one multi-volume dump (in any order); block_size is the device block
    size of an s390_ext dump (found from the file when None)."""
    paths = [os.fspath(path)] if isinstance(path, (str, os.PathLike)) else \
        [os.fspath(p) for p in path]
    if not paths:
        raise ImageError("no image given")
    if input_format is not None and input_format not in READERS:
        raise ImageError(f"unknown input format {input_format!r}; known: {', '.join(READERS)}")
    heads = [_head(p) for p in paths]
    names = [input_format or probe(p, h) for p, h in zip(paths, heads, strict=True)]
    if len(paths) > 1 or names[0] == "s390mv_ext":
        for p, n in zip(paths, names, strict=True):
            if n != "s390mv_ext":
                raise ImageError(f"{p}: is {n}, not a volume of a multi-volume dump: give "
                                 "several files only for the volumes of one zipl -M dump")
        return reader_class("s390mv_ext")(paths)
    if block_size is not None:
        if names[0] != "s390_ext":
            raise ImageError(f"{paths[0]}: --block-size is for s390_ext dumps; this is "
                             f"{names[0]}")
        return reader_class(names[0])(paths[0], block_size=block_size)
    return reader_class(names[0])(paths[0])

"""Typed failures. The CLI turns each into one line of text and an exit status."""


class SadumpError(Exception):
    """Base of every failure sadump reports to the user instead of a traceback."""


class ImageError(SadumpError):
    """The image cannot be read as the format it claims (truncated, corrupt, unknown)."""


class AbsentMemoryError(SadumpError):
    """A read touched physical memory that the image does not hold."""

    def __init__(self, paddr: int, size: int, detail: str = ""):
        self.paddr = paddr
        self.size = size
        msg = f"memory [{paddr:#x}, {paddr + size:#x}) is not present in the image"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class FilterError(SadumpError):
    """Page filtering (a dump level) cannot be done as asked: the kernel layer's errors of
    sadump.kernel.mem_section derive from it."""


CHANGED = "the image changed or could not be read while it was read"


class ImageChanged(Exception):
    """The image file shrank or failed to read (EIO) after it was opened.

    Deliberately not a SadumpError: the layers that read around damage (a lowcore that
    cannot be read, a lost printk record) catch SadumpError, and none may read around this.
    The CLI turns it into exit 4 with CHANGED."""

    def __init__(self, detail: str):
        super().__init__(f"{CHANGED} ({detail})")


class BtfError(SadumpError):
    """The kernel's BTF type information is damaged, or lacks a type or member asked for."""


class NoBtfError(BtfError):
    """The kernel carries no BTF (CONFIG_DEBUG_INFO_BTF not set) and no --btf FILE was given."""

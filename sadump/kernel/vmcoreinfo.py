"""The VMCOREINFO text, parsed once into keys: symbols, sizes, offsets, lengths, numbers."""

from __future__ import annotations


class VmcoreInfo:
    """Key=value lines of a VMCOREINFO text. Missing keys give None, never an exception."""

    def __init__(self, text: str):
        self.text = text
        self.values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key not in self.values:
                self.values[key] = value.strip()

    @classmethod
    def from_bytes(cls, data: bytes) -> VmcoreInfo:
        return cls(data.split(b"\0", 1)[0].decode("ascii", "replace"))

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def hex(self, key: str) -> int | None:
        value = self.values.get(key)
        try:
            return int(value, 16) if value is not None else None
        except ValueError:
            return None

    def dec(self, key: str) -> int | None:
        value = self.values.get(key)
        try:
            return int(value, 0) if value is not None else None
        except ValueError:
            return None

    def symbol(self, name: str) -> int | None:
        return self.hex(f"SYMBOL({name})")

    def size(self, name: str) -> int | None:
        return self.dec(f"SIZE({name})")

    def offset(self, name: str) -> int | None:
        return self.dec(f"OFFSET({name})")

    def length(self, name: str) -> int | None:
        return self.dec(f"LENGTH({name})")

    def number(self, name: str) -> int | None:
        return self.dec(f"NUMBER({name})")

    @property
    def osrelease(self) -> str | None:
        return self.values.get("OSRELEASE")

    @property
    def pagesize(self) -> int | None:
        return self.dec("PAGESIZE")

    @property
    def crashtime(self) -> int | None:
        return self.dec("CRASHTIME")

    @property
    def kerneloffset(self) -> int | None:
        return self.hex("KERNELOFFSET")


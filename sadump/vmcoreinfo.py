"""The VMCOREINFO text: parsed once into keys; symbols, sizes, offsets, and the
virtual-to-physical rule of s390 kernels (spec 7.4)."""

from __future__ import annotations

from dataclasses import dataclass

#: A VMCOREINFO text is a few KiB; the kernel's buffer is one page. Anything larger is damage.
MAX_VMCOREINFO = 64 << 10


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

    def _hex(self, key: str) -> int | None:
        value = self.values.get(key)
        try:
            return int(value, 16) if value is not None else None
        except ValueError:
            return None

    def _dec(self, key: str) -> int | None:
        value = self.values.get(key)
        try:
            return int(value, 0) if value is not None else None
        except ValueError:
            return None

    def symbol(self, name: str) -> int | None:
        return self._hex(f"SYMBOL({name})")

    def size(self, name: str) -> int | None:
        return self._dec(f"SIZE({name})")

    def offset(self, name: str) -> int | None:
        return self._dec(f"OFFSET({name})")

    def length(self, name: str) -> int | None:
        return self._dec(f"LENGTH({name})")

    def number(self, name: str) -> int | None:
        return self._dec(f"NUMBER({name})")

    @property
    def osrelease(self) -> str | None:
        return self.values.get("OSRELEASE")

    @property
    def pagesize(self) -> int | None:
        return self._dec("PAGESIZE")

    @property
    def crashtime(self) -> int | None:
        return self._dec("CRASHTIME")

    @property
    def kerneloffset(self) -> int | None:
        return self._hex("KERNELOFFSET")

    def without_crashtime(self) -> str:
        return "".join(
            line for line in self.text.splitlines(keepends=True) if not line.startswith("CRASHTIME=")
        )


@dataclass(frozen=True)
class AddressTranslation:
    """Kernel virtual -> physical for s390 (spec 7.4).

    Before 6.10 the kernel ran on the identity map (virtual == physical). From 6.10 the
    image is mapped at KERNELOFFSET apart from the identity map at IDENTITYBASE.
    """

    identity_base: int = 0
    kaslr_offset: int = 0
    kaslr_offset_phys: int = 0
    amode31_start: int = 0
    amode31_end: int = 0

    @property
    def separate_image(self) -> bool:
        return self.kaslr_offset != 0

    def to_physical(self, vaddr: int) -> int:
        if not self.separate_image or vaddr < 0x2000:
            return vaddr
        if self.amode31_start <= vaddr < self.amode31_end:
            return vaddr
        if vaddr < self.kaslr_offset:
            return vaddr - self.identity_base
        return vaddr - self.kaslr_offset + self.kaslr_offset_phys

    @classmethod
    def from_vmcoreinfo(cls, info: VmcoreInfo) -> AddressTranslation:
        def h(key: str) -> int:
            return info._hex(key) or 0

        return cls(h("IDENTITYBASE"), h("KERNELOFFSET"), h("KERNELOFFPHYS"),
                   h("SAMODE31"), h("EAMODE31"))

"""Names for code addresses, one way for every backtrace (the CPUs' and the tasks'): vmlinux
addresses through kallsyms, addresses in modules through each module's own symbol table
(sadump.kernel.modules), printed as the kernel prints them (%pSR): `symbol+0xoff/0xsize
[module]`."""

from __future__ import annotations

from dataclasses import dataclass

from sadump.errors import SadumpError

#: the warning when the module list cannot be read (kallsyms still names vmlinux frames)
MODULES_NOT_READ = "modules not read, their frames stay raw"


@dataclass(frozen=True)
class Symbol:
    """One address as the kernel prints it (%pSR), with its module."""

    address: int
    name: str | None
    offset: int | None
    size: int | None
    module: str | None = None

    def __str__(self) -> str:
        if self.name is None:
            return f"{self.address:#x}"
        text = f"{self.name}+{self.offset:#x}/{self.size:#x}"
        return f"{text} [{self.module}]" if self.module else text


class Symbolizer:
    """vmlinux addresses through kallsyms, module addresses through each module's own
    kallsyms (sadump.kernel.modules), when there are modules to ask."""

    def __init__(self, syms, modules=None):
        self.syms = syms
        self.modules = modules

    def __call__(self, pc: int) -> Symbol:
        if self.syms is not None:
            s = self.syms.lookup(pc)
            if s.name is not None:
                return Symbol(pc, s.name, s.offset, s.size)
        if self.modules:
            from sadump.kernel.modules import module_symbol

            m = module_symbol(self.modules, pc)
            if m is not None:
                return Symbol(pc, *m)
        return Symbol(pc, None, None, None)

    def is_text(self, pc: int) -> bool:
        """__kernel_text_address(): vmlinux text, or a module's text."""
        if self.syms is not None and self.syms.is_core_text(pc):
            return True
        if self.modules:
            from sadump.kernel.modules import module_of

            m = module_of(self.modules, pc)
            return m is not None and any(lo <= pc < hi for lo, hi in (m.text, m.init_text))
        return self.syms is not None and self.syms.in_modules(pc)

    def sched(self, pc: int) -> bool:
        """in_sched_functions(): the .sched.text and .spinlock.text of the kernel, which
        /proc/PID/stack leaves out."""
        s = self.syms
        if s is None:
            return False
        for a, b in (("__sched_text_start", "__sched_text_end"),
                     ("__lock_text_start", "__lock_text_end")):
            lo, hi = s.address(a), s.address(b)
            if lo is not None and hi is not None and lo <= pc < hi:
                return True
        return False


def symbolizer(analysis, btf) -> tuple[Symbolizer, list[str]]:
    """kallsyms and, when the kernel's BTF describes them, the loaded modules."""
    from sadump.kernel.kallsyms import KallsymsError

    warnings = []
    try:
        syms = analysis.symbols()
    except KallsymsError as e:
        syms = None
        warnings.append(f"no kallsyms: {e}")
    mods = None
    try:
        from sadump.kernel.modules import read_modules

        if syms is None:
            return Symbolizer(None, None), warnings

        mods = read_modules(analysis.kernel_memory, syms, btf)
        warnings += mods.warnings
    except SadumpError as e:
        warnings.append(f"{MODULES_NOT_READ}: {e}")
    return Symbolizer(syms, mods), warnings

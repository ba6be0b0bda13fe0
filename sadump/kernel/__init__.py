"""What the crashed kernel keeps in its own memory: VMCOREINFO, address translation (linear
rules and the DAT page-table walk), the printk log, kallsyms, stacks, struct page classes.

Everything here reads through `KernelMemory` (kernel virtual addresses) over a
`PhysicalMemory`; nothing here knows which file format the memory came from."""

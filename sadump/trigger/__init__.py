"""The trigger's verdict: is the kdump kernel there and intact (kexec segment digest), and
does the os_info map allow the hand-off (decision: kdump, full or already dumped)."""

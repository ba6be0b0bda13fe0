"""What the s390 architecture and the boot ABI define: lowcore fields, the store-status save
area, the kernel entry table and parmarea, the IPL parameter block."""

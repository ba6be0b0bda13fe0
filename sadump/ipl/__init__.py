"""What the s390 architecture and boot ABI define: lowcore, save areas, kernel entry
table, IPL parameter block, and the trigger's hand-off decision."""

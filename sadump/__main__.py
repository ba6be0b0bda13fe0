from sadump.cli import main

main()

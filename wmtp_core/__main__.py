from wmtp_core.cli import main

main()

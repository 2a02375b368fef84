from flo_server.cli import main

main()

from irgate.cli import main

main()

from detnas.cli import main

main()

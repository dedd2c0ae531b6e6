from pvkd.cli import main

main()

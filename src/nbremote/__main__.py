from nbremote.cli import main

main()

from nbremote.entry import main

main()

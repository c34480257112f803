from inventoryd.cli import main

main()

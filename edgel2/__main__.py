from edgel2.cli import main

main()

from stdiff.cli import main

main()

from stdiff.bench import main

main()

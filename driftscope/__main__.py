from driftscope.cli import main

main()

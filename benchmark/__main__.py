from benchmark.app import main

main()

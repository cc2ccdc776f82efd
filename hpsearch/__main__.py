from hpsearch.cli.app import main

main()

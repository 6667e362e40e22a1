from teeflow.cli.main import main

main()

"""`python -m mlabench` runs the CLI."""

from mlabench.cli.app import main

main()

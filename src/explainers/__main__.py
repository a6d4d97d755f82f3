"""``python -m explainers`` runs the command-line interface."""

from explainers.cli import main

main()

"""``python -m xbarc`` runs the CLI."""

from xbarc.cli import main

main()

"""``python -m refresher`` runs the command line."""

from refresher.cli import main

main()

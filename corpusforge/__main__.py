"""``python -m corpusforge``: the command line."""

from corpusforge.cli import main

main()

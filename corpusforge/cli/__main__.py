"""``python -m corpusforge.cli``."""

from corpusforge.cli import main

main()

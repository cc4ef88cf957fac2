"""The ``corpusforge`` command line: thin command groups over the library (nothing in the library imports this).

Groups: ``pipeline`` (run, plan, validate, crawl, build, demo), ``crawl`` (check, new-spider), ``tokens``
(export-nanogpt, tokenizer-report, token-lineage), ``train`` (train, sample, export), ``storage`` (publish,
fetch). Exit codes are the error types' own (``corpusforge.errors.ExitCode``).
"""

from __future__ import annotations

import importlib
import sys

from corpusforge.cli.app import app, err
from corpusforge.errors import ExitCode

__all__ = ["app", "main"]

# Each group registers its commands on ``app`` when imported; this order is the order of --help.
for _group in ("pipeline", "crawl", "tokens", "train", "adapt", "ablate", "storage"):
    importlib.import_module(f"corpusforge.cli.{_group}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(ExitCode.PARTIAL)

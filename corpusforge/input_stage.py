"""The ``shards`` stage kind: use an existing document-shard folder (e.g. another run's crawl) as input.

It reads nothing and writes nothing; its folder must hold a valid ``manifest.json``. ``corpusforge build``
uses it to start from a finished crawl.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from corpusforge.errors import ConfigError
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.storage import MANIFEST


class ShardsInputStage(Stage):
    """``path``: a folder of document shards with its manifest (the output of a crawl or process stage)."""

    kind: ClassVar[str] = "shards"

    def __init__(self, *, path: str) -> None:
        self.path = path

    def external_dir(self) -> Path:
        return Path(self.path).resolve()

    def validate(self, path: str) -> None:
        if not (Path(self.path) / MANIFEST).is_file():
            raise ConfigError(
                f"{self.path!r} has no {MANIFEST}: point it at a finished stage folder (e.g. runs/x/crawl)",
                path=f"{path}.path",
            )

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:  # pragma: no cover - never scheduled
        return TaskResult()

"""Stage kinds: what one entry of a recipe's ``[[stages]]`` becomes.

A stage reads one earlier stage's folder and writes only its own (``<workdir>/<stage name>/``). The runner
splits it into ``num_tasks`` tasks, runs ``run_task(ctx, rank)`` for each task that has no completion marker
yet, then calls ``finalize`` and writes the stage's ``manifest.json`` last.

The constructor is the schema: keyword-only, typed parameters, validated by ``recipe.py`` before anything
runs. ``expand`` lets a multi-stage algorithm (MinHash: signatures → buckets → clusters → apply) become
several stages in the plan, so its sub-stages cannot disagree about inputs or task counts.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from corpusforge.storage import atomic_write_json, manifest_paths

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """Everything a task needs to know about where it runs. Picklable (sent to worker processes)."""

    run_dir: Path
    out_dir: Path
    in_dir: Path | None
    stage_name: str
    # The recipe stage's own folder. Equal to out_dir, except for sub-stages of an expanded stage
    # (MinHash: home=dedup/, out_dir=dedup/signatures/ …), which find their siblings through it.
    home: Path | None = None
    workers: int = 1
    # Bounds of a run: stop cleanly and report "partial" when reached.
    max_pages: int | None = None
    deadline: float | None = None  # time.time() value
    # Named stage folders of the whole run, for stages that read more than their input (e.g. tokens needs
    # the tokenizer folder).
    stage_dirs: dict[str, Path] = field(default_factory=dict)
    # Fault hook for tests: "stage:n" makes that stage's task exit hard at its n-th record.
    fault: str | None = None
    # A file whose existence means "stop" (the Ray executor's way to reach tasks on other machines).
    stop_file: Path | None = None

    def input_files(self) -> list[Path]:
        if self.in_dir is None:
            return []
        return manifest_paths(self.in_dir)

    def stop_requested(self) -> bool:
        if STOP.is_set() or (self.deadline is not None and time.time() >= self.deadline):
            return True
        return self.stop_file is not None and _stop_file_seen(self.stop_file)

    def fault_at(self, n: int) -> None:
        """Exit the process hard at record ``n`` when the fault hook names this stage (tests of kill -9)."""
        if self.fault:
            name, _, at = self.fault.partition(":")
            if name == self.stage_name and at and n == int(at):
                os._exit(137)


# Set by the SIGTERM/SIGINT handler; long tasks poll ``ctx.stop_requested()``.
STOP = threading.Event()
_STOP_FILE_CHECKED: dict[Path, float] = {}  # when each stop file was last looked for (monotonic s)


def clear_stop_file(path: Path) -> None:
    """Remove a stop file left by an earlier run, and forget having seen it."""
    path.unlink(missing_ok=True)
    _STOP_FILE_CHECKED.pop(path, None)


def _stop_file_seen(path: Path, every_s: float = 0.5) -> bool:
    """Whether ``path`` exists, looked for at most every ``every_s`` (tasks poll per record)."""
    now = time.monotonic()
    last = _STOP_FILE_CHECKED.get(path, -math.inf)
    if last == math.inf:
        return True  # seen already: it stays a stop
    if now - last < every_s:
        return False
    seen = path.exists()
    _STOP_FILE_CHECKED[path] = math.inf if seen else now
    return seen
    _STOP_FILE_CHECKED[path] = now
    if path.exists():
        STOP.set()
        return True
    return False


@dataclass
class TaskResult:
    files: list[dict[str, Any]] = field(default_factory=list)  # name, rows, bytes, sha256
    steps: list[dict[str, Any]] = field(default_factory=list)  # StepStats.to_dict() per step
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific numbers for the summary
    partial: bool = False  # stopped by a bound or a signal: no completion marker, resumable

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "steps": self.steps, "extra": self.extra}


class Stage:
    """Base of every stage kind; subclasses define keyword-only constructor parameters."""

    kind: ClassVar[str] = "stage"
    # A keyword-only dataclass the recipe validates this stage's table against, when the parameters are a
    # config of their own (``TrainConfig``, ``CrawlSettings``); None: the constructor is the schema.
    schema: ClassVar[type | None] = None
    # Parameters that change how a stage checks or reports, never what it writes (``verify_data``): left out
    # of the config hash, so toggling one does not make an existing folder "a different config".
    runtime_params: ClassVar[frozenset[str]] = frozenset()

    name: str = ""
    input: str | None = None

    def config(self) -> dict[str, Any]:
        """The parameters that define this stage's output (hashed to refuse a changed config)."""
        return dict(getattr(self, "_params", {}))

    def expand(self) -> list[Stage]:
        return [self]

    def num_tasks(self, ctx: StageContext) -> int:
        return 1

    def parallel(self) -> bool:
        """Whether tasks may run in separate worker processes."""
        return True

    # Sub-folder of the recipe stage's folder for a sub-stage made by ``expand`` ("" = the folder itself).
    subdir: str = ""

    def prepare_task(self, ctx: StageContext, rank: int) -> None:
        """Before (re)running an unfinished task: remove what an earlier, interrupted attempt left.

        The default removes this task's shards (``<rank>.arrow``, ``<rank>-NNN.arrow``); a stage that
        resumes a task from its own state (the crawler) overrides this to keep them.
        """
        for folder in (ctx.out_dir, ctx.out_dir / "rejected"):
            for pattern in (f"{rank:05d}.arrow*", f"{rank:05d}-*.arrow*"):
                for p in folder.glob(pattern):
                    p.unlink(missing_ok=True)

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def finalize(self, ctx: StageContext, results: list[TaskResult]) -> dict[str, Any]:
        """Extra fields for the manifest; runs once after all tasks are complete."""
        return {}


COMPLETIONS = "completions"


def marker_path(out_dir: Path, rank: int) -> Path:
    """The completion marker of task ``rank``: it exists only once the task's outputs are durable."""
    return out_dir / COMPLETIONS / f"{rank:05d}.json"


def execute_task(stage: Stage, ctx: StageContext, rank: int, *, marker: bool = True) -> dict[str, Any]:
    """Run one task and, unless it stopped early, write its completion marker (``marker``: the Ray executor's
    driver writes it instead, from the record returned). Runs in a worker process."""
    stage.prepare_task(ctx, rank)
    t0 = time.time()
    result = stage.run_task(ctx, rank)
    record = result.to_dict() | {"rank": rank, "seconds": round(time.time() - t0, 3)}
    if not result.partial and marker:
        write_marker(ctx, rank, record)
    return record | {"partial": result.partial}


def write_marker(ctx: StageContext, rank: int, record: dict[str, Any]) -> None:
    """The completion marker of task ``rank``, written once its outputs are durable."""
    path = marker_path(ctx.out_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {k: v for k, v in record.items() if k != "partial"})

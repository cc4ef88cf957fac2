"""Typed errors and the exit codes they map to: the one place both are defined.

The type tells the runner what to do with a failed task, and the CLI which exit code to return:

- ``ConfigError``: bad recipe, flag or input description. Nothing starts; exit BAD_CONFIG (2).
- ``LockedError``: another run holds the work folder; exit LOCKED (3).
- ``RetryableError``: a passing fault (network, a killed worker); the runner retries the task.
- ``TaskError``: this task failed; the runner records it and goes on with the others (exit FAILED, 1).
- ``FatalError``: stop everything now (disk full, corrupt input the user must fix); exit FAILED (1).
- ``ShardError``: a shard does not match its manifest (truncated, altered, missing); exit FAILED (1).
- ``Interrupted``: SIGTERM/SIGINT or a bound; state is saved; exit PARTIAL (4).
- ``DivergedError``: NaN/inf training loss; exit DIVERGED (5).
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar


class ExitCode(IntEnum):
    """Exit codes of every command (the README's table)."""

    DONE = 0  # also: a rerun of a finished job, which changes nothing
    FAILED = 1  # a task failed, a shard failed validation, or a write failed
    BAD_CONFIG = 2  # bad recipe, flag or argument: nothing was started
    LOCKED = 3  # another run holds the work folder
    PARTIAL = 4  # stopped by --max-pages, --max-runtime, SIGTERM or Ctrl-C; rerun to continue
    DIVERGED = 5  # training loss became NaN/inf; the last good checkpoint is kept


DONE, FAILED, BAD_CONFIG, LOCKED, PARTIAL, DIVERGED = (
    ExitCode.DONE,
    ExitCode.FAILED,
    ExitCode.BAD_CONFIG,
    ExitCode.LOCKED,
    ExitCode.PARTIAL,
    ExitCode.DIVERGED,
)


class CorpusforgeError(Exception):
    """Base of every error corpusforge raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class ConfigError(CorpusforgeError):
    """A recipe, flag or spider is invalid. ``path`` is the field path, e.g. ``stages[2].steps[0].min_words``."""

    exit_code: ClassVar[ExitCode] = ExitCode.BAD_CONFIG

    def __init__(self, message: str, *, path: str | None = None, file: str | None = None) -> None:
        self.path = path
        self.file = file
        where = ""
        if file:
            where += f"{file}: "
        if path:
            where += f"{path}: "
        super().__init__(where + message)


class LockedError(CorpusforgeError):
    """Another run holds the lock on the work folder."""

    exit_code: ClassVar[ExitCode] = ExitCode.LOCKED


class RetryableError(CorpusforgeError):
    """A transient failure: the same task may succeed when run again."""


class TaskError(CorpusforgeError):
    """A task failed for good; other tasks may go on."""


class FatalError(CorpusforgeError):
    """Stop the whole run (disk full, unreadable input the user must fix)."""


class ShardError(CorpusforgeError):
    """A shard is missing, truncated or altered with respect to its manifest."""


class MissingExtraError(CorpusforgeError):
    """An optional dependency is not installed; the message carries the install command."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"the optional dependency {module!r} is not installed; install it with: pip install 'corpusforge[{extra}]'"
        )


class DivergedError(CorpusforgeError):
    """Training produced a NaN or infinite loss."""

    exit_code: ClassVar[ExitCode] = ExitCode.DIVERGED


class Interrupted(CorpusforgeError):
    """SIGTERM/SIGINT arrived; state was flushed and the run can be resumed."""

    exit_code: ClassVar[ExitCode] = ExitCode.PARTIAL


def require(module: str, extra: str):  # type: ignore[no-untyped-def]
    """Import an optional dependency or raise ``MissingExtraError`` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module, extra) from exc

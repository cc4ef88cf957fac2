"""Typed errors. The type tells the runner what to do with a failed task.

- ``ConfigError``: bad recipe, flag or input description. Nothing starts; exit code BAD_CONFIG.
- ``LockedError``: another run holds the work folder; exit code LOCKED.
- ``RetryableError``: a passing fault (network, a killed worker); the runner retries the task.
- ``TaskError``: this task failed; the runner records it and goes on with the others (exit FAILED).
- ``FatalError``: stop everything now (disk full, corrupt input the user must fix).
- ``ShardError``: a shard does not match its manifest (truncated, altered, missing).
"""

from __future__ import annotations


class CorpusforgeError(Exception):
    """Base of every error corpusforge raises on purpose."""


class ConfigError(CorpusforgeError):
    """A recipe, flag or spider is invalid. ``path`` is the field path, e.g. ``stages[2].steps[0].min_words``."""

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


class Interrupted(CorpusforgeError):
    """SIGTERM/SIGINT arrived; state was flushed and the run can be resumed."""


def require(module: str, extra: str):  # type: ignore[no-untyped-def]
    """Import an optional dependency or raise ``MissingExtraError`` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingExtraError(module, extra) from exc

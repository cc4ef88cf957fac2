"""What happens to a task that raised: the one failure policy every executor path uses.

- ``RetryableError`` (or a worker process that died): run the task again, at most ``RETRIES`` more times,
  then it fails;
- ``Interrupted``: the task stopped early on a signal or a bound; it has no marker and a rerun resumes it;
- ``FatalError``, ``DivergedError``, ``KeyboardInterrupt``: stop the whole run now;
- anything else: this task fails, the stage's other tasks go on, and the run ends FAILED after the stage.
"""

from __future__ import annotations

import enum

from corpusforge.errors import CorpusforgeError, DivergedError, FatalError, Interrupted, RetryableError

RETRIES = 2


class Action(enum.Enum):
    RETRY = "retry"
    FAIL = "fail"
    PARTIAL = "partial"
    STOP = "stop"


class WorkerDied(RetryableError):
    """A worker process ended without a result (killed, out of memory)."""


def decide(exc: BaseException, attempts: int) -> Action:
    """The action for a task that raised ``exc`` on its ``attempts``-th try (1 = the first)."""
    if isinstance(exc, FatalError | DivergedError | KeyboardInterrupt):
        return Action.STOP
    if isinstance(exc, Interrupted):
        return Action.PARTIAL
    if isinstance(exc, RetryableError):
        return Action.RETRY if attempts <= RETRIES else Action.FAIL
    return Action.FAIL


def describe(exc: BaseException) -> str:
    """A one-line account of a task's failure (corpusforge errors carry their own wording)."""
    return str(exc) if isinstance(exc, CorpusforgeError) else f"{type(exc).__name__}: {exc}"

"""Progress of the work inside one task: what a long stage reports while it runs (documents/s, iterations, ETA).

The runner's bar counts tasks, and a stage of one task (the crawl, training, a small clean) would sit at 0/1
until it ends. A task reports through ``Progress.update``; at most every ``interval_s`` it logs one plain line
on the ``corpusforge.progress.<stage>`` logger. Off a terminal that is a timestamped log line (cron, systemd);
on one, the console's bar reporter takes these records and shows the latest as its stage's live description
(``console.BarReporter``), so nothing scrolls. The interval: ``CORPUSFORGE_PROGRESS_S``, else 1 s under a live
bar, 5 s on a terminal and the heartbeat interval (30 s) otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable

LOGGER = "corpusforge.progress"
PROGRESS_ENV = "CORPUSFORGE_PROGRESS_S"


HEARTBEAT_ENV = "CORPUSFORGE_HEARTBEAT_S"  # the console's heartbeat interval off a terminal


def heartbeat_s() -> float:
    """Seconds between heartbeat lines off a terminal: ``CORPUSFORGE_HEARTBEAT_S`` if set, else 30."""
    from corpusforge.errors import ConfigError

    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return 30.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"expected a positive number of seconds, got {raw!r}", path=HEARTBEAT_ENV)
    return value


class LiveHandler(logging.Handler):
    """Marks a handler that shows progress records in place (a live bar), so lines may come often."""


def progress_interval_s() -> float:
    """Seconds between progress lines (see the module docstring); a bad ``CORPUSFORGE_PROGRESS_S`` is a
    ``ConfigError`` naming it."""
    from corpusforge.errors import ConfigError

    raw = os.environ.get(PROGRESS_ENV, "").strip()
    if not raw:
        if any(isinstance(h, LiveHandler) for h in logging.getLogger(LOGGER).handlers):
            return 1.0
        if sys.stdout.isatty():
            return 5.0
        return heartbeat_s()
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"expected a positive number of seconds, got {raw!r}", path=PROGRESS_ENV)
    return value


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts of one task's work, logged as a line at most every ``interval_s`` seconds.

    ``update(done)`` is cheap between lines (a clock read). A line reads ``clean: 12,000/40,000 documents
    (30%), 850 documents/s, ETA 32s``: the rate over the last interval, the ETA from the average rate since
    the start, shown only when ``total`` (a bound) is known. ``extra`` text (loss, tokens/s) is appended.
    """

    def __init__(
        self,
        what: str,
        *,
        unit: str,
        total: int | None = None,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
        start: int = 0,
    ) -> None:
        self.what, self.unit, self.total = what, unit, total
        self.interval_s = interval_s if interval_s is not None else progress_interval_s()
        self.clock = clock
        logger = logging.getLogger(f"{LOGGER}.{what}")
        self.emit = emit or (lambda line: logger.info("%s", line))
        self.t0 = self.last_t = clock()
        self.first = self.last = start

    def due(self) -> bool:
        return self.clock() - self.last_t >= self.interval_s

    def update(self, done: int, *, extra: str = "", force: bool = False) -> str | None:
        """Log a line when one is due (or ``force``); returns it."""
        now = self.clock()
        if not force and now - self.last_t < self.interval_s:
            return None
        line = self.line(done, now, extra)
        self.last_t, self.last = now, done
        self.emit(line)
        return line

    def line(self, done: int, now: float, extra: str = "") -> str:
        rate = (done - self.last) / max(now - self.last_t, 1e-9)
        overall = (done - self.first) / max(now - self.t0, 1e-9)
        count = f"{done:,}/{self.total:,} {self.unit}" if self.total else f"{done:,} {self.unit}"
        if self.total:
            count += f" ({100 * done / self.total:.0f}%)"
        parts = [f"{self.what}: {count}", f"{rate:,.1f} {self.unit}/s"]
        if extra:
            parts.append(extra)
        if self.total:
            left = max(0, self.total - done)
            parts.append(f"ETA {format_eta(left / overall)}" if overall > 0 else "ETA unknown")
        return ", ".join(parts)

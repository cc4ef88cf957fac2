"""Progress lines while a crawl runs: pages stored, pages/s, hosts active and waiting, queue size, ETA.

The crawl is one task of one stage, so the runner's per-task bar would sit at 0/1 for the whole crawl. The
writer thread calls ``CrawlProgress.tick`` as it goes; every ``interval_s`` a plain log line is written
(``corpusforge.progress.progress_interval_s``: ``CORPUSFORGE_PROGRESS_S``; default 1 s under a terminal's
live bar, where the line is the bar's description, else the heartbeat interval, 30 s), so cron and systemd
logs get periodic lines with no control characters. The rate is over the last interval; the ETA is
shown when a page bound (``--max-pages`` or ``max_pages``) gives the crawl an end to count down to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from corpusforge.progress import PROGRESS_ENV, format_eta, progress_interval_s

# A child of corpusforge.progress: under a terminal's live bar, the line becomes the crawl's bar description.
log = logging.getLogger("corpusforge.progress.crawl")

__all__ = ["PROGRESS_ENV", "CrawlProgress", "Sample", "format_eta", "progress_interval_s"]


@dataclass
class Sample:
    """What a progress line reports, at one instant."""

    stored: int  # pages stored by the whole crawl (earlier runs of a resumed crawl included)
    queued: int  # URLs waiting
    in_flight: int = 0
    hosts_active: int = 0
    hosts_waiting: int = 0


class CrawlProgress:
    def __init__(
        self,
        *,
        interval_s: float,
        max_pages: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.max_pages = max_pages
        self.clock = clock
        self.emit = emit or (lambda line: log.info("%s", line))
        self.t0 = clock()
        self.last_t = self.t0
        self.last_stored: int | None = None
        self.first_stored: int | None = None

    def due(self) -> bool:
        return self.clock() - self.last_t >= self.interval_s

    def tick(self, sample: Callable[[], Sample], *, force: bool = False) -> str | None:
        """Write a line if one is due (or ``force``); ``sample`` is called only then. Returns the line."""
        now = self.clock()
        if self.last_stored is None:
            first = sample()
            self.first_stored = self.last_stored = first.stored
            if not force:
                return None
        if not force and now - self.last_t < self.interval_s:
            return None
        got = sample()
        line = self.line(got, now)
        self.last_t, self.last_stored = now, got.stored
        self.emit(line)
        return line

    def line(self, got: Sample, now: float) -> str:
        assert self.last_stored is not None and self.first_stored is not None
        span = max(now - self.last_t, 1e-9)
        rate = (got.stored - self.last_stored) / span
        overall = (got.stored - self.first_stored) / max(now - self.t0, 1e-9)
        parts = [
            f"crawl: {got.stored:,} pages stored",
            f"{rate:.1f} pages/s",
            f"hosts {got.hosts_active} active, {got.hosts_waiting} waiting",
            f"{got.in_flight} in flight",
            f"{got.queued:,} queued",
        ]
        if self.max_pages is not None:
            left = max(0, self.max_pages - got.stored)
            eta = format_eta(left / overall) if overall > 0 else "unknown"
            parts.append(f"ETA {eta} to {self.max_pages:,} pages")
        return ", ".join(parts)

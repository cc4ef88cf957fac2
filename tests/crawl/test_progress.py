"""Crawl progress lines: rate over the last interval, hosts and queue, ETA only with a page bound."""

from __future__ import annotations

import pytest

from corpusforge.crawl.progress import CrawlProgress, Sample, format_eta, progress_interval_s
from corpusforge.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_line_every_interval_with_the_rate_of_the_last_interval_and_an_eta():
    clock, lines = Clock(), []
    p = CrawlProgress(interval_s=5.0, max_pages=1000, clock=clock, emit=lines.append)
    state = Sample(stored=100, queued=50)  # a resumed crawl: 100 pages from earlier runs
    p.tick(lambda: state)
    assert lines == []  # the first call only takes the starting point
    clock.t += 4.9
    state = Sample(stored=140, queued=60, in_flight=3, hosts_active=3, hosts_waiting=7)
    assert p.tick(lambda: state) is None  # not due yet
    clock.t += 0.1
    line = p.tick(lambda: state)
    assert line == lines[0]
    assert line.startswith("crawl: 140 pages stored, 8.0 pages/s")
    assert "hosts 3 active, 7 waiting" in line and "3 in flight" in line and "60 queued" in line
    assert "ETA 1m48s to 1,000 pages" in line  # 860 pages left at 8 pages/s since the start
    clock.t += 10.0
    state = Sample(stored=150, queued=0)
    line = p.tick(lambda: state)
    assert "1.0 pages/s" in line  # the last interval's rate, not the average since the start


def test_no_eta_without_a_bound_and_the_sample_is_taken_only_when_a_line_is_due():
    clock, lines, calls = Clock(), [], []

    def sample() -> Sample:
        calls.append(clock.t)
        return Sample(stored=len(calls), queued=1)

    p = CrawlProgress(interval_s=1.0, clock=clock, emit=lines.append)
    for _ in range(50):
        p.tick(sample)
        clock.t += 0.1
    assert len(lines) == 4 and all("ETA" not in x for x in lines)
    assert len(calls) == 1 + 4  # the start, then one per line: not one per tick


@pytest.mark.parametrize(("s", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600 * 2 + 125, "2h02m")])
def test_format_eta(s, text):
    assert format_eta(s) == text


def test_the_interval_comes_from_the_environment_and_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("CORPUSFORGE_PROGRESS_S", "0.5")
    assert progress_interval_s() == 0.5
    monkeypatch.delenv("CORPUSFORGE_PROGRESS_S")
    monkeypatch.setenv("CORPUSFORGE_HEARTBEAT_S", "12")
    assert progress_interval_s() == 12.0  # not a terminal under pytest: the heartbeat interval
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv("CORPUSFORGE_PROGRESS_S", bad)
        with pytest.raises(ConfigError, match="CORPUSFORGE_PROGRESS_S"):
            progress_interval_s()

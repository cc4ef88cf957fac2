"""The host scheduler on a fake clock (``now`` passed explicitly), plus one run of real threads on a real clock.

Each test fails when its rule is broken: per-host order, per-host and global slots, the delay between request
starts, holds, skipped hosts, and throughput at the politeness limit (hosts ÷ delay).
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest

from corpusforge.crawl.scheduler import Scheduler, Ticket
from corpusforge.crawl.urls import host_key
from corpusforge.errors import ConfigError

EPS = 1e-9  # s: float slack when comparing simulated times


def url(host: int, page: int) -> str:
    return f"http://h{host}.test/p{page}"


def hk(host: int) -> str:
    return host_key(url(host, 0))


def fixed(delay_s: float) -> Scheduler:
    return Scheduler(delay_s=lambda _host: delay_s, concurrency=64)


def take_all(s: Scheduler, now: float) -> list[Ticket]:
    out = []
    while (t := s.take(now)) is not None:
        out.append(t)
    return out


# ---------------------------------------------------------------------- rules, one at a time
def test_per_host_fifo_and_front() -> None:
    s = fixed(0.0)
    for i in range(5):
        s.push(url(0, i), depth=i)
    s.push(url(0, 99), depth=0, front=True)  # a redirect hop goes ahead of the host's other URLs
    order = []
    for _ in range(6):
        t = s.take(0.0)
        assert t is not None
        order.append(t.url)
        s.done(t, 0.0)
    assert order == [url(0, 99)] + [url(0, i) for i in range(5)]
    assert s.take(0.0) is None and s.unfinished() == 0


def test_at_most_per_host_concurrency_in_flight() -> None:
    s = Scheduler(delay_s=lambda _h: 0.0, concurrency=64, per_host_concurrency=2)
    for i in range(5):
        s.push(url(0, i), 0)
    first = take_all(s, 0.0)
    assert [t.url for t in first] == [url(0, 0), url(0, 1)]
    assert s.next_ready_at() is None  # the only queued host has no free slot: wait for a done()
    s.done(first[0], 1.0)
    t = s.take(1.0)
    assert t is not None and t.url == url(0, 2)
    assert s.take(1.0) is None


def test_delay_counts_between_starts_exactly() -> None:
    s = fixed(0.5)
    for i in range(3):
        s.push(url(0, i), 0)
    t0 = s.take(10.0)
    assert t0 is not None and t0.started_at == 10.0
    s.done(t0, 10.1)  # a fast response does not lengthen the gap ...
    assert s.take(10.499999) is None
    assert s.next_ready_at() == 10.5
    t1 = s.take(10.5)
    assert t1 is not None
    s.done(t1, 13.0)  # ... and a slow one does not shorten it: the next start may come at once
    t2 = s.take(13.0)
    assert t2 is not None and t2.started_at == 13.0


def test_delay_per_host_from_the_callable() -> None:
    delays = {hk(0): 2.0, hk(1): 0.5}
    s = Scheduler(delay_s=delays.__getitem__)
    for h in (0, 1):
        for i in range(3):
            s.push(url(h, i), 0)
    starts: dict[str, list[float]] = defaultdict(list)
    now = 0.0
    while s.unfinished():
        for t in take_all(s, now):
            starts[t.host].append(now)
            s.done(t, now)
        at = s.next_ready_at()
        if at is None:
            break
        now = max(now, at)
    assert starts[hk(0)] == [0.0, 2.0, 4.0]
    assert starts[hk(1)] == [0.0, 0.5, 1.0]


def test_a_blocked_host_never_stalls_another() -> None:
    s = fixed(1.0)
    for i in range(3):
        s.push(url(0, i), 0)
        s.push(url(1, i), 0)
    s.hold(hk(0), 100.0)  # Retry-After of 100 s on host 0
    got = []
    for now in (0.0, 1.0, 2.0):
        t = s.take(now)
        assert t is not None
        got.append(t.host)
        s.done(t, now)
    assert got == [hk(1)] * 3
    assert s.take(99.0) is None
    assert s.next_ready_at() == 100.0
    t = s.take(100.0)
    assert t is not None and t.url == url(0, 0)


def test_hosts_interleave_in_time_order() -> None:
    s = fixed(1.0)
    for h in range(3):
        for i in range(2):
            s.push(url(h, i), 0)
    first = take_all(s, 0.0)
    assert [t.host for t in first] == [hk(0), hk(1), hk(2)]  # every host starts at once
    for t in first:
        s.done(t, 0.2)
    assert s.take(0.5) is None
    assert len(take_all(s, 1.0)) == 3


def test_hold_pushes_later_never_earlier() -> None:
    s = fixed(1.0)
    s.push(url(0, 0), 0)
    s.push(url(0, 1), 0)
    s.hold(hk(0), 10.0)
    s.hold(hk(0), 5.0)  # earlier: changes nothing
    assert s.next_ready_at() == 10.0
    assert s.take(9.99) is None
    t = s.take(10.0)
    assert t is not None
    s.done(t, 10.1)
    s.hold(hk(0), 10.5)  # earlier than the start gate (10 + 1 s delay): does not shorten it
    assert s.next_ready_at() == 11.0
    s.hold(hk(0), 12.0)
    assert s.next_ready_at() == 12.0 and s.take(11.5) is None


def test_hold_before_any_url_is_kept() -> None:
    s = fixed(0.0)
    s.hold(hk(0), 3.0)  # e.g. a Crawl-delay learnt from robots.txt before the host's pages are queued
    s.push(url(0, 0), 0)
    assert s.take(2.9) is None and s.take(3.0) is not None


def test_global_concurrency_bound() -> None:
    s = Scheduler(delay_s=lambda _h: 0.0, concurrency=3)
    for h in range(10):
        s.push(url(h, 0), 0)
    out = take_all(s, 0.0)
    assert len(out) == 3 and s.take(0.0) is None
    assert s.next_ready_at() == -float("inf")  # hosts are ready; the global bound holds them back
    s.done(out[0], 0.1)
    assert len(take_all(s, 0.1)) == 1


def test_skip_host_drops_its_queue_with_the_reason() -> None:
    s = fixed(0.0)
    for i in range(3):
        s.push(url(0, i), depth=1)
    s.push(url(1, 0), 0)
    t = s.take(0.0)
    assert t is not None and t.host == hk(0)
    dropped = s.skip_host(hk(0), "crawl_delay_too_long")
    assert [(e.url, e.depth) for e in dropped] == [(url(0, 1), 1), (url(0, 2), 1)]
    assert s.skipped(hk(0)) == "crawl_delay_too_long" and s.skipped(hk(1)) is None
    assert s.push(url(0, 7), 0) == "crawl_delay_too_long"  # refused, with the reason to drop it with
    assert s.requeue(t) == "crawl_delay_too_long"  # the in-flight ticket cannot come back either
    assert s.skip_host(hk(0), "other") == [] and s.skipped(hk(0)) == "crawl_delay_too_long"
    rest = take_all(s, 0.0)
    assert [r.host for r in rest] == [hk(1)]
    snap = s.snapshot(0.0)
    assert (snap.queued, snap.in_flight, snap.hosts_skipped) == (0, 1, 1)


def test_next_ready_at() -> None:
    s = fixed(2.0)
    assert s.next_ready_at() is None  # nothing queued
    s.push(url(0, 0), 0)
    s.push(url(0, 1), 0)
    s.push(url(1, 0), 0)
    ready = s.next_ready_at()
    assert ready is not None and ready <= 0.0
    a = s.take(0.0)
    b = s.take(0.5)
    assert a is not None and b is not None and {a.host, b.host} == {hk(0), hk(1)}
    first = a if a.host == hk(0) else b
    assert s.next_ready_at() is None  # host 0 has a URL left but its one slot is taken
    s.done(first, first.started_at + 0.1)
    assert s.next_ready_at() == first.started_at + 2.0


def test_requeue_keeps_the_start_and_the_order() -> None:
    # The host's robots.txt was fetched with the first ticket: the page waits its own slot, still first.
    s = fixed(1.0)
    s.push(url(0, 0), 0)
    s.push(url(0, 1), 0)
    t = s.take(0.0)
    assert t is not None
    s.hold(hk(0), 0.0 + 3.0)  # the Crawl-delay robots.txt announced, counted from that request's start
    assert s.requeue(t) is None
    assert s.take(2.9) is None
    t = s.take(3.0)
    assert t is not None and t.url == url(0, 0)


def test_cancel_gives_the_start_back() -> None:
    s = fixed(1.0)
    s.push(url(0, 0), 0)
    s.push(url(0, 1), 0)
    t = s.take(0.0)
    assert t is not None
    s.cancel(t)  # robots.txt disallows it: no request was made, so the host's slot is not spent
    t = s.take(0.0)
    assert t is not None and t.url == url(0, 1)


def test_cancel_keeps_a_hold_and_a_later_start() -> None:
    s = Scheduler(delay_s=lambda _h: 1.0, per_host_concurrency=2)
    for i in range(3):
        s.push(url(0, i), 0)
    a = s.take(0.0)
    b = s.take(1.0)
    assert a is not None and b is not None
    s.cancel(a)  # b started after a: its gate (2.0) stays
    assert s.next_ready_at() == 2.0
    s.hold(hk(0), 5.0)
    s.cancel(b)  # b's own start is given back, not the hold
    assert s.next_ready_at() == 5.0


def test_done_gap_from_end() -> None:
    s = fixed(1.0)
    s.push(url(0, 0), 0)
    s.push(url(0, 1), 0)
    t = s.take(0.0)
    assert t is not None
    s.done(t, 4.0, gap_from_end=True)  # a browser: the delay counts from the render's end
    assert s.next_ready_at() == 5.0


def test_done_with_a_later_real_start_waits_the_delay_from_it() -> None:
    """A fetch thread sent the request 0.3 s after taking its ticket: the next start waits from the send."""
    s = fixed(1.0)
    for i in range(3):
        s.push(url(0, i), 0)
    t = s.take(0.0)
    assert t is not None
    s.done(t, 0.5, started_at=0.3)
    assert s.next_ready_at() == 1.3
    t = s.take(1.3)
    assert t is not None
    s.done(t, 1.4, started_at=1.2)  # an earlier stamp than the ticket's own start never shortens the gap
    assert s.next_ready_at() == 2.3


def test_a_ticket_comes_back_once() -> None:
    s = fixed(0.0)
    s.push(url(0, 0), 0)
    t = s.take(0.0)
    assert t is not None
    assert s.outstanding() == [t]
    s.done(t, 0.0)
    with pytest.raises(ValueError, match="given back already"):
        s.done(t, 0.0)


def test_bad_settings_name_their_field() -> None:
    with pytest.raises(ConfigError, match="concurrency"):
        Scheduler(delay_s=lambda _h: 0.0, concurrency=0)
    with pytest.raises(ConfigError, match="per_host_concurrency"):
        Scheduler(delay_s=lambda _h: 0.0, per_host_concurrency=0)


def test_snapshot_counts_hosts() -> None:
    s = fixed(1.0)
    for h in range(4):
        s.push(url(h, 0), 0)
        s.push(url(h, 1), 0)
    t = s.take(0.0)
    assert t is not None
    s.done(t, 0.1)
    t = s.take(0.0)
    assert t is not None
    snap = s.snapshot(0.5)
    # host 0 done and waiting its delay, host 1 in flight (so waiting too), hosts 2 and 3 ready
    assert (snap.queued, snap.in_flight, snap.hosts_active) == (6, 1, 1)
    assert (snap.hosts_ready, snap.hosts_waiting, snap.hosts_skipped) == (2, 2, 0)


def test_many_hosts_and_holds_keep_the_heap_small() -> None:
    s = Scheduler(delay_s=lambda _h: 0.0, concurrency=2000)
    for h in range(2000):
        s.push(url(h, 0), 0)
    for k in range(20):
        for h in range(2000):
            s.hold(hk(h), float(k))  # each hold leaves an old heap entry behind
    assert len(s._heap) <= 2 * 2000 + 1024  # rebuilt when stale entries outnumber live ones
    assert s.take(18.9) is None
    assert len(take_all(s, 19.0)) == 2000


# ---------------------------------------------------------------------- the whole schedule, simulated
@dataclass
class Start:
    host: str
    start: float  # simulated s
    end: float  # simulated s


def simulate(
    s: Scheduler, rng: random.Random, duration_s: tuple[float, float], hold_p: float = 0.0
) -> tuple[list[Start], dict[str, list[tuple[float, float]]]]:
    """Run every queued URL to the end on a simulated clock: starts as the scheduler allows, each request a
    random duration; with probability ``hold_p`` a response holds its host back (a Retry-After of 0–3 s)."""
    now = 0.0
    running: list[tuple[float, int, Ticket]] = []  # (end, ticket no, ticket)
    log: list[Start] = []
    holds: dict[str, list[tuple[float, float]]] = defaultdict(list)  # host -> (from, until)
    while s.unfinished():
        for t in take_all(s, now):
            end = now + rng.uniform(*duration_s)
            heapq.heappush(running, (end, t.no, t))
            log.append(Start(t.host, now, end))
        events = [running[0][0]] if running else []
        at = s.next_ready_at()
        if at is not None and at > now:
            events.append(at)
        assert events, "URLs left but nothing will ever become takeable"
        now = min(events)
        while running and running[0][0] <= now:
            end, _, t = heapq.heappop(running)
            if rng.random() < hold_p:
                until = end + rng.uniform(0.0, 3.0)
                s.hold(t.host, until)
                holds[t.host].append((end, until))
            s.done(t, end)
    return log, holds


def violations(
    log: list[Start],
    delay_of: dict[str, float],
    per_host: int,
    concurrency: int,
    holds: dict[str, list[tuple[float, float]]] | None = None,
) -> list[str]:
    bad = []
    by_host: dict[str, list[Start]] = defaultdict(list)
    for x in log:
        by_host[x.host].append(x)
        out = sum(1 for y in log if y.start <= x.start < y.end)
        if out > concurrency:
            bad.append(f"{out} requests in flight at {x.start}")
    for host, xs in by_host.items():
        xs.sort(key=lambda x: x.start)
        for a, b in zip(xs, xs[1:], strict=False):
            if b.start - a.start < delay_of[host] - EPS:
                bad.append(f"{host}: starts {a.start} and {b.start} closer than {delay_of[host]}")
        for x in xs:
            out = sum(1 for y in xs if y.start <= x.start < y.end)
            if out > per_host:
                bad.append(f"{host}: {out} in flight at {x.start}")
            for since, until in (holds or {}).get(host, []):
                if since < x.start < until - EPS:
                    bad.append(f"{host}: start {x.start} inside a hold {since}..{until}")
    return bad


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    ("per_host", "concurrency", "delay", "duration_s"),
    [
        (1, 20, 1.0, (0.01, 0.9)),  # one at a time per host, responses faster than the delay
        (2, 40, 0.5, (0.1, 0.9)),  # two per host: a response may outlast the delay
        (1, 20, 1.0, (0.5, 3.0)),  # responses slower than the delay: the host waits for its slot
    ],
)
def test_schedule_is_polite_and_at_the_limit(
    seed: int, per_host: int, concurrency: int, delay: float, duration_s: tuple[float, float]
) -> None:
    hosts, pages = 20, 50
    rng = random.Random(seed)
    s = Scheduler(delay_s=lambda _h: delay, concurrency=concurrency, per_host_concurrency=per_host)
    order = [(h, p) for h in range(hosts) for p in range(pages)]
    rng.shuffle(order)  # hosts' URLs arrive interleaved, each host's in its own order
    for h, p in order:
        s.push(url(h, p), 0)
    log, _ = simulate(s, rng, duration_s)
    assert len(log) == hosts * pages
    assert violations(log, defaultdict(lambda: delay), per_host, concurrency) == []
    by_host: dict[str, list[Start]] = defaultdict(list)
    for x in log:
        by_host[x.host].append(x)
    for xs in by_host.values():
        # Never later than the rules require (the global bound never binds here): each start comes as soon
        # as the delay since the previous start has passed and a per-host slot is free.
        for k in range(1, len(xs)):
            ends = sorted(x.end for x in xs[:k])
            earliest = max(xs[k - 1].start + delay, ends[-per_host] if k >= per_host else 0.0)
            assert xs[k].start == pytest.approx(earliest, abs=1e-6)
    if duration_s[1] <= per_host * delay:
        # Responses never hold a slot past the next start: the politeness limit, hosts ÷ delay.
        rate = len(log) / max(x.end for x in log)
        assert rate >= 0.95 * hosts / delay, (rate, hosts / delay)


@pytest.mark.parametrize("seed", [0, 1])
def test_schedule_keeps_per_host_delays_and_holds(seed: int) -> None:
    hosts, pages = 20, 50
    rng = random.Random(seed)
    delay_of = {hk(h): rng.uniform(0.2, 2.0) for h in range(hosts)}
    s = Scheduler(delay_s=delay_of.__getitem__, concurrency=8)
    for p in range(pages):
        for h in range(hosts):
            s.push(url(h, p), 0)
    log, holds = simulate(s, rng, (0.05, 1.0), hold_p=0.05)
    assert len(log) == hosts * pages
    assert sum(len(v) for v in holds.values()) > 0
    assert violations(log, delay_of, 1, 8, holds) == []


def test_schedule_without_holds_starts_each_host_on_the_dot() -> None:
    rng = random.Random(7)
    delay_of = {hk(h): rng.uniform(0.2, 2.0) for h in range(20)}
    s = Scheduler(delay_s=delay_of.__getitem__, concurrency=64)
    for p in range(50):
        for h in range(20):
            s.push(url(h, p), 0)
    log, _ = simulate(s, rng, (0.01, 0.19))
    by_host: dict[str, list[float]] = defaultdict(list)
    for x in log:
        by_host[x.host].append(x.start)
    for host, starts in by_host.items():
        # every host at its own limit: the k-th start exactly k delays after the first
        assert starts == pytest.approx([k * delay_of[host] for k in range(50)], abs=1e-6)


# ---------------------------------------------------------------------- real threads, real clock
@pytest.mark.timeout(20)
def test_eight_threads_never_break_a_rule() -> None:
    hosts, pages, delay = 6, 12, 0.05  # about 0.6 s: 12 starts per host, 50 ms apart
    s = Scheduler(delay_s=lambda _h: delay, concurrency=16)
    for p in range(pages):
        for h in range(hosts):
            s.push(url(h, p), 0)
    lock = threading.Lock()
    in_flight: dict[str, int] = defaultdict(int)
    bad: list[str] = []
    starts: dict[str, list[tuple[float, str]]] = defaultdict(list)
    stop = threading.Event()
    rng = random.Random(3)
    sleeps = [rng.uniform(0.005, 0.03) for _ in range(hosts * pages)]

    def worker() -> None:
        while (t := s.wait_for_ticket(stop, timeout_s=5.0)) is not None:
            with lock:
                in_flight[t.host] += 1
                if in_flight[t.host] > 1:
                    bad.append(f"{t.host}: {in_flight[t.host]} in flight")
                starts[t.host].append((t.started_at, t.url))
                pause = sleeps.pop()
            time.sleep(pause)  # the "fetch"
            with lock:
                in_flight[t.host] -= 1
            s.done(t, time.monotonic())
            if s.unfinished() == 0:
                s.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10.0)
    stop.set()
    elapsed = time.monotonic() - t0
    assert not any(th.is_alive() for th in threads)
    assert bad == []
    assert s.unfinished() == 0
    for h in range(hosts):
        got = starts[hk(h)]
        assert [u for _, u in got] == [url(h, p) for p in range(pages)]  # per-host order kept
        times = [t for t, _ in got]
        assert all(b - a >= delay - EPS for a, b in zip(times, times[1:], strict=False))
    # in parallel: well under the sequential sum (72 requests at one per 50 ms is 3.6 s)
    assert elapsed < 2.0


def test_wait_for_ticket_returns_on_stop_timeout_and_close() -> None:
    s = fixed(60.0)
    s.push(url(0, 0), 0)
    s.push(url(0, 1), 0)
    assert s.wait_for_ticket(timeout_s=1.0) is not None
    t0 = time.monotonic()
    assert s.wait_for_ticket(timeout_s=0.05) is None  # the next start is a minute away
    stop = threading.Event()
    stop.set()
    assert s.wait_for_ticket(stop) is None
    got: list[Ticket | None] = []
    th = threading.Thread(target=lambda: got.append(s.wait_for_ticket(timeout_s=10.0)))
    th.start()
    time.sleep(0.05)
    s.close()  # wakes the sleeper at once
    th.join(timeout=2.0)
    assert got == [None]
    assert time.monotonic() - t0 < 2.0

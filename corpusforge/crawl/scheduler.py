"""A scheduler of hosts: which queued URL may be fetched next, so many hosts are crawled at once, each politely.

Every host has its own FIFO queue (per-host order is kept), the time it is next allowed (``time.monotonic()``
seconds) and its requests in flight. ``take`` hands out the next URL whose host has a free slot and whose time
has come, and marks the request's start: the host's delay counts between request *starts*, so a slow response
never shortens the gap, and a fast one never lengthens it. A heap of ``(next_allowed, seq, host)`` over the
hosts that could go next (queued URLs and a free slot) makes a take O(log hosts), however many hosts and URLs
are queued.

No I/O and no clock in the core: every method that needs the time takes ``now``, so tests run on a fake clock;
only ``wait_for_ticket`` reads ``clock`` (``time.monotonic`` by default), to sleep. One lock guards all state,
so a pool of fetch threads may take and return tickets while one writer thread pushes and holds.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from corpusforge.crawl.urls import host_key
from corpusforge.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Entry:
    """A queued URL."""

    url: str
    depth: int
    tries: int = 0
    data: Any = None  # the crawler's own state for this URL (e.g. a redirect chain); never read here


@dataclass(frozen=True, slots=True)
class Ticket:
    """Permission to start one request to ``host`` now; give it back with done, requeue or cancel."""

    entry: Entry
    host: str  # host_key(entry.url)
    started_at: float  # monotonic s: the request's start, as given to take()
    no: int  # unique within the scheduler
    gate_before: float = field(repr=False)  # monotonic s: the host's start gate before this start (cancel)
    gate_no: int = field(repr=False)  # the host's count of start-gate changes, this start's included (cancel)

    @property
    def url(self) -> str:
        return self.entry.url

    @property
    def depth(self) -> int:
        return self.entry.depth

    @property
    def tries(self) -> int:
        return self.entry.tries


@dataclass(frozen=True, slots=True)
class SchedulerSnapshot:
    """Counts for progress lines, at one instant."""

    queued: int  # URLs waiting in host queues
    in_flight: int  # tickets out
    hosts_active: int  # hosts with a request in flight
    hosts_ready: int  # hosts with queued URLs that could start one now
    hosts_waiting: int  # hosts with queued URLs that may not start one yet (delay, hold, or every slot busy)
    hosts_skipped: int


class _Host:
    __slots__ = ("queue", "start_gate", "held_until", "in_flight", "gate_no", "heap_seq", "heap_at", "skipped")

    def __init__(self) -> None:
        self.queue: deque[Entry] = deque()
        self.start_gate = -math.inf  # monotonic s: last start + delay; never fetched: at once
        self.held_until = -math.inf  # monotonic s: the latest hold (Retry-After, backoff, Crawl-delay)
        self.in_flight = 0
        self.gate_no = 0  # start_gate changes; tells cancel() whether the gate moved after its own start
        self.heap_seq = -1  # seq of this host's live heap entry; -1 when it has none
        self.heap_at = 0.0  # monotonic s: the time of that entry
        self.skipped: str | None = None  # the reason, once the host is skipped

    @property
    def next_allowed(self) -> float:
        return max(self.start_gate, self.held_until)


class Scheduler:
    """Hosts' queues, next-allowed times and slots; hands out tickets in time order.

    ``delay_s(host)`` is the host's delay in seconds between request starts (e.g. max of the recipe's and the
    spider's minimum and the host's Crawl-delay). It is called with the lock held, at each take: it must be
    quick, must not block (read cached robots rules) and must not call the scheduler. ``concurrency`` bounds
    the tickets out at once (default 16, as Scrapy's ``CONCURRENT_REQUESTS``), ``per_host_concurrency`` those
    per host (default 1: stricter than Scrapy's 8 per domain, one request at a time is the polite rule).
    """

    def __init__(
        self,
        *,
        delay_s: Callable[[str], float],
        concurrency: int = 16,
        per_host_concurrency: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ConfigError(f"must be at least 1, got {concurrency}", path="concurrency")
        if per_host_concurrency < 1:
            raise ConfigError(f"must be at least 1, got {per_host_concurrency}", path="per_host_concurrency")
        self.delay_s = delay_s
        self.concurrency = concurrency
        self.per_host_concurrency = per_host_concurrency
        self.clock = clock
        # A plain Lock, not the Condition's default RLock: a delay_s that called back in would change state in
        # the middle of a take; with a Lock it hangs at once instead, where a test sees it.
        self._cond = threading.Condition(threading.Lock())
        self._hosts: dict[str, _Host] = {}  # kept after their queue empties: the next start still waits
        self._heap: list[tuple[float, int, str]] = []  # (next_allowed, seq, host); stale entries skipped
        self._live = 0  # hosts with a live heap entry
        self._seq = 0  # heap tie-break: of two hosts ready at once, the one that became ready first goes
        self._out: dict[int, Ticket] = {}  # tickets out, by number, in start order
        self._tickets = 0
        self._queued = 0
        self._closed = False

    # ------------------------------------------------------------------ the writer's side
    def push(self, url: str, depth: int, tries: int = 0, *, front: bool = False, data: Any = None) -> str | None:
        """Queue ``url`` behind its host's other URLs (``front``: ahead of them, e.g. a redirect hop).

        None when queued; the host's skip reason when it is skipped (nothing queued: drop the URL with it).
        """
        name = host_key(url)
        entry = Entry(url, depth, tries, data)
        with self._cond:
            h = self._host(name)
            if h.skipped is not None:
                return h.skipped
            if front:
                h.queue.appendleft(entry)
            else:
                h.queue.append(entry)
            self._queued += 1
            was_live = h.heap_seq != -1
            self._refresh(name, h)
            # Wake a sleeper only when the host just became one that could go (a new heap entry, maybe the
            # earliest): a URL queued behind others, or for a host with every slot busy, changes no wait. Waking
            # one per discovered link made idle fetch threads fight the writer for the GIL (a one-host crawl ran
            # at ~0.8 of the sequential loop).
            if not was_live and h.heap_seq != -1:
                self._cond.notify()
        return None

    def hold(self, host: str, until: float) -> None:
        """No request to ``host`` starts before ``until`` (monotonic s): Retry-After, backoff, Crawl-delay.

        Only ever pushes the host's next-allowed time later; an earlier ``until`` changes nothing.
        """
        with self._cond:
            h = self._host(host)
            if until > h.held_until:
                h.held_until = until
                self._refresh(host, h)

    def skip_host(self, host: str, reason: str) -> list[Entry]:
        """Skip ``host`` for good: its queued URLs are returned (drop them with ``reason``), later pushes refused.

        Tickets already out still come back with done/cancel; a requeue of one returns the reason. A second
        call keeps the first reason and returns nothing.
        """
        with self._cond:
            h = self._host(host)
            if h.skipped is not None:
                return []
            h.skipped = reason
            dropped = list(h.queue)
            h.queue.clear()
            self._queued -= len(dropped)
            self._refresh(host, h)
        return dropped

    def skipped(self, host: str) -> str | None:
        with self._cond:
            h = self._hosts.get(host)
            return None if h is None else h.skipped

    def close(self) -> None:
        """Hand out no more tickets (a stop, or the crawl's end); wakes every waiting worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ the workers' side
    def take(self, now: float) -> Ticket | None:
        """The next URL whose host has a free slot and whose time has come, its start marked at ``now``."""
        with self._cond:
            return self._take(now)

    def wait_for_ticket(
        self, stop: threading.Event | None = None, timeout_s: float | None = None, *, poll_s: float = 0.1
    ) -> Ticket | None:
        """Sleep until a ticket can be taken and take it; None once closed, stopped or after ``timeout_s``.

        ``poll_s`` (seconds) is how often a sleeper looks at ``stop``: an Event cannot wake a Condition.
        """
        with self._cond:
            deadline = None if timeout_s is None else self.clock() + timeout_s
            while True:
                if self._closed or (stop is not None and stop.is_set()):
                    return None
                now = self.clock()
                ticket = self._take(now)
                if ticket is not None:
                    return ticket
                wait = poll_s
                if len(self._out) < self.concurrency:
                    at = self._next_ready_at()
                    if at is not None:
                        wait = min(wait, at - now)
                if deadline is not None:
                    if now >= deadline:
                        # We may have been woken for a ticket we will not take: pass the wake-up on.
                        self._cond.notify()
                        return None
                    wait = min(wait, deadline - now)
                self._cond.wait(max(wait, 0.0))

    def done(
        self,
        ticket: Ticket,
        now: float,
        *,
        gap_from_end: bool = False,
        started_at: float | None = None,
        wake_if_idle: bool = True,
    ) -> None:
        """The ticket's request is over (whatever its outcome): its slot is free.

        ``wake_if_idle=False``: when no other ticket is out, wake no sleeper; the caller takes the next ticket
        itself (the crawl's writer fetches in its own thread when nothing else is in flight).

        ``started_at``: when the request really left (a fetch thread may send it a while after it took the
        ticket, on a loaded machine); when later than the ticket's start, the host's next start waits its delay
        from it. ``gap_from_end``: the request's real start is unknown (a browser loads a page's parts after
        ``driver.get``), so the host's next start waits its delay from ``now``, the end: never a shorter gap.
        """
        with self._cond:
            h = self._give_back(ticket)
            start = now if gap_from_end else started_at
            if start is not None and start > ticket.started_at:
                h.start_gate = max(h.start_gate, start + max(0.0, self.delay_s(ticket.host)))
                h.gate_no += 1
            self._refresh(ticket.host, h)
            if wake_if_idle or self._out:
                self._cond.notify()

    def requeue(self, ticket: Ticket) -> str | None:
        """A request was made with the ticket (e.g. the host's robots.txt) but its URL still needs its own:
        the URL goes back to the head of its host's queue and the start counts.

        None when queued again; the host's skip reason when it was skipped meanwhile (drop the URL with it).
        """
        with self._cond:
            h = self._give_back(ticket)
            if h.skipped is not None:
                self._refresh(ticket.host, h)
                return h.skipped
            h.queue.appendleft(ticket.entry)
            self._queued += 1
            self._refresh(ticket.host, h)
            self._cond.notify()
        return None

    def cancel(self, ticket: Ticket) -> None:
        """No request was made with the ticket (robots.txt disallows its URL, the host was skipped): its slot
        is free and, unless the host's gate moved after it (another start), its start is given back."""
        with self._cond:
            h = self._give_back(ticket)
            if h.gate_no == ticket.gate_no:
                h.start_gate = ticket.gate_before
            self._refresh(ticket.host, h)
            self._cond.notify()

    # ------------------------------------------------------------------ reading
    def next_ready_at(self) -> float | None:
        """The earliest time (monotonic s) a queued URL's host may start a request, for a worker to sleep
        until; None when no queued URL has a host with a free slot (nothing queued, or every such host busy:
        a done() will wake waiters). It ignores the global bound: when ``concurrency`` tickets are out, wait
        for a done() too, as ``wait_for_ticket`` does."""
        with self._cond:
            return self._next_ready_at()

    def unfinished(self) -> int:
        """URLs queued or in flight; 0 when the scheduler has nothing left."""
        with self._cond:
            return self._queued + len(self._out)

    def outstanding(self) -> list[Ticket]:
        """The tickets out, in start order: what was in flight when a stop came."""
        with self._cond:
            return list(self._out.values())

    def snapshot(self, now: float) -> SchedulerSnapshot:
        """Counts for a progress line; O(hosts), meant for once a second or so."""
        with self._cond:
            active = ready = waiting = skipped = 0
            for h in self._hosts.values():
                active += h.in_flight > 0
                skipped += h.skipped is not None
                if h.queue:
                    if h.in_flight < self.per_host_concurrency and h.next_allowed <= now:
                        ready += 1
                    else:
                        waiting += 1
            return SchedulerSnapshot(self._queued, len(self._out), active, ready, waiting, skipped)

    # ------------------------------------------------------------------ internals (lock held)
    def _host(self, name: str) -> _Host:
        h = self._hosts.get(name)
        if h is None:
            h = self._hosts[name] = _Host()
        return h

    def _refresh(self, name: str, h: _Host) -> None:
        """Keep ``h``'s heap entry true: one entry at its next-allowed time while it could go next, else none."""
        if h.queue and h.in_flight < self.per_host_concurrency and h.skipped is None:
            at = h.next_allowed
            if h.heap_seq != -1 and h.heap_at == at:
                return
            if h.heap_seq == -1:
                self._live += 1
            self._seq += 1
            h.heap_seq, h.heap_at = self._seq, at
            heapq.heappush(self._heap, (at, self._seq, name))
            # A host's old entries stay until they reach the top; rebuild when they outnumber the live ones.
            if len(self._heap) > 2 * self._live + 1024:
                self._heap = [e for e in self._heap if self._hosts[e[2]].heap_seq == e[1]]
                heapq.heapify(self._heap)
        elif h.heap_seq != -1:
            h.heap_seq = -1
            self._live -= 1

    def _top(self) -> tuple[float, str] | None:
        """The live heap entry that goes next, stale ones popped on the way."""
        while self._heap:
            at, seq, name = self._heap[0]
            if self._hosts[name].heap_seq == seq:
                return at, name
            heapq.heappop(self._heap)
        return None

    def _next_ready_at(self) -> float | None:
        top = self._top()
        return None if top is None else top[0]

    def _take(self, now: float) -> Ticket | None:
        if self._closed or len(self._out) >= self.concurrency:
            return None
        top = self._top()
        if top is None or top[0] > now:
            return None
        name = top[1]
        heapq.heappop(self._heap)
        h = self._hosts[name]
        h.heap_seq = -1
        self._live -= 1
        entry = h.queue.popleft()
        self._queued -= 1
        gate_before = h.start_gate
        # The delay counts from this start (the gate has passed: start_gate <= now).
        h.start_gate = now + max(0.0, self.delay_s(name))
        h.gate_no += 1
        h.in_flight += 1
        self._tickets += 1
        ticket = Ticket(entry, name, now, self._tickets, gate_before, h.gate_no)
        self._out[ticket.no] = ticket
        self._refresh(name, h)
        return ticket

    def _give_back(self, ticket: Ticket) -> _Host:
        if self._out.pop(ticket.no, None) is None:
            raise ValueError(f"ticket {ticket.no} for {ticket.url} is not out: it was given back already")
        h = self._hosts[ticket.host]
        h.in_flight -= 1
        return h

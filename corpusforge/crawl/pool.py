"""The concurrent crawl: ``concurrency`` fetch threads over a ``Scheduler`` of hosts, and one writer.

``run_pool(crawler)`` is what ``Crawler.run`` calls when the settings ask for more than one fetch at a time
and the backend does not render. Every rule of ``crawl/crawler.py`` still holds: the writer applies them
through the crawler's own phases.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from corpusforge.crawl.consent import PageSignals
from corpusforge.crawl.crawler import REDIRECT_STATUS, Crawler
from corpusforge.crawl.page import _Fetched, _Item
from corpusforge.crawl.progress import Sample

log = logging.getLogger(__name__)


@dataclass
class _Render:
    """A page whose static HTML is fetched and checked, queued again for the browser (a request of its own)."""

    item: _Item
    fetched: _Fetched
    flags: PageSignals
    digest: str


@dataclass
class _Hop:
    """A queued URL's place in its redirect chain (a scheduler entry's ``data``); None for the URL itself."""

    item: _Item
    chain: set[str]
    hops: int


class _Pool:
    """``concurrency`` fetch threads and one writer, over a ``Scheduler`` of hosts.

    The fetch threads do I/O only: they take a ticket (the scheduler keeps each host's delay between request
    starts and its slots), fetch the host's robots.txt when it is not known yet (a request to the host: its
    URL is queued again behind the delay) or the URL itself, and post the result. The writer (the thread that
    runs ``Crawler.run``) owns the frontier, ``seen``, the pending lists and the segment writer: it applies
    every rule through the sequential crawl's own phases, in the order results arrive, and turns their
    requeues and host delays into scheduler pushes and holds. URLs in flight stay queued in the frontier until
    a commit records them, so a kill -9 re-fetches at most those and the uncommitted segment's pages.
    """

    def __init__(self, crawler: Crawler) -> None:
        from corpusforge.crawl.scheduler import Scheduler

        self.c = crawler
        s = crawler.s
        self.concurrency, per_host = crawler.limits()  # a spider may only be stricter
        self.base_delay = max(s.min_delay_s, crawler.spider.min_delay_s)
        self.shared = crawler.shared
        self.sched: Any
        if self.shared is not None:  # a Redis frontier: its host slots and delays hold across processes
            self.sched = self.shared
            self.concurrency = self.shared.concurrency
        else:
            self.sched = Scheduler(delay_s=self._delay_s, concurrency=self.concurrency, per_host_concurrency=per_host)
        crawler.render_later = self._render_later
        self.results: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.stop = threading.Event()
        self.robots_lock = threading.Lock()
        self.robots_busy: dict[str, threading.Lock] = {}
        self.render_queued = False  # set by _render_later while the writer applies a fetch

    # ------------------------------------------------------------------ shared reads
    def _delay_s(self, host: str) -> float:
        """The scheduler's delay for ``host`` (called with its lock held: reads cached robots rules only)."""
        rules = self.c.robots.cached(host)
        if rules is None or rules.crawl_delay_s is None or rules.crawl_delay_s > self.c.s.max_crawl_delay_s:
            return self.base_delay
        return max(self.base_delay, float(rules.crawl_delay_s))

    # ------------------------------------------------------------------ fetch threads
    def _worker(self) -> None:
        while True:
            # close() wakes every sleeper at the end or a stop: the poll is only a backstop, and idle threads
            # waking often would take the GIL from the writer (a one-host crawl lost ~5% to it).
            try:
                ticket = self.sched.wait_for_ticket(self.stop, poll_s=2.0)
            except BaseException as exc:  # the shared frontier's Redis is gone for good: the writer raises it
                self.results.put(("lost", None, exc))
                return
            if ticket is None:
                return
            try:
                self.results.put(self._work(ticket))
            except BaseException as exc:  # handed to the writer, which raises it
                self.results.put(("error", ticket, exc))

    def _work(self, ticket: Any) -> tuple[Any, ...]:
        c, host = self.c, ticket.host
        if c.robots.cached(host) is None:
            with self.robots_lock:
                lock = self.robots_busy.setdefault(host, threading.Lock())
            with lock:
                if c.robots.cached(host) is None:
                    c.robots.rules(host)  # this ticket's request: the URL itself waits for the next one
                    return ("robots", ticket, time.monotonic())
            return ("robots", ticket, ticket.started_at)  # fetched by another thread meanwhile: ask again
        if c.robots.tdm_cached(host) is None and c.robots.rules(host).allowed(ticket.url, c.s.agent_token):
            with self.robots_lock:  # the host's tdmrep.json: a request of its own, like robots.txt
                lock = self.robots_busy.setdefault(host, threading.Lock())
            with lock:
                if c.robots.tdm_cached(host) is None:
                    c.robots.tdm_rules(host)
                    return ("robots", ticket, time.monotonic())
            return ("robots", ticket, ticket.started_at)
        hop = ticket.entry.data
        if isinstance(hop, _Render):  # robots and the host's rules were checked on its static fetch
            return ("rendered", ticket, c.backend.render(c._request(ticket.url)))
        reason, _ = c._gate_decision(ticket.url, host)
        if reason is not None:
            return ("refused", ticket, reason)
        previous = c.previous.get(ticket.url) if hop is None else None
        resp = c.backend.fetch(c._request(ticket.url, previous))
        return ("fetched", ticket, resp, previous)

    # ------------------------------------------------------------------ the writer
    def _feed(self) -> None:
        """Hand what the phases queued (links, retries) to the scheduler."""
        c = self.c
        if self.shared is not None:  # one round trip for all of a page's links
            items, refused = list(c.queue), c.link_refusals
            c.queue.clear()
            c.link_refusals = []
            reasons, claimed = self.shared.push_many(
                [(it.url, it.depth, it.tries, False, None) for it in items],
                claims=[u for u, r in refused if r != "trap_depth"],
                depth_refusals=[u for u, r in refused if r == "trap_depth"],
            )
            refused = [(u, r) for u, r in refused if r != "trap_depth"]
            for it, reason in zip(items, reasons, strict=True):
                if reason is not None:
                    c._drop(it.url, reason)
            for (url, reason), mine in zip(refused, claimed, strict=True):
                if mine:
                    c._drop(url, reason)
            return
        while c.queue:
            it = c.queue.popleft()
            reason = self.sched.push(it.url, it.depth, it.tries)
            if reason is not None:
                c._drop(it.url, reason)

    def _render_later(self, item: _Item, f: _Fetched, flags: PageSignals, digest: str) -> None:
        """The crawler's hook: a page to render goes ahead of its host's queue, behind the host's delay."""
        self.render_queued = True
        reason = self.sched.push(f.url, item.depth, item.tries, front=True, data=_Render(item, f, flags, digest))
        if reason is not None:
            self.c._drop(item.url, reason)

    def _hold(self, host: str) -> None:
        at = self.c.host_next.get(host)
        if at is not None:
            self.sched.hold(host, at)  # Retry-After and backoff, set by the phases: the whole host waits

    @staticmethod
    def _item(entry: Any) -> _Item:
        hop = entry.data
        return hop.item if hop is not None else _Item(entry.url, entry.depth, entry.tries)

    def _apply(self, result: tuple[Any, ...]) -> None:
        c = self.c
        kind, ticket = result[0], result[1]
        if kind == "lost":
            raise result[2]
        host, item = ticket.host, self._item(ticket.entry)
        if kind == "error":
            self.sched.cancel(ticket)
            raise result[2]
        if kind == "robots":
            delay = c._host_delay(host)
            if delay is None:
                c._refuse(item, host, "crawl_delay_too_long")
                for e in self.sched.skip_host(host, "crawl_delay_too_long"):
                    c._drop(self._item(e).url, "crawl_delay_too_long")
                self.sched.cancel(ticket)
                return
            # Counted from the robots.txt response's end: its start (a new connection) may reach the host
            # late, and the host must never see the URL's request closer to it than the delay.
            self.sched.hold(host, result[2] + delay)
            reason = self.sched.requeue(ticket)
            if reason is not None:
                c._drop(item.url, reason)
            return
        if kind == "refused":
            c._refuse(item, host, result[2])
            if result[2] == "crawl_delay_too_long":
                for e in self.sched.skip_host(host, result[2]):
                    c._drop(self._item(e).url, result[2])
            self.sched.cancel(ticket)
            return
        if kind == "rendered":
            r, pending = result[2], ticket.entry.data
            got = c._rendered(pending.item, pending.fetched, r, pending.flags)
            if got is not None:
                c._keep(pending.item, pending.fetched, got[0], got[1], pending.digest, rendered=True)
            self._hold(host)
            self._feed()
            # Chromium's requests may reach the host after driver.get returned: the delay counts from the end.
            self.sched.done(ticket, time.monotonic(), gap_from_end=True)
            return
        resp, previous = result[2], result[3]
        c._count_response(resp)
        delay = self._delay_s(host)
        self.render_queued = False
        if resp.error or resp.status not in REDIRECT_STATUS:
            c._on_response(item, _Fetched(ticket.url, host, delay, resp, previous))
        else:
            hop = ticket.entry.data or _Hop(item, {item.url}, 0)
            hops = hop.hops + 1
            target = c._redirect_target(item, ticket.url, resp, hop.chain, hops)
            if target is not None:
                reason = self.sched.push(target, item.depth, item.tries, front=True, data=_Hop(item, hop.chain, hops))
                if reason is not None:
                    c._drop(item.url, reason)
        self._hold(host)
        self._feed()
        # A page queued for the browser is fetched again at once: that second request waits the delay from this
        # response's end, so even a host slow to start handling the first never sees them closer than the delay.
        self.sched.done(
            ticket, time.monotonic(), started_at=resp.sent_at, gap_from_end=self.render_queued, wake_if_idle=False
        )

    def _fetch_here(self) -> tuple[Any, ...] | None:
        """With nothing in flight and no result waiting, fetch the next ready URL in this thread.

        One host at a time (a one-site crawl, or every other host waiting out its delay) then costs no hand-off
        between threads: measured on one loopback host, the pool ran at ~0.85 of the sequential loop without
        this. While this thread fetches, the fetch threads take whatever else becomes ready.
        """
        if not self.results.empty() or self.sched.outstanding():
            return None
        ticket = self.sched.take(time.monotonic())
        if ticket is None:
            return None
        try:
            return self._work(ticket)
        except BaseException as exc:  # raised by _apply, as from a fetch thread
            return ("error", ticket, exc)

    def _sample(self) -> Sample:
        snap = self.sched.snapshot(time.monotonic())
        return Sample(
            stored=self.c._stored_total(),
            queued=snap.queued,
            in_flight=snap.in_flight,
            hosts_active=snap.hosts_active,
            hosts_waiting=snap.hosts_waiting,
        )

    def _stop_reason(self) -> str | None:
        c = self.c
        if c.ctx.stop_requested():
            return "stop"
        if c.ctx.max_pages is not None and c._stored_total() >= c.ctx.max_pages:
            return "max_pages_flag"
        if c.s.max_pages is not None and c._stored_total() >= c.s.max_pages:
            return "max_pages"
        return None

    def run(self) -> bool:
        """Crawl until nothing is left or a stop; True when stopped early (partial)."""
        c = self.c
        self._feed()
        threads = [
            threading.Thread(target=self._worker, name=f"crawl-fetch-{i}", daemon=True) for i in range(self.concurrency)
        ]
        if self.shared is not None:
            self.shared.start_renewing()
        for t in threads:
            t.start()
        stopped: str | None = None
        shared, last_commit = self.shared, time.monotonic()
        try:
            while True:
                stopped = self._stop_reason()
                if stopped is not None:
                    break
                if shared is not None:  # (its leases are renewed by a thread of their own)
                    # Idle here: record what is pending, so its leases end and the other processes, waiting
                    # for every lease before they finish, do not wait for this one's next full segment.
                    # At the end (nothing queued anywhere) at once; before, at most once a second.
                    if c.pending_done and self.results.empty() and shared.local_work() == 0:
                        if shared.last_queued == 0 or time.monotonic() - last_commit >= 1.0:
                            c._commit()
                            last_commit = time.monotonic()
                if self.sched.unfinished() == 0 and self.results.empty():
                    break
                c.progress.tick(self._sample)
                inline = self._fetch_here()
                if inline is not None:
                    self._apply(inline)
                    continue
                try:
                    result = self.results.get(timeout=0.1)
                except queue.Empty:
                    continue
                self._apply(result)
        finally:
            # No more tickets; fetches in flight end within their deadline (timeout_s).
            self.sched.close()
            self.stop.set()
            for t in threads:
                t.join(timeout=c.s.timeout_s + 5.0)
            if self.shared is not None:
                self.shared.stop_renewing()
        if stopped == "max_pages":
            c._count("stopped_at_max_pages")
        if stopped == "stop":
            # What was in flight is kept: applied like any result (its URLs are otherwise still queued).
            while True:
                try:
                    result = self.results.get_nowait()
                except queue.Empty:
                    break
                if result[0] not in ("error", "lost"):
                    self._apply(result)  # a stored page is kept; what it queues waits in the frontier
        return stopped in ("stop", "max_pages_flag")


def run_pool(crawler: Crawler) -> bool:
    """Run ``crawler``'s crawl over the fetch pool; True when it stopped early (a bound or a signal)."""
    return _Pool(crawler).run()

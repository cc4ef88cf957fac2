"""A crawl frontier in Redis, shared by many crawler processes on many machines (``frontier = "redis://…"``).

What lives in Redis, under one key prefix per crawl (``cf:<frontier_key>:``):

- ``seen``: every canonical URL ever queued, so no two processes queue one URL twice;
- ``q:<host>``: one FIFO queue per host, and ``ready``: the hosts that could start a request (queued URLs, a
  free slot, not skipped), scored by the time they may (``max(next, held)``);
- ``host:<host>``: the host's next allowed start and hold (``next``, ``held``), its requests in flight
  (``inflight``), its delay between starts (``delay``: the recipe's, or its robots.txt Crawl-delay once read)
  and whether it is skipped; ``robots``: each host's robots.txt, read once by one process for all;
- ``lease`` and ``leasez``: the URLs taken and not yet recorded, each with the fencing token of its take and
  an expiry; ``slots`` and ``slotz``: the requests in flight, each holding a host slot until it expires;
- ``done``, ``segments``, ``count``, ``rcount:<rank>``, ``pages``: what was recorded, as in the SQLite frontier.

Every time is Redis's own clock (``TIME``, milliseconds), never a process's: a host's delay holds across
machines whose clocks disagree. Every operation is one Lua script, so it is atomic: no URL is taken twice by
live processes and no host slot is handed out twice. A taken URL is leased for ``lease_s``; its process renews
the lease while it works on it. A process that dies stops renewing: the next take after the expiry puts its
URLs back at the head of their hosts' queues and frees its slots. A process whose lease expired cannot record
its result: the commit compares the fencing token of its take with the lease's, and a result that does not
match is fenced (its page, if already written to a segment, is listed as excluded and filtered out when the
task ends), so every URL is recorded once. A commit carries a unique id and is applied at most once, so a
commit whose reply was lost (Redis restarted) can be sent again.

Atomicity needs one Redis server (not Redis Cluster: the scripts build their keys from the prefix).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from corpusforge.crawl import redis_lua as lua
from corpusforge.crawl.redis_conn import connect
from corpusforge.crawl.scheduler import Entry, SchedulerSnapshot
from corpusforge.crawl.urls import host_key

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RedisTicket:
    """A host slot held in Redis for one request (the pool uses it as it uses a scheduler ``Ticket``)."""

    entry: Entry
    host: str
    started_at: float  # monotonic s, taken *before* the take was sent: never later than the real start
    no: int
    slot: str
    take_ms: float  # Redis ms of the take
    gate_before: str = field(repr=False)
    gate_no: str = field(repr=False)

    @property
    def url(self) -> str:
        return self.entry.url

    @property
    def depth(self) -> int:
        return self.entry.depth

    @property
    def tries(self) -> int:
        return self.entry.tries


class RedisFrontier:
    """The shared frontier of one crawl: the scheduler interface of ``crawl.scheduler.Scheduler`` (take,
    done, requeue, cancel, push, hold, skip_host…), leases, and the durable records of the SQLite frontier.

    Entries that carry this process's own state (a redirect hop, a page queued for the browser, a retry) stay
    in a local queue per host, leased by this process, and go out through the same host slots in Redis.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        rank: int = 0,
        per_host_concurrency: int = 1,
        concurrency: int = 16,
        base_delay_s: float = 1.0,
        lease_s: float = 30.0,
        retry_s: float = 30.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.url = url
        # This process's clock (s), for its own times only (a request's start, a hold): they are turned into
        # Redis's clock through the offset seen at each take, so processes whose clocks disagree agree.
        self.clock = clock
        self.client = connect(url, retry_s=retry_s)
        self.prefix = f"cf:{key}:"
        self.rank = rank
        self.owner = f"{rank}/{uuid.uuid4().hex[:12]}"
        self.per_host = per_host_concurrency
        self.concurrency = concurrency
        self.base_delay_ms = base_delay_s * 1000.0
        self.lease_ms = lease_s * 1000.0
        self.renew_every_s = max(0.05, lease_s / 3.0)
        lib = lua.LIB
        self._take = self.client.register_script(lib + lua.TAKE)
        self._done = self.client.register_script(lib + lua.DONE)
        self._cancel = self.client.register_script(lib + lua.CANCEL)
        self._push = self.client.register_script(lib + lua.PUSH)
        self._hold = self.client.register_script(lib + lua.HOLD)
        self._skip = self.client.register_script(lib + lua.SKIP)
        self._renew = self.client.register_script(lib + lua.RENEW)
        self._commit = self.client.register_script(lib + lua.COMMIT)
        self._status = self.client.register_script(lib + lua.STATUS)
        self._release_script = self.client.register_script(lib + lua.RELEASE)
        self._settle_deep = self.client.register_script(lib + lua.SETTLE_DEEP)
        self._lock = threading.Lock()  # local state below
        self._taking = threading.Lock()  # one fetch thread at a time asks Redis for a ticket
        self._wake = threading.Event()
        self.held: dict[str, str] = {}  # URL → fencing token of its lease, until recorded
        self.local: dict[str, deque[Entry]] = {}  # host → entries that stay in this process
        self._out: dict[int, RedisTicket] = {}
        self._tickets = 0
        self._closed = False
        self._offset_ms = 0.0  # Redis ms − local monotonic ms, from the last take
        self._last_renew = time.monotonic()
        self._skipped: dict[str, str] = {}
        self._renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost_tokens: dict[str, str] = {}  # URL → token of a lease lost to expiry (its commit is fenced)
        self._commits = 0
        self._requests = itertools.count()
        self.lost = 0  # leases found lost at a renewal
        self._stored = (0, -math.inf)  # (pages stored by every process, when read)
        self.last_queued = -1  # URLs queued over all processes, at the last unfinished()

    # ------------------------------------------------------------------ helpers
    def _key(self, name: str) -> str:
        return self.prefix + name

    def _rid(self) -> str:
        """A request id: a script sent again by redis-py's retry replays its first reply (``redis_lua``)."""
        return f"{self.owner}/{next(self._requests)}"

    def _redis_ms(self, monotonic_s: float) -> float:
        return monotonic_s * 1000.0 + self._offset_ms

    # ------------------------------------------------------------------ the writer's side (Scheduler API)
    def push(self, url: str, depth: int, tries: int = 0, *, front: bool = False, data: Any = None) -> str | None:
        return self.push_many([(url, depth, tries, front, data)])[0][0]

    def push_many(
        self,
        items: Iterable[tuple[str, int, int, bool, Any]],
        *,
        claims: Iterable[str] = (),
        depth_refusals: Iterable[str] = (),
    ) -> tuple[list[str | None], list[bool]]:
        """Queue URLs; each result None (queued, or known to the crawl already) or the host's skip reason.

        A URL this process holds (a retry, a redirect hop, a render) stays in its local queue, leased; others
        go to Redis, where ``seen`` keeps each URL queued once over all processes. ``claims``: URLs this
        process refuses to queue (offsite, traps…): each True when no process had seen it (the refusal is this
        process's to record), in the same script. ``depth_refusals``: URLs found too deep by this path; noted,
        not seen: another process may still queue one by a shorter path.
        """
        claims = list(claims)
        weak = list(depth_refusals)
        out: list[str | None] = []
        shared: list[tuple[int, str, str, int, int, bool]] = []
        items = list(items)
        queued = False  # a host that may start now and could not before: the taker may have a ticket
        with self._lock:
            for i, (url, depth, tries, front, data) in enumerate(items):
                host = host_key(url)
                out.append(None)
                if host in self._skipped:
                    out[i] = self._skipped[host]
                    continue
                if data is not None or (url in self.held and tries > 0):
                    q = self.local.setdefault(host, deque())
                    (q.appendleft if front else q.append)(Entry(url, depth, tries, data))
                    queued = True
                    continue
                if url in self.held:  # found as a link while this process works on it: known already
                    continue
                shared.append((i, url, host, depth, tries, front))
        claimed: list[bool] = []
        if shared or claims or weak:
            args: list[Any] = [self.prefix, self.per_host, len(shared) + len(claims) + len(weak)]
            for _, url, host, depth, tries, front in shared:
                args += [url, host, depth, tries, "1" if front else "0"]
            for url in claims:
                args += [url, "", 0, 0, "c"]
            for url in weak:
                args += [url, "", 0, 0, "w"]
            res = self._push(args=args + [self._rid()])
            # Wake the taker only for a host that may start now: a URL queued behind others, or for a host
            # waiting out its delay, changes no wait (waking on each new link made the takers of 4 processes
            # spin on Redis while links were being found).
            queued |= int(res[-1]) > 0
            res = [r.decode() if isinstance(r, bytes) else r for r in res[:-1]]
            for (i, *_), r in zip(shared, res[: len(shared)], strict=True):
                if r not in ("", "="):
                    out[i] = r
            claimed = [r == "" for r in res[len(shared) : len(shared) + len(claims)]]
        if queued:
            self._wake.set()
        return out, claimed

    def hold(self, host: str, until: float) -> None:
        self._hold(args=[self.prefix, host, f"{self._redis_ms(until):.3f}", self.per_host])

    def skip_host(self, host: str, reason: str) -> list[Entry]:
        with self._lock:
            if host in self._skipped:
                return []
            self._skipped[host] = reason
            dropped = list(self.local.pop(host, ()))
        urls = self._skip(args=[self.prefix, host, reason, self._rid()])
        return dropped + [Entry(u.decode() if isinstance(u, bytes) else u, 0) for u in urls]

    def skipped(self, host: str) -> str | None:
        return self._skipped.get(host)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ the workers' side
    def take(self, now: float) -> RedisTicket | None:
        ticket, _ = self._try_take()
        return ticket

    def _try_take(self) -> tuple[RedisTicket | None, float]:
        """A ticket, or (None, seconds until one may be ready; inf when nothing is queued anywhere)."""
        with self._lock:
            if self._closed or len(self._out) >= self.concurrency:
                return None, math.inf
            local_hosts = [h for h, q in self.local.items() if q]
        t0 = self.clock()
        r = self._take(
            args=[self.prefix, self.owner, f"{self.lease_ms:.0f}", self.per_host, f"{self.base_delay_ms:.3f}",
                  len(local_hosts), *local_hosts, self._rid()]
        )  # fmt: skip
        t1 = self.clock()
        r = [x.decode() if isinstance(x, bytes) else x for x in r]
        kind, now_ms = r[0], float(r[1])
        self._offset_ms = now_ms - (t0 + t1) * 500.0
        if kind == "wait":
            wait_ms = float(r[2])
            return None, (math.inf if wait_ms < 0 else wait_ms / 1000.0)
        host, slot, gate_before, gate_no = r[2], r[3], r[4], r[5]
        with self._lock:
            if kind == "local":
                q = self.local.get(host)
                if not q:  # given away meanwhile (a skip): free the slot again
                    entry = None
                else:
                    entry = q.popleft()
                    if not q:
                        del self.local[host]
            else:
                token, url, depth, tries = r[6], r[7], int(r[8]), int(r[9])
                self.held[url] = token
                entry = Entry(url, depth, tries)
            if entry is not None:
                self._tickets += 1
                ticket = RedisTicket(entry, host, t0, self._tickets, slot, now_ms, gate_before, gate_no)
                self._out[ticket.no] = ticket
        if entry is None:
            self._cancel(args=[self.prefix, slot, self.per_host, gate_before, gate_no])
            return None, 0.0
        return ticket, 0.0

    def wait_for_ticket(
        self, stop: threading.Event | None = None, timeout_s: float | None = None, *, poll_s: float = 0.1
    ) -> RedisTicket | None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._closed or (stop is not None and stop.is_set()):
                return None
            with self._taking:
                if self._closed:
                    return None
                ticket, wait = self._try_take()
                if ticket is not None:
                    return ticket
                # Other processes may queue URLs or free slots at any time: look again at least every 50 ms.
                wait = min(wait, 0.05, poll_s)
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    wait = min(wait, left)
                self._wake.clear()
                self._wake.wait(max(wait, 0.001))

    def _release(self, ticket: RedisTicket) -> None:
        """Forget ``ticket`` here; wake the taker when it was waiting for a free slot of this process.

        Otherwise a returned ticket wakes no one: its host may start again only after its delay, and the
        taker already sleeps until the first host that may (or 50 ms)."""
        with self._lock:
            full = len(self._out) >= self.concurrency
            if self._out.pop(ticket.no, None) is None:
                raise ValueError(f"ticket {ticket.no} for {ticket.url} is not out: it was given back already")
        if full:
            self._wake.set()

    def done(
        self,
        ticket: RedisTicket,
        now: float,
        *,
        gap_from_end: bool = False,
        started_at: float | None = None,
        wake_if_idle: bool = True,
    ) -> None:
        self._release(ticket)
        mode, start_ms = "none", 0.0
        if gap_from_end:
            mode = "end"
        elif started_at is not None:
            # Measured from before the take was sent: the start in Redis's clock is never under-estimated.
            mode, start_ms = "start", ticket.take_ms + (started_at - ticket.started_at) * 1000.0
        self._done(
            args=[self.prefix, ticket.slot, self.per_host, f"{self.base_delay_ms:.3f}", mode, f"{start_ms:.3f}",
                  f"{ticket.take_ms:.3f}"]
        )  # fmt: skip

    def requeue(self, ticket: RedisTicket) -> str | None:
        """The request made was another (robots.txt): the URL waits at the head of its host's local queue."""
        self._release(ticket)
        self._done(args=[self.prefix, ticket.slot, self.per_host, f"{self.base_delay_ms:.3f}", "none", "0", "0"])
        with self._lock:
            reason = self._skipped.get(ticket.host)
            if reason is None:
                self.local.setdefault(ticket.host, deque()).appendleft(ticket.entry)
        self._wake.set()
        return reason

    def cancel(self, ticket: RedisTicket) -> None:
        self._release(ticket)
        self._cancel(args=[self.prefix, ticket.slot, self.per_host, ticket.gate_before, ticket.gate_no])
        self._wake.set()  # its host's start was given back: it may go again now

    # ------------------------------------------------------------------ leases
    def start_renewing(self) -> None:
        """Renew this process's leases and slots every ``lease_s / 3`` from a thread of their own, whatever the
        writer is doing (it may be fetching inline, or parsing a large page)."""

        def loop() -> None:
            while not self._renewing.wait(self.renew_every_s):
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - Redis away for longer than the client retries
                    log.warning("could not renew the crawl's leases (%s); trying again", exc)

        self._renewing.clear()
        self._renewer = threading.Thread(target=loop, name="corpusforge-lease-renewal", daemon=True)
        self._renewer.start()

    def stop_renewing(self) -> None:
        self._renewing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self.renew_every_s + 30)
            self._renewer = None

    def renew(self) -> list[str]:
        """Extend this process's leases and slots; the URLs whose lease was lost meanwhile (fenced later)."""
        self._last_renew = time.monotonic()
        with self._lock:
            leases = list(self.held.items())
            slots = [t.slot for t in self._out.values()]
        args: list[Any] = [self.prefix, f"{self.lease_ms:.0f}", len(leases)]
        for url, token in leases:
            args += [url, token]
        lost = [u.decode() if isinstance(u, bytes) else u for u in self._renew(args=args + slots)]
        with self._lock:  # not this process's any more: kept only to fence its commit
            lost = [url for url in lost if url in self.held]  # (others were recorded meanwhile)
            for url in lost:
                self.lost_tokens[url] = self.held.pop(url)
        if lost:
            self.lost += len(lost)
            log.warning("%d lease(s) expired before renewal (this process stalled?): they are fenced", len(lost))
        return lost

    def release_held(self) -> int:
        """Give back every lease this process still holds unrecorded (its crawl stopped): queued again now."""
        with self._lock:
            leases = list(self.held.items())
            self.held.clear()
            self.local.clear()
        if not leases:
            return 0
        args: list[Any] = [self.prefix, self.per_host]
        for url, token in leases:
            args += [url, token]
        return int(self._release_script(args=args))

    def settle_depth_refusals(self) -> int:
        """Once the crawl is over: record as refused (``trap_depth``) every URL found only too deep. One process
        does it (the first to get here, or the same rank again after a kill), counting them as its own."""
        mine = str(self.rank)
        if (
            not self.client.set(self._key("deep_settler"), mine, nx=True)
            and self.client.get(self._key("deep_settler")) != mine.encode()
        ):
            return 0
        n, cursor = 0, 0
        while True:
            cursor, batch = self.client.hscan(self._key("deep"), cursor, count=1000)
            if batch:
                n += int(self._settle_deep(args=[self.prefix, self.rank, *(u.decode() for u in batch)]))
            if cursor == 0:
                return n

    def crawl_over(self) -> bool:
        """Nothing queued anywhere and no lease held by any process (after this one's last commit)."""
        st = self.status()
        return st["queued"] == 0 and st["leases"] == 0

    def status(self) -> dict[str, Any]:
        r = self._status(args=[self.prefix])
        keys = ("queued", "leases", "slots", "stored", "done", "hosts_ready")
        out = dict(zip(keys, (int(x) for x in r[:6]), strict=True))
        return out

    def stored_cached(self, max_age_s: float = 0.5) -> int:
        """Pages stored by every process, read at most every ``max_age_s`` (for the crawl's page bounds)."""
        n, at = self._stored
        if time.monotonic() - at > max_age_s:
            n = self.status()["stored"]
            self._stored = (n, time.monotonic())
        return n

    def unfinished(self) -> int:
        """URLs queued anywhere, or in flight in any live process, or held here; 0 when the crawl is over.

        This process's own leases on URLs waiting for its next commit do not count (they end with it)."""
        with self._lock:
            mine = len(self._out) + sum(len(q) for q in self.local.values())
            held = len(self.held)
        if mine:  # work here: not over, whatever Redis says (no round trip per loop of the writer)
            return mine
        st = self.status()
        self.last_queued = st["queued"]
        return mine + st["queued"] + max(0, st["leases"] - held)

    def local_work(self) -> int:
        with self._lock:
            return len(self._out) + sum(len(q) for q in self.local.values())

    def outstanding(self) -> list[RedisTicket]:
        with self._lock:
            return list(self._out.values())

    def snapshot(self, now: float) -> SchedulerSnapshot:
        st = self.status()
        with self._lock:
            out = len(self._out)
        return SchedulerSnapshot(st["queued"], st["leases"], out, st["hosts_ready"], 0, len(self._skipped))

    # ------------------------------------------------------------------ durable records
    def commit(
        self,
        *,
        segment: dict[str, Any] | None,
        done: Iterable[tuple[str, str | None]],
        new: Iterable[tuple[str, int]],
        counters: dict[str, Any],
        pages: Iterable[tuple[str, str | None, str | None, str, list[str]]] = (),
    ) -> list[str]:
        """Record a segment and what this process decided, in one script; the stored URLs not recorded.

        ``new`` is ignored: discovered URLs went to Redis when queued. Drops are counted from ``done`` (a URL
        two processes dropped is counted once), stored pages from the URLs recorded. ``pages`` (validators and
        links for a re-crawl) are not kept: a re-crawl runs on the SQLite frontier, and they were most of the
        frontier's memory (~2 KB of ~2 KB per stored page with them).
        """
        done = list(done)
        self._commits += 1
        commit_id = f"{self.owner}/{self._commits}"
        with self._lock:
            # A redirect's target is recorded without a lease: if this process also holds the target itself
            # (taken from the queue), that lease stays until the target's own result is recorded.
            tokens = [
                (u, r or "", "" if r == "redirect_target" else self.held.get(u) or self.lost_tokens.get(u, ""))
                for u, r in done
            ]
        counts = {k: v for k, v in counters.get("count", {}).items() if k != "stored" and v}
        page_list: list[tuple[str, str]] = []
        args: list[Any] = [
            self.prefix, commit_id, self.rank,
            segment["name"] if segment else "",
            json.dumps(segment) if segment else "",
            len(tokens), len(counts), len(page_list),
        ]  # fmt: skip
        for t in tokens:
            args += list(t)
        for k, v in counts.items():
            args += [k, int(v)]
        for p in page_list:
            args += list(p)
        res = self._commit(args=args)
        with self._lock:
            for u, r in done:
                if r != "redirect_target":
                    self.held.pop(u, None)
                    self.lost_tokens.pop(u, None)
        res = [x.decode() if isinstance(x, bytes) else x for x in res]
        return [] if res == ["="] else res

    def segments(self, rank: int | None = None) -> list[dict[str, Any]]:
        raw = self.client.hgetall(self._key("segments"))
        segs = [json.loads(v) for v in raw.values()]
        if rank is not None:
            segs = [s for s in segs if s.get("rank") == rank]
        return sorted(segs, key=lambda s: s["name"])

    def counters(self, kind: str, rank: int | None = None) -> Any:
        from collections import Counter

        key = self._key("count") if rank is None else self._key(f"rcount:{rank}")
        raw = self.client.hgetall(key)
        out: Counter[str] = Counter()
        for k, v in raw.items():
            k = k.decode()
            if k.startswith(kind + ":"):
                out[k[len(kind) + 1 :]] = int(v)
        return out

    def done_value(self, urls: list[str]) -> list[str | None]:
        vals = self.client.hmget(self._key("done"), urls) if urls else []
        return [None if v is None else v.decode() for v in vals]

    def robots_get(self, host: str) -> dict[str, Any] | None:
        v = self.client.hget(self._key("robots"), host)
        return None if v is None else json.loads(v)

    def robots_put(self, host: str, record: dict[str, Any], delay_s: float | None) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(self._key("robots"), host, json.dumps(record))
        if delay_s is not None:
            pipe.hset(self._key(f"host:{host}"), "delay", f"{max(self.base_delay_ms, delay_s * 1000.0):.3f}")
        pipe.execute()

    def close_client(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing only
            pass

    # ------------------------------------------------------------------ running state
    def ensure_usable(self) -> None:
        """Refuse a server that evicts keys: a frontier that silently loses URLs would lose pages."""
        from corpusforge.redisutil import refuse_evicting_server

        refuse_evicting_server(self.client, self.url, "the crawl's frontier would lose URLs", path="frontier")

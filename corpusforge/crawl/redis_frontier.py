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

from corpusforge.crawl.scheduler import Entry, SchedulerSnapshot
from corpusforge.crawl.urls import host_key
from corpusforge.errors import ConfigError, CorpusforgeError, FatalError

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

# ---------------------------------------------------------------------------------------------- Lua scripts
# Shared helpers, prepended to every script. P is the key prefix (ARGV[1]); now is Redis's clock in ms.
_LIB = r"""
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local function hnum(key, f, default)
  local v = redis.call('HGET', key, f)
  if v then return tonumber(v) end
  return default
end
local function refresh(host, per_host)
  local hk = P .. 'host:' .. host
  if redis.call('HEXISTS', hk, 'skipped') == 0 and redis.call('LLEN', P .. 'q:' .. host) > 0
     and hnum(hk, 'inflight', 0) < per_host then
    local at = math.max(hnum(hk, 'next', 0), hnum(hk, 'held', 0))
    redis.call('ZADD', P .. 'ready', at, host)
  else
    redis.call('ZREM', P .. 'ready', host)
  end
end
local function release_slot(slot, per_host)
  local host = redis.call('HGET', P .. 'slots', slot)
  if not host then return nil end
  redis.call('HDEL', P .. 'slots', slot)
  redis.call('ZREM', P .. 'slotz', slot)
  local hk = P .. 'host:' .. host
  if hnum(hk, 'inflight', 0) > 0 then redis.call('HINCRBY', hk, 'inflight', -1) end
  refresh(host, per_host)
  return host
end
local function reclaim(now, per_host)
  -- Leases and slots of a process that stopped renewing them (it died, or lost Redis for too long).
  local n = 0
  for _, url in ipairs(redis.call('ZRANGEBYSCORE', P .. 'leasez', '-inf', now, 'LIMIT', 0, 256)) do
    local lease = redis.call('HGET', P .. 'lease', url)
    redis.call('ZREM', P .. 'leasez', url)
    redis.call('HDEL', P .. 'lease', url)
    if lease and redis.call('HEXISTS', P .. 'done', url) == 0 then
      -- token, owner, depth, tries, host
      local f = {}
      for part in string.gmatch(lease, '[^\t]+') do f[#f + 1] = part end
      redis.call('LPUSH', P .. 'q:' .. f[5], f[3] .. '\t' .. f[4] .. '\t' .. url)
      redis.call('INCR', P .. 'queued')
      redis.call('HINCRBY', P .. 'count', 'count:lease_expired', 1)
      refresh(f[5], per_host)
      n = n + 1
    end
  end
  for _, slot in ipairs(redis.call('ZRANGEBYSCORE', P .. 'slotz', '-inf', now, 'LIMIT', 0, 256)) do
    release_slot(slot, per_host)
  end
  return n
end
local function acquire(host, now, per_host, base_delay, lease_ms)
  local hk = P .. 'host:' .. host
  local gate_before = hnum(hk, 'next', 0)
  local delay = hnum(hk, 'delay', base_delay)
  redis.call('HSET', hk, 'next', tostring(now + delay))
  local gate_no = redis.call('HINCRBY', hk, 'gate_no', 1)
  redis.call('HINCRBY', hk, 'inflight', 1)
  local slot = tostring(redis.call('INCR', P .. 'slotno'))
  redis.call('HSET', P .. 'slots', slot, host)
  redis.call('ZADD', P .. 'slotz', now + lease_ms, slot)
  refresh(host, per_host)
  return slot, gate_before, gate_no
end
"""

# ARGV: P, owner, lease_ms, per_host, base_delay_ms, n_local, local hosts...
# Returns {kind, now, ...}: kind 'local' (host, slot, gate_before, gate_no), 'shared' (host, slot, gate_before,
# gate_no, token, url, depth, tries), 'wait' (ms until the first host may start; -1: none queued anywhere).
_TAKE = r"""
local owner, lease_ms, per_host, base_delay = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
reclaim(now, per_host)
local soonest = -1
local n_local = tonumber(ARGV[6])
for i = 1, n_local do
  local host = ARGV[6 + i]
  local hk = P .. 'host:' .. host
  if hnum(hk, 'inflight', 0) < per_host then
    local at = math.max(hnum(hk, 'next', 0), hnum(hk, 'held', 0))
    if at <= now then
      local slot, gb, gn = acquire(host, now, per_host, base_delay, lease_ms)
      return {'local', tostring(now), host, slot, tostring(gb), tostring(gn)}
    end
    if soonest < 0 or at - now < soonest then soonest = at - now end
  end
end
local top = redis.call('ZRANGE', P .. 'ready', 0, 0, 'WITHSCORES')
if #top == 0 then return {'wait', tostring(now), tostring(soonest)} end
local host, at = top[1], tonumber(top[2])
if at > now then
  if soonest < 0 or at - now < soonest then soonest = at - now end
  return {'wait', tostring(now), tostring(soonest)}
end
local entry = redis.call('LPOP', P .. 'q:' .. host)
if not entry then
  refresh(host, per_host)
  return {'wait', tostring(now), '0'}
end
redis.call('DECR', P .. 'queued')
local slot, gb, gn = acquire(host, now, per_host, base_delay, lease_ms)
local d1 = string.find(entry, '\t', 1, true)
local d2 = string.find(entry, '\t', d1 + 1, true)
local depth, tries, url = string.sub(entry, 1, d1 - 1), string.sub(entry, d1 + 1, d2 - 1), string.sub(entry, d2 + 1)
local token = tostring(redis.call('INCR', P .. 'fence'))
redis.call('HSET', P .. 'lease', url, token .. '\t' .. owner .. '\t' .. depth .. '\t' .. tries .. '\t' .. host)
redis.call('ZADD', P .. 'leasez', now + lease_ms, url)
return {'shared', tostring(now), host, slot, tostring(gb), tostring(gn), token, url, depth, tries}
"""

# ARGV: P, slot, per_host, base_delay_ms, mode ('end': the next start waits the delay from now; 'start': from
# start_ms when later than the take; 'none'), start_ms, take_ms
_DONE = r"""
local slot, per_host, base_delay, mode = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local host = redis.call('HGET', P .. 'slots', slot)
if not host then return 0 end
local hk = P .. 'host:' .. host
local delay = hnum(hk, 'delay', base_delay)
local start = nil
if mode == 'end' then start = now_ms() elseif mode == 'start' then start = tonumber(ARGV[6]) end
if start and start > tonumber(ARGV[7]) then
  redis.call('HSET', hk, 'next', tostring(math.max(hnum(hk, 'next', 0), start + delay)))
  redis.call('HINCRBY', hk, 'gate_no', 1)
end
release_slot(slot, per_host)
return 1
"""

# ARGV: P, slot, per_host, gate_before, gate_no: no request was made; give the start back unless it moved.
_CANCEL = r"""
local slot, per_host = ARGV[2], tonumber(ARGV[3])
local host = redis.call('HGET', P .. 'slots', slot)
if not host then return 0 end
local hk = P .. 'host:' .. host
if hnum(hk, 'gate_no', 0) == tonumber(ARGV[5]) then redis.call('HSET', hk, 'next', ARGV[4]) end
release_slot(slot, per_host)
return 1
"""

# ARGV: P, per_host, n, then n × (url, host, depth, tries, front). Returns per URL: '' queued, '=' seen,
# else the host's skip reason.
_PUSH = r"""
local per_host, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local touched = {}
for i = 0, n - 1 do
  local url, host, depth, tries, front = ARGV[4 + 5*i], ARGV[5 + 5*i], ARGV[6 + 5*i], ARGV[7 + 5*i], ARGV[8 + 5*i]
  local skipped = redis.call('HGET', P .. 'host:' .. host, 'skipped')
  if redis.call('SADD', P .. 'seen', url) == 0 then
    out[#out + 1] = '='
  elseif skipped then
    out[#out + 1] = skipped
  else
    local e = depth .. '\t' .. tries .. '\t' .. url
    if front == '1' then redis.call('LPUSH', P .. 'q:' .. host, e) else redis.call('RPUSH', P .. 'q:' .. host, e) end
    redis.call('INCR', P .. 'queued')
    touched[host] = true
    out[#out + 1] = ''
  end
end
for host, _ in pairs(touched) do refresh(host, per_host) end
return out
"""

# ARGV: P, host, until_ms, per_host
_HOLD = r"""
local hk = P .. 'host:' .. ARGV[2]
if tonumber(ARGV[3]) > hnum(hk, 'held', 0) then redis.call('HSET', hk, 'held', ARGV[3]) end
refresh(ARGV[2], tonumber(ARGV[4]))
return 1
"""

# ARGV: P, host, reason. Returns the URLs that were queued for the host (its caller drops them).
_SKIP = r"""
local host = ARGV[2]
local hk = P .. 'host:' .. host
if redis.call('HSETNX', hk, 'skipped', ARGV[3]) == 0 then return {} end
local urls = {}
for _, e in ipairs(redis.call('LRANGE', P .. 'q:' .. host, 0, -1)) do
  local d1 = string.find(e, '\t', 1, true)
  local d2 = string.find(e, '\t', d1 + 1, true)
  urls[#urls + 1] = string.sub(e, d2 + 1)
end
redis.call('DEL', P .. 'q:' .. host)
redis.call('DECRBY', P .. 'queued', #urls)
redis.call('ZREM', P .. 'ready', host)
return urls
"""

# ARGV: P, lease_ms, n_leases, n × (url, token), then slots... Returns the URLs whose lease was lost.
_RENEW = r"""
local now = now_ms()
local lease_ms, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local lost = {}
for i = 0, n - 1 do
  local url, token = ARGV[4 + 2*i], ARGV[5 + 2*i]
  local lease = redis.call('HGET', P .. 'lease', url)
  if lease and string.sub(lease, 1, #token + 1) == token .. '\t' then
    redis.call('ZADD', P .. 'leasez', now + lease_ms, url)
  else
    lost[#lost + 1] = url
  end
end
for i = 4 + 2*n, #ARGV do
  if redis.call('HEXISTS', P .. 'slots', ARGV[i]) == 1 then redis.call('ZADD', P .. 'slotz', now + lease_ms, ARGV[i]) end
end
return lost
"""

# ARGV: P, commit_id, rank, segment_name ('' none), segment_json, n_done, n_counts, n_pages, then
# n_done × (url, reason ('' stored), token ('' no lease)), n_counts × (key, value), n_pages × (url, json).
# Returns the stored URLs not recorded (fenced, or stored by another process first); '=' when a commit with
# this id was applied already (its reply was lost).
_COMMIT = r"""
if redis.call('SADD', P .. 'commits', ARGV[2]) == 0 then return {'='} end
local rank, seg = ARGV[3], ARGV[4]
local n_done, n_counts, n_pages = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local rc = P .. 'rcount:' .. rank
local excluded = {}
local i = 9
for _ = 1, n_done do
  local url, reason, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local ok = true
  if token ~= '' then
    local lease = redis.call('HGET', P .. 'lease', url)
    if lease and string.sub(lease, 1, #token + 1) == token .. '\t' then
      redis.call('HDEL', P .. 'lease', url)
      redis.call('ZREM', P .. 'leasez', url)
    else
      ok = false
      redis.call('HINCRBY', P .. 'count', 'count:fenced', 1)
      redis.call('HINCRBY', rc, 'count:fenced', 1)
    end
  end
  local value = reason
  if reason == '' then value = '=' .. seg end
  if ok and redis.call('HSETNX', P .. 'done', url, value) == 1 then
    if reason == '' then
      redis.call('HINCRBY', P .. 'count', 'count:stored', 1)
      redis.call('HINCRBY', rc, 'count:stored', 1)
    elseif reason ~= 'redirect_target' then
      redis.call('HINCRBY', P .. 'count', 'drop:' .. reason, 1)
      redis.call('HINCRBY', rc, 'drop:' .. reason, 1)
    end
  elseif reason == '' then
    excluded[#excluded + 1] = url
  end
end
for _ = 1, n_counts do
  redis.call('HINCRBY', P .. 'count', 'count:' .. ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', rc, 'count:' .. ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_pages do
  redis.call('HSET', P .. 'pages', ARGV[i], ARGV[i + 1])
  i = i + 2
end
if seg ~= '' then
  local rec = cjson.decode(ARGV[5])
  rec['excluded'] = excluded
  rec['rank'] = tonumber(rank)
  if #excluded == 0 then rec['excluded'] = nil end
  redis.call('HSET', P .. 'segments', seg, cjson.encode(rec))
end
return excluded
"""

# ARGV: P, per_host, then (url, token)...: leases this process gives back unrecorded (a stop): each URL goes
# back to the head of its host's queue at once instead of waiting out its expiry.
_RELEASE = r"""
local per_host = tonumber(ARGV[2])
local n = 0
for i = 3, #ARGV, 2 do
  local url, token = ARGV[i], ARGV[i + 1]
  local lease = redis.call('HGET', P .. 'lease', url)
  if lease and string.sub(lease, 1, #token + 1) == token .. '\t' and redis.call('HEXISTS', P .. 'done', url) == 0 then
    local f = {}
    for part in string.gmatch(lease, '[^\t]+') do f[#f + 1] = part end
    redis.call('HDEL', P .. 'lease', url)
    redis.call('ZREM', P .. 'leasez', url)
    redis.call('LPUSH', P .. 'q:' .. f[5], f[3] .. '\t' .. f[4] .. '\t' .. url)
    redis.call('INCR', P .. 'queued')
    refresh(f[5], per_host)
    n = n + 1
  end
end
return n
"""

# ARGV: P. Returns {queued, leases, slots, stored, done, hosts ready, hosts known}.
_STATUS = r"""
return {
  tonumber(redis.call('GET', P .. 'queued') or '0'),
  redis.call('ZCARD', P .. 'leasez'),
  redis.call('ZCARD', P .. 'slotz'),
  tonumber(redis.call('HGET', P .. 'count', 'count:stored') or '0'),
  redis.call('HLEN', P .. 'done'),
  redis.call('ZCARD', P .. 'ready'),
  tostring(now_ms()),
}
"""


def is_redis_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith(REDIS_SCHEMES)


def connect(url: str, *, path: str = "frontier", retry_s: float = 30.0, probe: bool = False) -> Any:
    """A client for ``url`` that retries a lost connection for about ``retry_s`` (a Redis restart); checked
    with a PING, so an unreachable server is a clear error before anything is written (``probe``: one try)."""
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ConfigError(
            "a Redis frontier needs the redis client: pip install 'corpusforge[redis]'", path=path
        ) from exc
    retries = max(1, int(retry_s / 2))
    if probe:
        retries = 0
    try:
        client = redis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=0,
        )
    except ValueError as exc:
        raise ConfigError(f"{safe_url(url)} is not a Redis URL ({exc})", path=path) from exc
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        # Not a bad recipe: a service that is down. Exit 1, before anything is written.
        raise FatalError(
            f"{path}: cannot reach Redis at {safe_url(url)} ({exc}); is redis-server running there?"
        ) from exc
    except redis.exceptions.ResponseError as exc:
        raise ConfigError(f"Redis at {safe_url(url)} refused the connection ({exc})", path=path) from exc
    return client


def safe_url(url: str) -> str:
    """``url`` with any password replaced, for messages and manifests."""
    from corpusforge.redact import redact_text

    return redact_text(url)


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
    ) -> None:
        self.url = url
        self.client = connect(url, retry_s=retry_s)
        self.prefix = f"cf:{key}:"
        self.rank = rank
        self.owner = f"{rank}/{uuid.uuid4().hex[:12]}"
        self.per_host = per_host_concurrency
        self.concurrency = concurrency
        self.base_delay_ms = base_delay_s * 1000.0
        self.lease_ms = lease_s * 1000.0
        self.renew_every_s = max(0.05, lease_s / 3.0)
        lib = _LIB
        self._take = self.client.register_script(lib + _TAKE)
        self._done = self.client.register_script(lib + _DONE)
        self._cancel = self.client.register_script(lib + _CANCEL)
        self._push = self.client.register_script(lib + _PUSH)
        self._hold = self.client.register_script(lib + _HOLD)
        self._skip = self.client.register_script(lib + _SKIP)
        self._renew = self.client.register_script(lib + _RENEW)
        self._commit = self.client.register_script(lib + _COMMIT)
        self._status = self.client.register_script(lib + _STATUS)
        self._release_script = self.client.register_script(lib + _RELEASE)
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
        self._commits = 0
        self.lost = 0  # leases found lost at a renewal

    # ------------------------------------------------------------------ helpers
    def _key(self, name: str) -> str:
        return self.prefix + name

    def _redis_ms(self, monotonic_s: float) -> float:
        return monotonic_s * 1000.0 + self._offset_ms

    # ------------------------------------------------------------------ the writer's side (Scheduler API)
    def push(self, url: str, depth: int, tries: int = 0, *, front: bool = False, data: Any = None) -> str | None:
        return self.push_many([(url, depth, tries, front, data)])[0]

    def push_many(self, items: Iterable[tuple[str, int, int, bool, Any]]) -> list[str | None]:
        """Queue URLs; each result None (queued, or known to the crawl already) or the host's skip reason.

        A URL this process holds (a retry, a redirect hop, a render) stays in its local queue, leased; others
        go to Redis, where ``seen`` keeps each URL queued once over all processes.
        """
        out: list[str | None] = []
        shared: list[tuple[int, str, str, int, int, bool]] = []
        items = list(items)
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
                    continue
                if url in self.held:  # found as a link while this process works on it: known already
                    continue
                shared.append((i, url, host, depth, tries, front))
        if shared:
            args: list[Any] = [self.prefix, self.per_host, len(shared)]
            for _, url, host, depth, tries, front in shared:
                args += [url, host, depth, tries, "1" if front else "0"]
            res = self._push(args=args)
            for (i, *_), r in zip(shared, res, strict=True):
                r = r.decode() if isinstance(r, bytes) else r
                if r not in ("", "="):
                    out[i] = r
        self._wake.set()
        return out

    def hold(self, host: str, until: float) -> None:
        self._hold(args=[self.prefix, host, f"{self._redis_ms(until):.3f}", self.per_host])

    def skip_host(self, host: str, reason: str) -> list[Entry]:
        with self._lock:
            if host in self._skipped:
                return []
            self._skipped[host] = reason
            dropped = list(self.local.pop(host, ()))
        urls = self._skip(args=[self.prefix, host, reason])
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
        t0 = time.monotonic()
        r = self._take(
            args=[self.prefix, self.owner, f"{self.lease_ms:.0f}", self.per_host, f"{self.base_delay_ms:.3f}",
                  len(local_hosts), *local_hosts]
        )  # fmt: skip
        t1 = time.monotonic()
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
        with self._lock:
            if self._out.pop(ticket.no, None) is None:
                raise ValueError(f"ticket {ticket.no} for {ticket.url} is not out: it was given back already")

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
        self._wake.set()

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
        self._wake.set()

    # ------------------------------------------------------------------ leases
    def renew_due(self) -> bool:
        return time.monotonic() - self._last_renew >= self.renew_every_s

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

    def status(self) -> dict[str, Any]:
        r = self._status(args=[self.prefix])
        keys = ("queued", "leases", "slots", "stored", "done", "hosts_ready")
        out = dict(zip(keys, (int(x) for x in r[:6]), strict=True))
        return out

    def unfinished(self) -> int:
        """URLs queued anywhere, or in flight in any live process, or held here; 0 when the crawl is over.

        This process's own leases on URLs waiting for its next commit do not count (they end with it)."""
        with self._lock:
            mine = len(self._out) + sum(len(q) for q in self.local.values())
            held = len(self.held)
        st = self.status()
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
        two processes dropped is counted once), stored pages from the URLs recorded.
        """
        done = list(done)
        self._commits += 1
        commit_id = f"{self.owner}/{self._commits}"
        with self._lock:
            tokens = [(u, r or "", self.held.get(u, "")) for u, r in done]
        counts = {k: v for k, v in counters.get("count", {}).items() if k != "stored" and v}
        page_list = [
            (u, json.dumps({"etag": e, "last_modified": lm, "sha1": h, "links": links})) for u, e, lm, h, links in pages
        ]
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
            for u, _ in done:
                self.held.pop(u, None)
        res = [x.decode() if isinstance(x, bytes) else x for x in res]
        return [] if res == ["="] else res

    def segments(self, rank: int | None = None) -> list[dict[str, Any]]:
        raw = self.client.hgetall(self._key("segments"))
        segs = [json.loads(v) for v in raw.values()]
        if rank is not None:
            segs = [s for s in segs if s.get("rank") == rank]
        return sorted(segs, key=lambda s: s["name"])

    def update_segment(self, record: dict[str, Any]) -> None:
        self.client.hset(self._key("segments"), record["name"], json.dumps(record))

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

    def pages(self) -> dict[str, Any]:
        from corpusforge.crawl.frontier import PageRecord

        out = {}
        for u, v in self.client.hgetall(self._key("pages")).items():
            d = json.loads(v)
            out[u.decode()] = PageRecord(d["etag"], d["last_modified"], d["sha1"], d["links"])
        return out

    # robots.txt, read by one process for all
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
        try:
            policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
        except Exception:  # noqa: BLE001 - CONFIG may be disabled on a managed server: nothing to check
            return
        if policy not in ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"):
            raise CorpusforgeError(
                f"Redis at {safe_url(self.url)} evicts keys (maxmemory-policy {policy}): the frontier would lose "
                "URLs; set maxmemory-policy noeviction"
            )


def frontier_key(config: dict[str, Any]) -> str:
    """The key prefix of a crawl in Redis: from its config, so every process of one crawl (and its rerun)
    shares it and another crawl never does."""
    import hashlib

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]

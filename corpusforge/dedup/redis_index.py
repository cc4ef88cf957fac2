"""A near-duplicate index shared by many builds: the band hashes of every kept document in Redis, in a compact
layout of our own (small integer sets, grown by linear hashing), queried and extended by two Lua scripts.

``index = "redis://host:port/db"`` (also ``rediss://``, ``unix:///path/redis.sock``, ``unix:///path?db=N``)
makes ``minhash_dedup`` query and extend one index that builds on several machines share; a folder path keeps
the single-machine ``BandIndex`` (``index.py``), and both answer the same question: does a document share a
band hash, in the same band, with a document an earlier batch kept? What is stored where, under a prefix that
names the layout and the MinHash parameters (``cfmh2:<ngram>:<bands>:<rows>:<seed>``; indexes made with other
parameters share the server and never compare):

- ``<prefix>:<band>:<bucket>``: Redis sets of the top 53 bits of the band hashes (exact as a Lua number, a
  double; sharing them by chance: ~6·10⁻⁷ per document at 400 M documents), decimal integers, so each set is
  an *intset* (8 bytes a member) while it holds ≤ 512 (``set-max-intset-entries``, the default) members.
  Buckets follow linear hashing, per band: ``2^level + next`` buckets; a value's bucket is its value mod
  ``2^level``, or mod ``2^(level+1)`` below ``next``; when a band's members exceed 200 × buckets, bucket
  ``next`` is split in two. Sets so stay at 100–400 members (mean 200) at any size of the index: ~9 bytes a
  band hash, no capacity to choose in advance, no server setting to change (on a server with a lower
  ``set-max-intset-entries``, the fuller sets turn into hashtables: the same answers, ~7× the memory).
- ``<prefix>:buckets``: per band ``L<b>``, ``p<b>``, ``n<b>``: level, next bucket to split, members.
- ``<prefix>:batches``: batch key → documents added, written after a batch's inserts (its documents are then
  counted in ``index_docs``); a batch found there is not inserted again. Sets are idempotent, so an insert
  interrupted halfway is simply redone.
- ``<prefix>:matched``: batch key → which of its documents matched the index on its first query (8 bytes of
  count + one bit per document), written *before* its inserts. A batch's later queries (a rerun, or a redo of
  an interrupted insert, when its own band hashes are already in) replay that record instead of querying:
  the same documents are kept, and nothing has to remember which batch inserted which band hash (that would
  cost another ~4–8 bytes per band hash; the record costs 1 bit per document). Two builds of the same batch
  at the same moment are not guarded against.

Both scripts run on the server, one call per 1,024 documents (~14,000 set operations, tens of milliseconds:
scripts are atomic, so concurrent builds and bucket splits never see each other half done); they compute
bucket key names themselves, so the index needs one standalone server (not Redis Cluster) with scripting.

Measured (``benchmarks/dedup_index.py``, 10,000 documents, 14 bands, local socket, a loaded 2-core VM):
insert 21,895 docs/s, query 36,364 docs/s, 152 bytes of ``used_memory`` per document (~0.2 MB of it fixed: 127 B
at 50,000; 400 M documents: ~51 GB); datasketch's ``MinHashLSH`` Redis storage on the same server: 1,381 and 501
docs/s, 6,984 B; the folder index: 519,187 and 299,462 docs/s, 112 B. The scripts' time is the server's: one
server serves about that many documents a second to all builds together.

Alternatives measured before choosing (50,000 documents of random band hashes; bytes per document =
``used_memory`` growth; docs/s insert / query): one set per band, 8-byte binary members (hashtable encoding):
893 B, 22,635 / 16,890 (pipelined SADD / SMISMEMBER of 8,192 members; the redis-py client is the bottleneck);
the same with integer members: 1,116 B; sets sharded by a fixed number of top bits, low 32 bits as members
(intsets of 4-byte members, the same kind of scripts): 66 B, 24,292 / 27,287 at ~390 members a set (2⁷ sets
per band) but 1,262 B, 13,210 / 20,801 with the 2²⁰ sets per band that 400 M documents need (one member a set:
~90 bytes of key per member), and a fixed capacity: past
512 members a set turns into a hashtable (~60 B a member); sharded sets filled by pipelined SADD / SISMEMBER
commands instead of a script: 3,498 / 4,079 docs/s (~20 µs of redis-py per command). Linear hashing cannot
keep 4-byte members: a split needs the bits that a shortened member dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from corpusforge.errors import ConfigError, ShardError
from corpusforge.redact import redact_text

SCHEMES = ("redis://", "rediss://", "unix://")
FORMAT = "cfmh2"  # + ngram, bands, rows, seed: "cfmh2:5:14:8:1" (short: it is part of every Redis key)
CHUNK = 1024  # documents per script call
LOAD = 200  # band hashes per bucket on average: splits keep every set below 512 (an intset)
VALUE_SHIFT = 11  # a band hash's top 53 bits: exact as a Lua number (a double)

# Both scripts: ARGV = prefix, bands, values (float64 little-endian, document-major: D × bands) [, LOAD].
_STATE_LUA = """
local prefix, nb, blob = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local state = prefix .. ':buckets'
local L, P, N, pb, names = {}, {}, {}, {}, {}
for b = 1, nb do
  names[3 * b - 2], names[3 * b - 1], names[3 * b] = 'L' .. (b - 1), 'p' .. (b - 1), 'n' .. (b - 1)
  pb[b] = prefix .. ':' .. (b - 1) .. ':'
end
local raw = redis.call('HMGET', state, unpack(names))
for b = 1, nb do
  L[b], P[b], N[b] = tonumber(raw[3 * b - 2]) or 0, tonumber(raw[3 * b - 1]) or 0, tonumber(raw[3 * b]) or 0
end
local function bucket(b, v)
  local m = 2 ^ L[b]
  local a = v % m
  if a < P[b] then a = v % (2 * m) end
  return pb[b] .. a
end
"""

# Numbers given to redis.call become exact decimal integers (< 2^53), which Redis keeps in intsets.
_QUERY_LUA = (
    _STATE_LUA
    + """
local out, pos, v = {}, 1, 0
for d = 1, #blob / (8 * nb) do
  local hit = 0
  for b = 1, nb do
    v, pos = struct.unpack('<d', blob, pos)
    if hit == 0 and redis.call('SISMEMBER', bucket(b, v), v) == 1 then hit = 1 end
  end
  out[d] = hit
end
return table.concat(out)
"""
)

# A split copies the moving members first, then records the new state, then removes them from the old
# bucket: a script stopped between two steps (out of memory) leaves every member findable.
_ADD_LUA = (
    _STATE_LUA
    + """
local load = tonumber(ARGV[4])
local function split(b)
  local m = 2 ^ L[b]
  local src, move = pb[b] .. P[b], {}
  for _, s in ipairs(redis.call('SMEMBERS', src)) do
    if tonumber(s) % (2 * m) >= m then move[#move + 1] = s end
  end
  if #move > 0 then redis.call('SADD', pb[b] .. (P[b] + m), unpack(move)) end
  P[b] = P[b] + 1
  if P[b] == m then L[b], P[b] = L[b] + 1, 0 end
  redis.call('HSET', state, 'L' .. (b - 1), L[b], 'p' .. (b - 1), P[b], 'n' .. (b - 1), N[b])
  if #move > 0 then redis.call('SREM', src, unpack(move)) end
end
local added, pos, v = 0, 1, 0
for i = 0, #blob / 8 - 1 do
  local b = i % nb + 1
  v, pos = struct.unpack('<d', blob, pos)
  if redis.call('SADD', bucket(b, v), v) == 1 then
    added = added + 1
    N[b] = N[b] + 1
    if N[b] > load * (2 ^ L[b] + P[b]) then split(b) end
  end
end
local counts = {}
for b = 1, nb do counts[2 * b - 1], counts[2 * b] = 'n' .. (b - 1), N[b] end
redis.call('HSET', state, unpack(counts))
return added
"""
)


def is_redis_url(index: str | None) -> bool:
    return index is not None and index.startswith(SCHEMES)


def _redis(url: str) -> Any:
    try:
        import redis
    except ImportError as exc:
        raise ConfigError(
            f"index = {redact_text(url)!r} needs the redis package ({exc}): pip install 'corpusforge[redis]'",
            path="index",
        ) from exc
    return redis


def connection_kwargs(url: str) -> dict[str, Any]:
    """``redis.Redis(**kwargs)`` arguments for ``url``, parsed by redis-py."""
    redis = _redis(url)
    try:
        kw = dict(redis.connection.parse_url(url))
    except ValueError as exc:
        raise ConfigError(f"{redact_text(url)!r} is not a Redis URL ({exc})", path="index") from exc
    cls = kw.pop("connection_class", None)
    if "path" in kw:
        kw["unix_socket_path"] = kw.pop("path")
    if cls is not None and issubclass(cls, redis.connection.SSLConnection):
        kw["ssl"] = True
    return kw


def values(bands: np.ndarray) -> np.ndarray:
    """float64[D, bands]: what the index stores of each band hash (its top 53 bits, exact as a double)."""
    return (np.ascontiguousarray(bands, dtype=np.uint64) >> np.uint64(VALUE_SHIFT)).astype("<f8")


class RedisBandIndex:
    """The shared index at ``url`` for MinHash ``params`` (ngram, bands, rows, seed); connects, pings and
    loads its two scripts (a server without scripting is refused here)."""

    def __init__(self, url: str, params: dict[str, Any]) -> None:
        redis = _redis(url)
        self.url = url
        self.params = params
        kw = connection_kwargs(url)
        self.basename = ":".join([FORMAT] + [str(params[k]) for k in ("ngram", "bands", "rows", "seed")])
        self._client = redis.Redis(**kw)
        once = redis.Redis(**kw, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        try:  # once, without redis-py's retries (seconds of backoff): a server that is not there fails at once
            once.ping()
        except redis.exceptions.RedisError as exc:
            raise ConfigError(
                f"cannot reach the MinHash index at {redact_text(url)} ({exc}); is redis-server running?",
                path="index",
            ) from exc
        try:
            once.script_load(_QUERY_LUA)
            once.script_load(_ADD_LUA)
        except redis.exceptions.RedisError as exc:
            raise ConfigError(
                f"the MinHash index at {redact_text(url)} needs a Redis server with Lua scripting ({exc})",
                path="index",
            ) from exc
        from corpusforge.redisutil import refuse_evicting_server

        refuse_evicting_server(once, url, "the index would lose band hashes and let duplicates through", path="index")
        self._query = self._client.register_script(_QUERY_LUA)
        self._add = self._client.register_script(_ADD_LUA)
        self._batches = f"{self.basename}:batches"
        self._matched = f"{self.basename}:matched"

    def batch_docs(self, key: str) -> int | None:
        """Documents batch ``key`` added, or None when it is not (completely) in the index."""
        n = self._client.hget(self._batches, key)
        return None if n is None else int(n)

    def docs(self) -> int:
        """Documents in the index: the sum over finished batches."""
        return sum(int(n) for n in self._client.hvals(self._batches))

    def matches(self, bands: np.ndarray, usable: np.ndarray, *, exclude: str) -> np.ndarray:
        """bool[D]: which rows of ``bands`` (uint64[D, bands]) share a band hash, in the same band, with a
        document of the index; rows not ``usable`` (no words) never match. Batch ``exclude`` (the one asking)
        never matches itself: once it has begun inserting, its first answer is replayed."""
        record = self._client.hget(self._matched, exclude)
        if record is not None:
            return _replay(record, bands.shape[0], self.url, exclude) & usable
        hit = np.zeros(bands.shape[0], dtype=bool)
        rows = np.flatnonzero(usable)
        vals = values(bands)
        for start in range(0, rows.size, CHUNK):
            chunk = rows[start : start + CHUNK]
            out = self._query(args=[self.basename, self.params["bands"], vals[chunk].tobytes()])
            hit[chunk] = np.frombuffer(out, dtype=np.uint8) == ord("1")
        return hit

    def add(self, key: str, bands: np.ndarray, matched: np.ndarray) -> dict[str, Any]:
        """Insert batch ``key``: ``bands`` (uint64[K, bands]) of its kept documents, after recording
        ``matched`` (bool[D], which of its documents its query found); a batch already in is skipped."""
        done = self.batch_docs(key)
        if done is None:
            record = np.uint64(matched.shape[0]).astype("<u8").tobytes() + np.packbits(matched).tobytes()
            self._client.hset(self._matched, key, record)
            vals = values(bands)
            for start in range(0, vals.shape[0], CHUNK):
                self._add(args=[self.basename, self.params["bands"], vals[start : start + CHUNK].tobytes(), LOAD])
            self._client.hset(self._batches, key, int(bands.shape[0]))
        return {
            "url": redact_text(self.url),
            "basename": self.basename,
            "batch": key,
            "added": 0 if done is not None else int(bands.shape[0]),
            "already_indexed": done is not None,
            **self.summary(),
        }

    def summary(self) -> dict[str, Any]:
        return {"index_docs": self.docs(), "index_batches": int(self._client.hlen(self._batches))}


def _replay(record: bytes, docs: int, url: str, key: str) -> np.ndarray:
    n = int(np.frombuffer(record[:8], dtype="<u8")[0]) if len(record) >= 8 else -1
    if n != docs or len(record) != 8 + (docs + 7) // 8:
        raise ShardError(
            f"{redact_text(url)}: the recorded matches of batch {key} are for {n} documents, it has {docs}; "
            f"delete the field {key} of the index's :matched hash to query it again"
        )
    return np.unpackbits(np.frombuffer(record, dtype=np.uint8, offset=8), count=docs).astype(bool)

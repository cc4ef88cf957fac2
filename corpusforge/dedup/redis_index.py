"""A near-duplicate index shared by many builds: datasketch's ``MinHashLSH`` with its Redis storage, fed with
our own signatures.

``index = "redis://host:port/db"`` (also ``rediss://``, ``unix:///path/redis.sock``, ``unix:///path?db=N``)
makes ``minhash_dedup`` query and extend one index that builds on several machines share; a folder path keeps
the single-machine ``BandIndex`` (``index.py``). What is stored where:

- The signatures stage keeps each document's ``bands × rows`` uint32 signature (``sig``) in
  ``signatures/*.arrow``; each kept document enters the index as ``LeanMinHash(seed, hashvalues=sig,
  scheme="affine32")`` (our values are ``a·x + b mod 2³²`` of 32-bit shingle hashes: datasketch's affine32
  form, with our own permutations) through ``MinHashLSH.insertion_session`` (pipelined inserts), under the key
  ``b"<batch key>:<document id>"``, so that a batch's own documents are told apart when it is rerun.
- The Redis keys are datasketch's own layout under a ``basename`` that names the MinHash parameters
  (``cfmh1:<ngram>:<bands>:<rows>:<seed>``): indexes made with other parameters share the server and never
  compare. Band keys go through ``hashfunc`` (8 bytes of BLAKE2b instead of ``rows × 4``). Next to them,
  ``<basename>_batches`` (a hash: batch key → documents added) is written after a batch's inserts: a batch
  found there is not inserted again, and one interrupted halfway is redone whole (its keys removed first), so
  a rerun never duplicates entries. Two builds of the same batch at the same moment are not guarded against.
- Queries do not call ``MinHashLSH.query`` (one round trip per band per document: 427 docs/s on a local
  socket); per band and chunk of 4,096 documents, one HMGET of datasketch's band table and SMEMBERS of the few
  buckets found: 8,166 docs/s, the same answers (``benchmarks/dedup_index.py``, where the folder index does
  184,068). Inserts: 1,237 docs/s; Redis memory: ~6 KB per indexed document (the folder index: 112 B), which
  bounds one server to tens of millions of documents. The bucket keys are computed by ``MinHashLSH`` (``_H``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from typing import Any

import numpy as np

from corpusforge.errors import ConfigError
from corpusforge.redact import redact_text

SCHEMES = ("redis://", "rediss://", "unix://")
FORMAT = "cfmh1"  # + ngram, bands, rows, seed: "cfmh1:5:14:8:1" (short: it is part of every Redis key)
DS_SCHEME = "affine32"  # datasketch's name for 32-bit a·x + b permutations (the values are ours)
CHUNK = 4096  # documents per pipelined request


def is_redis_url(index: str | None) -> bool:
    return index is not None and index.startswith(SCHEMES)


def _imports(url: str) -> tuple[Any, Any]:
    try:
        import datasketch
        import redis
    except ImportError as exc:
        raise ConfigError(
            f"index = {redact_text(url)!r} needs the redis and datasketch packages ({exc}): "
            "pip install 'corpusforge[redis]'",
            path="index",
        ) from exc
    version = importlib.metadata.version("datasketch")
    if int(version.split(".")[0]) < 2:  # before 2.0: no ``scheme``, 64-bit hash values, other bucket keys
        raise ConfigError(
            f"index = {redact_text(url)!r} needs datasketch >= 2.0, found {version}: pip install 'corpusforge[redis]'",
            path="index",
        )
    return redis, datasketch


def connection_kwargs(url: str) -> dict[str, Any]:
    """``redis.Redis(**kwargs)`` arguments for ``url``, parsed by redis-py (datasketch's Redis storage takes
    keyword arguments only, never a client)."""
    redis, _ = _imports(url)
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


def _band_digest(band: bytes) -> bytes:
    """A band's ``rows × 4`` bytes → 8 (datasketch's ``hashfunc``): every band key is stored about four times
    (bucket table field, bucket set name, the document's band list), so this saves ~1.5 KB per document."""
    return hashlib.blake2b(band, digest_size=8).digest()


class RedisBandIndex:
    """The shared index at ``url`` for MinHash ``params`` (ngram, bands, rows, seed); connects and pings."""

    def __init__(self, url: str, params: dict[str, Any]) -> None:
        redis, datasketch = _imports(url)
        self.url = url
        self.params = params
        if params["bands"] < 2:
            raise ConfigError(
                f"a Redis index needs bands >= 2 (datasketch's MinHashLSH), got {params['bands']}", path="bands"
            )
        kw = connection_kwargs(url)
        self.basename = ":".join([FORMAT] + [str(params[k]) for k in ("ngram", "bands", "rows", "seed")])
        self._client = redis.Redis(**kw)
        try:  # once, without redis-py's retries (seconds of backoff): a server that is not there fails at once
            redis.Redis(**kw, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0)).ping()
        except redis.exceptions.RedisError as exc:
            raise ConfigError(
                f"cannot reach the MinHash index at {redact_text(url)} ({exc}); is redis-server running?",
                path="index",
            ) from exc
        self._lean = datasketch.LeanMinHash
        num_perm = params["bands"] * params["rows"]
        self.lsh = datasketch.MinHashLSH(
            num_perm=num_perm,
            params=(params["bands"], params["rows"]),
            storage_config={"type": "redis", "basename": self.basename.encode(), "redis": kw},
            prepickle=False,  # our keys are bytes already
            hashfunc=_band_digest,
        )
        self._batches = self.basename.encode() + b"_batches"

    def _minhash(self, sig: np.ndarray) -> Any:
        return self._lean(seed=self.params["seed"], hashvalues=sig, scheme=DS_SCHEME)

    def _bucket_keys(self, sig: np.ndarray) -> list[bytes]:
        values = self._minhash(sig).hashvalues
        return [self.lsh._H(values[a:b]) for a, b in self.lsh.hashranges]

    def batch_docs(self, key: str) -> int | None:
        """Documents batch ``key`` added, or None when it is not (completely) in the index."""
        n = self._client.hget(self._batches, key)
        return None if n is None else int(n)

    def docs(self) -> int:
        """Documents in the index (one HLEN of datasketch's key table)."""
        return int(self.lsh.keys.size())

    def matches(self, sig: np.ndarray, usable: np.ndarray, *, exclude: str) -> np.ndarray:
        """bool[D]: which rows of ``sig`` share a band bucket with a document of another batch than ``exclude``.

        Per band and chunk of documents: one HMGET of the band table (datasketch's bucket → set name hash, the
        batched form of its ``has_key``), then SMEMBERS (``getmany``) of the few buckets found, to tell this
        batch's own documents (a rerun) from the others'.
        """
        hit = np.zeros(sig.shape[0], dtype=bool)
        rows = np.flatnonzero(usable)
        own = f"{exclude}:".encode()
        for start in range(0, rows.size, CHUNK):
            chunk = rows[start : start + CHUNK]
            keys = [self._bucket_keys(sig[r]) for r in chunk.tolist()]
            for band, table in enumerate(self.lsh.hashtables):
                todo = [k for k in range(chunk.size) if not hit[chunk[k]]]
                if not todo:
                    break
                present = self._client.hmget(table._name, [keys[k][band] for k in todo])
                found = [k for k, p in zip(todo, present, strict=True) if p is not None]
                if not found:
                    continue
                for k, members in zip(found, table.getmany(*[keys[k][band] for k in found]), strict=True):
                    if any(not m.startswith(own) for m in members):
                        hit[chunk[k]] = True
        return hit

    def add(self, key: str, ids: list[str], sig: np.ndarray) -> dict[str, Any]:
        """Insert batch ``key``'s documents (``ids`` with their signatures); a batch already in is skipped."""
        done = self.batch_docs(key)
        if done is None:
            names: list[bytes] = []
            seen: dict[str, int] = {}
            for id_ in ids:  # documents sharing an id: <id>, <id>#1, <id>#2 …
                n = seen[id_] = seen.get(id_, -1) + 1
                names.append(f"{key}:{id_}".encode() + (f"#{n}".encode() if n else b""))
            for start in range(0, len(names), CHUNK):  # what an interrupted attempt left: redo it whole
                self.lsh.keys.remove(*names[start : start + CHUNK])
            with self.lsh.insertion_session(buffer_size=CHUNK * 8) as session:
                for name, row in zip(names, sig, strict=True):
                    session.insert(name, self._minhash(row), check_duplication=False)
            self._client.hset(self._batches, key, len(names))
        return {
            "url": redact_text(self.url),
            "basename": self.basename,
            "batch": key,
            "added": 0 if done is not None else len(ids),
            "already_indexed": done is not None,
            **self.summary(),
        }

    def summary(self) -> dict[str, Any]:
        return {"index_docs": self.docs(), "index_batches": int(self._client.hlen(self._batches))}

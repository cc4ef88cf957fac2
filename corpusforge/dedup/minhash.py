"""MinHash LSH near-duplicate removal, as four sub-stages that hand files over on disk.

``minhash_dedup`` in a recipe expands (``expand``) into:

1. ``signatures`` — per document: word n-gram shingles (default 5-grams), ``bands × rows`` MinHash values
   and one 64-bit hash per band, all vectorized over batches of documents (``shingles.py``). Output:
   ``signatures/*.arrow`` (id, band hashes, and the signature itself when ``threshold`` > 0).
2. ``buckets`` — documents sharing a band hash in the same band are candidate pairs; with ``threshold`` > 0
   a pair is kept only if the fraction of equal signature values (the Jaccard estimate) reaches it.
   Output: ``buckets/*.arrow`` (pairs of ids).
3. ``clusters`` — connected components of the pairs (union-find). Representative rule: the cluster's
   smallest document id is kept (independent of input order and worker counts). With ``index``, documents
   sharing a band hash with a previously indexed batch are removed too. Output: ``clusters/*.arrow``
   (id, cluster = the representative's id, reason) — cluster membership, for inspection.
4. apply — documents named in ``clusters`` with a reason are dropped (``near_duplicate``,
   ``near_duplicate_indexed``), the rest are written to the stage's own folder; then the kept documents'
   band hashes are added to ``index`` (see ``index.py``) if one is configured.

``index``: a folder (``index.py``: one machine, band hashes in ``.npy`` parts), or a Redis URL
(``redis://host:port/db``, ``rediss://…``, ``unix:///path/redis.sock[?db=N]``; ``redis_index.py``): one index
shared by builds on several machines (the same band hashes, in compact Redis sets). Either way a batch
(identified by ``batch_key``) never matches itself, so rerunning one keeps the same documents and adds nothing
twice.

Defaults follow FineWeb (Penedo et al. 2024): 5-grams, 14 bands × 8 rows (112 permutations), which puts the
50% detection point near Jaccard 0.72 and detects a pair at Jaccard 0.8 with probability ≈ 0.92 (≥ 0.99 at
0.85). Documents without any word are never grouped (exact dedup handles identical empty texts). Documents
sharing an id are one node: they are kept or dropped together.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from corpusforge.dedup.index import BandIndex, matches
from corpusforge.dedup.redis_index import RedisBandIndex, is_redis_url
from corpusforge.dedup.shingles import band_hashes, packed_shingles, pair_jaccards, permutations, signatures
from corpusforge.errors import ConfigError, Interrupted, ShardError
from corpusforge.params import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import ShardWriter, iter_documents, load_manifest, manifest_paths, read_table


class _Params:
    def __init__(self, ngram: int, bands: int, rows: int, seed: int, threshold: float, exact: bool, tasks: int) -> None:
        self.ngram, self.bands, self.rows, self.seed = ngram, bands, rows, seed
        self.threshold, self.exact, self.tasks = threshold, exact, tasks
        # Signatures are stored for the estimated Jaccard only. Not part of config(): it follows from
        # ``threshold``, in the plan's config hash already.
        self.keep_sig = threshold > 0

    def hash_params(self) -> dict[str, Any]:
        return {"ngram": self.ngram, "bands": self.bands, "rows": self.rows, "seed": self.seed}

    def config(self) -> dict[str, Any]:
        return {**self.hash_params(), "threshold": self.threshold, "exact_verify": self.exact, "tasks": self.tasks}


def _text_batches(files: list[Path], max_docs: int = 2048, max_bytes: int = 8 << 20) -> Iterator[tuple[list, list]]:
    """(ids, texts) batches straight from the Arrow shards (no ``Document`` objects)."""
    ids: list[str] = []
    texts: list[str] = []
    size = 0
    for path in files:
        try:
            with pa.memory_map(str(path), "r") as src:
                reader = ipc.open_file(src)
                for i in range(reader.num_record_batches):
                    b = reader.get_batch(i)
                    for id_, text in zip(b.column("id").to_pylist(), b.column("text").to_pylist(), strict=True):
                        ids.append(id_)
                        texts.append(text or "")
                        size += len(texts[-1])
                        if len(ids) >= max_docs or size >= max_bytes:
                            yield ids, texts
                            ids, texts, size = [], [], 0
        except pa.ArrowInvalid as exc:
            raise ShardError(f"{path}: unreadable Arrow file ({exc}); rerun the stage that wrote it") from exc
    if ids:
        yield ids, texts


def _load_signatures(home: Path, with_sig: bool = False) -> dict[str, Any]:
    tables = [read_table(f) for f in manifest_paths(home / "signatures")]
    if not tables:
        return {"ids": np.array([], dtype=object), "bands": np.zeros((0, 0), np.uint64), "has": np.zeros(0, bool)}
    t = pa.concat_tables(tables)
    n = t.num_rows
    bands = np.asarray(t.column("bands").combine_chunks().flatten(), dtype=np.uint64).reshape(n, -1)
    out = {"ids": np.array(t.column("id").to_pylist(), dtype=object), "bands": bands}
    out["has"] = np.asarray(t.column("has_shingles").to_numpy(zero_copy_only=False), dtype=bool)
    if with_sig:
        out["sig"] = np.asarray(t.column("sig").combine_chunks().flatten(), dtype=np.uint32).reshape(n, -1)
    return out


def batch_key(home: Path) -> str:
    """The identity of a batch for the persistent index: a hash of its signature files."""
    files = load_manifest(home / "signatures")["files"]
    return hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest()[:16]


def candidate_pairs(bands: np.ndarray, node: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """int64[K, 2] of row pairs (first row of a bucket, other row) over all bands, unique, node_a < node_b.

    Rows sort by (band hash, node), so each bucket's first row is its smallest node (smallest id).
    """
    rows = np.flatnonzero(usable)
    out = []
    for j in range(bands.shape[1]):
        col = bands[rows, j]
        order = rows[np.lexsort((node[rows], col))]
        sc = bands[order, j]
        new = np.r_[True, sc[1:] != sc[:-1]]
        first = order[np.maximum.accumulate(np.where(new, np.arange(order.size), 0))]
        a, b = first[~new], order[~new]
        keep = node[a] != node[b]  # duplicate ids are one node
        out.append(np.stack([a[keep], b[keep]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(out)
    return np.unique(pairs, axis=0) if pairs.size else pairs.reshape(0, 2)


class _Sub(Stage):
    def __init__(self, p: _Params) -> None:
        self.p = p

    def config(self) -> dict[str, Any]:
        return self.p.config()

    def parallel(self) -> bool:
        return False


class SignaturesStage(_Sub):
    subdir = "signatures"

    def num_tasks(self, ctx: StageContext) -> int:
        return self.p.tasks

    def parallel(self) -> bool:
        return True

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        # Files by position (file i → task i % tasks): the output depends on ``tasks``, never on workers.
        files = [f for i, f in enumerate(ctx.input_files()) if i % self.p.tasks == rank]
        perms = permutations(self.p.bands * self.p.rows, self.p.seed)
        schema = pa.schema(
            [
                ("id", pa.string()),
                ("bands", pa.list_(pa.uint64(), self.p.bands)),
                ("has_shingles", pa.bool_()),
                ("sig", pa.list_(pa.uint32())),
            ]
        )
        stats = StepStats("minhash_signatures")
        with ShardWriter(ctx.out_dir, f"{rank:05d}", schema=schema, batch_rows=4096) as w:
            for ids, texts in _text_batches(files):
                if ctx.stop_requested():
                    raise Interrupted(f"stage {ctx.stage_name} task {rank} stopped; rerun to continue")
                sig, has = signatures(texts, ngram=self.p.ngram, perms=perms)
                bands = band_hashes(sig, self.p.bands, self.p.rows)
                band_rows, has_rows = bands.tolist(), has.tolist()
                sig_rows = sig.tolist() if self.p.keep_sig else None
                for k, id_ in enumerate(ids):
                    w.write_row(
                        {
                            "id": id_,
                            "bands": band_rows[k],
                            "has_shingles": has_rows[k],
                            "sig": sig_rows[k] if sig_rows is not None else [],
                        }
                    )
                    ctx.fault_at(stats.input + k + 1)
                stats.input += len(ids)
                stats.output += len(ids)
                stats.counters["no_words"] += int((~has).sum())
        return TaskResult(files=w.files, steps=[stats.to_dict()])


class BucketsStage(_Sub):
    subdir = "buckets"

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        assert ctx.home is not None
        s = _load_signatures(ctx.home, with_sig=self.p.threshold > 0 and not self.p.exact)
        ids = s["ids"]
        uniq, node = np.unique(ids.astype(str), return_inverse=True) if len(ids) else (ids, np.zeros(0, np.int64))
        pairs = candidate_pairs(s["bands"], node, s["has"]) if len(ids) else np.zeros((0, 2), np.int64)
        candidates = len(pairs)
        if self.p.threshold > 0 and len(pairs) and self.p.exact:
            pairs = pairs[self._exact_jaccard(ctx, ids, pairs) >= self.p.threshold]
        elif self.p.threshold > 0 and len(pairs):
            est = (s["sig"][pairs[:, 0]] == s["sig"][pairs[:, 1]]).mean(axis=1)
            pairs = pairs[est >= self.p.threshold]
        named = sorted({(str(ids[a]), str(ids[b])) for a, b in pairs.tolist()})
        schema = pa.schema([("a", pa.string()), ("b", pa.string())])
        stats = StepStats("minhash_buckets", input=len(ids), output=len(ids))
        stats.counters["candidate_pairs"] = candidates
        stats.counters["pairs"] = len(named)
        with ShardWriter(ctx.out_dir, f"{rank:05d}", schema=schema, batch_rows=8192) as w:
            for n, (x, y) in enumerate(named, 1):
                w.write_row({"a": x, "b": y})
                ctx.fault_at(n)
        return TaskResult(files=w.files, steps=[stats.to_dict()], extra={"candidate_pairs": candidates})

    def _exact_jaccard(self, ctx: StageContext, ids: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """Exact Jaccard of each candidate pair, re-reading only the texts of documents in a pair."""
        rows = np.unique(pairs)
        wanted = {str(ids[r]) for r in rows}
        shingles: dict[str, np.ndarray] = {}  # id → its shingle hashes (the first document with that id)
        for batch_ids, texts in _text_batches(ctx.input_files()):
            pick = [k for k, i in enumerate(batch_ids) if i in wanted and i not in shingles]
            if pick:
                values, bounds = packed_shingles([texts[k] for k in pick], self.p.ngram)
                for n, k in enumerate(pick):
                    shingles.setdefault(batch_ids[k], values[bounds[n] : bounds[n + 1]].copy())
        parts = [shingles[str(ids[r])] for r in rows.tolist()]
        bounds = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([p.size for p in parts], out=bounds[1:])
        values = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        return pair_jaccards(values, bounds, np.searchsorted(rows, pairs))


def connected_components(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """id → smallest id of its connected component, for every id in a pair (union-find)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:  # the smaller id becomes the root: the representative is the cluster's min id
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            parent[hi] = lo
            parent.setdefault(lo, lo)
    return {x: find(x) for x in parent}


class ClustersStage(_Sub):
    subdir = "clusters"

    def __init__(self, p: _Params, index: str | None) -> None:
        super().__init__(p)
        self.index = index

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        assert ctx.home is not None
        pairs: list[tuple[str, str]] = []
        for f in manifest_paths(ctx.home / "buckets"):
            t = read_table(f)
            pairs += zip(t.column("a").to_pylist(), t.column("b").to_pylist(), strict=True)
        root = connected_components(pairs)
        rows = {x: (r, "" if x == r else "near_duplicate") for x, r in root.items()}
        extra: dict[str, Any] = {}
        if self.index is not None:
            key = batch_key(ctx.home)
            s = _load_signatures(ctx.home)
            if is_redis_url(self.index):
                shared = RedisBandIndex(self.index, self.p.hash_params())
                hit = shared.matches(s["bands"], s["has"], exclude=key)
                checked = shared.docs() - (shared.batch_docs(key) or 0)  # this batch's own documents excluded
            else:
                old = BandIndex(Path(self.index), self.p.hash_params()).load(exclude=key)
                hit = matches(old, s["bands"]) & s["has"]
                checked = int(old.shape[0])
            for x in sorted({str(i) for i in s["ids"][hit]}):
                rows[x] = (rows.get(x, (x, ""))[0], "near_duplicate_indexed")
            extra["indexed_docs_checked_against"] = checked
            extra["indexed_matches"] = int(hit.sum())
        schema = pa.schema([("id", pa.string()), ("cluster", pa.string()), ("reason", pa.string())])
        with ShardWriter(ctx.out_dir, f"{rank:05d}", schema=schema, batch_rows=8192) as w:
            for n, x in enumerate(sorted(rows), 1):
                w.write_row({"id": x, "cluster": rows[x][0], "reason": rows[x][1]})
                ctx.fault_at(n)
        clusters = len(set(root.values()))
        extra.update({"clusters": clusters, "duplicates": len(root) - clusters})
        stats = StepStats("minhash_clusters", input=len(rows), output=len(rows))
        return TaskResult(files=w.files, steps=[stats.to_dict()], extra=extra)


class ApplyStage(_Sub):
    subdir = ""

    def __init__(self, p: _Params, index: str | None, max_shard_bytes: int) -> None:
        super().__init__(p)
        self.index = index
        self.max_shard_bytes = max_shard_bytes

    def num_tasks(self, ctx: StageContext) -> int:
        return self.p.tasks

    def parallel(self) -> bool:
        return True

    def _drops(self, home: Path) -> dict[str, str]:
        drop: dict[str, str] = {}
        for f in manifest_paths(home / "clusters"):
            t = read_table(f)
            for i, r in zip(t.column("id").to_pylist(), t.column("reason").to_pylist(), strict=True):
                if r:
                    drop[i] = r
        return drop

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        assert ctx.home is not None
        drop = self._drops(ctx.home)
        files = [f for i, f in enumerate(ctx.input_files()) if i % self.p.tasks == rank]
        stats = StepStats("minhash_dedup")
        with ShardWriter(ctx.out_dir, f"{rank:05d}", max_bytes=self.max_shard_bytes) as w:
            for doc in iter_documents(files):
                stats.input += 1
                ctx.fault_at(stats.input)
                reason = drop.get(doc.id)
                if reason:
                    stats.drop(reason)
                else:
                    w.write(doc)
                    stats.output += 1
        return TaskResult(files=w.files, steps=[stats.to_dict()])

    def finalize(self, ctx: StageContext, results: list[TaskResult]) -> dict[str, Any]:
        """After every kept document is written: add the kept documents' band hashes to the index."""
        if self.index is None:
            return {}
        assert ctx.home is not None
        drop = self._drops(ctx.home)
        s = _load_signatures(ctx.home)
        keep = s["has"] & np.array([str(i) not in drop for i in s["ids"]], dtype=bool)
        if is_redis_url(self.index):
            shared = RedisBandIndex(self.index, self.p.hash_params())
            # What this batch's query found, recorded so that its reruns replay it (its own hashes are in then).
            matched = s["has"] & np.array([drop.get(str(i)) == "near_duplicate_indexed" for i in s["ids"]], bool)
            return {"index": shared.add(batch_key(ctx.home), s["bands"][keep], matched)}
        summary = BandIndex(Path(self.index), self.p.hash_params()).add(batch_key(ctx.home), s["bands"][keep])
        return {"index": {"path": str(self.index), **summary}}


class MinHashDedupStage(Stage):
    """Near-duplicate removal with MinHash LSH; see the module docstring for the sub-stages and defaults.

    ``threshold`` > 0 verifies candidate pairs by their estimated Jaccard (off by default, as in FineWeb);
    with ``exact_verify`` by their exact Jaccard instead (the texts of the documents in a candidate pair are
    read again: precision ≈ 1 at the cost of a second read of the duplicates only).
    ``index``: a folder outside the run that keeps the band hashes of every kept document across runs, or a
    Redis URL (``redis://host:port/db``, ``rediss://``, ``unix:///path/redis.sock?db=N``) of an index shared by
    builds on several machines (``redis_index.py``; needs ``pip install 'corpusforge[redis]'``).
    ``tasks``: tasks of the signatures and apply sub-stages (files are assigned by position).
    """

    kind: ClassVar[str] = "minhash_dedup"

    def __init__(
        self,
        *,
        ngram: Annotated[int, Min(1), Max(32)] = 5,
        bands: Annotated[int, Min(1), Max(64)] = 14,
        rows: Annotated[int, Min(1), Max(64)] = 8,
        seed: int = 1,
        threshold: Annotated[float, Min(0), Max(1)] = 0.0,
        exact_verify: bool = False,
        index: str | None = None,
        tasks: Annotated[int, Min(1)] = 1,
        max_shard_bytes: Annotated[int, Min(1 << 16)] = 512 << 20,
    ) -> None:
        self.p = _Params(ngram, bands, rows, seed, threshold, exact_verify, tasks)
        self.index = index
        self.max_shard_bytes = max_shard_bytes

    def validate(self, path: str) -> None:
        """A Redis index: the packages, the URL and the server are checked before anything runs."""
        if not is_redis_url(self.index):
            return
        assert self.index is not None
        try:
            RedisBandIndex(self.index, self.p.hash_params())
        except ConfigError as exc:
            field = exc.path or "index"
            raise ConfigError(str(exc).removeprefix(f"{exc.path}: "), path=f"{path}.{field}") from exc

    def expand(self) -> list[Stage]:
        return [
            SignaturesStage(self.p),
            BucketsStage(self.p),
            ClustersStage(self.p, self.index),
            ApplyStage(self.p, self.index, self.max_shard_bytes),
        ]

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:  # pragma: no cover - always expanded
        raise NotImplementedError("minhash_dedup runs as its sub-stages")

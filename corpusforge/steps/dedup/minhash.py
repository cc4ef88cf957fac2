"""MinHash LSH near-duplicate removal, as four sub-stages that hand files over on disk.

``minhash_dedup`` in a recipe expands (``expand``) into:

1. ``signatures`` — per document: word n-gram shingles (default 5-grams of lower-cased words), one 64-bit
   hash each, ``bands × rows`` MinHash values (hash functions: a 64-bit mixer of the shingle hash XOR a
   random seed per function), then one 64-bit hash per band. Output: ``signatures/*.arrow`` (id, band hashes).
2. ``buckets`` — documents sharing a band hash in the same band are candidate pairs. Output:
   ``buckets/*.arrow`` (pairs of ids).
3. ``clusters`` — connected components of the pairs (union-find). The representative of a cluster is its
   smallest document id (deterministic: independent of input order and worker counts). Output:
   ``clusters/*.arrow`` (id, cluster representative) — cluster membership, for inspection.
4. apply — the documents whose id is a non-representative member of a cluster are dropped
   (``near_duplicate``); the rest are written to the stage's own folder.

Defaults follow FineWeb (Penedo et al. 2024): 5-grams, 14 bands × 8 rows (112 permutations), which puts the
50% detection point near Jaccard 0.72 and detects pairs at Jaccard ≥ 0.8 with probability ≈ 0.92.
Candidates are not re-verified (as in FineWeb); ``threshold`` > 0 enables a check of the estimated
Jaccard (from the signatures) of each candidate pair.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa

from corpusforge.recipe import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import ShardWriter, iter_documents, manifest_paths, read_table

_WORD = re.compile(r"\w+", re.UNICODE)


def _word_hashes(text: str) -> np.ndarray:
    import xxhash

    words = _WORD.findall(text.lower())
    return np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """One 64-bit hash per word n-gram (a polynomial combination of word hashes, wrapping mod 2^64)."""
    w = _word_hashes(text)
    if len(w) < n:
        return w[:1] if len(w) else w  # short documents: one shingle from what there is
    with np.errstate(over="ignore"):
        h = np.zeros(len(w) - n + 1, dtype=np.uint64)
        for k in range(n):
            h = h * np.uint64(1_000_003) + w[k : len(w) - n + 1 + k]
    return np.unique(h)


def permutations(num: int, seed: int) -> np.ndarray:
    """One random 64-bit seed per hash function ("permutation")."""
    return np.random.default_rng(seed).integers(0, np.iinfo(np.uint64).max, size=num, dtype=np.uint64, endpoint=True)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit mixer (every input bit affects every output bit)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def minhash(shingles: np.ndarray, seeds: np.ndarray, block: int = 4096) -> np.ndarray:
    """MinHash signature (one value per seed) of a set of 64-bit shingle hashes.

    Hash function i is ``mix64(x XOR seed_i)``. (Linear ``(a·x + b) mod p`` with small ``a·x`` is not
    min-wise independent enough: its minimum follows the smallest inputs, which biases the estimates.)
    """
    sig = np.full(len(seeds), np.iinfo(np.uint64).max, dtype=np.uint64)
    if len(shingles) == 0:
        return sig
    with np.errstate(over="ignore"):
        for i in range(0, len(shingles), block):
            v = _mix64(shingles[i : i + block, None] ^ seeds[None, :])
            np.minimum(sig, v.min(axis=0), out=sig)
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    import xxhash

    m = sig[: bands * rows].reshape(bands, rows)
    return np.array([xxhash.xxh64_intdigest(m[i].tobytes()) for i in range(bands)], dtype=np.uint64)


class _Params:
    def __init__(self, ngram: int, bands: int, rows: int, seed: int, threshold: float) -> None:
        self.ngram, self.bands, self.rows, self.seed, self.threshold = ngram, bands, rows, seed, threshold

    def config(self) -> dict[str, Any]:
        return {
            "ngram": self.ngram,
            "bands": self.bands,
            "rows": self.rows,
            "seed": self.seed,
            "threshold": self.threshold,
        }


class SignaturesStage(Stage):
    subdir = "signatures"
    produces_documents: ClassVar[bool] = False

    def __init__(self, p: _Params) -> None:
        self.p = p

    def config(self) -> dict[str, Any]:
        return self.p.config()

    def parallel(self) -> bool:
        return False

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        seeds = permutations(self.p.bands * self.p.rows, self.p.seed)
        schema = pa.schema(
            [("id", pa.string()), ("bands", pa.list_(pa.uint64(), self.p.bands)), ("sig", pa.list_(pa.uint64()))]
        )
        stats = StepStats("minhash_signatures")
        with ShardWriter(ctx.out_dir, f"{rank:05d}", schema=schema, batch_rows=1024) as w:
            for doc in iter_documents(ctx.input_files(), columns=["id", "text"]):
                stats.input += 1
                sig = minhash(shingle_hashes(doc.text, self.p.ngram), seeds)
                w.write_row(
                    {
                        "id": doc.id,
                        "bands": band_hashes(sig, self.p.bands, self.p.rows).tolist(),
                        "sig": sig.tolist() if self.p.threshold > 0 else [],
                    }
                )
                stats.output += 1
        return TaskResult(files=w.files, steps=[stats.to_dict()])


class BucketsStage(Stage):
    subdir = "buckets"
    produces_documents: ClassVar[bool] = False

    def __init__(self, p: _Params) -> None:
        self.p = p

    def config(self) -> dict[str, Any]:
        return self.p.config()

    def parallel(self) -> bool:
        return False

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        assert ctx.home is not None
        tables = [read_table(f) for f in manifest_paths(ctx.home / "signatures")]
        table = pa.concat_tables(tables) if tables else None
        ids = np.array(table.column("id").to_pylist() if table is not None else [], dtype=object)
        pairs: set[tuple[str, str]] = set()
        if table is not None and len(ids):
            bands = np.asarray(table.column("bands").combine_chunks().flatten()).reshape(len(ids), self.p.bands)
            sigs = table.column("sig").to_pylist() if self.p.threshold > 0 else None
            for band in range(self.p.bands):
                col = bands[:, band]
                order = np.argsort(col, kind="stable")
                sorted_col = col[order]
                # Runs of equal hashes are buckets; link every member to the bucket's first member.
                starts = np.flatnonzero(np.r_[True, sorted_col[1:] != sorted_col[:-1]])
                ends = np.r_[starts[1:], len(order)]
                for s, e in zip(starts, ends, strict=True):
                    if e - s < 2:
                        continue
                    members = sorted(ids[order[s:e]])
                    for other in members[1:]:
                        if sigs is not None:
                            i, j = int(np.flatnonzero(ids == members[0])[0]), int(np.flatnonzero(ids == other)[0])
                            est = float(np.mean(np.array(sigs[i]) == np.array(sigs[j])))
                            if est < self.p.threshold:
                                continue
                        pairs.add((members[0], other))
        schema = pa.schema([("a", pa.string()), ("b", pa.string())])
        stats = StepStats("minhash_buckets", input=len(ids), output=len(ids))
        stats.counters["candidate_pairs"] = len(pairs)
        with ShardWriter(ctx.out_dir, f"{rank:05d}", schema=schema, batch_rows=4096) as w:
            for x, y in sorted(pairs):
                w.write_row({"a": x, "b": y})
        return TaskResult(files=w.files, steps=[stats.to_dict()], extra={"candidate_pairs": len(pairs)})


class ClustersStage(Stage):
    subdir = "clusters"
    produces_documents: ClassVar[bool] = False

    def __init__(self, p: _Params) -> None:
        self.p = p

    def config(self) -> dict[str, Any]:
        return self.p.config()

    def parallel(self) -> bool:
        return False

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        assert ctx.home is not None
        parent: dict[str, str] = {}

        def find(x: str) -> str:
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while parent.get(x, x) != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        for f in manifest_paths(ctx.home / "buckets"):
            t = read_table(f)
            for a, b in zip(t.column("a").to_pylist(), t.column("b").to_pylist(), strict=True):
                ra, rb = find(a), find(b)
                if ra != rb:  # the smaller id becomes the root: the representative is the cluster's min id
                    lo, hi = (ra, rb) if ra < rb else (rb, ra)
                    parent[hi] = lo
                    parent.setdefault(lo, lo)
        members = sorted((x, find(x)) for x in parent)
        schema = pa.schema([("id", pa.string()), ("cluster", pa.string())])
        with ShardWriter(ctx.out_dir, f"{rank:05d}", schema=schema, batch_rows=4096) as w:
            for x, root in members:
                w.write_row({"id": x, "cluster": root})
        clusters = len({r for _, r in members})
        stats = StepStats("minhash_clusters", input=len(members), output=len(members))
        return TaskResult(
            files=w.files, steps=[stats.to_dict()], extra={"clusters": clusters, "duplicates": len(members) - clusters}
        )


class ApplyStage(Stage):
    subdir = ""

    def __init__(self, p: _Params, max_shard_bytes: int) -> None:
        self.p = p
        self.max_shard_bytes = max_shard_bytes

    def config(self) -> dict[str, Any]:
        return self.p.config()

    def parallel(self) -> bool:
        return False

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        assert ctx.home is not None
        drop: set[str] = set()
        for f in manifest_paths(ctx.home / "clusters"):
            t = read_table(f)
            drop.update(
                i for i, c in zip(t.column("id").to_pylist(), t.column("cluster").to_pylist(), strict=True) if i != c
            )
        stats = StepStats("minhash_dedup")
        with ShardWriter(ctx.out_dir, f"{rank:05d}", max_bytes=self.max_shard_bytes) as w:
            for doc in iter_documents(ctx.input_files()):
                stats.input += 1
                ctx.fault_at(stats.input)
                if doc.id in drop:
                    stats.drop("near_duplicate")
                else:
                    w.write(doc)
                    stats.output += 1
        return TaskResult(files=w.files, steps=[stats.to_dict()])


class MinHashDedupStage(Stage):
    """Near-duplicate removal with MinHash LSH; see the module docstring for the sub-stages and defaults."""

    kind: ClassVar[str] = "minhash_dedup"

    def __init__(
        self,
        *,
        ngram: Annotated[int, Min(1), Max(32)] = 5,
        bands: Annotated[int, Min(1), Max(64)] = 14,
        rows: Annotated[int, Min(1), Max(64)] = 8,
        seed: int = 1,
        threshold: Annotated[float, Min(0), Max(1)] = 0.0,
        max_shard_bytes: Annotated[int, Min(1 << 16)] = 512 << 20,
    ) -> None:
        self.p = _Params(ngram, bands, rows, seed, threshold)
        self.max_shard_bytes = max_shard_bytes

    def expand(self) -> list[Stage]:
        return [
            SignaturesStage(self.p),
            BucketsStage(self.p),
            ClustersStage(self.p),
            ApplyStage(self.p, self.max_shard_bytes),
        ]

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:  # pragma: no cover - always expanded
        raise NotImplementedError("minhash_dedup runs as its sub-stages")

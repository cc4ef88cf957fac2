"""Decontamination: remove from a corpus every document that repeats a document of a held-out set.

A model evaluated on text it was trained on looks better than it is; an ablation that compares corpora on a
held-out set must first take that set out of every corpus. Two rules, each a named drop reason:

- ``heldout_exact``: the same text as a held-out document after the exact-dedup normalization (NFKC, case
  folded, whitespace collapsed: ``exact.text_key``);
- ``heldout_near``: the word ``ngram``-shingle sets of the document and of a held-out document overlap by at
  least ``threshold`` of the smaller set (the overlap coefficient ``|A ∩ B| / min(|A|, |B|)``). Unlike Jaccard
  it also catches a held-out page inside a longer page (navigation and all) and a fragment of one; the
  smaller set must hold ``min_shingles`` shingles, so a two-line page is not matched on a common phrase.

The held-out set is small (an evaluation set), so each task holds its shingles in memory: a sorted array of
(hash, held-out document) pairs, ``16 B`` per shingle. Every training shingle is looked up once
(``searchsorted``), so the cost is linear in the corpus. Each removal is listed in the task's stats (the
document, the held-out document it repeats, the rule and the overlap), up to ``MAX_LISTED`` per task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np

from corpusforge.dedup.exact import text_key
from corpusforge.dedup.shingles import packed_shingles
from corpusforge.errors import ConfigError, Interrupted
from corpusforge.params import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import MANIFEST, ShardWriter, iter_documents, load_manifest, manifest_paths

MAX_LISTED = 1000  # removals listed per task in its stats (all are counted)
BATCH_DOCS = 256  # documents shingled at once


class HeldoutIndex:
    """The held-out documents' exact keys and shingle sets, and the overlap of a batch of texts with them."""

    def __init__(self, texts: list[str], ids: list[str], *, ngram: int, min_shingles: int) -> None:
        self.ids, self.ngram, self.min_shingles = ids, ngram, min_shingles
        self.exact = {text_key(t): i for i, t in enumerate(texts)}
        values, bounds = packed_shingles(texts, ngram)
        sets = [np.unique(values[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]
        self.sizes = np.array([s.size for s in sets], dtype=np.int64)  # distinct shingles per held-out doc
        owner = np.concatenate([np.full(s.size, i, np.int64) for i, s in enumerate(sets)] or [np.zeros(0, np.int64)])
        flat = np.concatenate(sets or [np.zeros(0, np.uint64)])
        order = np.argsort(flat, kind="stable")
        self.hashes, self.owner = flat[order], owner[order]

    def best_overlap(self, texts: list[str]) -> list[tuple[int, float]]:
        """Per text: (held-out document index, overlap coefficient) of its most overlapping held-out document,
        or (-1, 0.0) when no held-out document shares a shingle or the smaller set is under ``min_shingles``."""
        values, bounds = packed_shingles(texts, self.ngram)
        out: list[tuple[int, float]] = []
        for d in range(len(texts)):
            u = np.unique(values[bounds[d] : bounds[d + 1]])
            if u.size == 0 or self.hashes.size == 0:
                out.append((-1, 0.0))
                continue
            lo = np.searchsorted(self.hashes, u, side="left")
            hi = np.searchsorted(self.hashes, u, side="right")
            hit = hi > lo
            if not hit.any():
                out.append((-1, 0.0))
                continue
            lo, hi = lo[hit], hi[hit]
            # Every held-out document holding each shared shingle (a shingle is in several when they share it).
            counts = hi - lo
            idx = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
            # Only the held-out documents hit (not a count over all of them for every document read).
            owners, shared = np.unique(self.owner[idx], return_counts=True)
            smaller = np.minimum(self.sizes[owners], u.size)
            coef = np.where(smaller >= self.min_shingles, shared / np.maximum(smaller, 1), 0.0)
            k = int(np.argmax(coef))  # ties: the lowest held-out index, as owners are sorted
            out.append((int(owners[k]), float(coef[k])) if coef[k] > 0 else (-1, 0.0))
        return out


def heldout_folder(path: str) -> Path:
    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        raise ConfigError(
            f"{path!r} is not a finished document folder (no {MANIFEST}): point `heldout` at the output of a "
            "read_jsonl, read_html or process stage",
            path="heldout",
        )
    return folder


class DecontaminateStage(Stage):
    """Drop the input's documents that repeat a held-out document (exactly or mostly); see the module text.

    ``heldout``: a finished document folder. ``heldout_sha256``: a digest of its content, so a changed held-out
    set is a changed config (``corpusforge ablate`` fills it in). ``ngram`` 5 as the MinHash stage's shingles;
    ``threshold`` 0.8 as its Jaccard threshold.
    """

    kind: ClassVar[str] = "decontaminate"

    def __init__(
        self,
        *,
        heldout: str,
        heldout_sha256: str | None = None,
        ngram: Annotated[int, Min(1), Max(32)] = 5,
        threshold: Annotated[float, Min(0.01), Max(1.0)] = 0.8,
        min_shingles: Annotated[int, Min(1)] = 20,
        tasks: Annotated[int, Min(1)] = 2,
        max_shard_bytes: Annotated[int, Min(1 << 16)] = 512 << 20,
    ) -> None:
        self.heldout, self.heldout_sha256 = heldout, heldout_sha256
        self.ngram, self.threshold, self.min_shingles = ngram, threshold, min_shingles
        self.tasks, self.max_shard_bytes = tasks, max_shard_bytes

    def config(self) -> dict[str, Any]:
        return {
            "heldout": self.heldout,
            "heldout_sha256": self.heldout_sha256,
            "ngram": self.ngram,
            "threshold": self.threshold,
            "min_shingles": self.min_shingles,
        }

    def num_tasks(self, ctx: StageContext) -> int:
        return self.tasks

    def _index(self) -> HeldoutIndex:
        folder = heldout_folder(self.heldout)
        texts, ids = [], []
        for d in iter_documents(manifest_paths(folder), columns=["id", "text"]):
            if d.text:
                texts.append(d.text)
                ids.append(d.id)
        return HeldoutIndex(texts, ids, ngram=self.ngram, min_shingles=self.min_shingles)

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        index = self._index()
        files = [f for i, f in enumerate(ctx.input_files()) if i % self.tasks == rank]
        stats = StepStats("decontaminate")
        listed: list[dict[str, Any]] = []
        with ShardWriter(ctx.out_dir, f"{rank:05d}", max_bytes=self.max_shard_bytes) as w:
            batch: list[Any] = []

            def flush() -> None:
                overlaps = index.best_overlap([d.text or "" for d in batch])
                for doc, (h, coef) in zip(batch, overlaps, strict=True):
                    exact = index.exact.get(text_key(doc.text or ""))
                    if exact is not None:
                        reason, h, coef = "heldout_exact", exact, 1.0
                    elif coef >= self.threshold:
                        reason = "heldout_near"
                    else:
                        w.write(doc)
                        stats.output += 1
                        continue
                    stats.drop(reason)
                    if len(listed) < MAX_LISTED:
                        listed.append(
                            {
                                "id": doc.id,
                                "url": doc.url,
                                "heldout_id": index.ids[h],
                                "reason": reason,
                                "overlap": round(coef, 4),
                            }
                        )
                batch.clear()

            for doc in iter_documents(files):
                stats.input += 1
                ctx.fault_at(stats.input)
                if stats.input % 256 == 0 and ctx.stop_requested():
                    raise Interrupted(f"stage {ctx.stage_name} task {rank} stopped; rerun to continue")
                batch.append(doc)
                if len(batch) >= BATCH_DOCS:
                    flush()
            if batch:
                flush()
        stats.counters["heldout_documents"] = len(index.ids)
        return TaskResult(files=w.files, steps=[stats.to_dict()], extra={"removed": listed})

    def finalize(self, ctx: StageContext, results: list[TaskResult]) -> dict[str, Any]:
        files = load_manifest(heldout_folder(self.heldout))["files"]
        removed = [r for res in results for r in res.extra.get("removed", [])]
        return {
            "heldout": self.heldout,
            "heldout_documents": sum(int(f.get("rows", 0)) for f in files),
            "removed": removed,
        }

"""Snapshots of a re-crawled folder: every re-crawl a new, finished view of the whole site.

Layout (``<workdir>/crawl/`` is the crawl stage's folder)::

    crawl/                       the first snapshot: the first crawl, exactly as without re-crawls
      seg-*.arrow  state/  completions/  stats/  stage.json  manifest.json
      snapshots/00001/           the first re-crawl, a crawl folder of its own:
        seg-*.arrow              pages that changed or are new, stored in full
        carried-*.arrow          references (url, id, row) into one earlier file each: the pages carried forward
        tombstones.json          pages the previous snapshot had that now answer 404 or 410
        state/ completions/ stats/ stage.json  manifest.json (written last, by the runner)
      snapshots/00002/ …

A snapshot is finished once its manifest exists, and never changes after (DESIGN rule 1): a re-crawl writes the
next folder, an interrupted one is resumed in its own folder, and the previous snapshot is its ``previous``
(conditional requests from its validators). The current snapshot is the newest finished one
(``storage.current_snapshot``); ``manifest_paths`` and ``corpusforge build`` read it, and a references file reads
as the rows it references (``storage._carried_batches``), so every reader sees the whole corpus.

What becomes of each page of the previous snapshot: stored again (its body changed), carried by reference
(304 Not Modified, or the same body), tombstoned (404/410), removed (any other answer about the page: robots
rules, an opt-out, no longer HTML, …) or carried unverified (this crawl could not tell: a transient failure, or
not reached before ``max_pages``), so that one night's outage never empties the corpus.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from corpusforge.crawl.crawler import Crawler
from corpusforge.crawl.frontier import Frontier, previous_pages
from corpusforge.document import stable_id
from corpusforge.errors import ShardError
from corpusforge.stats import StepStats
from corpusforge.storage import MANIFEST, SNAPSHOTS, ShardWriter, atomic_write_json, load_manifest, read_listed

log = logging.getLogger(__name__)

REFS_SCHEMA = pa.schema([("url", pa.string()), ("id", pa.string()), ("row", pa.int64())])
TOMBSTONES = "tombstones.json"
GONE = {"http_404": 404, "http_410": 410}
SAME = ("not_modified", "unchanged")  # the crawler's reasons for a page found as it was
# Reasons that say nothing about the page itself: it is carried forward as it was.
UNKNOWN = frozenset(
    {"timeout", "data_loss", "connection_error", "browser_crashed", "retry_after_too_long", "robots_unavailable"}
)


def _unknown(reason: str | None) -> bool:
    return reason is not None and (reason in UNKNOWN or reason.startswith(("http_5", "http_429", "render_")))


@dataclass(frozen=True)
class Snapshot:
    """The folder a crawl writes: ``name`` "00001" … (None: the crawl folder itself, the first snapshot), and
    the finished snapshot it follows (None for the first)."""

    folder: Path
    name: str | None
    previous: Path | None


def resolve(home: Path, *, recrawl: bool) -> Snapshot:
    """The snapshot a crawl of ``home`` writes: the newest one while it is unfinished (a resume), else with
    ``recrawl`` a new one after it, else the newest (finished: the runner skips it)."""
    snaps = sorted(p for p in (home / SNAPSHOTS).glob("[0-9]" * 5) if p.is_dir())
    latest = snaps[-1] if snaps else home
    if recrawl and (latest / MANIFEST).is_file():
        name = f"{int(latest.name) + 1 if snaps else 1:05d}"
        return Snapshot(home / SNAPSHOTS / name, name, latest)
    if not snaps:
        return Snapshot(home, None, None)
    return Snapshot(latest, latest.name, snaps[-2] if len(snaps) > 1 else home)


def revisits(previous: Path) -> list[tuple[str, int]]:
    """Every page of the previous snapshot with the depth it was found at, in the order it was found."""
    old = Frontier(previous / "state", readonly=True)
    try:
        return old.page_depths()
    finally:
        old.close()


class SnapshotCrawler(Crawler):
    """A re-crawl into a new snapshot: the seeds, then every page of the previous snapshot, so that a page no
    longer linked from anywhere is still checked (and tombstoned when it is gone)."""

    def __init__(self, *args: Any, revisits: list[tuple[str, int]], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.revisits = revisits

    def _recover(self) -> None:
        super()._recover()
        if self.frontier.is_empty():  # a fresh snapshot: what Crawler.run queues first, then the revisits
            for seed in [*self.seeds, *self.spider.sitemaps]:
                self._admit(seed, 0)
            for url, depth in self.revisits:
                self._admit(url, depth)
            self._commit()


def _view(snapshot: Path, base: Path) -> Iterator[tuple[str, str, int, str]]:
    """(url, the file holding its row relative to ``base``, the row, that file's sha256) of every page of a
    finished snapshot, each file checked against its manifest as it is read."""
    for entry in load_manifest(snapshot)["files"]:
        if "carried_from" in entry:
            target = os.path.relpath(os.path.normpath(snapshot / entry["carried_from"]), base)
            for batch in read_listed(snapshot, entry):
                for url, row in zip(batch.column("url").to_pylist(), batch.column("row").to_pylist(), strict=True):
                    yield url, target, row, entry["carried_sha256"]
        else:
            rel, row = os.path.relpath(snapshot / entry["name"], base), 0
            for batch in read_listed(snapshot, entry):
                for url in batch.column("url").to_pylist():
                    yield url, rel, row, entry["sha256"]
                    row += 1


def _view_digest(rows_by_file: dict[str, list[int]]) -> str:
    """The identity of a snapshot's view: which rows of which files (by sha256) it reads. Equal for two
    snapshots that read the same pages, however they reference them, so a build skips an unchanged one."""
    h = hashlib.sha256()
    for sha in sorted(rows_by_file):
        h.update(sha.encode())
        h.update(np.asarray(sorted(rows_by_file[sha]), dtype="<i8").tobytes())
    return h.hexdigest()


def seal(folder: Path, previous: Path, stats: StepStats) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """After a finished re-crawl into ``folder``: write the references to what it carries forward and the
    tombstones, fold them into the crawl's ``stats``; (the references files' manifest entries, the summary).

    Deterministic from the frontier and the previous snapshot, so a rerun after a kill writes the same files.
    """
    if not (previous / MANIFEST).is_file():
        raise ShardError(f"{previous}: the snapshot this re-crawl follows is not finished (no {MANIFEST})")
    prev = {url: (rel, row, sha) for url, rel, row, sha in _view(previous, folder)}
    frontier = Frontier(folder / "state")
    try:
        outcome: dict[str, tuple[str, str | None]] = {}
        new = 0
        for url, state, reason in frontier.outcomes():
            if url in prev:
                outcome[url] = (state, reason)
            elif state == "done" and reason is None:
                new += 1
        segments = frontier.segments()
        kept: dict[str, list[tuple[str, int]]] = defaultdict(list)
        sha_of: dict[str, str] = {}
        tombs, removed, same, unverified = [], Counter[str](), Counter[str](), []
        for url, (rel, row, sha) in prev.items():
            state, reason = outcome.get(url, ("queued", None))
            if state == "done" and reason is None:
                continue  # changed: stored again in this snapshot
            if reason in GONE:
                tombs.append({"url": url, "id": stable_id(url), "status": GONE[reason], "file": rel, "row": row})
                continue
            if state == "queued" or reason in SAME or _unknown(reason):
                kept[rel].append((url, row))
                sha_of[rel] = sha
                if reason in SAME:
                    same[reason] += 1
                else:
                    unverified.append((url, state, reason))
                continue
            removed[str(reason)] += 1
        # The next re-crawl asks for a page carried unverified with its last validators, and visits it again.
        old = previous_pages(str(previous))
        records = [(u, p.etag, p.last_modified, p.sha1, p.links) for u, _, _ in unverified if (p := old.get(u))]
        frontier.commit(segment=None, done=[], new=[], counters={}, pages=records)
    finally:
        frontier.close()

    files: list[dict[str, Any]] = []
    for i, rel in enumerate(sorted(kept)):
        with ShardWriter(folder, f"carried-{i:05d}", schema=REFS_SCHEMA, max_bytes=1 << 40) as w:
            for url, row in sorted(kept[rel], key=lambda ur: ur[1]):
                w.write_row({"url": url, "id": stable_id(url), "row": row})
        files += [f | {"carried_from": rel, "carried_sha256": sha_of[rel]} for f in w.files]
    atomic_write_json(folder / TOMBSTONES, sorted(tombs, key=lambda t: t["url"]))

    rows_by_file = {sha_of[rel]: [r for _, r in kept[rel]] for rel in kept}
    rows_by_file |= {s["sha256"]: list(range(s["rows"])) for s in segments}
    carried, changed = (
        sum(len(v) for v in kept.values()),
        sum(1 for st, r in outcome.values() if st == "done" and r is None),
    )
    _fold_stats(stats, same, unverified, carried)
    summary = {
        "name": folder.name,
        "previous": os.path.relpath(previous, folder),
        "pages": carried + changed + new,
        "changed": changed,
        "new": new,
        "carried": carried,
        "carried_unverified": len(unverified),
        "tombstones": len(tombs),
        "tombstones_file": TOMBSTONES,
        "removed": dict(sorted(removed.items())),
        "view": _view_digest(rows_by_file),
        "nothing_changed": not (changed or new or tombs or removed),
    }
    counts = {k: summary[k] for k in ("changed", "new", "carried", "carried_unverified", "tombstones")}
    stats.counters.update({f"snapshot_{k}": v for k, v in counts.items()} | {"snapshot_removed": sum(removed.values())})
    if summary["nothing_changed"]:
        log.info(
            "crawl snapshot %s: nothing changed since %s (%d pages carried forward)",
            folder.name,
            previous.name,
            carried,
        )
    else:
        log.info(
            "crawl snapshot %s: %d changed, %d new, %d deleted (tombstones), %d removed, %d carried forward",
            folder.name, changed, new, len(tombs), sum(removed.values()), carried,
        )  # fmt: skip
    return files, summary


def _fold_stats(
    stats: StepStats, same: Counter[str], unverified: list[tuple[str, str, str | None]], carried: int
) -> None:
    """The crawl step's totals for a snapshot: carried pages are output (its rows), not drops, so that
    ``input == output + dropped`` holds and ``output`` equals the manifest's rows."""
    for reason, n in same.items():
        stats.dropped[reason] -= n
    for _, state, why in unverified:
        if state == "done" and why is not None:
            stats.dropped[why] -= 1
        else:
            stats.input += 1  # never reached in this crawl: one more page in
    for gone in [r for r, n in stats.dropped.items() if n <= 0]:
        del stats.dropped[gone]
    stats.output += carried

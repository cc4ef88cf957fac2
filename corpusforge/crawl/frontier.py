"""A durable frontier in SQLite (``<crawl>/state/frontier.sqlite``, WAL mode).

Pages are stored in segment files; a segment's file is renamed into place *before* the transaction that
records it and marks its URLs done (and queues the links found on them) commits. After ``kill -9``:
- a segment file that no transaction recorded is deleted and its URLs, still queued, are fetched again;
- a recorded segment is complete, so every reachable URL ends up exactly once in the output.
Counters (stored pages, drops by reason, status codes, bytes) are kept in the same transactions.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT UNIQUE NOT NULL,
    depth INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',   -- queued | done
    reason TEXT
);
CREATE INDEX IF NOT EXISTS urls_state ON urls(state, id);
CREATE TABLE IF NOT EXISTS segments (name TEXT PRIMARY KEY, rows INTEGER, bytes INTEGER, sha256 TEXT);
CREATE TABLE IF NOT EXISTS counters (kind TEXT, key TEXT, value INTEGER, PRIMARY KEY (kind, key));
-- What a re-crawl needs of each stored page: validators for conditional requests, a body hash to tell an
-- unchanged page, and its links (a 304 has no body to find them in).
CREATE TABLE IF NOT EXISTS pages (url TEXT PRIMARY KEY, etag TEXT, last_modified TEXT, sha1 TEXT, links TEXT);
"""


@dataclass
class PageRecord:
    etag: str | None
    last_modified: str | None
    sha1: str
    links: list[str]


class Frontier:
    def __init__(self, state_dir: Path, *, readonly: bool = False) -> None:
        if readonly:
            from corpusforge.errors import ConfigError

            file = state_dir / "frontier.sqlite"
            if not file.is_file():
                raise ConfigError(f"{file} not found: 'previous' must name an earlier crawl's folder")
            self.db = sqlite3.connect(f"file:{file}?mode=ro", uri=True, isolation_level=None)
            return
        state_dir.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(state_dir / "frontier.sqlite", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- reading
    def segments(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT name, rows, bytes, sha256 FROM segments ORDER BY name").fetchall()
        return [{"name": n, "rows": r, "bytes": b, "sha256": s} for n, r, b, s in rows]

    def urls(self) -> Iterator[str]:
        """Every URL the crawl has seen: queued, stored or dropped."""
        for (url,) in self.db.execute("SELECT url FROM urls"):
            yield url

    def queued(self, limit: int = 1000) -> list[tuple[str, int]]:
        return self.db.execute(
            "SELECT url, depth FROM urls WHERE state = 'queued' ORDER BY id LIMIT ?", (limit,)
        ).fetchall()

    def counters(self, kind: str) -> Counter[str]:
        return Counter(dict(self.db.execute("SELECT key, value FROM counters WHERE kind = ?", (kind,)).fetchall()))

    def pages(self) -> dict[str, PageRecord]:
        rows = self.db.execute("SELECT url, etag, last_modified, sha1, links FROM pages").fetchall()
        return {u: PageRecord(e, lm, h, json.loads(links)) for u, e, lm, h, links in rows}

    def outcomes(self) -> Iterator[tuple[str, str, str | None]]:
        """Every URL with its state (queued | done) and why it is done (None: stored)."""
        yield from self.db.execute("SELECT url, state, reason FROM urls ORDER BY id")

    def page_depths(self) -> list[tuple[str, int]]:
        """The URLs of the pages this crawl holds (``pages``), with the depth each was found at, in the order
        they were found: what a re-crawl visits again (``crawl/snapshot.py``)."""
        return self.db.execute(
            "SELECT u.url, u.depth FROM urls u JOIN pages p ON p.url = u.url ORDER BY u.id"
        ).fetchall()

    def is_empty(self) -> bool:
        return self.db.execute("SELECT COUNT(*) FROM urls").fetchone()[0] == 0

    # -- writing (one transaction per segment)
    def commit(
        self,
        *,
        segment: dict[str, Any] | None,
        done: Iterable[tuple[str, str | None]],
        new: Iterable[tuple[str, int]],
        counters: dict[str, Counter[str]],
        pages: Iterable[tuple[str, str | None, str | None, str, list[str]]] = (),
    ) -> None:
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            if segment is not None:
                cur.execute(
                    "INSERT INTO segments VALUES (?, ?, ?, ?)",
                    (segment["name"], segment["rows"], segment["bytes"], segment["sha256"]),
                )
            cur.executemany("INSERT OR IGNORE INTO urls (url, depth) VALUES (?, ?)", list(new))
            for url, reason in done:
                cur.execute("INSERT OR IGNORE INTO urls (url, depth) VALUES (?, 0)", (url,))
                cur.execute("UPDATE urls SET state = 'done', reason = ? WHERE url = ?", (reason, url))
            for kind, c in counters.items():
                for key, v in c.items():
                    cur.execute(
                        "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(kind, key) DO UPDATE SET value = value + ?",
                        (kind, key, v, v),
                    )
            cur.executemany(
                "INSERT OR REPLACE INTO pages VALUES (?, ?, ?, ?, ?)",
                [(u, e, lm, h, json.dumps(links)) for u, e, lm, h, links in pages],
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise


def previous_pages(folder: str | None) -> dict[str, PageRecord]:
    """What an earlier crawl (its folder) stored, by URL: the validators and links a re-crawl needs."""
    if folder is None:
        return {}
    old = Frontier(Path(folder) / "state", readonly=True)
    try:
        return old.pages()
    finally:
        old.close()

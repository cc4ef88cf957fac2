"""The ``Document`` record that flows from a crawled page to a tokenized shard.

Provenance is first-class: the URL a page was asked for, the URL it came from after redirects, when it was
fetched, its HTTP status, the backend that fetched it and the robots decision, so every token can be traced
back to where it came from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def stable_id(key: str) -> str:
    """A stable 16-hex-digit id from a key (a canonical URL, or ``source:path`` for local files).

    The same page gets the same id across re-crawls, so later runs can dedup and diff by id.
    """
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]


def utc_now_iso() -> str:
    """Current time as ISO 8601 UTC with second precision, e.g. ``2026-11-22T11:07:28Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class Document:
    """One document. ``text`` is the extracted text; ``html`` holds the raw page until extraction."""

    id: str
    text: str = ""
    url: str | None = None
    source: str = ""
    fetched_at: str | None = None  # ISO 8601 UTC
    final_url: str | None = None
    status: int | None = None
    backend: str | None = None
    robots: str | None = None  # e.g. "allowed", "allowed;noimageai"
    # The opt-out signals checked for a crawled page and what each said (``crawl.consent``); None for
    # documents not crawled (local files, dumps): their origin's terms are the user's to record.
    consent: dict[str, Any] | None = None
    html: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Document:
        """A document whose id derives from its (canonical) URL."""
        return cls(id=stable_id(url), url=url, **kwargs)

    def to_row(self) -> dict[str, Any]:
        """The Arrow row for this document (metadata serialized as sorted JSON)."""
        return {
            "id": self.id,
            "text": self.text,
            "url": self.url,
            "source": self.source,
            "fetched_at": self.fetched_at,
            "final_url": self.final_url,
            "status": self.status,
            "backend": self.backend,
            "robots": self.robots,
            "consent": None if self.consent is None else json.dumps(self.consent, sort_keys=True),
            "html": self.html,
            "metadata": json.dumps(self.metadata, sort_keys=True, ensure_ascii=False),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        meta = row.get("metadata")
        return cls(
            id=row["id"],
            text=row.get("text") or "",
            url=row.get("url"),
            source=row.get("source") or "",
            fetched_at=row.get("fetched_at"),
            final_url=row.get("final_url"),
            status=row.get("status"),
            backend=row.get("backend"),
            robots=row.get("robots"),
            consent=json.loads(row["consent"]) if row.get("consent") else None,
            html=row.get("html"),
            metadata=json.loads(meta) if meta else {},
        )

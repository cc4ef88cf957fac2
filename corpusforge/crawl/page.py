"""Records passed between the crawler, its fetch pool and the backends."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from corpusforge.crawl.frontier import Frontier, PageRecord
from corpusforge.crawl.html import charset_of
from corpusforge.crawl.urls import host_key
from corpusforge.document import Document, stable_id, utc_now_iso
from corpusforge.stats import StepStats

# Response headers kept in a stored page's metadata (validators for re-crawls, the opt-out signals).
KEPT_HEADERS = (
    "content-type",
    "content-language",
    "last-modified",
    "etag",
    "x-robots-tag",
    "tdm-reservation",
    "tdm-policy",
)


@dataclass
class FetchRequest:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    max_bytes: int = 5 << 20  # decompressed body cap
    timeout_s: float = 30.0  # total deadline for the whole fetch (connect + headers + body)
    max_redirects: int = 5


@dataclass
class FetchResponse:
    url: str  # requested
    final_url: str  # after redirects
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    error: str | None = None  # a named failure: too_large, timeout, redirect_loop, scheme_refused, ...
    elapsed_s: float = 0.0
    rendered_html: str | None = None  # browser backends return the DOM after scripts ran
    # Monotonic s when the request left, as near as the backend can tell (None: unknown). The host's next
    # request waits its delay from this too, when it is later than the crawler's own start.
    sent_at: float | None = None


@dataclass
class _Item:
    url: str
    depth: int
    tries: int = 0


@dataclass
class _Fetched:
    """A URL's final response, after its redirects, and what the later phases need with it."""

    url: str  # the final URL (canonical; the item's own URL when there was no redirect)
    host: str  # host_key(url)
    delay: float  # seconds between request starts to host
    resp: FetchResponse
    previous: PageRecord | None  # the earlier crawl's record of url (None after a redirect)


@dataclass
class CrawlOutcome:
    partial: bool
    files: list[dict[str, Any]]
    stats: StepStats
    extra: dict[str, Any] = field(default_factory=dict)


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number, or an HTTP date from now), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def read_outcome(state_dir: Any, partial: bool, seconds: float) -> CrawlOutcome:
    """A crawl's totals, read back from its committed frontier (all runs of a resumed crawl)."""
    frontier = Frontier(state_dir)
    try:
        drops, counts, files = frontier.counters("drop"), frontier.counters("count"), frontier.segments()
    finally:
        frontier.close()
    stats = StepStats(
        "crawl",
        input=counts["stored"] + sum(drops.values()),
        output=counts["stored"],
        dropped=drops,
        counters=counts,
    )
    extra = {
        "pages_fetched": counts["stored"],
        "requests": counts["requests"],
        "robots_skips": counts["robots_skips"],
        "retries": counts["retries"],
        "escalations": counts["escalations"],
        "renders": counts["renders"],
        "bytes": counts["bytes"],
        "crawl_seconds": round(seconds, 2),
    }
    return CrawlOutcome(partial=partial, files=files, stats=stats, extra=extra)


def next_item(queue: deque[_Item], host_next: dict[str, float]) -> _Item:
    """The first queued URL whose host may be fetched now, else the one whose host's slot comes first
    (looking a bounded way ahead).

    With several hosts, one host's delay (or Retry-After hold) does not stall the others: when no host is
    ready this instant, the loop waits for the earliest slot, not for the head's host. Per-host order is
    kept: only each host's first queued URL is a candidate.
    """
    now = time.monotonic()
    pick, soonest = 0, None
    hosts: set[str] = set()
    for i, item in enumerate(queue):
        if i >= 256:
            break
        h = host_key(item.url)
        if h in hosts:
            continue
        hosts.add(h)
        ready_at = host_next.get(h, 0.0)
        if ready_at <= now:
            pick = i
            break
        if soonest is None or ready_at < soonest:
            pick, soonest = i, ready_at
    item = queue[pick]
    del queue[pick]
    return item


def page_request(s: Any, url: str, previous: PageRecord | None = None) -> FetchRequest:
    """The request for ``url`` under the crawl settings ``s``: conditional when an earlier crawl stored it."""
    # Only our own headers: no credentials, cookies or proxy auth are ever added by the crawler.
    headers = {"User-Agent": s.user_agent, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"}
    if previous is not None:
        if previous.etag:
            headers["If-None-Match"] = previous.etag
        if previous.last_modified:
            headers["If-Modified-Since"] = previous.last_modified
    return FetchRequest(
        url, headers=headers, max_bytes=s.max_bytes, timeout_s=s.timeout_s, max_redirects=s.max_redirects
    )


def page_document(
    url: str, final_url: str, resp: FetchResponse, html: str, *, depth: int, rendered: bool, backend: str
) -> Document:
    """The stored record of a fetched page (the crawler adds robots, consent, source)."""
    headers = {k: v for k, v in resp.headers.items() if k in KEPT_HEADERS}
    meta: dict[str, Any] = {"headers": headers, "depth": depth, "bytes": len(resp.body)}
    charset = charset_of(resp.headers.get("content-type", ""))
    if charset:
        meta["charset"] = charset
    if rendered:
        meta["rendered"] = True
    return Document(
        id=stable_id(url),
        url=url,
        final_url=final_url,
        status=resp.status,
        fetched_at=utc_now_iso(),
        backend=backend,  # the registry name, e.g. "requests+lxml"
        html=html,
        metadata=meta,
    )

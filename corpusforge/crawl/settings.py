"""``CrawlSettings``: the crawl stage's parameters, the one schema its recipe table is validated against."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any

from corpusforge.params import Max, Min

DEFAULT_UA = "corpusforge/0.1 (+https://github.com/corpusforge/corpusforge; crawler for LM research)"


@dataclass(kw_only=True)
class CrawlSettings:
    """Crawl ``spider`` (``spiders/x.toml`` or ``module:Class``) with ``backend``.

    Politeness defaults: 16 fetches in flight over all hosts, one request at a time per host, ``min_delay_s`` = 1 s between request starts
    (a spider may only ask for more), ``Crawl-delay`` honoured up to ``max_crawl_delay_s`` = 30 s (a host asking
    for more is skipped and reported), ``Retry-After`` honoured up to 300 s, 3 retries with exponential
    backoff from 1 s. Safety defaults: 5 MiB decompressed body cap, a 30 s total deadline per fetch,
    5 redirects, URLs up to 2,048 characters, a path segment repeated at most 3 times.
    ``backend="auto"`` fetches statically and renders in headless Chromium only pages whose static HTML has
    fewer than ``min_text_chars`` characters of visible text. ``previous`` names an earlier crawl's folder: a
    scheduled re-crawl sends conditional requests (ETag / Last-Modified) and stores only pages that changed.
    ``recrawl`` does that in the same folder: each run makes a new, complete snapshot of the crawl.
    ``max_pages`` ends the crawl normally after that many stored pages; the CLI's ``--max-pages`` instead
    stops it as "partial", resumable.
    """

    spider: str
    backend: str = "requests+lxml"
    seeds: list[str] | None = None  # None: the spider's own seeds
    max_pages: Annotated[int, Min(1)] | None = None
    user_agent: str = DEFAULT_UA
    agent_token: str = "corpusforge"  # the product token matched against robots.txt groups
    min_delay_s: Annotated[float, Min(0)] = 1.0
    max_crawl_delay_s: Annotated[float, Min(0)] = 30.0
    max_bytes: Annotated[int, Min(1024)] = 5 << 20
    timeout_s: Annotated[float, Min(0.1)] = 30.0
    max_redirects: Annotated[int, Min(0), Max(20)] = 5
    max_retries: Annotated[int, Min(0), Max(10)] = 3
    backoff_s: Annotated[float, Min(0)] = 1.0
    max_retry_after_s: Annotated[float, Min(0)] = 300.0
    max_url_length: Annotated[int, Min(64)] = 2048
    max_repeated_segments: Annotated[int, Min(1)] = 3
    segment_pages: Annotated[int, Min(1)] = 100  # pages per segment file, i.e. per frontier transaction
    # The AI-training opt-out policy (``crawl.consent``): robots.txt groups of known AI-training agents
    # (``crawl/ai_agents.toml``, plus ``ai_agents`` and an ``ai_agents_file`` of the same shape), TDMRep
    # (header, meta, ``/.well-known/tdmrep.json``) and ``noai``; ``honour_noindex`` drops ``noindex`` pages.
    ai_optout: bool = True
    ai_agents: list[str] | None = None
    ai_agents_file: str | None = None
    honour_noindex: bool = True
    min_text_chars: Annotated[int, Min(0)] = 200
    previous: str | None = None
    # A new snapshot of the crawl folder on each run (``crawl/snapshot.py``): changed and new pages stored,
    # unchanged ones carried forward by reference, deleted ones (404/410) tombstoned.
    recrawl: bool = False
    # Fetches in flight over all hosts (a pool of fetch threads over a scheduler of hosts; 1: the sequential
    # loop), requests in flight per host, and headless Chromiums for the rendering backends (selenium, auto).
    # A spider's [politeness] may lower the first two. None changes which pages are stored: runtime settings.
    concurrency: Annotated[int, Min(1), Max(256)] = 16
    per_host_concurrency: Annotated[int, Min(1), Max(16)] = 1
    browsers: Annotated[int, Min(1), Max(32)] = 1
    # A frontier shared by many crawler processes: ``redis://host:port/db`` or ``unix:///path/redis.sock``
    # (None: the SQLite frontier in the crawl's folder). ``tasks`` crawler processes then share it (each with
    # its own fetch threads and segments); ``lease_s`` is how long a taken URL stays a process's without a
    # renewal (a dead process's URLs go to the others after it); ``frontier_key`` names the crawl in Redis
    # (default: derived from this config, so a rerun continues the same crawl and another crawl never mixes).
    frontier: str | None = None
    tasks: Annotated[int, Min(1), Max(256)] = 1
    lease_s: Annotated[float, Min(0.5)] = 30.0
    frontier_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults included: the stage's config, hashed to refuse a changed crawl folder."""
        # Not dataclasses.asdict: that deep-copies, and the values are plain already.
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

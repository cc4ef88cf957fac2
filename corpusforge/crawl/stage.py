"""The ``crawl`` stage: run a spider with a backend into document shards, resumably."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from corpusforge.errors import ConfigError
from corpusforge.params import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult

DEFAULT_UA = "corpusforge/0.1 (+https://github.com/corpusforge/corpusforge; crawler for LM research)"


class CrawlStage(Stage):
    """Crawl ``spider`` (``spiders/x.toml`` or ``module:Class``) with ``backend``.

    Politeness defaults: one request at a time per host, ``min_delay_s`` = 1 s between request starts
    (a spider may only ask for more), ``Crawl-delay`` honoured up to ``max_crawl_delay_s`` = 30 s (a host asking
    for more is skipped and reported), ``Retry-After`` honoured up to 300 s, 3 retries with exponential
    backoff from 1 s. Safety defaults: 5 MiB decompressed body cap, a 30 s total deadline per fetch,
    5 redirects, URLs up to 2,048 characters, a path segment repeated at most 3 times.
    ``backend="auto"`` fetches statically and renders in headless Chromium only pages whose static HTML has
    fewer than ``min_text_chars`` characters of visible text. ``previous`` names an earlier crawl's folder: a
    scheduled re-crawl sends conditional requests (ETag / Last-Modified) and stores only pages that changed.
    ``max_pages`` ends the crawl normally after that many stored pages; the CLI's ``--max-pages`` instead
    stops it as "partial", resumable.
    """

    kind: ClassVar[str] = "crawl"

    def __init__(
        self,
        *,
        spider: str,
        backend: str = "requests+lxml",
        seeds: list[str] | None = None,
        max_pages: Annotated[int, Min(1)] | None = None,
        user_agent: str = DEFAULT_UA,
        agent_token: str = "corpusforge",
        min_delay_s: Annotated[float, Min(0)] = 1.0,
        max_crawl_delay_s: Annotated[float, Min(0)] = 30.0,
        max_bytes: Annotated[int, Min(1024)] = 5 << 20,
        timeout_s: Annotated[float, Min(0.1)] = 30.0,
        max_redirects: Annotated[int, Min(0), Max(20)] = 5,
        max_retries: Annotated[int, Min(0), Max(10)] = 3,
        backoff_s: Annotated[float, Min(0)] = 1.0,
        max_retry_after_s: Annotated[float, Min(0)] = 300.0,
        max_url_length: Annotated[int, Min(64)] = 2048,
        max_repeated_segments: Annotated[int, Min(1)] = 3,
        segment_pages: Annotated[int, Min(1)] = 100,
        honour_noai: bool = True,
        min_text_chars: Annotated[int, Min(0)] = 200,
        previous: str | None = None,
    ) -> None:
        self._params = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.spider = spider
        self.backend = backend
        self.seeds = seeds
        self.max_pages = max_pages
        self.user_agent = user_agent
        self.agent_token = agent_token
        self.min_delay_s = min_delay_s
        self.max_crawl_delay_s = max_crawl_delay_s
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.max_url_length = max_url_length
        self.max_repeated_segments = max_repeated_segments
        self.segment_pages = segment_pages
        self.honour_noai = honour_noai
        self.min_text_chars = min_text_chars
        self.previous = previous

    def validate(self, path: str) -> None:
        from corpusforge.crawl.spider import load_spider
        from corpusforge.crawl.urls import scheme_ok
        from corpusforge.registry import BACKENDS

        spider = load_spider(self.spider, path=f"{path}.spider")
        backend_cls = BACKENDS.get(self.backend, path=f"{path}.backend")
        check = getattr(backend_cls, "check_available", None)
        if check is not None:
            try:
                check()
            except Exception as exc:  # a missing browser or extra: refuse before anything starts
                raise ConfigError(str(exc), path=f"{path}.backend") from exc
        if self.previous is not None and not (Path(self.previous) / "state" / "frontier.sqlite").is_file():
            raise ConfigError(
                f"{self.previous!r} is not an earlier crawl's folder (no state/frontier.sqlite)",
                path=f"{path}.previous",
            )
        for i, seed in enumerate(self.seeds or spider.seeds):
            if not scheme_ok(seed):
                raise ConfigError(f"seed {seed!r}: only http and https URLs can be crawled", path=f"{path}.seeds[{i}]")

    def parallel(self) -> bool:
        return False  # one task; it runs in the runner's process so SIGTERM reaches it directly

    def prepare_task(self, ctx: StageContext, rank: int) -> None:
        """Keep earlier segments: the crawler resumes from its frontier."""

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        from corpusforge.crawl.crawler import Crawler, CrawlSettings
        from corpusforge.crawl.spider import load_spider
        from corpusforge.registry import BACKENDS

        spider = load_spider(self.spider)
        backend = BACKENDS.get(self.backend)(user_agent=self.user_agent, timeout_s=self.timeout_s)
        settings = CrawlSettings(
            user_agent=self.user_agent,
            agent_token=self.agent_token,
            min_delay_s=self.min_delay_s,
            max_crawl_delay_s=self.max_crawl_delay_s,
            max_bytes=self.max_bytes,
            timeout_s=self.timeout_s,
            max_redirects=self.max_redirects,
            max_retries=self.max_retries,
            backoff_s=self.backoff_s,
            max_retry_after_s=self.max_retry_after_s,
            max_url_length=self.max_url_length,
            max_repeated_segments=self.max_repeated_segments,
            segment_pages=self.segment_pages,
            max_pages=self.max_pages,
            honour_noai=self.honour_noai,
            min_text_chars=self.min_text_chars,
            previous=Path(self.previous) if self.previous else None,
        )
        outcome = Crawler(spider, backend, settings, ctx, seeds=self.seeds, backend_name=self.backend).run()
        return TaskResult(
            files=outcome.files, steps=[outcome.stats.to_dict()], extra=outcome.extra, partial=outcome.partial
        )

    def summary(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return {"pages": manifest.get("rows", 0)}

"""The ``crawl`` stage: run a spider with a backend into document shards, resumably."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, ClassVar

from corpusforge.crawl.settings import CrawlSettings
from corpusforge.errors import ConfigError
from corpusforge.stage import Stage, StageContext, TaskResult


class CrawlStage(Stage):
    """Crawl a spider with a backend; the parameters and their defaults are ``CrawlSettings``."""

    kind: ClassVar[str] = "crawl"
    schema: ClassVar[type | None] = CrawlSettings
    # How many fetches run at once changes the speed and the order pages are stored in, never which pages
    # are stored or how politely: a crawl may resume with another concurrency.
    # ``recrawl`` chooses which snapshot of the folder this run writes (``crawl/snapshot.py``), not what a crawl
    # stores: the snapshot's name is in the config instead.
    runtime_params: ClassVar[frozenset[str]] = frozenset(
        {"concurrency", "per_host_concurrency", "browsers", "lease_s", "recrawl"}
    )

    def __init__(self, **params: Any) -> None:
        self.settings = CrawlSettings(**params)
        self.snapshot: Any = None  # set by the planner (``snapshot_dir``)
        # With a Redis frontier the tasks are crawler processes that work together, all at once, each in a
        # process of its own: one that dies must not take the others with it (see executors.local).
        self.independent_tasks = self.settings.frontier is not None and self.settings.tasks > 1
        # Imported once by the fork server the crawler processes are forked from.
        self.preload_modules = (
            "corpusforge.crawl.stage",
            "corpusforge.crawl.pool",
            "corpusforge.crawl.shared",
            "corpusforge.crawl.redis_frontier",
            "corpusforge.registry",
            "redis",
        )

    def frontier_key(self, out_dir: Path) -> str:
        """The crawl's name in Redis: its config's hash (not the URL: a rotated password or a new address of the
        same server is the same crawl) and an id kept in its folder, so a fresh folder is a fresh crawl."""
        from corpusforge.crawl.redis_conn import crawl_id, frontier_key

        if self.settings.frontier_key:
            return self.settings.frontier_key
        base = frontier_key({k: v for k, v in self.config().items() if k != "frontier"})
        return f"{base}-{crawl_id(out_dir / 'state')}"

    def snapshot_dir(self, home: Path) -> Path:
        """The planner's hook: the folder this run crawls into, ``home`` or one of its snapshots (a re-crawl's
        new one, or an unfinished one to resume)."""
        from corpusforge.crawl.snapshot import resolve

        self.snapshot = resolve(home, recrawl=self.settings.recrawl)
        return Path(self.snapshot.folder)

    def config(self) -> dict[str, Any]:
        config = {k: v for k, v in self.settings.to_dict().items() if k not in self.runtime_params}
        if self.snapshot is not None and self.snapshot.name is not None:
            config["snapshot"] = self.snapshot.name  # later stages are rebuilt for each new snapshot
        return config

    def validate(self, path: str) -> None:
        from corpusforge.crawl.spider import load_spider
        from corpusforge.crawl.urls import scheme_ok
        from corpusforge.registry import BACKENDS

        s = self.settings
        spider = load_spider(s.spider, path=f"{path}.spider")
        backend_cls = BACKENDS.get(s.backend, path=f"{path}.backend")
        check = getattr(backend_cls, "check_available", None)
        if check is not None:
            try:
                check()
            except Exception as exc:  # a missing browser or extra: refuse before anything starts
                raise ConfigError(str(exc), path=f"{path}.backend") from exc
        if s.recrawl and (s.previous is not None or s.frontier is not None):
            raise ConfigError(
                "a re-crawl follows the folder's previous snapshot by itself, on the SQLite frontier: "
                "leave out 'previous' and 'frontier'",
                path=f"{path}.recrawl",
            )
        if s.previous is not None and not (Path(s.previous) / "state" / "frontier.sqlite").is_file():
            raise ConfigError(
                f"{s.previous!r} is not an earlier crawl's folder (no state/frontier.sqlite)",
                path=f"{path}.previous",
            )
        if s.frontier is not None:
            from corpusforge.crawl.redis_conn import connect, is_redis_url

            if not is_redis_url(s.frontier):
                raise ConfigError(
                    f"{s.frontier!r}: a shared frontier is redis://host:port/db, rediss://… or unix:///path.sock",
                    path=f"{path}.frontier",
                )
            if s.previous is not None:
                raise ConfigError("a re-crawl ('previous') runs on the SQLite frontier only", path=f"{path}.previous")
            from corpusforge.redisutil import refuse_evicting_server

            client = connect(s.frontier, path=f"{path}.frontier", probe=True)  # unreachable: exit 1, nothing written
            try:
                refuse_evicting_server(
                    client, s.frontier, "the crawl's frontier would lose URLs", path=f"{path}.frontier"
                )
            finally:
                client.close()
        elif s.tasks > 1:
            raise ConfigError(
                'several crawler processes need a frontier they share: set frontier = "redis://…"',
                path=f"{path}.tasks",
            )
        for i, seed in enumerate(s.seeds or spider.seeds):
            if not scheme_ok(seed):
                raise ConfigError(f"seed {seed!r}: only http and https URLs can be crawled", path=f"{path}.seeds[{i}]")

    def parallel(self) -> bool:
        # One task runs in the runner's process so SIGTERM reaches it directly; a shared crawl's tasks are
        # processes of their own.
        return self.independent_tasks

    def num_tasks(self, ctx: StageContext) -> int:
        return self.settings.tasks if self.settings.frontier is not None else 1

    def prepare_task(self, ctx: StageContext, rank: int) -> None:
        """Keep earlier segments: the crawler resumes from its frontier."""

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        from corpusforge.crawl.crawler import Crawler
        from corpusforge.crawl.pool import run_pool
        from corpusforge.crawl.spider import load_spider
        from corpusforge.registry import BACKENDS

        s = self.settings
        backend_cls = BACKENDS.get(s.backend)
        wanted = inspect.signature(backend_cls).parameters
        extra = {k: getattr(s, k) for k in ("browsers", "concurrency") if k in wanted}
        backend = backend_cls(user_agent=s.user_agent, timeout_s=s.timeout_s, **extra)
        key = self.frontier_key(ctx.out_dir) if s.frontier is not None else None
        previous = self.snapshot.previous if self.snapshot is not None else None
        if previous is None:
            outcome = Crawler(load_spider(s.spider), backend, s, ctx, rank=rank, frontier_key=key).run(pool=run_pool)
        else:  # a new snapshot: conditional requests from the previous one, whose pages are all visited again
            from corpusforge.crawl.snapshot import SnapshotCrawler, revisits, seal

            s = dataclasses.replace(s, previous=str(previous))
            crawler = SnapshotCrawler(load_spider(s.spider), backend, s, ctx, revisits=revisits(previous))
            outcome = crawler.run(pool=run_pool)
            if not outcome.partial:
                files, summary = seal(ctx.out_dir, previous, outcome.stats)
                outcome.files, outcome.extra = outcome.files + files, outcome.extra | {"snapshot": summary}
        return TaskResult(
            files=outcome.files, steps=[outcome.stats.to_dict()], extra=outcome.extra, partial=outcome.partial
        )

    def finalize(self, ctx: StageContext, results: list[TaskResult]) -> dict[str, Any]:
        """A shared crawl: every task's segments together hold each stored URL once; the crawl's totals."""
        s = self.settings
        if s.frontier is None:  # a re-crawl's snapshot: what it changed, carried and tombstoned, its view's identity
            summary = results[0].extra.get("snapshot") if results else None
            return {"snapshot": summary} if summary else {}
        from corpusforge.crawl.redis_frontier import RedisFrontier
        from corpusforge.crawl.shared import finalize

        frontier = RedisFrontier(s.frontier, self.frontier_key(ctx.out_dir))
        try:
            return finalize(ctx.out_dir, frontier, [f for r in results for f in r.files])
        finally:
            frontier.close_client()

"""The end of a crawl shared through Redis: each task's own segments, made exactly-once; the stage's totals.

A task ends only when the whole crawl has (no URL queued anywhere, none leased by a live process). It then
rewrites those of its segments that hold a page it could not record (its lease had expired, or another
process recorded the URL first: the commit listed it as ``excluded``), so that the files of all tasks
together hold every stored URL exactly once, and returns its segments and its share of the counters (each
drop and each stored page is counted by the one process that recorded it, so the tasks' counts add up to
the crawl's). ``finalize`` then checks the merged output: no URL twice, no unrecorded file left behind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from corpusforge.crawl.page import CrawlOutcome
from corpusforge.errors import FatalError
from corpusforge.stats import StepStats
from corpusforge.storage import ShardWriter, iter_documents, read_table

log = logging.getLogger(__name__)


def open_frontier(crawler: Any, key: str | None) -> Any:
    """The Redis frontier of ``crawler``'s crawl, with its limits (a spider may only make them stricter)."""
    from corpusforge.crawl.redis_frontier import RedisFrontier

    s = crawler.s
    conc, per_host = crawler.limits()
    return RedisFrontier(
        s.frontier,
        key or "default",
        rank=crawler.rank,
        per_host_concurrency=per_host,
        concurrency=conc if getattr(crawler.backend, "thread_safe", False) else 1,
        base_delay_s=max(s.min_delay_s, crawler.spider.min_delay_s),
        lease_s=s.lease_s,
    )


def recover(crawler: Any) -> int:
    """Remove this task's segment files that Redis has no record of (a kill between rename and commit);
    the number of its next segment.

    A recorded segment whose file is gone but whose filtered copy (``…-x.arrow``, made at the end of an earlier
    run) is there was replaced by it when Redis lost that update (a crash with ``appendfsync everysec``): the
    copy is adopted. A recorded segment with neither is an error: this folder is not the crawl Redis knows.
    """
    import json as _json

    from corpusforge.storage import file_record

    shared, out_dir = crawler.shared, crawler.ctx.out_dir
    shared.ensure_usable()
    records = {s["name"]: s for s in shared.segments(crawler.rank)}
    for name in list(records):
        if (out_dir / name).is_file():
            continue
        copy = out_dir / (name.split(".arrow")[0] + "-x.arrow")
        if not copy.is_file():
            raise FatalError(
                f"{out_dir}: Redis ({_safe(shared.url)}, keys {shared.prefix}*) records segment {name}, which is "
                "not in this folder: the folder is not the crawl's (restore it, or start the crawl afresh "
                "with another frontier_key)"
            )
        rows = read_table(copy, ["url"]).num_rows
        new = file_record(copy, rows=rows) | {"rank": crawler.rank}
        pipe = shared.client.pipeline(transaction=True)
        pipe.hdel(shared._key("segments"), name)
        pipe.hset(shared._key("segments"), copy.name, _json.dumps(new))
        pipe.execute()
        records.pop(name)
        records[copy.name] = new
    for p in out_dir.glob(f"{crawler._seg_prefix()}*.arrow*"):
        if p.name not in records:
            log.info("removing unrecorded segment %s", p.name)
            p.unlink()
    numbers = [int(n[len(crawler._seg_prefix()) :].split("-")[0].split(".")[0]) for n in records]
    return max(numbers, default=-1) + 1


def _filter_segment(out_dir: Path, frontier: Any, record: dict[str, Any]) -> dict[str, Any]:
    """Rewrite ``record``'s file with only the pages the frontier recorded in it (once each); the new record."""
    old = out_dir / record["name"]
    stem = record["name"].split(".arrow")[0]
    docs = list(iter_documents([old]))
    owner = frontier.done_value([d.url for d in docs])
    kept: set[str | None] = set()
    with ShardWriter(out_dir, f"{stem}-x", max_bytes=1 << 40) as w:
        for doc, value in zip(docs, owner, strict=True):
            if value == "=" + record["name"] and doc.url not in kept:
                kept.add(doc.url)
                w.write(doc)
    files = w.files
    if not files:  # every page excluded: nothing to keep
        return {}
    return files[0] | {"rank": record.get("rank")}


def task_outcome(crawler: Any, partial: bool, seconds: float) -> CrawlOutcome:
    """This task's segments (made exactly-once when the crawl is over) and its counters."""
    shared, out_dir = crawler.shared, crawler.ctx.out_dir
    if not partial and shared.crawl_over():  # not at a max_pages stop: others may still queue such URLs
        shared.settle_depth_refusals()
    files = []
    for rec in shared.segments(crawler.rank):
        if rec.get("excluded") and not partial:
            new = _filter_segment(out_dir, shared, rec)
            pipe = shared.client.pipeline(transaction=True)
            pipe.hdel(shared._key("segments"), rec["name"])
            if new:
                pipe.hset(shared._key("segments"), new["name"], __import__("json").dumps(new))
            pipe.execute()
            (out_dir / rec["name"]).unlink(missing_ok=True)
            log.info("segment %s: %d page(s) recorded by another process left out", rec["name"], len(rec["excluded"]))
            if not new:
                continue
            rec = new
        files.append({k: v for k, v in rec.items() if k not in ("rank", "excluded")})
    drops, counts = shared.counters("drop", crawler.rank), shared.counters("count", crawler.rank)
    stats = StepStats(
        "crawl", input=counts["stored"] + sum(drops.values()), output=counts["stored"], dropped=drops, counters=counts
    )
    extra = {
        "pages_fetched": counts["stored"],
        "requests": counts["requests"],
        "robots_skips": counts["robots_skips"],
        "retries": counts["retries"],
        "renders": counts["renders"],
        "bytes": counts["bytes"],
        "fenced": counts["fenced"],
        "crawl_seconds": round(seconds, 2),
    }
    return CrawlOutcome(partial=partial, files=files, stats=stats, extra=extra)


def finalize(out_dir: Path, frontier: Any, files: list[dict[str, Any]]) -> dict[str, Any]:
    """Check the merged output of every task (each stored URL exactly once) and report the whole crawl."""
    listed = {f["name"] for f in files}
    for p in out_dir.glob("seg-r*.arrow*"):
        if p.name not in listed and not p.name.endswith(".tmp"):
            log.info("removing %s: no task recorded it", p.name)
            p.unlink()
    seen: set[str] = set()
    twice: list[str] = []
    for f in files:
        for url in read_table(out_dir / f["name"], ["url"]).column("url").to_pylist():
            if url in seen:
                twice.append(url)
            seen.add(url)
    counts = frontier.counters("count")
    if not twice and len(seen) != counts["stored"]:
        raise FatalError(
            f"the shared crawl's segments hold {len(seen)} pages, its frontier in Redis recorded "
            f"{counts['stored']} stored: report this, with the frontier's keys ({frontier.prefix}*)"
        )
    if twice:
        raise FatalError(
            f"the shared crawl stored {len(twice)} URL(s) twice (e.g. {twice[0]}): its segments disagree with "
            "the frontier in Redis; report this, with the frontier's keys"
        )
    st = frontier.status()
    return {
        "frontier": {
            "url": _safe(frontier.url),
            "key": frontier.prefix,
            "stored": counts["stored"],
            "requests": counts["requests"],
            "lease_expired": counts["lease_expired"],
            "fenced": counts["fenced"],
            "queued_left": st["queued"],
        },
        "duplicates_in_output": 0,
    }


def _safe(url: str) -> str:
    from corpusforge.crawl.redis_conn import safe_url

    return safe_url(url)

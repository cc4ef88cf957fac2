"""The crawl loop: every rule that keeps a crawl polite and safe, applied before any backend fetch.

Order for each URL: scheme → offsite → trap limits → robots.txt (RFC 9309) → Crawl-delay cap → per-host
delay → fetch (through the backend: byte cap + deadline) → redirects (each hop re-checked) → status handling
(Retry-After on 429/503, exponential backoff, a retry budget) → content type → charset → opt-outs
(``X-Robots-Tag`` / meta robots ``noai``, ``noindex``) → store → links.

A discovered URL is admitted (scheme, offsite, traps) before it is queued; a queued one then goes through
the phases of ``Crawler._process``: host gate (robots, Crawl-delay, slot) → fetch with redirects (each hop
gated again) → response (status, sitemap, content type, opt-outs, unchanged) → HTML (render, links, store).

With ``concurrency`` above 1 (default 16) and a backend that may fetch from several threads (all of ours
but a custom one that says otherwise), ``crawl.pool`` runs that many fetch threads over a ``Scheduler`` of
hosts (``per_host_concurrency`` requests in flight per host, the delay between request starts): the threads
do the I/O, browser renders included, and this thread (the writer) applies every rule above through the
same phases and alone owns the frontier and the segment writer (``crawl/pool.py``). With ``concurrency`` = 1
the loop below fetches one page at a time and waits for each host's next slot.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from corpusforge.crawl.consent import NO_TDM, ConsentPolicy, PageSignals
from corpusforge.crawl.frontier import Frontier, PageRecord, previous_pages
from corpusforge.crawl.html import decode_html, sitemap_locs, visible_text_chars
from corpusforge.crawl.page import (
    CrawlOutcome,
    FetchRequest,
    FetchResponse,
    _Fetched,
    _Item,
    next_item,
    page_document,
    page_request,
    read_outcome,
    retry_after_s,
)
from corpusforge.crawl.progress import CrawlProgress, Sample, progress_interval_s
from corpusforge.crawl.robots import RobotsCache
from corpusforge.crawl.settings import CrawlSettings
from corpusforge.crawl.spider import SavedPage, Spider
from corpusforge.crawl.urls import canonicalize, domain_allowed, host_key, scheme_ok, trap_reason
from corpusforge.redact import redact_text
from corpusforge.stage import StageContext
from corpusforge.storage import ShardWriter

log = logging.getLogger(__name__)

HTML_TYPES = ("text/html", "application/xhtml+xml")
XML_TYPES = ("application/xml", "text/xml")
# Transient failures: retried with exponential backoff until the retry budget is spent.
RETRYABLE_ERRORS = ("timeout", "data_loss", "connection_error", "browser_crashed")
RETRYABLE_STATUS = (429, 500, 502, 503, 504)
REDIRECT_STATUS = (301, 302, 303, 307, 308)


class Crawler:
    def __init__(
        self,
        spider: Spider,
        backend: Any,
        settings: CrawlSettings,
        ctx: StageContext,
        *,
        rank: int = 0,
        frontier_key: str | None = None,
    ) -> None:
        self.spider = spider
        self.backend = backend
        self.s = settings
        self.ctx = ctx
        self.rank = rank
        self.seeds = settings.seeds or spider.seeds
        # A Redis frontier (``crawl.redis_frontier``) when the crawl is shared by several processes; it is
        # also the scheduler the pool takes tickets from.
        self.shared: Any = None
        self.frontier: Any
        if settings.frontier is not None:
            from corpusforge.crawl.shared import open_frontier

            self.shared = self.frontier = open_frontier(self, frontier_key)
        else:
            self.frontier = Frontier(ctx.out_dir / "state")
        self.parser = getattr(backend, "parser", "lxml")
        self.previous = previous_pages(settings.previous)
        self.consent = ConsentPolicy.from_settings(settings)
        self.robots = RobotsCache(
            backend,
            agent_token=settings.agent_token,
            user_agent=settings.user_agent,
            timeout_s=min(10.0, settings.timeout_s),
            ai_agents=self.consent.agents,
            tdmrep=settings.ai_optout,
        )
        self.robots.shared = self.shared
        self.host_next: dict[str, float] = {}
        self.host_skip: dict[str, str] = {}
        # Pending (not yet committed) state of the current segment.
        self.pending_done: list[tuple[str, str | None]] = []
        self.pending_new: list[tuple[str, int]] = []
        self.pending_pages: list[tuple[str, str | None, str | None, str, list[str]]] = []
        self.stored_committed = 0
        self.pending_counts: dict[str, Counter[str]] = {"drop": Counter(), "count": Counter()}
        self.seen: set[str] = set()
        self.queue: deque[_Item] = deque()
        self.link_refusals: list[tuple[str, str]] = []  # shared frontier: refusals still to claim in Redis
        self.segment_no = 0
        self.writer: ShardWriter | None = None
        self.in_segment = 0
        # Set by the pool: renders go back to the fetch threads instead of running in this thread.
        self.render_later: Callable[[_Item, _Fetched, PageSignals, str], None] | None = None

    # ------------------------------------------------------------------ state
    def _seg_prefix(self) -> str:
        return f"seg-r{self.rank:03d}-" if self.shared is not None else "seg-"

    def _recover(self) -> None:
        """Drop segment files no transaction recorded (a crash between rename and commit)."""
        if self.shared is not None:
            from corpusforge.crawl.shared import recover

            self.segment_no = recover(self)
            return  # the queue, seen URLs and counters live in Redis
        recorded = {s["name"] for s in self.frontier.segments()}
        for p in self.ctx.out_dir.glob("seg-*.arrow*"):
            if p.name not in recorded:
                log.info("removing uncommitted segment %s", p.name)
                p.unlink()
        self.segment_no = len(recorded)
        self.stored_committed = self.frontier.counters("count")["stored"]
        self.seen.update(self.frontier.urls())
        for url, depth in self.frontier.queued(10**9):
            self.queue.append(_Item(url, depth))

    def _drop(self, url: str, reason: str) -> None:
        self.pending_done.append((url, reason))
        self.pending_counts["drop"][reason] += 1

    def _count(self, key: str, n: int = 1) -> None:
        self.pending_counts["count"][key] += n

    def _commit(self) -> None:
        segment = None
        if self.writer is not None:
            files = self.writer.close()
            segment = files[0] if files else None
            self.writer = None
            self.segment_no += 1
        self.frontier.commit(
            segment=segment,
            done=self.pending_done,
            new=self.pending_new,
            counters=self.pending_counts,
            pages=self.pending_pages,
        )
        self.stored_committed += self.pending_counts["count"]["stored"]
        self.pending_done, self.pending_new, self.pending_pages = [], [], []
        self.pending_counts = {"drop": Counter(), "count": Counter()}
        self.in_segment = 0

    def _stored_total(self) -> int:
        if self.shared is not None:  # every process's pages: the bounds are the crawl's, not one process's
            return self.shared.stored_cached() + self.pending_counts["count"]["stored"]
        return self.stored_committed + self.pending_counts["count"]["stored"]

    # ------------------------------------------------------------------ link admission
    def _admit(self, url: str, depth: int) -> None:
        """Queue a discovered URL, or count why not. Already-seen URLs are not counted again."""
        if not scheme_ok(url):
            key = url.split(":", 1)[0].lower()[:10]
            if key in ("mailto", "javascript", "tel"):
                return  # not a page: not a URL we consider at all
            canon = redact_text(url[:2048])  # recorded as refused: never with its credentials
            if canon in self.seen:
                return
            self.seen.add(canon)
            self._refuse_link(canon, "scheme_refused")
            return
        canon = canonicalize(url)
        if canon in self.seen:
            return
        self.seen.add(canon)
        if not domain_allowed(canon, self.spider.allowed_domains):
            self._refuse_link(canon, "offsite")
            return
        reason = trap_reason(
            canon, max_url_length=self.s.max_url_length, max_repeated_segments=self.s.max_repeated_segments
        )
        if reason:
            self._refuse_link(canon, reason)
            return
        if depth > self.spider.max_depth:
            self._refuse_link(canon, "trap_depth")
            return
        if depth > 0 and not self.spider.follow(canon):
            self._refuse_link(canon, "excluded_by_spider")
            return
        self.pending_new.append((canon, depth))
        self.queue.append(_Item(canon, depth))

    def _refuse_link(self, url: str, reason: str) -> None:
        """A discovered URL not queued. With a shared frontier the first process to see a URL decides for all:
        the refusal is recorded only if Redis had not seen the URL (``crawl.pool`` claims it there), so a page
        another process queued is never also recorded as refused; one too deep by this path, only if no process
        queued it by a shorter path before the crawl ended (``RedisFrontier.settle_depth_refusals``)."""
        if self.shared is not None:
            self.link_refusals.append((url, reason))
        else:
            self._drop(url, reason)

    # ------------------------------------------------------------------ fetching
    def _wait_for(self, host: str) -> bool:
        """Sleep until the host's next slot; False if a stop was requested meanwhile."""
        while True:
            wait = self.host_next.get(host, 0.0) - time.monotonic()
            if wait <= 0:
                return True
            if self.ctx.stop_requested():
                return False
            time.sleep(min(wait, 0.25))

    def _host_delay(self, host: str) -> float | None:
        """Seconds between request starts to ``host``; None when its Crawl-delay is above the cap."""
        rules = self.robots.rules(host)
        delay = max(self.s.min_delay_s, self.spider.min_delay_s)
        if rules.crawl_delay_s is not None:
            if rules.crawl_delay_s > self.s.max_crawl_delay_s:
                return None
            delay = max(delay, float(rules.crawl_delay_s))
        return delay

    def _request(self, url: str, previous: PageRecord | None = None) -> FetchRequest:
        return page_request(self.s, url, previous)

    def _fetch(self, url: str, host: str, delay: float, previous: PageRecord | None = None) -> FetchResponse:
        self.host_next[host] = time.monotonic() + delay
        resp = self.backend.fetch(self._request(url, previous))
        if resp.sent_at is not None:  # sent later than planned: the next start waits from then
            self.host_next[host] = max(self.host_next[host], resp.sent_at + delay)
        # The delay counts between request starts; a slow response does not shorten it.
        self._count_response(resp)
        return resp

    def _count_response(self, resp: FetchResponse) -> None:
        self._count("requests")
        self._count("bytes", len(resp.body))
        if resp.status:
            self._count(f"status_{resp.status}")

    def _retry_or_drop(self, item: _Item, host: str, delay: float, resp: FetchResponse, prefix: str = "") -> None:
        """A transient failure: requeue with backoff (and Retry-After), or drop once the budget is spent."""
        retry_after = retry_after_s(resp.headers.get("retry-after")) if resp.status in (429, 503) else None
        if retry_after is not None and retry_after > self.s.max_retry_after_s:
            self._drop(item.url, "retry_after_too_long")
            return
        if item.tries >= self.s.max_retries:
            self._drop(item.url, prefix + (resp.error or f"http_{resp.status}"))
            return
        backoff = self.s.backoff_s * (2**item.tries)
        # Retry-After and the backoff hold the whole host back, not only this URL.
        self.host_next[host] = max(
            self.host_next.get(host, 0.0), time.monotonic() + max(retry_after or 0.0, backoff, delay)
        )
        self._count("retries")
        self.queue.append(_Item(item.url, item.depth, item.tries + 1))

    def _needs_render(self, html: str) -> bool:
        mode = getattr(self.backend, "renders", "never")
        if mode == "always":
            return True
        if mode == "auto" and visible_text_chars(html) < self.s.min_text_chars:
            self._count("escalations")
            return True
        return False

    # ------------------------------------------------------------------ one URL, phase by phase
    # Each phase either hands the item on or ends it: dropped (with its reason), requeued (a retry, or a stop
    # requested while waiting for a host slot) or recorded unchanged. A phase that ends it returns None.
    def _process(self, item: _Item) -> None:
        fetched = self._fetch_with_redirects(item)
        if fetched is not None:
            self._on_response(item, fetched)

    def _gate_decision(self, url: str, host: str) -> tuple[str | None, float]:
        """Whether ``url`` may be fetched: (None, the host's delay in s) or (the reason it may not, 0).

        Decides only (reads the robots rules, fetching them when not cached, and the skipped hosts); the
        writer applies the outcome with ``_refuse``.
        """
        if host in self.host_skip:
            return self.host_skip[host], 0.0
        rules = self.robots.rules(host)
        if not rules.allowed(url, self.s.agent_token):
            return ("robots_disallowed" if rules.status == "ok" else "robots_unavailable"), 0.0
        optout = self.consent.site_refusal(url, rules, self.robots.tdm_cached(host) or NO_TDM)
        if optout is not None:
            return optout, 0.0
        delay = self._host_delay(host)
        if delay is None:
            return "crawl_delay_too_long", 0.0
        return None, delay

    def _refuse(self, item: _Item, host: str, reason: str) -> None:
        """Drop ``item`` for a reason ``_gate_decision`` gave; the first Crawl-delay refusal skips the host."""
        if reason in ("robots_disallowed", "robots_unavailable"):
            self._count("robots_skips")
        elif reason == "crawl_delay_too_long" and host not in self.host_skip:
            self.host_skip[host] = reason
            log.warning(
                "%s asks for a Crawl-delay above the cap of %.0f s: host skipped", host, self.s.max_crawl_delay_s
            )
            self._count("hosts_skipped")
        self._drop(item.url, reason)

    def _host_gate(self, item: _Item, url: str, host: str) -> float | None:
        """Wait for ``host``'s slot if ``url`` may be fetched; the host's delay in seconds, or None."""
        robots_fetched = self.robots.cached(host) is None
        reason, delay = self._gate_decision(url, host)
        if robots_fetched:
            # robots.txt was a request to the host: its next one waits the delay, counted from the response's
            # end (its start is not seen here, and the host must never see a shorter gap).
            wait = self._host_delay(host) or 0.0  # the host's, even when this URL is refused
            self.host_next[host] = max(self.host_next.get(host, 0.0), time.monotonic() + wait)
        if reason is None and self.robots.tdm_cached(host) is None:  # tdmrep.json: a request of its own
            if not self._wait_for(host):
                self.queue.appendleft(item)
                return None
            self.robots.tdm_rules(host)
            self.host_next[host] = time.monotonic() + (delay or 0.0)
            reason, delay = self._gate_decision(url, host)
        if reason is not None:
            self._refuse(item, host, reason)
            return None
        if not self._wait_for(host):
            self.queue.appendleft(item)  # stop requested: still queued in the frontier
            return None
        return delay

    def _fetch_with_redirects(self, item: _Item) -> _Fetched | None:
        """Fetch the item's URL and follow its redirects, each hop gated like a URL of its own."""
        url = item.url
        chain = {url}  # URLs of this redirect chain, to tell a loop from a long chain
        hops = 0
        while True:
            host = host_key(url)
            delay = self._host_gate(item, url, host)
            if delay is None:
                return None
            # Conditional request only for the URL the earlier crawl stored, not for a redirect target.
            previous = self.previous.get(url) if hops == 0 else None
            resp = self._fetch(url, host, delay, previous)
            # An error wins over a redirect status: the response phase handles it.
            if resp.error or resp.status not in REDIRECT_STATUS:
                return _Fetched(url, host, delay, resp, previous)
            hops += 1
            target = self._redirect_target(item, url, resp, chain, hops)
            if target is None:
                return None
            url = target

    def _redirect_target(self, item: _Item, url: str, resp: FetchResponse, chain: set[str], hops: int) -> str | None:
        """The canonical URL a redirect hop leads to, once checked; None when the hop is refused."""
        location = resp.headers.get("location")
        if not location or hops > self.s.max_redirects:
            self._drop(item.url, "too_many_redirects" if location else "redirect_without_location")
            return None
        target = urljoin(url, location)
        if not scheme_ok(target):
            self._drop(item.url, "scheme_refused")
            return None
        target = canonicalize(target)
        if target in chain:
            self._drop(item.url, "redirect_loop")
            return None
        chain.add(target)
        if not domain_allowed(target, self.spider.allowed_domains):
            self._drop(item.url, "offsite_redirect")
            return None
        if target in self.seen:
            self._drop(item.url, "redirect_to_seen")
            return None
        self.seen.add(target)
        self.pending_done.append((target, "redirect_target"))
        return target

    def _on_response(self, item: _Item, f: _Fetched) -> None:
        """The final response: retry, drop, read as a sitemap, or hand its HTML on."""
        resp = f.resp
        if resp.error in RETRYABLE_ERRORS or resp.status in RETRYABLE_STATUS:
            self._retry_or_drop(item, f.host, f.delay, resp)
            return
        if resp.error:
            self._drop(item.url, resp.error)
            return
        if resp.status == 304 and f.previous is not None:
            self._unchanged(item, f.previous, "not_modified")
            return
        if resp.status != 200:
            self._drop(item.url, f"http_{resp.status}")
            return
        ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
        if (ctype in XML_TYPES or item.url in self.spider.sitemaps) and self._read_sitemap(item, resp.body):
            return
        if ctype and ctype not in HTML_TYPES:
            self._drop(item.url, "content_type")
            return
        html = decode_html(resp.body, resp.headers.get("content-type", ""))
        flags = self.consent.page(resp.headers, html)
        if self._opted_out(item, flags):
            return
        digest = hashlib.sha1(resp.body).hexdigest()
        if f.previous is not None and f.previous.sha1 == digest:
            self._unchanged(item, f.previous, "unchanged")
            return
        self._on_html(item, f, html, flags, digest)

    def _read_sitemap(self, item: _Item, body: bytes) -> bool:
        """Queue a sitemap's entries; False when the body is not a sitemap after all."""
        locs = sitemap_locs(body)
        if locs is None:
            return False
        # A sitemap is read, not stored: its entries are queued like links (one level deeper).
        self._drop(item.url, "sitemap_read")
        self._count("sitemap_urls", len(locs))
        for loc in locs:
            self._admit(loc, item.depth + 1)
        return True

    def _opted_out(self, item: _Item, flags: PageSignals) -> bool:
        """Drop a page that opts out itself (robots directives, TDMRep; ``crawl.consent``)."""
        reason = self.consent.page_refusal(flags)
        if reason is not None:
            self._drop(item.url, reason)
        return reason is not None

    def _on_html(self, item: _Item, f: _Fetched, html: str, flags: PageSignals, digest: str) -> None:
        """Render the page if the backend asks to, then store it and queue its links.

        With ``render_later`` set (the pool), the render is handed back to the fetch threads as a request of
        its own, and ``_rendered`` then ``_keep`` finish the page when it comes back.
        """
        if not self._needs_render(html):
            self._keep(item, f, html, flags, digest)
            return
        if self.render_later is not None:
            self.render_later(item, f, flags, digest)
            return
        # The render is a second request to the same host, right after the first: it waits the delay from the
        # static response's end (a host slow to start handling that one never sees them closer).
        self.host_next[f.host] = max(self.host_next.get(f.host, 0.0), time.monotonic() + f.delay)
        if not self._wait_for(f.host):
            self.queue.appendleft(item)
            return
        self.host_next[f.host] = time.monotonic() + f.delay
        r = self.backend.render(self._request(f.url))
        # We cannot see when Chromium's request reached the host (it may leave well after driver.get),
        # so the next slot counts from the end of the render: the host never sees a shorter gap.
        self.host_next[f.host] = max(self.host_next[f.host], time.monotonic() + f.delay)
        got = self._rendered(item, f, r, flags)
        if got is not None:
            self._keep(item, f, got[0], got[1], digest, rendered=True)

    def _keep(
        self, item: _Item, f: _Fetched, html: str, flags: PageSignals, digest: str, *, rendered: bool = False
    ) -> None:
        """Store the page and queue its links."""
        links: list[str] = []
        if item.depth < self.spider.max_depth + 1:
            links = self.spider.parse(SavedPage(url=f.url, html=html, parser=self.parser))
        self._store(item, f.url, f.resp, html, flags, rendered=rendered)
        etag, last_modified = f.resp.headers.get("etag"), f.resp.headers.get("last-modified")
        self.pending_pages.append((item.url, etag, last_modified, digest, links))
        for link in links:
            self._admit(link, item.depth + 1)

    def _rendered(self, item: _Item, f: _Fetched, r: FetchResponse, flags: PageSignals) -> tuple[str, Any] | None:
        """The rendered page's HTML and its opt-outs with the rendered page's added; None when it ends here."""
        self._count("renders")
        if r.error:
            if r.error in RETRYABLE_ERRORS:
                self._retry_or_drop(item, f.host, f.delay, r, prefix="render_")
            else:
                self._drop(item.url, "render_" + r.error)
            return None
        final = canonicalize(r.final_url) if scheme_ok(r.final_url) else r.final_url
        if final != f.url and (not scheme_ok(final) or not domain_allowed(final, self.spider.allowed_domains)):
            self._drop(item.url, "offsite_redirect")  # the page's scripts navigated away
            return None
        html = r.rendered_html or ""
        flags = flags.merge(self.consent.page({}, html))
        if self._opted_out(item, flags):
            return None
        return html, flags

    def _unchanged(self, item: _Item, previous: PageRecord, reason: str) -> None:
        """A re-crawl found the page as it was: nothing stored, but its links are followed as before."""
        self._drop(item.url, reason)
        self.pending_pages.append((item.url, previous.etag, previous.last_modified, previous.sha1, previous.links))
        for link in previous.links:
            self._admit(link, item.depth + 1)

    def _store(
        self, item: _Item, final_url: str, resp: FetchResponse, html: str, flags: PageSignals, *, rendered: bool = False
    ) -> None:
        if self.writer is None:
            self.writer = ShardWriter(self.ctx.out_dir, f"{self._seg_prefix()}{self.segment_no:05d}", max_bytes=1 << 40)
        host = host_key(final_url)
        consent = self.consent.record(final_url, self.robots.rules(host), self.robots.tdm_cached(host) or NO_TDM, flags)
        doc = page_document(
            item.url, final_url, resp, html, depth=item.depth, rendered=rendered, backend=self.s.backend
        )
        doc.robots, doc.consent, doc.source = ";".join(["allowed", *sorted(flags.mine)]), consent, self.spider.name
        if self.spider.selectors:
            doc.metadata["selectors"] = self.spider.selectors
        self.writer.write(doc)
        self.pending_done.append((item.url, None))
        self._count("stored")
        self.in_segment += 1
        self.ctx.fault_at(self._stored_total())
        if self.in_segment >= self.s.segment_pages:
            self._commit()

    # ------------------------------------------------------------------ the loop
    def _next_item(self) -> _Item:
        return next_item(self.queue, self.host_next)

    def limits(self) -> tuple[int, int]:
        """(fetches in flight over all hosts, per host): the recipe's, or the spider's where it is stricter."""
        conc, per_host = self.s.concurrency, self.s.per_host_concurrency
        if self.spider.concurrency is not None:
            conc = min(conc, self.spider.concurrency)
        if self.spider.per_host_concurrency is not None:
            per_host = min(per_host, self.spider.per_host_concurrency)
        return conc, per_host

    def _concurrent(self) -> bool:
        """Whether this crawl runs through the pool of fetch threads (``concurrency`` > 1 and a backend that
        may fetch from several threads at once)."""
        if self.limits()[0] <= 1:
            return False
        if not getattr(self.backend, "thread_safe", False):
            log.info("the %s backend fetches from one thread only: crawling one request at a time", self.s.backend)
            return False
        return True

    def run(self, pool: Callable[[Crawler], bool] | None = None) -> CrawlOutcome:
        """Crawl until the queue is empty, a bound is reached or a stop is requested.

        ``pool`` (``crawl.pool.run_pool``) runs the crawl over concurrent fetch threads when the settings ask for
        it and the backend allows it; it returns whether the crawl stopped early. Otherwise the sequential loop.
        """
        self._recover()
        # A shared frontier takes the seeds from every process: its set of seen URLs keeps them queued once.
        if self.shared is not None or self.frontier.is_empty():
            for seed in [*self.seeds, *self.spider.sitemaps]:
                self._admit(seed, 0)
            self._commit()
        bounds = [b for b in (self.ctx.max_pages, self.s.max_pages) if b is not None]
        self.progress = CrawlProgress(interval_s=progress_interval_s(), max_pages=min(bounds) if bounds else None)
        t0 = time.time()
        try:
            if self.shared is not None:  # always through the pool: its scheduler is the frontier
                from corpusforge.crawl.shared import task_outcome

                assert pool is not None
                partial = pool(self)
                self._commit()
                self.shared.release_held()
                return task_outcome(self, partial, time.time() - t0)
            partial = pool(self) if pool is not None and self._concurrent() else self._loop()
            self._commit()
        finally:
            if self.writer is not None:
                self.writer.abort()
            self.frontier.close()
            if self.shared is not None:
                self.shared.close_client()
            self.backend.close()
        return read_outcome(self.ctx.out_dir / "state", partial, time.time() - t0)

    def _loop(self) -> bool:
        """The sequential crawl: one fetch at a time; True when it stopped early (a bound or a signal)."""
        while self.queue:
            if self.ctx.stop_requested():
                return True
            if self.ctx.max_pages is not None and self._stored_total() >= self.ctx.max_pages:
                return True
            if self.s.max_pages is not None and self._stored_total() >= self.s.max_pages:
                self._count("stopped_at_max_pages")
                return False
            self._process(self._next_item())
            self.progress.tick(lambda: Sample(stored=self._stored_total(), queued=len(self.queue)))
        return False

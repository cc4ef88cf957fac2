"""``scrapy``: fetches go through Scrapy's own engine (scheduler, downloader, downloader middlewares).

Our crawler stays the one place that decides what to fetch and when (robots, delays, retries, redirects,
offsite and trap rules), exactly as for every other backend. Scrapy's own versions of those rules are
switched off so they cannot disagree with ours: no robots middleware, no redirect or retry middleware, no
cookies, no auto-throttle, no delay. Scrapy enforces the byte cap (``download_maxsize``, which its
decompression middleware also applies to the decompressed body) and the total deadline
(``download_timeout``) per request.

Twisted's reactor cannot be restarted in a process, so one reactor runs in a daemon thread for the life of
the process (started on first use) and each backend runs its own Scrapy ``Crawler`` on it. A fetch hands a
``scrapy.Request`` to the engine from our thread and waits for its callback or errback.
"""

from __future__ import annotations

import concurrent.futures
import logging
import sys
import threading
import time
from typing import Any, ClassVar

from corpusforge.crawl.page import FetchRequest, FetchResponse
from corpusforge.errors import require

log = logging.getLogger(__name__)

_REACTOR_LOCK = threading.Lock()
_REACTOR: list[Any] = []  # the process-wide reactor, once started (Twisted allows one per process)


def _reactor() -> Any:
    with _REACTOR_LOCK:
        if _REACTOR:
            return _REACTOR[0]
        require("scrapy", "scrapy")
        if "twisted.internet.reactor" not in sys.modules:
            import asyncio

            from twisted.internet import asyncioreactor

            asyncioreactor.install(eventloop=asyncio.new_event_loop())
        from twisted.internet import reactor

        thread = threading.Thread(
            target=reactor.run,  # type: ignore[misc]
            kwargs={"installSignalHandlers": False},
            name="corpusforge-reactor",
            daemon=True,
        )
        thread.start()
        _REACTOR.append(reactor)
        return reactor


def _error_name(failure: Any) -> str:
    """Our name for a Scrapy/Twisted download failure."""
    import scrapy.exceptions
    from twisted.internet import defer, error
    from twisted.web._newclient import ResponseFailed

    exc = failure.value
    text = f"{type(exc).__name__} {exc}".lower()
    if "max size" in text or "maxsize" in text:
        return "too_large"  # cancelled by the download handler, or refused by the decompression middleware
    timeouts = (
        error.TimeoutError,
        defer.TimeoutError,
        getattr(scrapy.exceptions, "DownloadTimeoutError", error.TimeoutError),
    )
    if isinstance(exc, timeouts) or "took longer than" in text:
        return "timeout"
    cancelled = (defer.CancelledError, getattr(scrapy.exceptions, "DownloadCancelledError", defer.CancelledError))
    if isinstance(exc, cancelled):
        # The HTTP/1.1 handler cancels a body that grows past download_maxsize while it arrives (an endless
        # chunked body); a cancel by download_timeout reaches us as a timeout error instead (checked above).
        return "too_large"
    if isinstance(exc, ResponseFailed) or "dataloss" in text or "data loss" in text:
        return "data_loss"
    if isinstance(exc, error.ConnectError | error.DNSLookupError | error.ConnectionLost):
        return "connection_error"
    log.debug("unclassified Scrapy failure: %r", exc)
    return "data_loss" if "connection" in text else "fetch_error"


def _settings(user_agent: str | None, timeout_s: float, reactor: Any, concurrency: int = 16) -> dict[str, Any]:
    """Scrapy settings that leave every crawl rule to our crawler and keep only the I/O limits.

    Scrapy's own bounds are set so they never bind before ours: the crawler's scheduler keeps the per-host
    slots and delays, Scrapy's downloader runs whatever it is handed at once (its slots key by host name, not
    port, and would serialize hosts that differ only by port)."""
    return {
        "LOG_ENABLED": False,
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "ROBOTSTXT_OBEY": False,  # our crawler reads robots.txt (RFC 9309) for every backend
        "COOKIES_ENABLED": False,  # nothing carried between hosts, schemes or ports
        "REDIRECT_ENABLED": False,  # the crawler re-checks every hop
        "RETRY_ENABLED": False,  # the crawler's retry budget and backoff
        "AUTOTHROTTLE_ENABLED": False,
        "HTTPPROXY_ENABLED": False,
        "DOWNLOAD_DELAY": 0,  # the crawler's per-host delay
        "CONCURRENT_REQUESTS": max(16, concurrency),
        "CONCURRENT_REQUESTS_PER_DOMAIN": max(16, concurrency),
        "CONCURRENT_REQUESTS_PER_IP": 0,
        "DOWNLOAD_TIMEOUT": timeout_s,
        "DOWNLOAD_WARNSIZE": 0,
        "DOWNLOAD_FAIL_ON_DATALOSS": True,
        "USER_AGENT": user_agent or "corpusforge",
        "TWISTED_REACTOR": f"{type(reactor).__module__}.{type(reactor).__name__}",
        "EXTENSIONS": {"scrapy.extensions.logstats.LogStats": None, "scrapy.extensions.memusage.MemoryUsage": None},
    }


def _headers_received(headers: Any = None, body_length: Any = None, request: Any = None, **_: Any) -> None:
    """Scrapy's ``headers_received`` signal: note when the response's headers arrived (monotonic s).

    That is the send time the fetch reports: by then the host surely had the request. Scrapy's own stamps do
    not bound it: the request may wait in the downloader's slot queue for a turn of the reactor after the
    downloader middlewares ran, and the reactor thread, waiting for the GIL behind the fetch threads, was
    measured to take tens of ms for one. So the host's next request waits its delay from the headers' arrival:
    never a shorter gap than the delay as the host sees it, at the cost of one response latency per request.
    """
    if request is not None:
        request.meta["corpusforge_headers_at"] = time.monotonic()


def _request_meta(request: FetchRequest) -> dict[str, Any]:
    """Per-request Scrapy meta: our byte cap and deadline; every status and redirect handed back to us."""
    return {
        "download_maxsize": request.max_bytes,
        "download_timeout": request.timeout_s,
        "dont_redirect": True,
        "dont_retry": True,
        "handle_httpstatus_all": True,
        "dont_merge_cookies": True,
    }


class ScrapyBackend:
    name: ClassVar[str] = "scrapy"
    parser: ClassVar[str] = "lxml"  # links are parsed by the crawler (Scrapy's selectors are lxml too)
    renders: ClassVar[str] = "never"
    # fetch() may be called from several threads: each hands its request to the one engine, whose downloader
    # runs them concurrently on the reactor thread.
    thread_safe: ClassVar[bool] = True

    @staticmethod
    def check_available() -> None:
        require("scrapy", "scrapy")

    def __init__(self, *, user_agent: str | None = None, timeout_s: float = 30.0, concurrency: int = 16) -> None:
        self.check_available()
        import scrapy
        from scrapy import signals
        from scrapy.crawler import CrawlerRunner
        from scrapy.exceptions import DontCloseSpider
        from twisted.internet.threads import blockingCallFromThread

        self.user_agent = user_agent
        self.timeout_s = timeout_s
        reactor = _reactor()
        self._reactor = reactor
        opened = threading.Event()

        class Bridge(scrapy.Spider):
            """Yields nothing by itself and never closes while idle: requests come from ``fetch``."""

            name = "corpusforge"

            async def start(self):  # type: ignore[no-untyped-def]
                return
                yield  # pragma: no cover - makes this an async generator

            def start_requests(self):  # type: ignore[no-untyped-def]  # Scrapy < 2.13
                return []

            @classmethod
            def from_crawler(cls, crawler, *args, **kwargs):  # type: ignore[no-untyped-def]
                spider = super().from_crawler(crawler, *args, **kwargs)
                crawler.signals.connect(spider._idle, signal=signals.spider_idle, weak=False)
                crawler.signals.connect(_headers_received, signal=signals.headers_received, weak=False)
                crawler.signals.connect(lambda spider: opened.set(), signal=signals.spider_opened, weak=False)
                return spider

            def _idle(self) -> None:
                raise DontCloseSpider

        runner = CrawlerRunner(_settings(user_agent, timeout_s, reactor, concurrency))
        self._crawler: Any = runner.create_crawler(Bridge)
        self._done = blockingCallFromThread(reactor, lambda: runner.crawl(self._crawler) and None)
        if not opened.wait(30):
            raise RuntimeError("Scrapy's engine did not open the spider within 30 s")
        self._blocking = blockingCallFromThread

    def fetch(self, request: FetchRequest) -> FetchResponse:
        import scrapy

        t0 = time.monotonic()
        result: concurrent.futures.Future[FetchResponse] = concurrent.futures.Future()

        def ok(response: Any) -> None:
            headers = {
                k.decode("latin-1").lower(): b", ".join(v).decode("latin-1") for k, v in response.headers.items()
            }
            if not result.done():
                result.set_result(
                    FetchResponse(
                        request.url,
                        request.url,
                        response.status,
                        headers,
                        response.body,
                        elapsed_s=time.monotonic() - t0,
                        sent_at=response.meta.get("corpusforge_headers_at"),
                    )
                )

        def failed(failure: Any) -> None:
            if not result.done():
                result.set_result(
                    FetchResponse(
                        request.url,
                        request.url,
                        0,
                        {},
                        b"",
                        error=_error_name(failure),
                        elapsed_s=time.monotonic() - t0,
                    )
                )

        req = scrapy.Request(
            request.url,
            headers=request.headers,
            callback=ok,
            errback=failed,
            dont_filter=True,  # the frontier already dedups
            meta=_request_meta(request),
        )
        self._reactor.callFromThread(self._crawler.engine.crawl, req)
        try:
            return result.result(timeout=request.timeout_s + 10)
        except concurrent.futures.TimeoutError:
            return FetchResponse(request.url, request.url, 0, {}, b"", error="timeout", elapsed_s=time.monotonic() - t0)

    def render(self, request: FetchRequest) -> FetchResponse:
        raise NotImplementedError("the scrapy backend does not render pages")

    def close(self) -> None:
        crawler, self._crawler = self._crawler, None
        if crawler is None:
            return
        try:
            stop = getattr(crawler, "stop_async", None)
            if stop is not None:  # Scrapy >= 2.13: a coroutine
                # Run as an asyncio task (deferred_from_coro does so under the asyncio reactor): driven by
                # Twisted's Deferred.fromCoroutine instead, its awaits on asyncio futures fail ("await wasn't
                # used with future") and Scrapy logs an error while closing the spider.
                from scrapy.utils.defer import deferred_from_coro

                self._blocking(self._reactor, lambda: deferred_from_coro(stop()))
            else:
                self._blocking(self._reactor, crawler.stop)
        except Exception as exc:  # already stopped
            log.debug("stopping the Scrapy crawler: %s", exc)

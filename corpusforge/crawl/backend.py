"""The ``Backend`` protocol: fetch one URL, nothing else.

A backend does I/O only: no robots, no politeness, no redirects (it returns the 3xx response and the
crawler decides whether to follow), no offsite rules — those live in the crawler, so every backend gets
them. Backends enforce the two limits that only the I/O loop can: the decompressed byte cap and the total
per-fetch deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from corpusforge.crawl.page import FetchRequest, FetchResponse

log = logging.getLogger(__name__)


class Backend(Protocol):
    """What the crawler needs from a backend.

    ``parser`` names how the crawler parses links on the pages it fetched ("lxml" or "bs4"). ``renders``
    says when the crawler asks for a browser rendering of a page whose static fetch returned HTML:
    "never", "always" (selenium) or "auto" (only when the static HTML yields less text than the stage's
    ``min_text_chars``). A render is a second request to the host, so the crawler waits for the host's next
    slot (robots and offsite were checked on the static fetch) before calling ``render``.
    """

    name: str
    parser: str
    renders: str

    def fetch(self, request: FetchRequest) -> FetchResponse: ...

    def render(self, request: FetchRequest) -> FetchResponse: ...

    def close(self) -> None: ...


def read_capped(r, max_bytes: int, deadline: float) -> tuple[bytes, str | None]:  # type: ignore[no-untyped-def]
    """Read a streamed ``requests`` response's decompressed body up to ``max_bytes`` and a monotonic deadline.

    Returns the bytes read and a named error (``too_large``, ``timeout``, ``data_loss``) or None. Closes ``r``.
    """
    import requests

    chunks: list[bytes] = []
    size = 0
    error = None
    try:
        # decode_content=True: the cap applies to the decompressed bytes (gzip/deflate/brotli bombs).
        # read1: returns as soon as some bytes arrive, so a trickling server cannot hold one read open
        # past the total deadline (stream() would wait for a full 64 KiB chunk).
        while True:
            chunk = r.raw.read1(64 * 1024, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                error = "too_large"
                break
            chunks.append(chunk)
            if time.monotonic() > deadline:
                error = "timeout"
                break
    except requests.exceptions.RequestException:
        error = "data_loss"
    except Exception as exc:  # urllib3 ProtocolError, DecodeError, IncompleteRead, socket timeouts
        error = "timeout" if "timed out" in str(exc).lower() else "data_loss"
    finally:
        r.close()
    return b"".join(chunks), error


def _stamped_session() -> Any:
    """A ``requests.Session`` whose connections note when each request's bytes were handed to the kernel
    (``conn.sent_at``, monotonic s, stamped right after the send returns): on a loaded machine a fetch thread
    may send well after it was allowed to, and the host's next request must wait its delay from the real send.
    """
    import requests
    import urllib3
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class Stamped(HTTPConnection):
        sent_at: float | None = None

        def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            self.sent_at = None
            super().request(*args, **kwargs)
            self.sent_at = time.monotonic()

    class StampedTLS(HTTPSConnection):
        sent_at: float | None = None

        def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            self.sent_at = None
            super().request(*args, **kwargs)
            self.sent_at = time.monotonic()

    class Pool(urllib3.HTTPConnectionPool):
        ConnectionCls = Stamped

    class PoolTLS(urllib3.HTTPSConnectionPool):
        ConnectionCls = StampedTLS

    s = requests.Session()
    s.trust_env = False  # no proxies or .netrc credentials from the environment
    adapter = HTTPAdapter()
    adapter.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": PoolTLS}
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


class RequestsFetcher:
    """Shared requests-based fetch loop (used by the requests+lxml and requests+bs4 backends).

    ``requests.Session`` objects per ``scheme://host:port``, so cookies and pooled connections never cross
    hosts, schemes or ports; the crawler sends no credentials of its own. A fetch leases one of its host's
    sessions for its duration (a new one only when every one is in use), so a pool of fetch threads never
    shares a session at once (``requests.Session`` is not thread-safe) and still reuses the host's
    connections: one session per host at one request at a time, ``per_host_concurrency`` at most.
    """

    name: str = "requests"
    parser: str = "lxml"
    renders: str = "never"
    thread_safe: bool = True  # fetch() may be called from several threads at once

    def __init__(self, *, user_agent: str | None = None, timeout_s: float = 30.0) -> None:
        # The crawler puts the User-Agent on every request; these are for backends that need them up front.
        self.user_agent = user_agent
        self.timeout_s = timeout_s
        self._sessions: list[Any] = []  # every session made, to close
        self._free: dict[str, list[Any]] = {}  # by host: the sessions no fetch is using
        self._sessions_lock = threading.Lock()

    def render(self, request: FetchRequest) -> FetchResponse:
        raise NotImplementedError(f"the {self.name} backend does not render pages")

    @contextmanager
    def _lease(self, url: str) -> Iterator[Any]:
        """One of ``url``'s host's sessions, for this fetch alone; back in the host's pool afterwards."""

        from corpusforge.crawl.urls import host_key

        key = host_key(url)
        with self._sessions_lock:
            free = self._free.setdefault(key, [])
            if free:
                s = free.pop()
            else:
                s = _stamped_session()
                self._sessions.append(s)
        try:
            yield s
        finally:
            with self._sessions_lock:
                if any(s is x for x in self._sessions):  # not closed meanwhile
                    self._free.setdefault(key, []).append(s)

    def fetch(self, request: FetchRequest) -> FetchResponse:
        with self._lease(request.url) as session:
            return self._get(session, request)

    def _get(self, session: Any, request: FetchRequest) -> FetchResponse:
        import requests

        t0 = time.monotonic()
        deadline = t0 + request.timeout_s
        sent_at = time.monotonic()
        try:
            r = session.get(
                request.url,
                headers=request.headers,
                allow_redirects=False,
                stream=True,
                timeout=(min(10.0, request.timeout_s), min(10.0, request.timeout_s)),
            )
        except requests.exceptions.Timeout:
            return FetchResponse(request.url, request.url, 0, {}, b"", error="timeout", elapsed_s=time.monotonic() - t0)
        except requests.exceptions.RequestException as exc:
            log.debug("fetch %s failed: %s", request.url, exc)
            return FetchResponse(
                request.url, request.url, 0, {}, b"", error="connection_error", elapsed_s=time.monotonic() - t0
            )
        headers = {k.lower(): v for k, v in r.headers.items()}
        conn = getattr(r.raw, "connection", None)  # held by the streamed response until its body is read
        sent_at = max(sent_at, getattr(conn, "sent_at", None) or sent_at)
        body, error = read_capped(r, request.max_bytes, deadline)
        return FetchResponse(
            request.url,
            request.url,
            r.status_code,
            headers,
            body,
            error=error,
            elapsed_s=time.monotonic() - t0,
            sent_at=sent_at,
        )

    def close(self) -> None:
        with self._sessions_lock:
            sessions = list(self._sessions)
            self._sessions.clear()
            self._free.clear()
        for s in sessions:
            s.close()

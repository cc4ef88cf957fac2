"""``langchain``: fetch through langchain-community's ``WebBaseLoader`` (extra: ``pip install corpusforge[langchain]``).

The loader does the request and parses the page into a LangChain ``Document`` (kept as the response's
``loader_text`` for callers that want it); the crawler still parses links and stores the raw HTML, like for
every backend. The loader is given our per-host ``requests`` session and request options, so the limits
hold here too: no redirects followed (the crawler re-checks each hop), a streamed body read up to the
decompressed byte cap and the total deadline by a response hook before the loader sees it, no proxies or
credentials from the environment, no cookies across hosts, schemes or ports.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

from corpusforge.crawl.backend import RequestsFetcher, read_capped
from corpusforge.crawl.page import FetchRequest, FetchResponse
from corpusforge.errors import require

log = logging.getLogger(__name__)


class LangchainBackend(RequestsFetcher):
    name: ClassVar[str] = "langchain"  # type: ignore[misc]
    parser: ClassVar[str] = "bs4"  # type: ignore[misc]  # the loader parses with BeautifulSoup too

    @staticmethod
    def check_available() -> None:
        require("langchain_community.document_loaders", "langchain")

    def __init__(self, *, user_agent: str | None = None, timeout_s: float = 30.0) -> None:
        self.check_available()
        super().__init__(user_agent=user_agent, timeout_s=timeout_s)
        self.loader_docs = 0  # pages the loader turned into a LangChain Document

    def fetch(self, request: FetchRequest) -> FetchResponse:
        import requests

        t0 = time.monotonic()
        deadline = t0 + request.timeout_s
        seen: dict[str, Any] = {}

        def capture(r: Any, *args: Any, **kwargs: Any) -> Any:
            # Runs inside Session.send before the body is read: read it ourselves, capped, and hand the
            # loader a response whose content is already there.
            conn = getattr(r.raw, "connection", None)
            seen["sent_at"] = getattr(conn, "sent_at", None)  # when the request's bytes left (see backend.py)
            body, error = read_capped(r, request.max_bytes, deadline)
            seen.update(
                status=r.status_code, headers={k.lower(): v for k, v in r.headers.items()}, body=body, error=error
            )
            r._content = body
            r._content_consumed = True
            return r

        text = None
        try:
            with self._lease(request.url) as session:
                docs = self._loader(request, capture, session).load()
            if docs:
                text = docs[0].page_content
                self.loader_docs += 1
        except requests.exceptions.Timeout:
            seen.setdefault("error", "timeout")
        except requests.exceptions.RequestException as exc:
            log.debug("fetch %s failed: %s", request.url, exc)
            seen.setdefault("error", "connection_error")
        except Exception as exc:  # the loader's parser failed on a body we already hold
            log.debug("langchain loader failed on %s: %s", request.url, exc)
        resp = FetchResponse(
            request.url,
            request.url,
            seen.get("status", 0),
            seen.get("headers", {}),
            seen.get("body", b""),
            error=seen.get("error"),
            elapsed_s=time.monotonic() - t0,
            sent_at=seen.get("sent_at"),
        )
        resp.loader_text = text  # type: ignore[attr-defined]
        return resp

    def _loader(self, request: FetchRequest, on_response: Any, session: Any) -> Any:
        """A ``WebBaseLoader`` for one URL on its host's session, redirects off, ``on_response`` reading the body."""
        from langchain_community.document_loaders import WebBaseLoader

        t = min(10.0, request.timeout_s)  # connect and read timeouts, s; the total deadline is on_response's
        return WebBaseLoader(
            web_paths=[request.url],
            session=session,
            requests_kwargs={
                "headers": request.headers,
                "allow_redirects": False,
                "stream": True,
                "timeout": (t, t),
                "hooks": {"response": [on_response]},
            },
            raise_for_status=False,
            autoset_encoding=False,
            encoding="utf-8",  # the crawler decodes the raw bytes itself (header, meta, detection)
            show_progress=False,
        )

"""HTML → main text and title, keeping paragraph breaks.

Extractors: ``trafilatura`` (default; precision-oriented main-content extraction), ``lxml`` (fast: drops
script/style/nav/header/footer/aside/form and joins block elements with blank lines) and ``selectors``
(the spider's CSS/XPath selectors; a crawled document carries them in ``metadata["selectors"]``).
Failures are counted with a reason (``extract_empty``, ``extract_too_large``, ``extract_error``,
``extract_timeout``, ``extract_no_html``); a page never stops the task, but an extractor that cannot be
imported does at once, and so does one that fails on most pages (``Step._error``'s bound). A document without HTML but with text
(JSONL input) passes through unchanged.

Per-page limits: ``max_html_bytes`` is checked before parsing (UTF-8 bytes), and ``timeout_s`` interrupts
the extraction itself: a one-shot ``SIGALRM`` timer (``setitimer``) raises ``PageTimeout`` in the extracting
thread, so a pathological page costs at most ``timeout_s``. Signals only reach the main thread; elsewhere
(an extraction run in a helper thread) the limit is checked after the page instead. A timer armed by
someone else (pytest-timeout, say) is saved and re-armed with its remaining time afterwards.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, ClassVar, Literal, TypeVar

from corpusforge.document import Document
from corpusforge.errors import TaskError
from corpusforge.params import Min
from corpusforge.step import Mapper

log = logging.getLogger(__name__)

_DROP_TAGS = ("script", "style", "noscript", "nav", "header", "footer", "aside", "form", "template", "svg", "iframe")
_BLOCK = re.compile(r"^(p|div|h[1-6]|li|pre|blockquote|tr|dd|dt|section|article|table|ul|ol|br)$")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)


def _title(html: str) -> str | None:
    import html as htmllib

    m = _TITLE.search(html[:50_000])
    return htmllib.unescape(m.group(1)).strip() if m else None


def _lxml_root(html: str):  # type: ignore[no-untyped-def]
    import lxml.html

    # Byte input lets lxml honour a meta charset; a str with an XML declaration is refused by lxml.
    html = re.sub(r"^\s*<\?xml[^>]*>", "", html)
    return lxml.html.fromstring(html.replace("\x00", ""))


def _block_text(el) -> str:  # type: ignore[no-untyped-def]
    """Text of an element with blank lines between block elements."""
    parts: list[str] = []

    def walk(node) -> None:  # type: ignore[no-untyped-def]
        tag = node.tag if isinstance(node.tag, str) else ""
        if tag in _DROP_TAGS:
            if node.tail:
                parts.append(node.tail)
            return
        block = bool(_BLOCK.match(tag))
        if block:
            parts.append("\n\n" if tag != "br" else "\n")
        if node.text:
            parts.append(node.text)
        for child in node:
            walk(child)
        if block:
            parts.append("\n\n")
        if node.tail:
            parts.append(node.tail)

    walk(el)
    text = "".join(parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def extract_lxml(html: str) -> str:
    root = _lxml_root(html)
    main = root.xpath("//main|//article")
    return _block_text(main[0] if main else root.find("body") if root.find("body") is not None else root)


def extract_selectors(html: str, selectors: list[str]) -> str:
    from lxml.cssselect import CSSSelector

    root = _lxml_root(html)
    out = []
    for sel in selectors:
        nodes = root.xpath(sel) if sel.startswith(("/", "(")) else CSSSelector(sel)(root)
        out += [_block_text(n) for n in nodes if hasattr(n, "tag")]
    return "\n\n".join(t for t in out if t)


def extract_trafilatura(html: str) -> str:
    import trafilatura

    text = trafilatura.extract(
        html, include_comments=False, include_tables=True, favor_precision=True, deduplicate=False, with_metadata=False
    )
    return text or ""


def _missing_module(exc: BaseException) -> str | None:
    """The module that could not be imported, looked for down the exception chain (libraries re-raise an
    ImportError of their own, e.g. jusText's for lxml_html_clean) and in the messages."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ModuleNotFoundError) and seen.name:
            return seen.name.split(".")[0]
        m = re.search(r"No module named '([\w.]+)'|\b(lxml_html_clean)\b", str(seen))
        if m:
            return (m.group(1) or m.group(2)).split(".")[0]
        seen = seen.__cause__ or seen.__context__
    return None


T = TypeVar("T")


class PageTimeout(BaseException):
    """Raised by the per-page timer. A ``BaseException``, so that a library's ``except Exception`` inside
    the extractor cannot swallow it and go on parsing."""


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt the body with ``PageTimeout`` after ``seconds`` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    active = True

    def on_alarm(signum: int, frame: object) -> None:
        if active:  # a signal that arrives after the body finished is ignored
            raise PageTimeout

    t0 = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    if 0 < old_delay < seconds:  # an outer timer is due first: let it fire in time (as a page timeout here)
        signal.setitimer(signal.ITIMER_REAL, old_delay)
    try:
        yield
    finally:
        active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # re-arm the outer timer with what is left of it (at once if it is already due)
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - t0), 1e-6), old_interval)


def run_with_deadline(fn: Callable[[], T], seconds: float) -> T:
    """``fn()``, interrupted with ``PageTimeout`` after ``seconds`` (see ``_deadline``)."""
    with _deadline(seconds):
        return fn()


class Extract(Mapper):
    """Main text from ``doc.html`` into ``doc.text``; ``metadata["title"]`` from ``<title>``.

    ``max_html_bytes`` (default 5 MiB, UTF-8 bytes) skips pathological pages before parsing; ``timeout_s``
    (default 10 s) interrupts a page's extraction (see the module docstring) and drops it with
    ``extract_timeout``; ``min_chars`` = 1 drops pages where nothing was found (``extract_empty``).
    """

    name: ClassVar[str] = "extract"

    def __init__(
        self,
        *,
        extractor: Literal["trafilatura", "lxml", "selectors"] = "trafilatura",
        selectors: list[str] | None = None,
        max_html_bytes: Annotated[int, Min(1024)] = 5 << 20,
        timeout_s: Annotated[float, Min(0.01)] = 10.0,
        min_chars: Annotated[int, Min(0)] = 1,
        keep_html: bool = False,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.selectors = selectors
        self.max_html_bytes = max_html_bytes
        self.timeout_s = timeout_s
        self.min_chars = min_chars
        self.keep_html = keep_html

    def map(self, doc: Document) -> Document | None:
        if doc.html is None:
            if doc.text:
                return doc
            self._reject(doc, "extract_no_html")
            return None
        html = doc.html
        # Characters ≤ UTF-8 bytes ≤ 4 × characters: encode only when the character count cannot decide.
        if len(html) > self.max_html_bytes or (
            4 * len(html) > self.max_html_bytes and len(html.encode("utf-8", "surrogatepass")) > self.max_html_bytes
        ):
            self._reject(doc, "extract_too_large")
            return None
        selectors = self.selectors or doc.metadata.get("selectors")
        t0 = time.perf_counter()
        try:
            text = run_with_deadline(lambda: self._extract(html, selectors), self.timeout_s)
        except PageTimeout:
            log.warning("extraction of %s took over %s s: dropped", doc.url or doc.id, self.timeout_s)
            self._reject(doc, "extract_timeout")
            return None
        except ImportError as exc:  # not a bad page: the extractor cannot work at all
            missing = _missing_module(exc) or self.extractor
            raise TaskError(
                f"the {self.extractor!r} extractor cannot be imported ({exc}); install what it needs: "
                f"pip install '{missing}' (or choose extractor = \"lxml\")"
            ) from exc
        except Exception as exc:  # noqa: BLE001 - a bad page must not kill the task (the error bound does)
            log.debug("extract failed for %s: %s", doc.url or doc.id, exc)
            self._error(doc, "extract_error", exc)
            return None
        # Not interruptible off the main thread: there the limit is checked afterwards.
        if time.perf_counter() - t0 > self.timeout_s:
            self._reject(doc, "extract_timeout")
            return None
        if len(text.strip()) < self.min_chars:
            self._reject(doc, "extract_empty")
            return None
        doc.text = text
        title = _title(html)
        if title:
            doc.metadata["title"] = title
        if not self.keep_html:
            doc.html = None
        return doc

    def _extract(self, html: str, selectors: list[str] | None) -> str:
        if self.extractor == "selectors" or (selectors and self.extractor != "lxml"):
            text = extract_selectors(html, selectors or []) if selectors else ""
            if not text and self.extractor != "selectors":
                text = extract_trafilatura(html)
            return text
        if self.extractor == "lxml":
            return extract_lxml(html)
        return extract_trafilatura(html)

"""Lines repeated across a site (navigation, cookie banners, footers) removed.

A streaming step with a bounded look-ahead: it holds up to ``window_docs`` documents, counts for each host
in how many of its documents each line occurs, and removes from those documents every line that occurs in
at least ``min_docs`` documents and at least ``min_doc_fraction`` of the host's documents in the window.
Memory is bounded by the window; the output order is the input order. (Within one process-stage task the
input order is fixed, so the result does not depend on worker counts.)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from corpusforge.document import Document
from corpusforge.params import Max, Min
from corpusforge.step import Step


def _site(doc: Document) -> str:
    url = doc.url or doc.final_url or ""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        host = ""
    return host or doc.source or ""


class SiteBoilerplate(Step):
    """Reasons: ``site_boilerplate_empty`` (nothing left after removing the repeated lines).
    Counters: ``lines_removed``. Lines shorter than ``min_line_chars`` are left alone (they carry too
    little to be sure), blank lines are kept as paragraph breaks."""

    name: ClassVar[str] = "site_boilerplate"

    def __init__(
        self,
        *,
        window_docs: Annotated[int, Min(2)] = 1000,
        min_docs: Annotated[int, Min(2)] = 3,
        min_doc_fraction: Annotated[float, Min(0), Max(1)] = 0.3,
        min_line_chars: Annotated[int, Min(1)] = 1,
    ) -> None:
        super().__init__()
        self.window_docs = window_docs
        self.min_docs = min_docs
        self.min_doc_fraction = min_doc_fraction
        self.min_line_chars = min_line_chars

    def _flush(self, window: list[Document]) -> Iterator[Document]:
        per_site: dict[str, Counter[str]] = defaultdict(Counter)
        site_docs: Counter[str] = Counter()
        for d in window:
            site = _site(d)
            site_docs[site] += 1
            per_site[site].update({ln.strip() for ln in d.text.split("\n") if len(ln.strip()) >= self.min_line_chars})
        for d in window:
            site = _site(d)
            need = max(self.min_docs, self.min_doc_fraction * site_docs[site])
            counts = per_site[site]
            kept: list[str] = []
            removed = 0
            for ln in d.text.split("\n"):
                s = ln.strip()
                if s and len(s) >= self.min_line_chars and counts[s] >= need:
                    removed += 1
                    continue
                if s or (kept and kept[-1]):
                    kept.append(ln)
            if removed:
                self.stats.counters["lines_removed"] += removed
                d.text = "\n".join(kept).strip()
            if not d.text.strip():
                self._reject(d, "site_boilerplate_empty")
                continue
            self.stats.output += 1
            yield d

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        window: list[Document] = []
        for doc in docs:
            self.stats.input += 1
            window.append(doc)
            if len(window) >= self.window_docs:
                yield from self._flush(window)
                window = []
        if window:
            yield from self._flush(window)

"""``requests+lxml``: fetch with requests; the crawler parses links with lxml."""

from __future__ import annotations

from typing import ClassVar

from corpusforge.crawl.backend import RequestsFetcher


class RequestsLxmlBackend(RequestsFetcher):
    name: ClassVar[str] = "requests+lxml"  # type: ignore[misc]
    parser: ClassVar[str] = "lxml"  # type: ignore[misc]

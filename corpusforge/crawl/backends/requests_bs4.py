"""``requests+bs4``: fetch with requests; the crawler parses links with BeautifulSoup (``html.parser``)."""

from __future__ import annotations

from typing import ClassVar

from corpusforge.crawl.backend import RequestsFetcher
from corpusforge.errors import require


class RequestsBs4Backend(RequestsFetcher):
    name: ClassVar[str] = "requests+bs4"  # type: ignore[misc]
    parser: ClassVar[str] = "bs4"  # type: ignore[misc]

    def __init__(self, *, user_agent: str | None = None, timeout_s: float = 30.0) -> None:
        require("bs4", "bs4")  # fail at start, not at the first page
        super().__init__(user_agent=user_agent, timeout_s=timeout_s)

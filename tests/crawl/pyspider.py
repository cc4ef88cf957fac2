"""A Python spider for the tests: the same attributes as a TOML spider plus a pure ``parse(page)``."""

from __future__ import annotations

import re

from corpusforge.crawl.spider import SavedPage, Spider, extract_links

NUMBERED = re.compile(r"/p(\d+)\.html$")


class EvenPagesSpider(Spider):
    """Follows only ``/pN.html`` links with an even N; no I/O, so every backend runs it unchanged."""

    def __init__(self) -> None:
        # Seeds come from the crawl stage's ``seeds`` (the test server's port is not known here).
        super().__init__(name="even", seeds=["http://127.0.0.1/"], allowed_domains=["127.0.0.1"], max_depth=2)

    def parse(self, page: SavedPage) -> list[str]:
        links = extract_links(page.html, page.url, parser=page.parser)
        return [u for u in links if (m := NUMBERED.search(u)) and int(m.group(1)) % 2 == 0]

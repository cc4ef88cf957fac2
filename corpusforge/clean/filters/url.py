"""URL blocklist: drop documents from blocked domains (and their subdomains) or with blocked URL parts."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from corpusforge.document import Document
from corpusforge.errors import ConfigError
from corpusforge.step import Filter


def _host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return ""


class UrlBlocklistFilter(Filter):
    """Reasons: ``url_blocked_domain`` (the host or a parent domain is listed: ``example.com`` blocks
    ``a.example.com``), ``url_blocked_substring`` (the lower-cased URL contains a listed part).

    ``domains_file``: one domain per line, ``#`` comments, e.g. a UT1 blocklist's ``domains`` file (the list
    FineWeb used, Penedo et al. 2024). Documents without a URL are kept.
    """

    name: ClassVar[str] = "url_blocklist"

    def __init__(
        self,
        *,
        domains: list[str] | None = None,
        domains_file: str | None = None,
        url_substrings: list[str] | None = None,
    ) -> None:
        super().__init__()
        blocked = {d.strip().lower().rstrip(".") for d in domains or [] if d.strip()}
        if domains_file is not None:
            path = Path(domains_file)
            if not path.is_file():
                raise ConfigError(f"domains_file {path} does not exist", path="domains_file")
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.split("#", 1)[0].strip().lower().rstrip(".")
                if line:
                    blocked.add(line)
        self.blocked = frozenset(blocked)
        self.substrings = tuple(s.lower() for s in url_substrings or [])

    def reject(self, doc: Document) -> str | None:
        url = doc.url or doc.final_url
        if not url:
            return None
        host = _host(url)
        parts = host.split(".")
        # example.co.uk → check "example.co.uk", "co.uk", "uk" (a listed public suffix blocks all below it)
        if any(".".join(parts[i:]) in self.blocked for i in range(len(parts))):
            return "url_blocked_domain"
        low = url.lower()
        if any(s in low for s in self.substrings):
            return "url_blocked_substring"
        return None

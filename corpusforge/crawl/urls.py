"""URL rules shared by every backend: canonical form, allowed schemes, offsite and trap checks.

Canonical URLs make a page fetched once however it is linked: lower-case scheme and host, no default port,
no fragment, query parameters sorted, ``.``/``..`` segments resolved, an empty path made ``/``, escapes in the
path normalized as RFC 3986 §6.2.2 says (unreserved characters decoded, other escapes upper-case, characters
that need escaping escaped) so ``/café`` and ``/caf%c3%a9`` are one page but ``/a%2Fb`` and ``/a/b`` stay two.
"""

from __future__ import annotations

import posixpath
import re
from functools import lru_cache
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# What may stay unescaped in a path: unreserved, sub-delims, ":" "@" "/", and "%" of the escapes kept.
PATH_SAFE = "/:@!$&'()*+,;=-._~%"


def _normalize_escapes(path: str) -> str:
    """Decode escapes of unreserved characters only (an escaped "/" or "?" is data, not syntax); upper-case
    the hex of the others; escape what must be (non-ASCII as UTF-8, spaces), as clients do on the wire."""

    def one(m: re.Match[str]) -> str:
        c = chr(int(m.group(1), 16))
        return c if c in UNRESERVED else "%" + m.group(1).upper()

    return quote(ESCAPE.sub(one, path), safe=PATH_SAFE)


@lru_cache(maxsize=1 << 16)  # pure; the same links recur on every page of a site
def canonicalize(url: str) -> str:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port
    netloc = host if port is None or DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    path = _normalize_escapes(parts.path or "/")
    normalized = posixpath.normpath(path)
    if path.endswith("/") and not normalized.endswith("/"):
        normalized += "/"
    path = "/" if normalized in (".", "//") else normalized
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    return urlunsplit((scheme, netloc, path, query, ""))


@lru_cache(maxsize=1 << 16)
def host_key(url: str) -> str:
    """``scheme://host:port`` — the unit of politeness, robots.txt and credentials."""
    p = urlsplit(url)
    port = p.port or DEFAULT_PORTS.get(p.scheme, 0)
    return f"{p.scheme}://{(p.hostname or '').lower()}:{port}"


def scheme_ok(url: str) -> bool:
    return urlsplit(url).scheme.lower() in ALLOWED_SCHEMES


def resolve(base: str, href: str) -> str | None:
    """Absolute URL of a link, or None for links that are not pages (mailto:, javascript:, empty)."""
    href = href.strip()
    if not href or href.startswith("#"):
        return None
    try:
        return urljoin(base, href)
    except ValueError:
        return None


def domain_allowed(url: str, allowed: list[str]) -> bool:
    """Host equals an allowed domain or is a subdomain of one. An empty list allows every host."""
    if not allowed:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return any(host == d or host.endswith("." + d) for d in (a.lower() for a in allowed))


def trap_reason(url: str, *, max_url_length: int, max_repeated_segments: int) -> str | None:
    """Name why a URL looks like a crawler trap, or None."""
    if len(url) > max_url_length:
        return "trap_url_length"
    segments = [s for s in urlsplit(url).path.split("/") if s]
    counts: dict[str, int] = {}
    for s in segments:
        counts[s] = counts.get(s, 0) + 1
        if counts[s] > max_repeated_segments:
            return "trap_repeated_segment"
    return None

"""Records passed between the crawler and the backends."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FetchRequest:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    max_bytes: int = 5 << 20  # decompressed body cap
    timeout_s: float = 30.0  # total deadline for the whole fetch (connect + headers + body)
    max_redirects: int = 5


@dataclass
class FetchResponse:
    url: str  # requested
    final_url: str  # after redirects
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    error: str | None = None  # a named failure: too_large, timeout, redirect_loop, scheme_refused, ...
    elapsed_s: float = 0.0
    rendered_html: str | None = None  # browser backends return the DOM after scripts ran

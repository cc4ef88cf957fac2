"""What every Redis-backed part (the shared crawl frontier, the shared MinHash index) checks of its server."""

from __future__ import annotations

from typing import Any

from corpusforge.errors import ConfigError
from corpusforge.redact import redact_text

# Policies that may evict keys we never set an expiry on: a frontier would lose URLs, an index band hashes.
SAFE_POLICIES = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")


def refuse_evicting_server(client: Any, url: str, what: str, *, path: str) -> None:
    """A ConfigError when the server at ``url`` may evict our keys (``maxmemory-policy allkeys-*``).

    A managed server that disables CONFIG cannot be checked: it passes.
    """
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy", "noeviction")
    except Exception:  # noqa: BLE001 - CONFIG disabled or renamed: nothing to check
        return
    if policy not in SAFE_POLICIES:
        raise ConfigError(
            f"Redis at {redact_text(url)} may evict keys (maxmemory-policy {policy}): {what}; "
            "set maxmemory-policy noeviction on that server",
            path=path,
        )

"""Connecting to the Redis server of a shared crawl, and naming the crawl there (``crawl/redis_frontier.py``)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from corpusforge.errors import ConfigError, FatalError

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith(REDIS_SCHEMES)


def connect(url: str, *, path: str = "frontier", retry_s: float = 30.0, probe: bool = False) -> Any:
    """A client for ``url`` that retries a lost connection for about ``retry_s`` (a Redis restart); checked
    with a PING, so an unreachable server is a clear error before anything is written (``probe``: one try)."""
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ConfigError(
            "a Redis frontier needs the redis client: pip install 'corpusforge[redis]'", path=path
        ) from exc
    retries = max(1, int(retry_s / 2))
    if probe:
        retries = 0
    try:
        client = redis.Redis.from_url(
            url,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
            socket_connect_timeout=5,
            socket_timeout=30,
            health_check_interval=0,
        )
    except ValueError as exc:
        raise ConfigError(f"{safe_url(url)} is not a Redis URL ({exc})", path=path) from exc
    try:
        client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        # Not a bad recipe: a service that is down. Exit 1, before anything is written.
        raise FatalError(
            f"{path}: cannot reach Redis at {safe_url(url)} ({exc}); is redis-server running there?"
        ) from exc
    except redis.exceptions.ResponseError as exc:
        raise ConfigError(f"Redis at {safe_url(url)} refused the connection ({exc})", path=path) from exc
    return client


def safe_url(url: str) -> str:
    """``url`` with any password replaced, for messages and manifests."""
    from corpusforge.redact import redact_text

    return redact_text(url)


def frontier_key(config: dict[str, Any]) -> str:
    """The key prefix of a crawl in Redis: from its config, so every process of one crawl (and its rerun)
    shares it and another crawl never does."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def crawl_id(state_dir: Path) -> str:
    """The id of the crawl kept in ``state_dir/frontier-id``: made by the first task to get here (a link is
    atomic, also on NFS), read by every other task and every rerun."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "frontier-id"
    if not path.is_file():
        tmp = state_dir / f"frontier-id.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(uuid.uuid4().hex[:12] + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another task made it first
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()

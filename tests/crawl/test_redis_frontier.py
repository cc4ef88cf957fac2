"""A frontier in Redis shared by several crawler processes (issue 15, RELIABILITY 50).

A real ``redis-server`` on a unix socket (``tests/redis_server.py``), loopback hosts 127.0.0.1 – 127.0.0.4 with
an access log that records every request's [start, end] (robots.txt included), and crawler processes started
by the runner (``tasks = N``: each a process of its own). Politeness is checked from the server's log:
per host, at most one request in flight and ``min_delay_s`` between request starts, over all processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from corpusforge.errors import DONE
from corpusforge.storage import iter_documents, manifest_paths, validate_folder
from tests.conftest import cli_env
from tests.crawl.faultserver import FaultServer, html
from tests.crawl.test_concurrent import max_overlap
from tests.crawl.test_crawl import servers  # noqa: F401  (the servers fixture)
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (the redis_server fixture)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
TOLERANCE_S = 0.010  # the server's and the client's scheduling on a loaded 2-core machine


class Log:
    """Every request's (host, path, start, end), in the test process's monotonic clock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.hits: list[tuple[str, str, float, float]] = []

    def route(self, host: str, body: bytes, ctype: str, sleep_s: float):
        def handler(h):
            t = time.monotonic()
            time.sleep(sleep_s)
            h.reply(200, {"Content-Type": ctype}, body)
            with self.lock:
                self.hits.append((host, h.path, t, time.monotonic()))

        return handler

    def pages(self) -> Counter[tuple[str, str]]:
        with self.lock:
            return Counter((h, p) for h, p, _, _ in self.hits if p != "/robots.txt")

    def violations(self, delay_s: float) -> list[str]:
        """Requests to a host closer than ``delay_s`` to the previous start, or overlapping another one."""
        out = []
        by_host: dict[str, list[tuple[float, float]]] = {}
        with self.lock:
            for host, _, a, b in self.hits:
                by_host.setdefault(host, []).append((a, b))
        for host, spans in by_host.items():
            spans.sort()
            if max_overlap(spans) > 1:
                out.append(f"{host}: {max_overlap(spans)} requests in flight at once")
            for (a, _), (b, _) in zip(spans, spans[1:], strict=False):
                if b - a < delay_s - TOLERANCE_S:
                    out.append(f"{host}: starts {b - a:.3f} s apart")
        return out


def site(log: Log, host: str, n: int, sleep_s: float, hosts: tuple[str, ...], port_of) -> dict:
    """An index linking to ``n`` pages; each page links to two of its host's pages and to the same page on
    the next host (so pages are found from several hosts, and by several processes)."""
    me = hosts.index(host)
    nxt = hosts[(me + 1) % len(hosts)]
    routes = {
        "/robots.txt": log.route(host, b"User-agent: *\nDisallow: /private\n", "text/plain", sleep_s),
        "/": log.route(host, html("".join(f'<a href="/p{i}.html">p{i}</a>' for i in range(n)))[2], "text/html", sleep_s),
    }
    for i in range(n):
        links = f'<a href="/p{(i + 1) % n}.html">a</a><a href="/p{(i * 7) % n}.html">b</a>'
        links += f'<a href="http://{nxt}:{port_of(nxt)}/p{i}.html">c</a><a href="/private/x">d</a>'
        body = html(f"<p>page {i} of {host}</p>{links}")[2]
        routes[f"/p{i}.html"] = log.route(host, body, "text/html; charset=utf-8", sleep_s)
    return routes


class Site:
    def __init__(self, servers, n: int = 12, sleep_s: float = 0.02) -> None:  # noqa: ANN001
        self.log = Log()
        self.n = n
        self.made: list[FaultServer] = []
        ports: dict[str, int] = {}
        for h in HOSTS:
            s = servers(host=h, routes={})
            ports[h] = s.port
            self.made.append(s)
        for s in self.made:
            s.routes.update(site(self.log, s.host, n, sleep_s, HOSTS, ports.__getitem__))

    @property
    def bases(self) -> list[str]:
        return [m.base for m in self.made]

    def expected(self) -> set[str]:
        return {f"{m.base}/"} | {f"{m.base}/p{i}.html" for m in self.made for i in range(self.n)} if False else {
            u for m in self.made for u in [f"{m.base}/", *(f"{m.base}/p{i}.html" for i in range(self.n))]
        }


def recipe(tmp_path: Path, site: Site, frontier: str, **params) -> Path:
    spider = tmp_path / "spider.toml"
    seeds = ", ".join(f'"{b}/"' for b in site.bases)
    allowed = ", ".join(f'"{h}"' for h in HOSTS)
    spider.write_text(f'name = "t"\nseeds = [{seeds}]\nallowed_domains = [{allowed}]\n')
    stage = {
        "kind": '"crawl"',
        "spider": json.dumps(str(spider)),
        "backend": '"requests+lxml"',
        "frontier": json.dumps(frontier),
        "min_delay_s": 0.1,
        "segment_pages": 5,
        "concurrency": 8,
        "lease_s": 2.0,
        "timeout_s": 5.0,
    } | {k: json.dumps(v) for k, v in params.items()}
    lines = ['name = "t"', f'workdir = "{tmp_path / "w"}"', "[[stages]]"] + [f"{k} = {v}" for k, v in stage.items()]
    path = tmp_path / "r.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(path: Path, *extra: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(path), *extra]
    return subprocess.run(cmd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def stored_urls(tmp_path: Path) -> list[str]:
    return [d.url for d in iter_documents(manifest_paths(tmp_path / "w" / "crawl"))]


@pytest.mark.slow
@pytest.mark.parametrize("tasks", [2, 4])
def test_processes_share_the_frontier_politely_and_store_every_page_once(tmp_path, servers, redis_server, tasks):  # noqa: F811
    s = Site(servers)
    r = run_cli(recipe(tmp_path, s, redis_server.url, tasks=tasks))
    assert r.returncode == DONE, r.stderr[-3000:]
    urls = stored_urls(tmp_path)
    assert len(urls) == len(set(urls))
    assert set(urls) == s.expected()
    # Each page requested once: no URL taken twice while its lease held (no process died here).
    twice = [k for k, v in s.log.pages().items() if v > 1]
    assert twice == []
    assert s.log.violations(0.1) == []
    manifest = json.loads((tmp_path / "w" / "crawl" / "manifest.json").read_text())
    assert manifest["duplicates_in_output"] == 0
    assert manifest["frontier"]["stored"] == len(urls)
    assert validate_folder(tmp_path / "w" / "crawl") == []
    # Every process crawled (the segments are named by rank), and the stats add up over the processes.
    ranks = {f["name"].split("-")[1] for f in manifest["files"]}
    assert len(ranks) >= 2
    stats = json.loads((tmp_path / "w" / "crawl" / "stats" / "stats.json").read_text())
    step = stats["steps"][0]
    assert step["output"] == len(urls)
    assert step["dropped"].get("robots_disallowed") == len(HOSTS)  # each /private/x once, over all processes

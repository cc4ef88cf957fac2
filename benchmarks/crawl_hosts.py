"""Concurrent crawl over many hosts: pages/s of each corpusforge backend under a per-host delay, against bare
Scrapy with the same rules, with politeness violations counted from the server's own access log.

The site: ``--hosts`` loopback hosts (127.0.0.1 … 127.0.0.64 by default; Linux routes all of 127/8 to the
loopback), one listening socket each (the same port on every host when it is free), each with a robots.txt
allowing all, an index linking to its ``--pages`` pages of ~300 words, and pages linking to a few pages of
their host and to the same page on two other hosts (h+1 and h+7). Every response, robots.txt included, is
delayed ``--latency`` (50 ms) by the server. The server runs in a process of its own (this script with a hidden
``--serve``), so its threads do not compete with the crawler for the GIL; it logs every request (host, path,
monotonic start when its handler began, end after the response was written, the client's port) and hands the
log over after each run. Run: ``python benchmarks/crawl_hosts.py [--quick] [--only requests+lxml,bare-scrapy]``.

The rules, for everyone: at most one request in flight per host and ``--delay`` (0.25 s) between the starts
of two requests to a host, robots.txt obeyed (it counts as a request to its host). The politeness limit is
hosts ÷ delay (256 pages/s for 64 hosts), and ``ratio_to_limit`` is pages/s against it. The runs, one after
another on the same site: ours with the requests+lxml, requests+bs4, scrapy and langchain backends (concurrency
64, per_host_concurrency 1, min_delay_s 0.25), selenium (4 browsers) on a smaller site of 8 hosts (its own limit,
8 ÷ 0.25 = 32 pages/s; each of its pages costs two requests, the static fetch and the browser's, so it can reach
half of that at most), ours sequential (concurrency 1, capped with max_pages: only its pages/s matters), and a
plain ``scrapy.Spider`` (``bare-scrapy``) with DOWNLOAD_DELAY, CONCURRENT_REQUESTS_PER_DOMAIN=1,
CONCURRENT_REQUESTS=64 and ROBOTSTXT_OBEY. A violation, from the access log of the run: a request to a host
starting less than delay − ``--tolerance`` (10 ms) after the previous one to that host, or while another
request to that host is still in flight (a sweep line over the logged intervals). A request breaking both
rules counts once. The times are the server's (a request starts when its handler begins), so scheduling latency
on either side, a few ms on a loaded 2-core machine, can make a gap look shorter than the client kept it; the
tolerance is there for that.

Fairness notes. Module imports (and pyarrow's one-time lazy import of pandas) happen before the clock starts on
both sides; ours is timed around ``run_recipe`` (the whole stage: workdir, robots.txt, canonical URLs, the
durable frontier, Arrow segments, and for selenium the start of its Chromiums), bare Scrapy from building its
``CrawlerProcess`` to the end of its reactor. Bare Scrapy runs in a subprocess (Twisted's reactor cannot be
restarted), so it has a process to itself as ours has this one; both share the machine with the server process
alike. Pages are what the crawl stored (ours) or the distinct URLs Scrapy parsed with status 200 as HTML: its
start URLs bypass its dupefilter, so it fetches each index a second time when a page links back to it (those
extra responses are counted in the pages check, not in pages/s; their requests are in the access log). Scrapy
2.19's asyncio downloader may start several queued requests of one slot at once (see ``benchmarks/crawl.py``);
the peer is run with the settings above and nothing else, and what the server sees is reported as it is.

Redis frontier mode (``--frontier redis [--processes 1,2,4]``): for each process count, our crawl with the
requests+lxml backend and a frontier shared in Redis (``frontier = "unix://…"``, ``tasks`` = that count: the
runner spawns one crawler process per task, each with ``concurrency`` fetch threads, 64 ÷ processes by default,
see ``--redis-concurrency``), against a redis-server this script starts for each run (a unix socket in a
temporary folder, no TCP port, nothing saved; stopped after the run) so each run starts from an empty frontier.
Politeness is the crawl's to keep across its processes (Redis's clock); the limit is still hosts ÷ delay: it is
per host, it does not grow with processes. Besides pages/s and violations, each run reports the URLs stored
more than once in its output (read back from the folder's manifest, beside the manifest's own
``duplicates_in_output``) and its start-up: from the clock's start to the first request in the access log
(spawning the processes and importing corpusforge in each is part of the measured time, so the site is bigger
in this mode: 120 pages per host, 40 with --quick). Unless ``--only`` says otherwise, the mode runs
``requests+lxml`` (one process, SQLite frontier) first, as the baseline, then the Redis runs. Last line:
``redis_ratio_to_limit=… violations=… duplicates_in_output=…`` (4 processes, or the largest count run; the
violations and duplicates summed over the Redis runs).

The mode's peer, after our Redis runs: scrapy-redis (``scrapy-redis-<n>p``, n the largest ``--processes``), n
separate Scrapy processes (this script with a hidden ``--scrapy-redis-peer``), each a ``RedisSpider`` with its
``Scheduler`` and ``RFPDupeFilter`` on a fresh redis-server of its own (the same unix socket setup,
``REDIS_URL = "unix://…"``) and its default queue (``PriorityQueue``; ``--scrapy-redis-queue fifo|lifo`` for
the others), ``SCHEDULER_PERSIST`` on (off, the first process to close would delete the shared
queue and seen set under the others), the bare-scrapy peer's rules in each process (DOWNLOAD_DELAY,
RANDOMIZE_DOWNLOAD_DELAY off, CONCURRENT_REQUESTS_PER_DOMAIN=1, CONCURRENT_REQUESTS = ``--concurrency`` ÷ n,
ROBOTSTXT_OBEY, Scrapy's default user agent) and its link following (every link, offsite ones dropped by
``allowed_domains``, no depth limit). The seeds are pushed to ``<name>:start_urls`` before the processes
start; a RedisSpider never runs out of work by itself, so each closes when idle for
``MAX_IDLE_TIME_BEFORE_CLOSE`` (``--scrapy-redis-idle``, 2 s; whole seconds, counted by scrapy-redis from
the last time the process saw its start-URL key non-empty). Its time runs from starting the first process to
the end of the last, nothing subtracted (a note after the table says how much of it is start-up, the tail
after the last request and the idle-close wait). Pages: the distinct URLs the processes parsed with status
200 as HTML; ``duplicates`` there: responses parsed more than once (over all processes); ``refetched``, in
every row of the mode: URLs (robots.txt aside) requested more than once, from the access log. Line before
the last: ``scrapy_redis_pages_per_s=… scrapy_redis_violations=… scrapy_redis_refetched=…``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

# The repository root, not benchmarks/ (whose tokenize.py would shadow the standard library's).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

# After the path fix: dataclasses imports inspect, which imports tokenize.
from dataclasses import dataclass, field  # noqa: E402

from benchmarks._harness import parser, print_keyvals, print_table  # noqa: E402

# An access log entry: host, path, start and end (monotonic s), status, the client's port (one per connection).
LogEntry = tuple[str, str, float, float, int, int]

RUNS = ("requests+lxml", "requests+bs4", "scrapy", "langchain", "selenium", "sequential", "bare-scrapy")


def host_ip(h: int) -> str:
    return f"127.0.0.{h + 1}"


# ---------------------------------------------------------------------------------------------- the site


def site_pages(hosts: int, pages: int, ports: list[int]) -> dict[tuple[str, str], bytes]:
    """(host IP, path) → body: robots.txt, the index and the pages of every host."""
    out: dict[tuple[str, str], bytes] = {}
    for h in range(hosts):
        ip = host_ip(h)
        out[ip, "/robots.txt"] = b"User-agent: *\nAllow: /\n"
        out[ip, "/"] = (
            f"<html><head><title>host {h}</title></head><body><h1>Host {h}</h1>"
            + "".join(f'<a href="/p/{i}.html">page {i}</a> ' for i in range(pages))
            + "</body></html>"
        ).encode()
        for i in range(pages):
            links = ['<a href="/">home</a>']
            links += [f'<a href="/p/{(i + k) % pages}.html">next {k}</a>' for k in (1, 3)]
            for other in ((h + 1) % hosts, (h + 7) % hosts):  # cross-host: the same page on two other hosts
                links.append(f'<a href="http://{host_ip(other)}:{ports[other]}/p/{i}.html">host {other}</a>')
            text = " ".join(f"w{(h * 131 + i * 17 + j * 7) % 499}" for j in range(300))
            out[ip, f"/p/{i}.html"] = (
                f"<html><head><title>h{h} p{i}</title></head><body><h1>Host {h}, page {i}</h1>"
                f"<p>{text}</p>{' '.join(links)}</body></html>"
            ).encode()
    return out


def serve(hosts: int, pages: int, latency: float) -> None:
    """The hidden ``--serve`` mode: serve the site until stdin says ``quit`` or closes (no orphan if the parent
    dies). First stdout line: the ports; each ``dump`` line on stdin → the access log since the last dump."""
    import socketserver
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    log: list[LogEntry] = []
    lock = threading.Lock()
    in_flight = [0]
    content: dict[tuple[str, str], bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802
            start = time.monotonic()
            with lock:
                in_flight[0] += 1
            status = 0
            try:
                host, path = self.server.server_address[0], self.path.split("?")[0]
                body = content.get((host, path))
                status = 200 if body is not None else 404
                body = body or b"not found"
                time.sleep(latency)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if path == "/robots.txt" else "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            finally:
                with lock:
                    host = str(self.server.server_address[0])
                    log.append((host, self.path, start, time.monotonic(), status, int(self.client_address[1])))
                    in_flight[0] -= 1

        def log_message(self, *a: Any) -> None:
            return

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # socketserver's default of 5 drops SYNs when a client connects in a burst

        def server_bind(self) -> None:  # HTTPServer's would reverse-resolve every address (getfqdn)
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    servers: list[Server] = []
    port = 0
    for h in range(hosts):
        try:
            srv = Server((host_ip(h), port), Handler)
        except OSError:  # taken on this address: any free port
            srv = Server((host_ip(h), 0), Handler)
        if h == 0:
            port = srv.server_address[1]
        servers.append(srv)
    ports = [int(s.server_address[1]) for s in servers]
    content.update(site_pages(hosts, pages, ports))
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(json.dumps({"ports": ports}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "dump":
            deadline = time.monotonic() + 5.0
            while in_flight[0] and time.monotonic() < deadline:  # let requests still in flight finish
                time.sleep(0.01)
            with lock:
                entries, log[:] = list(log), []
            print(json.dumps(entries), flush=True)
        elif cmd == "quit":
            break
    for srv in servers:
        srv.server_close()


class Site:
    """The server process and how to reach it."""

    def __init__(self, hosts: int, pages: int, latency: float) -> None:
        self.hosts, self.pages = hosts, pages
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve"]
        cmd += ["--hosts", str(hosts), "--pages", str(pages), "--latency", str(latency)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line:
                raise RuntimeError(f"the site's server did not start (exit code {self.proc.wait(5)})")
            self.ports: list[int] = json.loads(line)["ports"]
        except BaseException:
            self.close()
            raise

    @property
    def ips(self) -> list[str]:
        return [host_ip(h) for h in range(self.hosts)]

    @property
    def seeds(self) -> list[str]:
        return [f"http://{ip}:{port}/" for ip, port in zip(self.ips, self.ports, strict=True)]

    @property
    def total(self) -> int:
        return self.hosts * (self.pages + 1)

    def dump(self) -> list[LogEntry]:
        """The access log since the last dump (and reset it)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the site's server is gone")
        return [tuple(e) for e in json.loads(line)]  # type: ignore[misc]

    def close(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


# ---------------------------------------------------------------------------------------------- violations


def politeness(log: list[LogEntry], delay: float, tolerance: float, per_host: int) -> dict:
    """Violations per the module docstring, the smallest gap between starts to one host, the most requests
    in flight to one host, and the offending requests (host, previous path, path, gap in ms, in flight)."""
    by_host: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for host, path, start, end, *_ in log:
        by_host[host].append((start, end, path))
    bad: list[tuple[str, str, str, float, int]] = []
    min_gap, max_in_flight = float("inf"), 0
    for host, reqs in by_host.items():
        reqs.sort()
        gaps = [float("inf")] + [reqs[i][0] - reqs[i - 1][0] for i in range(1, len(reqs))]
        # Sweep line: ends sort before starts at the same instant (touching intervals do not overlap).
        events = sorted(
            [(s, 1, i) for i, (s, _, _) in enumerate(reqs)] + [(e, 0, i) for i, (_, e, _) in enumerate(reqs)]
        )
        flying, at_start = 0, [0] * len(reqs)
        for _, kind, i in events:
            if kind:
                flying += 1
                at_start[i] = flying
                max_in_flight = max(max_in_flight, flying)
            else:
                flying -= 1
        for i, (_, _, path) in enumerate(reqs):
            min_gap = min(min_gap, gaps[i])
            if gaps[i] < delay - tolerance or at_start[i] > per_host:
                bad.append((host, reqs[i - 1][2] if i else "-", path, gaps[i] * 1000, at_start[i]))
    return {"violations": len(bad), "min_gap_ms": min_gap * 1000, "max_in_flight": max_in_flight, "bad": bad}


# ---------------------------------------------------------------------------------------------- the crawlers

WARM_MODULES = {
    "requests+lxml": ("corpusforge.crawl.backends.requests_lxml", "requests", "lxml.html"),
    "requests+bs4": ("corpusforge.crawl.backends.requests_bs4", "requests", "lxml.html", "bs4"),
    "scrapy": ("corpusforge.crawl.backends.scrapy", "scrapy", "scrapy.crawler", "lxml.html"),
    "langchain": (
        "corpusforge.crawl.backends.langchain",
        "requests",
        "bs4",
        "langchain_community.document_loaders.web_base",
    ),
    "selenium": ("corpusforge.crawl.backends.selenium", "requests", "lxml.html", "selenium.webdriver"),
}


def warm_imports(backend: str) -> None:
    """Import what a crawl with ``backend`` imports lazily, so that the clock does not count imports."""
    import importlib
    import logging
    import warnings

    import pyarrow as pa

    from corpusforge.storage import DOC_SCHEMA

    mods = ("corpusforge.crawl.crawler", "corpusforge.crawl.pool", "corpusforge.crawl.stage", "protego")
    # langchain_community announces its sunset (a warning) and asks for a USER_AGENT variable (a log record) on
    # import; the loader is given our session and headers, so neither applies here.
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for mod in (*mods, *WARM_MODULES.get(backend, ())):
                importlib.import_module(mod)
    finally:
        logging.disable(logging.NOTSET)
    pa.RecordBatch.from_pylist([], schema=DOC_SCHEMA)  # pyarrow imports pandas on first use


@dataclass
class Crawl:
    """What one crawl of ours gave: pages stored, seconds around ``run_recipe``, the monotonic clock when that
    started (the server's log uses the same system-wide clock), and for a Redis run its output's duplicates."""

    pages: int
    seconds: float
    started: float
    duplicates: int | None = None  # URLs stored more than once, read back from the output
    manifest_duplicates: Any = None  # the manifest's own duplicates_in_output
    rows: int | None = None  # documents in the output
    redis_bytes: int | None = None  # the Redis server's used_memory at the end (frontier + counters + records)
    errors: list[str] = field(default_factory=list)


def ours(
    backend: str,
    site: Site,
    *,
    delay: float,
    concurrency: int,
    browsers: int | None = None,
    max_pages: int | None = None,
    frontier: str | None = None,
    tasks: int = 1,
) -> Crawl:
    """One crawl stage over every host of ``site`` in a fresh workdir (with ``frontier``, a Redis URL: shared by
    ``tasks`` crawler processes)."""
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    warm_imports(backend)
    with tempfile.TemporaryDirectory() as tmp:
        spider = Path(tmp) / "hosts.toml"
        spider.write_text(
            f'name = "hosts"\nseeds = {json.dumps(site.seeds)}\nallowed_domains = {json.dumps(site.ips)}\nmax_depth = 3\n'
        )
        stage: dict[str, Any] = {
            "kind": "crawl",
            "spider": str(spider),
            "backend": backend,
            "min_delay_s": delay,
            "concurrency": concurrency,
            "per_host_concurrency": 1,
            "timeout_s": 10,
            "segment_pages": 500,
        }
        if browsers:
            stage["browsers"] = browsers
        if max_pages:
            stage["max_pages"] = max_pages
        if frontier:
            stage["frontier"] = frontier
            stage["tasks"] = tasks
        recipe = validate_recipe({"name": "hosts", "workdir": f"{tmp}/w", "stages": [stage]})
        started = time.monotonic()
        t0 = time.perf_counter()
        res = run_recipe(recipe)
        dt = time.perf_counter() - t0
        out = res.stages[0]
        crawl = Crawl(int(out.extra.get("pages_fetched", 0)), dt, started)
        if out.status != "done":
            crawl.errors = [f"stage {out.status}", *out.errors]
        if frontier:
            output_duplicates(crawl, out.out_dir)
        return crawl


def output_duplicates(crawl: Crawl, folder: Path) -> None:
    """Count the URLs stored more than once in a finished crawl folder (its manifest's files, read back)."""
    from corpusforge.storage import MANIFEST, iter_documents, load_manifest, manifest_paths

    if not (folder / MANIFEST).is_file():
        crawl.errors.append(f"no manifest in {folder.name}: duplicates not counted")
        return
    seen: set[str] = set()
    rows = repeats = 0
    for doc in iter_documents(manifest_paths(folder), columns=["id", "url"]):
        rows += 1
        repeats += doc.url in seen
        seen.add(doc.url)
    crawl.rows, crawl.duplicates = rows, repeats
    crawl.manifest_duplicates = load_manifest(folder).get("duplicates_in_output")


class RedisServer:
    """A throwaway redis-server for one run: a unix socket in a temporary folder, no TCP port, nothing saved."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="cf-redis-"))
        self.socket = self.folder / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        import redis

        exe = redis_server_exe()
        if exe is None:
            raise RuntimeError("redis-server not found (apt-get install redis-server)")
        log = self.folder / "redis.log"
        cmd = [exe, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        cmd += ["--dir", str(self.folder), "--save", "", "--appendonly", "no", "--daemonize", "no"]
        cmd += ["--logfile", str(log)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                if self.proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-1000:] if log.is_file() else ""
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {tail}")
                if self.socket.exists():
                    client = redis.Redis(unix_socket_path=str(self.socket))
                    try:
                        if client.ping():
                            return
                    except redis.exceptions.RedisError:
                        pass
                    finally:
                        client.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer within 20 s")
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)


def redis_server_exe() -> str | None:
    exe = shutil.which("redis-server")
    if exe is None and Path("/usr/bin/redis-server").is_file():
        exe = "/usr/bin/redis-server"
    return exe


def scrapy_rules(delay: float, concurrency: int) -> dict[str, Any]:
    """The Scrapy settings of both Scrapy peers (bare, and each scrapy-redis process): the per-host delay,
    one request in flight per domain, ``concurrency`` in all, robots.txt obeyed, Scrapy's own user agent."""
    return {
        "DOWNLOAD_DELAY": delay,
        "RANDOMIZE_DOWNLOAD_DELAY": False,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 1,
        "CONCURRENT_REQUESTS": concurrency,
        "AUTOTHROTTLE_ENABLED": False,
        "ROBOTSTXT_OBEY": True,
        "LOG_LEVEL": "WARNING",
        "TELNETCONSOLE_ENABLED": False,
    }


def follow_links(spider: Any, response: Any, urls: set[str], parsed: dict[str, int]) -> Any:
    """Both Scrapy peers' parse: count an HTML page with status 200, follow every link on it (the offsite ones
    are dropped by ``allowed_domains``; no depth limit)."""
    from scrapy.http import HtmlResponse

    if response.status == 200 and isinstance(response, HtmlResponse):
        parsed["n"] += 1
        urls.add(response.url)
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, spider.parse)


def scrapy_peer(spec: dict[str, Any]) -> None:
    """The hidden ``--scrapy-peer`` mode: a plain Scrapy spider; prints {"pages", "parsed", "s"} as its last
    line: distinct pages parsed (status 200, HTML), responses parsed, seconds."""
    import scrapy
    from scrapy.crawler import CrawlerProcess

    urls: set[str] = set()
    parsed = {"n": 0}

    class Bare(scrapy.Spider):
        name = "bare"
        allowed_domains = spec["allowed"]
        start_urls = spec["seeds"]

        def parse(self, response):  # type: ignore[no-untyped-def]
            yield from follow_links(self, response, urls, parsed)

    settings = scrapy_rules(spec["delay"], spec["concurrency"])
    t0 = time.perf_counter()
    p = CrawlerProcess(settings)
    p.crawl(Bare)
    p.start()
    print(json.dumps({"pages": len(urls), "parsed": parsed["n"], "s": time.perf_counter() - t0}), flush=True)


def bare_scrapy(site: Site, *, delay: float, concurrency: int) -> tuple[int, float, int]:
    """(distinct pages parsed, seconds, responses parsed)."""
    spec = {"seeds": site.seeds, "allowed": site.ips, "delay": delay, "concurrency": concurrency}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--scrapy-peer", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    d = json.loads(out.stdout.strip().splitlines()[-1])
    return int(d["pages"]), float(d["s"]), int(d["parsed"])


SCRAPY_REDIS_SPIDER = "hosts"  # its start URLs go to "hosts:start_urls"
SCRAPY_REDIS_QUEUES = {
    "priority": "scrapy_redis.queue.PriorityQueue",  # scrapy-redis's default
    "fifo": "scrapy_redis.queue.FifoQueue",
    "lifo": "scrapy_redis.queue.LifoQueue",
}


def scrapy_redis_peer(spec: dict[str, Any]) -> None:
    """The hidden ``--scrapy-redis-peer`` mode: one scrapy-redis process of the peer run; prints as its last
    line {"urls", "parsed", "s", "closed", "idle_since", "reason", "exited"}: the URLs it parsed (status 200,
    HTML), responses parsed, seconds around its reactor, and on the monotonic clock (system-wide, as the
    server's log) when its spider closed, when it last went idle (the first spider_idle after its last
    response) and when it was about to exit."""
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess
    from scrapy_redis.spiders import RedisSpider

    urls: set[str] = set()
    parsed = {"n": 0}
    seen: dict[str, Any] = {"idle_since": None, "closed": None, "reason": None}

    def on_response(**_: Any) -> None:
        seen["idle_since"] = None

    def on_idle(**_: Any) -> None:
        if seen["idle_since"] is None:
            seen["idle_since"] = time.monotonic()

    def on_closed(reason: str, **_: Any) -> None:
        seen["closed"], seen["reason"] = time.monotonic(), reason

    class Shared(RedisSpider):
        name = SCRAPY_REDIS_SPIDER
        allowed_domains = spec["allowed"]

        @classmethod
        def from_crawler(cls, crawler, *args, **kwargs):  # type: ignore[no-untyped-def]
            spider = super().from_crawler(crawler, *args, **kwargs)
            crawler.signals.connect(on_response, signal=signals.response_received)
            crawler.signals.connect(on_idle, signal=signals.spider_idle)
            crawler.signals.connect(on_closed, signal=signals.spider_closed)
            return spider

        def parse(self, response):  # type: ignore[no-untyped-def]
            yield from follow_links(self, response, urls, parsed)

    settings = scrapy_rules(spec["delay"], spec["concurrency"])
    settings |= {
        "SCHEDULER": "scrapy_redis.scheduler.Scheduler",
        "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
        "SCHEDULER_PERSIST": True,  # off, the first process to close would flush the queue the others share
        "REDIS_URL": spec["redis_url"],
        "MAX_IDLE_TIME_BEFORE_CLOSE": spec["max_idle"],
        "SCHEDULER_QUEUE_CLASS": SCRAPY_REDIS_QUEUES[spec["queue"]],
    }
    t0 = time.perf_counter()
    p = CrawlerProcess(settings)
    p.crawl(Shared)
    p.start()
    s = time.perf_counter() - t0
    out = {"urls": sorted(urls), "parsed": parsed["n"], "s": s, **seen, "exited": time.monotonic()}
    print(json.dumps(out), flush=True)


@dataclass
class PeerProcesses:
    """What the scrapy-redis run's processes reported, besides its Crawl: per process, the monotonic times of
    its spider going idle for good, closing, and exiting, and its close reason."""

    idle_since: list[float | None] = field(default_factory=list)
    closed: list[float | None] = field(default_factory=list)
    exited: list[float] = field(default_factory=list)
    reasons: list[str | None] = field(default_factory=list)
    ended: float = 0.0  # monotonic, when the last process had ended


def scrapy_redis(
    site: Site, server: RedisServer, *, delay: float, processes: int, concurrency: int, max_idle: int, queue: str
) -> tuple[Crawl, PeerProcesses]:
    """The scrapy-redis peer: seed ``<name>:start_urls`` in ``server``, start ``processes`` Scrapy processes at
    once, time from starting the first to the end of the last. Pages: the distinct URLs parsed over all of
    them; duplicates: responses parsed more than once (rows: all responses parsed)."""
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        client.rpush(f"{SCRAPY_REDIS_SPIDER}:start_urls", *(json.dumps({"url": u}) for u in site.seeds))
    finally:
        client.close()
    spec = {
        "allowed": site.ips,
        "delay": delay,
        "concurrency": concurrency,
        "redis_url": server.url,
        "max_idle": max_idle,
        "queue": queue,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--scrapy-redis-peer", json.dumps(spec)]
    with tempfile.TemporaryDirectory(prefix="cf-scrapy-redis-") as tmp:
        # Files, not pipes: a process whose pipe filled while this one waited on another would be held up.
        files = [(Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err") for i in range(processes)]
        procs: list[subprocess.Popen[bytes]] = []
        try:
            started = time.monotonic()
            t0 = time.perf_counter()
            for out_path, err_path in files:
                with open(out_path, "wb") as out, open(err_path, "wb") as err:
                    procs.append(subprocess.Popen(cmd, stdout=out, stderr=err))
            deadline = time.monotonic() + 600
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            dt = time.perf_counter() - t0
            ended = time.monotonic()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        reports: list[dict[str, Any]] = []
        errors: list[str] = []
        for i, (proc, (out_path, err_path)) in enumerate(zip(procs, files, strict=True)):
            lines = out_path.read_text(errors="replace").strip().splitlines()
            if proc.returncode != 0 or not lines:
                tail = err_path.read_text(errors="replace")[-1500:]
                errors.append(f"process {i} exited with {proc.returncode}: {tail}")
                continue
            reports.append(json.loads(lines[-1]))
    urls: set[str] = set()
    for r in reports:
        urls.update(r["urls"])
    parsed = sum(int(r["parsed"]) for r in reports)
    crawl = Crawl(len(urls), dt, started, duplicates=parsed - len(urls), rows=parsed, errors=errors)
    info = PeerProcesses(ended=ended)
    for r in reports:
        info.idle_since.append(r["idle_since"])
        info.closed.append(r["closed"])
        info.exited.append(float(r["exited"]))
        info.reasons.append(r["reason"])
    crawl.errors += [f"a process closed with reason {r!r}" for r in info.reasons if r != "finished"]
    return crawl, info


def refetched(log: list[LogEntry]) -> tuple[int, int, int]:
    """From an access log, robots.txt aside: URLs requested more than once, the requests beyond the first to
    them, and how many of those URLs are an index (``/``)."""
    counts = Counter((host, path) for host, path, *_ in log if path != "/robots.txt")
    again = [(key, c) for key, c in counts.items() if c > 1]
    return len(again), sum(c - 1 for _, c in again), sum(1 for (_, path), _ in again if path == "/")


def unavailable(run: str) -> str | None:
    """Why ``run`` cannot run here, or None."""
    import importlib.util

    if run == "langchain" and importlib.util.find_spec("langchain_community") is None:
        return "langchain_community is not importable"
    if run == "scrapy-redis" and importlib.util.find_spec("scrapy_redis") is None:
        return "scrapy-redis is not installed (pip install 'corpusforge[bench]')"
    if run in ("redis", "scrapy-redis"):
        if importlib.util.find_spec("redis") is None:
            return "the redis client is not installed (pip install 'corpusforge[redis]')"
        if redis_server_exe() is None:
            return "redis-server not found (apt-get install redis-server)"
    if run == "selenium":
        if importlib.util.find_spec("selenium") is None:
            return "selenium is not installed"
        from corpusforge.crawl.backends.selenium import find_browser

        try:
            find_browser()
        except Exception as exc:  # chromium or chromedriver missing
            return str(exc)
    return None


def timing(log: list[LogEntry], started: float | None, seconds: float, delay: float) -> dict[str, Any]:
    """Where a run's time went, from the access log (the server's monotonic clock is the system's, as ours):
    start-up to the first request, the span of the requests, the tail after the last one; per host, the gaps
    between request starts (over the first and the second half of the span), when each host was first and last
    asked (a host served late is starved), the connections opened (a client port per host), and of the gaps
    shorter than the delay, how many follow a request that opened its connection (its handler starts later at
    the server, so the gap after it looks shorter than the client kept it)."""
    if not log:
        return {}
    first, last_end = min(e[2] for e in log), max(e[3] for e in log)
    mid = (first + last_end) / 2
    opened: dict[tuple[str, int], float] = {}
    by_host: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for host, _path, start, _end, _status, port in log:
        by_host[host].append((start, port))
        opened[host, port] = min(start, opened.get((host, port), start))
    gaps: list[float] = []
    halves: tuple[list[float], list[float]] = ([], [])
    firsts, lasts = [], []
    short = short_after_open = 0
    for host, reqs in by_host.items():
        reqs.sort()
        for (a, port), (b, _) in zip(reqs, reqs[1:], strict=False):
            gaps.append(b - a)
            halves[b >= mid].append(b - a)
            if b - a < delay:
                short += 1
                short_after_open += opened[host, port] == a
        firsts.append(reqs[0][0] - first)
        lasts.append(reqs[-1][0] - first)
    q = statistics.quantiles(gaps, n=20, method="inclusive") if len(gaps) >= 2 else [0.0] * 19
    return {
        "startup_s": None if started is None else first - started,
        "busy_s": last_end - first,
        "tail_s": None if started is None else started + seconds - last_end,
        "gap_mean_ms": statistics.fmean(gaps) * 1000 if gaps else 0.0,
        "gap_halves_ms": tuple(statistics.fmean(h) * 1000 if h else 0.0 for h in halves),
        "gap_median_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
        "gap_p95_ms": q[18] * 1000,
        "first_ask_max_s": max(firsts),
        "last_ask_min_s": min(lasts),
        "last_ask_max_s": max(lasts),
        "connections": len(opened),
        "short_gaps": short,
        "short_after_open": short_after_open,
    }


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    p = parser(__doc__ or "")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--hosts", type=int, default=None, help="loopback hosts (default 64; 16 with --quick)")
    p.add_argument(
        "--pages",
        type=int,
        default=None,
        help="pages per host besides its index (40; 10 with --quick; with --frontier redis 120, 40 with --quick)",
    )
    p.add_argument("--latency", type=float, default=0.05, help="server delay per response, s")
    p.add_argument("--delay", type=float, default=0.25, help="per-host delay between request starts, s")
    p.add_argument("--tolerance", type=float, default=0.01, help="slack on the delay when counting violations, s")
    p.add_argument("--concurrency", type=int, default=64, help="fetches in flight over all hosts")
    p.add_argument("--selenium-hosts", type=int, default=None, help="hosts of the selenium site (8; 4 with --quick)")
    p.add_argument(
        "--selenium-pages", type=int, default=None, help="its pages per host (--pages or 40; 4 with --quick)"
    )
    p.add_argument("--browsers", type=int, default=4, help="Chromiums of the selenium run")
    p.add_argument("--sequential-pages", type=int, default=None, help="max_pages of the sequential run (300; 60)")
    p.add_argument("--only", default=None, help=f"comma-separated runs out of {','.join(RUNS)}")
    p.add_argument("--frontier", choices=("redis",), default=None, help="redis: the shared-frontier runs (see above)")
    p.add_argument("--processes", default="1,2,4", help="crawler process counts of the Redis runs (1,2,4)")
    p.add_argument(
        "--redis-concurrency",
        default="split",
        help="fetch threads per process of the Redis runs: split (--concurrency ÷ processes) or a number; "
        "comma-separated to run each process count with each (split,64)",
    )
    p.add_argument(
        "--scrapy-redis-idle",
        type=int,
        default=2,
        help="MAX_IDLE_TIME_BEFORE_CLOSE of the scrapy-redis run, whole seconds (2)",
    )
    p.add_argument(
        "--scrapy-redis-queue",
        choices=tuple(SCRAPY_REDIS_QUEUES),
        default="priority",
        help="SCHEDULER_QUEUE_CLASS of the scrapy-redis run: priority (its default, a sorted set), fifo or lifo",
    )
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scrapy-peer", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scrapy-redis-peer", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    redis_mode = args.frontier == "redis"
    hosts = args.hosts or (16 if args.quick else 64)
    if redis_mode:
        pages = args.pages or (40 if args.quick else 120)
    else:
        pages = args.pages or (10 if args.quick else 40)
    if args.serve:
        # The server is the measuring instrument: ahead of the crawlers in the CPU queue (where allowed), its
        # log shows when requests arrived, not when a loaded 2-core machine got round to its threads.
        try:
            os.nice(-10)
        except OSError:
            pass
        serve(hosts, pages, args.latency)
        return
    if args.scrapy_peer is not None:
        scrapy_peer(json.loads(args.scrapy_peer))
        return
    if args.scrapy_redis_peer is not None:
        scrapy_redis_peer(json.loads(args.scrapy_redis_peer))
        return
    sel_hosts = args.selenium_hosts or (4 if args.quick else 8)
    sel_pages = args.selenium_pages or (4 if args.quick else args.pages or 40)  # not the Redis mode's 120
    seq_pages = args.sequential_pages or (60 if args.quick else 300)
    if not 1 <= hosts <= 254 or not 1 <= sel_hosts <= 254:
        sys.exit("--hosts and --selenium-hosts must be between 1 and 254 (127.0.0.1 … 127.0.0.254)")
    if args.only is not None:
        wanted = [r.strip() for r in args.only.split(",") if r.strip()]
    else:
        wanted = ["requests+lxml"] if redis_mode else list(RUNS)
    unknown = [r for r in wanted if r not in RUNS]
    if unknown:
        sys.exit(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS)}")

    delay, conc = args.delay, args.concurrency
    # (label, kind, crawler processes, fetch threads per process)
    plan: list[tuple[str, str, int, int]] = [(r, r, 1, conc) for r in RUNS if r in wanted]
    redis_labels: list[str] = []  # in plan order
    if redis_mode:
        try:
            counts = list(dict.fromkeys(int(x) for x in args.processes.split(",") if x.strip()))
            specs = [x.strip() for x in args.redis_concurrency.split(",") if x.strip()]
            per_proc = [[max(1, conc // n) if c == "split" else int(c) for c in specs] for n in counts]
        except ValueError:
            sys.exit("--processes and --redis-concurrency take comma-separated numbers (or split)")
        if not counts or min(counts) < 1 or not specs or min(min(c) for c in per_proc) < 1:
            sys.exit("--processes and --redis-concurrency must be 1 or more")
        for n, threads in zip(counts, per_proc, strict=True):
            for c in dict.fromkeys(threads):
                redis_labels.append(f"redis-{n}p-c{c}")
                plan.append((redis_labels[-1], "redis", n, c))
        if args.scrapy_redis_idle < 1:
            sys.exit("--scrapy-redis-idle must be 1 or more (0 is scrapy-redis's 'never close')")
        # The peer: scrapy-redis with the largest process count, its per-process concurrency split.
        peer_procs = max(counts)
        peer_label = f"scrapy-redis-{peer_procs}p" + (
            "" if args.scrapy_redis_queue == "priority" else "-" + args.scrapy_redis_queue
        )
        plan.append((peer_label, "scrapy-redis", peer_procs, max(1, conc // peer_procs)))
    rows: list[dict[str, Any]] = []
    checks: list[str] = []
    offenders: list[str] = []
    timings: list[str] = []
    pps: dict[str, float] = {}
    total_violations = 0
    redis_violations = redis_duplicates = 0
    peer_notes: list[str] = []
    peer_figures: dict[str, Any] = {}
    site = Site(hosts, pages, args.latency)
    try:
        for label, kind, procs, threads in plan:
            why = unavailable(kind)
            if why:
                print(f"note: {label} skipped: {why}", flush=True)
                continue
            target, note = site, ""
            crawl: Crawl | None = None
            server: RedisServer | None = None
            peer: PeerProcesses | None = None
            if kind == "selenium":
                target = Site(sel_hosts, sel_pages, args.latency)
            try:
                if kind in ("redis", "scrapy-redis"):
                    server = RedisServer()
                    server.start()  # a fresh server: an empty frontier
                target.dump()  # start from an empty log
                if kind == "bare-scrapy":
                    n, s, parsed = bare_scrapy(target, delay=delay, concurrency=conc)
                    if parsed != n:
                        note = f", {parsed} responses parsed: its start URLs skip the dupefilter, fetched again"
                elif kind == "sequential":
                    crawl = ours("requests+lxml", target, delay=delay, concurrency=1, max_pages=seq_pages)
                elif kind == "selenium":
                    crawl = ours("selenium", target, delay=delay, concurrency=conc, browsers=args.browsers)
                elif kind == "redis":
                    assert server is not None
                    crawl = ours(
                        "requests+lxml", target, delay=delay, concurrency=threads, frontier=server.url, tasks=procs
                    )
                elif kind == "scrapy-redis":
                    assert server is not None
                    crawl, peer = scrapy_redis(
                        target,
                        server,
                        delay=delay,
                        processes=procs,
                        concurrency=threads,
                        max_idle=args.scrapy_redis_idle,
                        queue=args.scrapy_redis_queue,
                    )
                else:
                    crawl = ours(kind, target, delay=delay, concurrency=conc)
                log = target.dump()
            finally:
                if server is not None:
                    if crawl is not None:
                        import redis

                        db = redis.Redis.from_url(server.url)
                        # What the crawl keeps: not the replies kept 120 s for scripts re-sent after a lost
                        # connection (bounded by the request rate, not the crawl's size; they expire).
                        for key in db.scan_iter(match="cf:*:rid:*", count=1000):
                            db.delete(key)
                        info = db.info("memory")
                        crawl.redis_bytes = int(info["used_memory"]) - int(info.get("used_memory_startup", 0))
                    server.stop()
                if target is not site:
                    target.close()
            if crawl is not None:
                n, s = crawl.pages, crawl.seconds
            pol = politeness(log, delay, args.tolerance, 1)
            limit = target.hosts / delay
            pps[label] = n / s if s else 0.0
            total_violations += pol["violations"]
            row: dict[str, Any] = {"run": label}
            if redis_mode:
                row |= {"processes": procs, "conc/proc": threads}
            row |= {
                "hosts": target.hosts,
                "pages": n,
                "seconds": f"{s:.2f}",
                "pages/s": f"{pps[label]:.1f}",
                "ratio_to_limit": f"{pps[label] / limit:.3f}",
                "violations": pol["violations"],
                "min_gap_ms": f"{pol['min_gap_ms']:.1f}" if pol["min_gap_ms"] != float("inf") else "-",
                "max_in_flight": pol["max_in_flight"],
            }
            if redis_mode:
                t = timing(log, crawl.started if crawl else None, s, delay)
                up = t.get("startup_s")
                row["startup_s"] = f"{up:.2f}" if up is not None else "-"
                row["ratio_after_startup"] = f"{n / (s - up) / limit:.3f}" if up is not None and s > up else "-"
                row["duplicates"] = "-" if crawl is None or crawl.duplicates is None else crawl.duplicates
                again, extra, indexes = refetched(log)
                row["refetched"] = again
                if t:
                    nan = float("nan")
                    tail = t["tail_s"] if t["tail_s"] is not None else nan
                    if crawl is not None and crawl.redis_bytes is not None and n:
                        timings.append(f"{label}: Redis memory {crawl.redis_bytes / n:,.0f} bytes per stored page")
                    timings.append(
                        f"{label}: first request {up if up is not None else nan:.2f} s after the start "
                        f"({(up or 0) / s:.0%} of {s:.2f} s), requests over {t['busy_s']:.2f} s, {tail:.2f} s after "
                        f"the last ({tail / s:.0%}); gaps between starts to a host: mean {t['gap_mean_ms']:.1f} ms "
                        f"({t['gap_halves_ms'][0]:.1f} in the first half of the span, {t['gap_halves_ms'][1]:.1f} "
                        f"in the second), median {t['gap_median_ms']:.1f}, p95 {t['gap_p95_ms']:.1f}; every host "
                        f"asked by {t['first_ask_max_s']:.2f} s, hosts' last requests {t['last_ask_min_s']:.2f}–"
                        f"{t['last_ask_max_s']:.2f} s after the first; {t['connections']} connections opened; "
                        f"{t['short_gaps']} gaps under {delay * 1000:.0f} ms, {t['short_after_open']} of them after "
                        "a request that opened its connection"
                    )
            rows.append(row)
            if kind == "redis":
                redis_violations += pol["violations"]
                redis_duplicates += (crawl.duplicates or 0) if crawl else 0
                if crawl is not None and crawl.duplicates is not None:
                    note += (
                        f"; output {crawl.rows} rows, {crawl.duplicates} URL(s) stored twice (the manifest's "
                        f"duplicates_in_output: {crawl.manifest_duplicates})"
                    )
            if redis_mode:
                note += f"; {again} URL(s) requested more than once ({extra} extra requests, {indexes} of them indexes)"
            if kind == "scrapy-redis" and crawl is not None and peer is not None:
                note += (
                    f"; {crawl.rows} responses parsed over the processes, {crawl.duplicates} more than once "
                    "(its start URLs skip the dupefilter)"
                )
                peer_figures = {"pps": pps[label], "violations": pol["violations"], "refetched": again}
                last_end = max((e[3] for e in log), default=None)
                # Per process: (closed, idle-close wait), for those that reported both.
                ends = [
                    (c, c - i)
                    for i, c in zip(peer.idle_since, peer.closed, strict=True)
                    if i is not None and c is not None
                ]
                closes = [c for c in peer.closed if c is not None]
                parts = [
                    f"{label}: {s:.2f} s from starting the first process to the end of the last, nothing subtracted"
                ]
                if up is not None:
                    parts.append(f"{up:.2f} s to the first request (starting {procs} interpreters, importing Scrapy)")
                if last_end is not None:
                    parts.append(f"{peer.ended - last_end:.2f} s after the last request ended")
                if ends:
                    last_closed, last_wait = max(ends)
                    parts.append(
                        f"of which the idle-close wait (from the last process to close going idle for good to its "
                        f"spider closing, MAX_IDLE_TIME_BEFORE_CLOSE={args.scrapy_redis_idle}) {last_wait:.2f} s "
                        f"(per process: {', '.join(f'{w:.2f}' for _, w in ends)} s), then "
                        f"{peer.ended - last_closed:.2f} s to the end of the last process"
                    )
                first_close = min(closes) if closes else None
                if first_close is not None and last_end is not None:
                    parts.append(
                        f"first process closed {first_close - crawl.started:.2f} s after the start "
                        f"({last_end - first_close:+.2f} s before the last request ended)"
                    )
                peer_notes.append("; ".join(parts))
            if crawl is not None and crawl.errors:
                note += "; " + "; ".join(crawl.errors)
            expected = seq_pages if kind == "sequential" else target.total
            robots = sum(1 for e in log if e[1] == "/robots.txt")
            checks.append(
                f"{label}: {n} of {expected} pages {'ok' if n == expected else 'MISSING ' + str(expected - n)}"
                f" ({len(log)} requests logged, {robots} robots.txt{note})"
            )
            for host, prev, path, gap, flying in sorted(pol["bad"], key=lambda b: b[3])[:5]:
                offenders.append(f"{label}: {host} {prev} → {path}: {gap:.1f} ms between starts, {flying} in flight")
            print(f"done: {label}, {n} pages in {s:.2f} s", flush=True)
    finally:
        site.close()

    title = (
        f"crawl over {hosts} loopback hosts × {pages + 1} pages, {args.latency * 1000:.0f} ms per response, "
        f"per-host delay {delay} s, 1 in flight per host, concurrency {conc} (limit = hosts ÷ delay)"
    )
    if redis_mode:
        title += (
            "; redis-<n>p-c<t>: n crawler processes sharing a Redis frontier, t fetch threads each; "
            "scrapy-redis-<n>p: n Scrapy processes sharing scrapy-redis's queue and dupefilter"
        )
    print_table(rows, title=title)
    for line in peer_notes:
        print(f"note: {line}")
    print("\npages check:\n  " + "\n  ".join(checks))
    if timings:
        print("timing, from the access log:\n  " + "\n  ".join(timings))
    if offenders:
        print("violations (up to 5 per run, smallest gaps first):\n  " + "\n  ".join(offenders))
    if redis_mode:
        done = [lb for lb in redis_labels if lb in pps]
        # The headline: 4 processes (its first --redis-concurrency), or the largest count run.
        pick = next((lb for lb in done if lb.startswith("redis-4p-")), None)
        if pick is None and done:
            pick = max(done, key=lambda lb: int(lb.split("-")[1][:-1]))
        ratio = f"{pps[pick] / (hosts / delay):.3f}" if pick else "-"
        if pick:
            met = float(ratio) >= 0.9 and not redis_violations
            print(
                f"goal ({pick}): ≥ 0.9 of the limit and 0 violations: ratio {ratio}, {redis_violations} "
                f"violation(s) over the Redis runs: {'met' if met else 'NOT met'}"
            )
        print_keyvals(
            scrapy_redis_pages_per_s=f"{peer_figures['pps']:.1f}" if peer_figures else "-",
            scrapy_redis_violations=peer_figures.get("violations", "-"),
            scrapy_redis_refetched=peer_figures.get("refetched", "-"),
        )
        print_keyvals(redis_ratio_to_limit=ratio, violations=redis_violations, duplicates_in_output=redis_duplicates)
        return
    lxml, bare = pps.get("requests+lxml"), pps.get("bare-scrapy")
    print_keyvals(
        ratio_to_limit=f"{lxml / (hosts / delay):.3f}" if lxml is not None else "-",
        ratio_to_scrapy=f"{lxml / bare:.3f}" if lxml is not None and bare else "-",
        violations=total_violations,
        hosts=hosts,
    )


if __name__ == "__main__":
    main()

"""Crawl rules proven on the wire (RELIABILITY items 7, 11, 12, 14, 16, 17) and the browser's sandbox flag and
crash recovery (42, 44). Each test fails when its rule is broken (issue 12: "touched but not proven")."""

# The fixtures imported from the other crawl tests are redefined by name as test arguments, as pytest wants.
# ruff: noqa: F811

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusforge.crawl.crawler import Crawler
from corpusforge.crawl.page import FetchRequest, FetchResponse
from corpusforge.crawl.settings import CrawlSettings
from corpusforge.crawl.spider import Spider
from corpusforge.crawl.urls import canonicalize
from corpusforge.errors import DONE, ConfigError
from corpusforge.stage import StageContext
from tests.conftest import cli_env
from tests.crawl.faultserver import FaultServer, html, huge_bomb
from tests.crawl.test_browser import browser_tmp, leftovers  # noqa: F401  (browser_tmp is a fixture)
from tests.crawl.test_crawl import (  # noqa: F401  (backend and servers are fixtures)
    FAST,
    backend,
    crawl,
    needs_browser,
    needs_langchain,
    per_page,
    servers,
)

UA = "corpusforge-rules/1.0 (+mailto:crawler@127.0.0.1)"


def _names(docs) -> set[str]:
    return {d.url.rsplit("/", 1)[1] for d in docs}


# ---------------------------------------------------------------------------------------------- item 7
# A 1 GiB bomb per encoding against each static backend, fetched in a child process so its memory can be
# measured alone: the traced Python peak and the growth of the peak RSS (which counts C buffers too).
ONE_GIB = 1 << 30
BOMB_CAP = 2 << 20  # above every compressed body (<= ~1 MiB): the cap is hit while decompressing
READ_CHUNK = 64 << 10  # one read: read_capped's read1 size, Scrapy's decompression chunk
BOMBS = {"gzip": "gzip", "deflate": "deflate", "br": "br", "stacked": "gzip, gzip"}
STATIC_BACKENDS = ["requests+lxml", "requests+bs4", "scrapy", pytest.param("langchain", marks=needs_langchain)]

FETCH_BOMBS = r"""
import json, logging, re, resource, sys, tracemalloc
import urllib3.response
from corpusforge.crawl.page import FetchRequest
from corpusforge.registry import BACKENDS

name, base, cap, paths = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
# Decompressed bytes the backend took: what urllib3 handed to read_capped, or what Scrapy's decompression
# middleware reports it had decompressed when it gave up.
pulled = [0]
read1 = urllib3.response.HTTPResponse.read1
def counted(self, *a, **k):
    data = read1(self, *a, **k)
    pulled[0] += len(data or b"")
    return data
urllib3.response.HTTPResponse.read1 = counted
class Seen(logging.Handler):
    def emit(self, record):
        m = re.search(r"(\d+) B decompressed so far", record.getMessage())
        if m:
            pulled[0] = int(m.group(1))
logging.getLogger("scrapy.downloadermiddlewares.httpcompression").addHandler(Seen())

def maxrss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux

b = BACKENDS.get(name)(user_agent="corpusforge-test", timeout_s=30)
def fetch(path):
    return b.fetch(FetchRequest(base + path, headers={"User-Agent": "corpusforge-test"}, max_bytes=cap, timeout_s=30))
assert fetch("/ok").status == 200  # warm: imports, pools, Scrapy's engine
tracemalloc.start()
for path in paths:
    pulled[0] = 0
    tracemalloc.reset_peak()
    traced0, rss0 = tracemalloc.get_traced_memory()[0], maxrss()
    r = fetch(path)
    peak = tracemalloc.get_traced_memory()[1] - traced0
    row = dict(path=path, error=r.error, body=len(r.body), pulled=pulled[0], peak=peak, rss_growth=maxrss() - rss0)
    del r
    print(json.dumps(row), flush=True)
after = fetch("/ok")
print(json.dumps(dict(path="/ok", error=after.error, status=after.status)), flush=True)
b.close()
"""


@pytest.fixture(scope="module")
def bomb_server():
    s = FaultServer(routes={"/ok": html("fine")} | {f"/{k}": huge_bomb(enc, ONE_GIB) for k, enc in BOMBS.items()})
    yield s
    s.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", STATIC_BACKENDS)
def test_each_bomb_stops_at_the_cap_with_bounded_memory(bomb_server, name):
    """Item 7: every encoding of a 1 GiB bomb is cut at the decompressed cap (plus at most one read) and the
    fetch's peak memory stays a few MiB; the backend fetches the next page normally afterwards."""
    paths = [f"/{k}" for k in BOMBS]
    out = subprocess.run(
        [sys.executable, "-c", FETCH_BOMBS, name, bomb_server.base, str(BOMB_CAP), *paths],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["path"]: r for r in map(json.loads, out.stdout.splitlines())}
    for path in paths:
        r = rows[path]
        assert r["error"] == "too_large", r
        assert r["body"] <= BOMB_CAP, r
        # The stop point: past the cap by at most one read, never further into the gigabyte.
        assert BOMB_CAP < r["pulled"] <= BOMB_CAP + READ_CHUNK, r
        assert r["peak"] < 24 << 20, r  # Python allocations during the fetch (cap 2 MiB; the bomb is 1 GiB)
        assert r["rss_growth"] < 64 << 20, r  # everything, C decompressor buffers included
    assert rows["/ok"]["status"] == 200 and rows["/ok"]["error"] is None


# ---------------------------------------------------------------------------------------------- item 11
def _chain(prefix: str, hops: int) -> dict:
    """``/{prefix}0`` redirects to ``/{prefix}1`` … ``hops`` times; the last one is a page."""
    routes: dict = {f"/{prefix}{i}": (302, {"Location": f"/{prefix}{i + 1}"}, b"") for i in range(hops)}
    return routes | {f"/{prefix}{hops}": html(f"end of the {prefix} chain")}


def test_a_long_redirect_chain_stops_at_the_cap_and_nothing_past_it_is_requested(tmp_path, servers, backend):
    """Item 11: 8 hops with max_redirects 5 → the original request and 5 redirects, then ``too_many_redirects``;
    a chain of exactly 5 hops is followed to its page (the cap is not off by one)."""
    s = servers(
        routes={"/": html('<a href="/long0">l</a><a href="/five0">f</a>')} | _chain("long", 8) | _chain("five", 5)
    )
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], max_redirects=5, backend=backend)
    assert [p for p in s.paths() if p.startswith("/long")] == [f"/long{i}" for i in range(6)]
    assert step["dropped"]["too_many_redirects"] == 1 and "redirect_loop" not in step["dropped"]
    by = {d.url.rsplit("/", 1)[1]: d for d in docs}
    assert set(by) == {"", "five0"} and by["five0"].final_url.endswith("/five5")
    assert [p for p in s.paths() if p.startswith("/five")] == [f"/five{i}" for i in range(6)] + ["/five5"] * (
        per_page(backend) - 1
    )


def test_the_redirect_cap_is_the_configured_one(tmp_path, servers):
    s = servers(routes={"/": html('<a href="/c0">c</a>')} | _chain("c", 8))
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], max_redirects=2)
    assert [p for p in s.paths() if p.startswith("/c")] == ["/c0", "/c1", "/c2"]
    assert step["dropped"] == {"too_many_redirects": 1}


# ---------------------------------------------------------------------------------------------- item 12
def _untouched(path: Path) -> Path:
    """A file whose access time lies a day before its modification time, so that any read moves it (relatime)."""
    path.write_text("secret: no crawler may read this file\n")
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - 86_400 * 10**9, st.st_mtime_ns))
    return path


def _was_read(path: Path) -> bool:
    st = path.stat()
    return st.st_atime_ns > st.st_mtime_ns - 86_400 * 10**9


@pytest.fixture
def atime_shows_reads(tmp_path) -> bool:
    """Whether this file system records reads (not mounted noatime): a control file is read once."""
    control = _untouched(tmp_path / "control.txt")
    control.read_bytes()
    return _was_read(control)


class SpyBackend:
    """A real backend that records every URL it is asked to fetch or render."""

    def __init__(self, inner) -> None:
        self.inner, self.urls = inner, []
        self.name, self.parser, self.renders = inner.name, inner.parser, inner.renders

    def fetch(self, request: FetchRequest) -> FetchResponse:
        self.urls.append(request.url)
        return self.inner.fetch(request)

    def render(self, request: FetchRequest) -> FetchResponse:
        self.urls.append(request.url)
        return self.inner.render(request)

    def close(self) -> None:
        self.inner.close()


def _bad_seeds(tmp_path: Path, base: str) -> list[str]:
    secret = _untouched(tmp_path / "secret.html")
    return [
        f"file://{secret}",
        "file:///etc/passwd",
        f"data:text/html,<a href={base}/from-data>a link only a parsed data: URL would reveal</a>",
        "ftp://127.0.0.1/pub/file.html",
    ]


def test_non_http_seeds_are_refused_before_anything_starts(tmp_path, servers):
    """Item 12: a ``file:``, ``data:`` or ``ftp:`` seed is a config error naming the seed; no request is made,
    not even for the good seed beside it."""
    s = servers(routes={"/": html("home")})
    for i, bad in enumerate(_bad_seeds(tmp_path, s.base)):
        with pytest.raises(ConfigError, match=r"stages\[0\]\.seeds\[1\]: .*only http and https"):
            crawl(tmp_path, [s.base + "/", bad], ["127.0.0.1"], workdir=f"w{i}")
        assert not (tmp_path / f"w{i}").exists()
    assert s.log == []
    assert not _was_read(tmp_path / "secret.html")


def test_non_http_seeds_that_reach_the_crawler_are_dropped_without_a_fetch_or_a_file_read(
    tmp_path, servers, atime_shows_reads
):
    """Item 12, the crawler's own check (settings not validated): the backend is never asked for those URLs,
    the local file is never read, the ``data:`` URL's content is never parsed."""
    from corpusforge.crawl.backends.requests_lxml import RequestsLxmlBackend

    s = servers(routes={"/": html("home"), "/from-data": html("x")})
    seeds = [*_bad_seeds(tmp_path, s.base), s.base + "/"]
    spy = SpyBackend(RequestsLxmlBackend(user_agent=UA))
    out = tmp_path / "crawl"
    out.mkdir()
    ctx = StageContext(run_dir=tmp_path, out_dir=out, in_dir=None, stage_name="crawl")
    settings = CrawlSettings(spider="unused", seeds=seeds, **FAST)
    outcome = Crawler(Spider(name="t", seeds=seeds, allowed_domains=["127.0.0.1"]), spy, settings, ctx).run()
    assert spy.urls == [s.base + "/robots.txt", s.base + "/"]
    assert s.paths() == ["/robots.txt", "/"]
    assert dict(outcome.stats.dropped) == {"scheme_refused": 4} and outcome.stats.output == 1
    if atime_shows_reads:
        assert not _was_read(tmp_path / "secret.html")


def test_redirects_to_data_ftp_and_file_are_refused_and_no_file_is_read(tmp_path, servers, backend, atime_shows_reads):
    """Item 12 for redirects, every backend: the hop is refused (``scheme_refused``) and the file's access time
    shows that no process, Chromium included, read it."""
    secret = _untouched(tmp_path / "secret.html")
    s = servers(
        routes={
            "/": html('<a href="/to-data">d</a><a href="/to-ftp">f</a><a href="/to-file">l</a>'),
            "/to-data": (302, {"Location": "data:text/html,<p>inline</p>"}, b""),
            "/to-ftp": (302, {"Location": "ftp://127.0.0.1/pub/file.html"}, b""),
            "/to-file": (302, {"Location": f"file://{secret}"}, b""),
        }
    )
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    assert _names(docs) == {""}
    assert step["dropped"] == {"scheme_refused": 3}
    if atime_shows_reads:
        assert not _was_read(secret)


# ---------------------------------------------------------------------------------------------- item 14
def test_credentials_never_follow_a_redirect_to_another_host_or_port(tmp_path, servers, backend, monkeypatch):
    """Item 14 on redirects: host A's cookie, userinfo in a redirect target and the environment's proxy
    credentials never reach host B (another address) or A2 (A's address, another port)."""
    proxy = servers(host="127.0.0.3", routes={})
    monkeypatch.setenv("http_proxy", f"http://puser:ppass@{proxy.host}:{proxy.port}")
    monkeypatch.setenv("HTTP_PROXY", f"http://puser:ppass@{proxy.host}:{proxy.port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    b = servers(host="127.0.0.2", routes={"/landing": html("b")})
    a2 = servers(routes={"/landing": html("a2")})
    a = servers(
        routes={
            "/": (
                200,
                {"Content-Type": "text/html", "Set-Cookie": "sid=secret; Path=/"},
                b'<a href="/again">x</a><a href="/go-b">b</a><a href="/go-a2">a2</a>',
            ),
            "/again": html("again"),
            "/go-b": (302, {"Location": b.base.replace("http://", "http://user:pw@") + "/landing"}, b""),
            "/go-a2": (302, {"Location": a2.base + "/landing"}, b""),
        }
    )
    res, docs, step = crawl(tmp_path, [a.base + "/"], ["127.0.0.1", "127.0.0.2"], backend=backend)
    by = {d.url.rsplit("/", 1)[1]: d for d in docs}
    assert set(by) == {"", "again", "go-b", "go-a2"}
    assert by["go-b"].final_url == b.base + "/landing" and by["go-a2"].final_url == a2.base + "/landing"
    assert b.paths() == ["/robots.txt", *["/landing"] * per_page(backend)]
    assert a2.paths() == ["/robots.txt", *["/landing"] * per_page(backend)]
    for h in b.log + a2.log:
        assert not {"cookie", "authorization", "proxy-authorization"} & set(h.headers), (h.host, h.path, h.headers)
    assert all("authorization" not in h.headers for h in a.log)
    assert proxy.log == []  # no proxy from the environment
    if backend != "scrapy":  # Scrapy keeps no cookies at all; the others send A's cookie back to A only
        assert all("sid=secret" in h.headers.get("cookie", "") for h in a.log if h.path == "/again")


# ---------------------------------------------------------------------------------------------- item 16
@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://127.0.0.1:80/a", "http://127.0.0.1/a"),
        ("https://127.0.0.1:443/a", "https://127.0.0.1/a"),
        ("HTTP://WWW.Example.ORG./a", "http://www.example.org/a"),
        ("http://127.0.0.1:8080/a?b=2&a=1#f", "http://127.0.0.1:8080/a?a=1&b=2"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ("http://127.0.0.1:8080/x/./y/../a", "http://127.0.0.1:8080/x/a"),
        ("http://127.0.0.1:8080/%7Euser/%61", "http://127.0.0.1:8080/~user/a"),
        ("http://127.0.0.1:8080/caf%c3%a9", "http://127.0.0.1:8080/café"),
        ("http://127.0.0.1:8080/a b", "http://127.0.0.1:8080/a%20b"),
    ],
)
def test_one_canonical_form_per_page(a, b):
    """Item 16: default port, case, fragment, query order, dot segments and escapes do not make a new URL."""
    assert canonicalize(a) == canonicalize(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://127.0.0.1:8080/a", "https://127.0.0.1:8080/a"),
        ("http://127.0.0.1:8080/a", "http://127.0.0.1:8081/a"),
        ("http://127.0.0.1:8080/a", "http://127.0.0.1:8080/a?x=1"),
        ("http://127.0.0.1:8080/a%2Fb", "http://127.0.0.1:8080/a/b"),  # an escaped "/" is not a separator
        ("http://127.0.0.1:8080/a%3Fb", "http://127.0.0.1:8080/a?b"),
        ("http://127.0.0.1:8080/A", "http://127.0.0.1:8080/a"),  # paths are case-sensitive
    ],
)
def test_different_pages_keep_different_canonical_forms(a, b):
    assert canonicalize(a) != canonicalize(b)


def test_one_page_linked_many_ways_is_fetched_once(tmp_path, servers, backend):
    """Item 16 on the wire: each page is requested once (by the browser too, once) however it is linked."""
    s = servers()
    same = [
        f"HTTP://127.0.0.1:{s.port}/a?b=2&a=1#f",
        f"http://127.0.0.1:{s.port}/a?a=1&b=2",
        "/./x/../a?a=1&amp;b=2",
        "/%61?b=2&a=1",
        "/caf%C3%A9",
        "/caf%c3%a9",
        "/café",
        "/a%2Fb",
        "/a/b",
    ]
    s.routes.update(
        {"/": html("".join(f'<a href="{u}">{i}</a>' for i, u in enumerate(same)))}
        | {p: html(p) for p in ("/a", "/caf%C3%A9", "/a%2Fb", "/a/b")}
    )
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    fetched = [p for p in s.paths() if p not in ("/", "/robots.txt")]
    assert sorted(fetched) == sorted(["/a?a=1&b=2", "/caf%C3%A9", "/a%2Fb", "/a/b"] * per_page(backend))
    assert len(docs) == 5 and step["dropped"] == {}


# ---------------------------------------------------------------------------------------------- item 17
def test_the_group_for_our_token_beats_the_star_group_and_every_request_identifies_us(tmp_path, servers, backend):
    """Item 17: ``User-agent: CorpusForge`` (any case) is our group and replaces ``*`` for us: its Disallow holds,
    the ``*`` group's does not; every request, the browser's included, carries the configured User-Agent."""
    robots = b"User-agent: *\nDisallow: /p2.html\n\nUser-agent: CorpusForge\nDisallow: /p1.html\n"
    links = "".join(f'<a href="/p{i}.html">p</a>' for i in range(3))
    s = servers(routes={"/robots.txt": (200, {"Content-Type": "text/plain"}, robots), "/": html(links)})
    s.routes.update({f"/p{i}.html": html(f"page {i}") for i in range(3)})
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], user_agent=UA, backend=backend)
    assert "/p1.html" not in s.paths() and s.paths().count("/p2.html") == per_page(backend)
    assert _names(docs) == {"", "p0.html", "p2.html"} and step["dropped"] == {"robots_disallowed": 1}
    assert [h.headers.get("user-agent") for h in s.log] == [UA] * len(s.log)


ROBOTS_GROUPS = [
    # Another crawler's group whose name is a prefix of our token is not ours: the "*" group applies.
    (b"User-agent: corpus\nAllow: /\n\nUser-agent: *\nDisallow: /p1.html\n", "corpusforge", ["/p1.html"]),
    (b"User-agent: corpus\nCrawl-delay: 3600\n\nUser-agent: *\nDisallow: /p1.html\n", "corpusforge", ["/p1.html"]),
    # Nor one whose name only starts with our token.
    (b"User-agent: corpusforge-news\nDisallow: /\n\nUser-agent: *\nDisallow: /p1.html\n", "corpusforge", ["/p1.html"]),
    # The configured agent_token decides which group is ours.
    (
        b"User-agent: corpusforge\nDisallow: /p1.html\n\nUser-agent: otherbot\nDisallow: /p2.html\n",
        "otherbot",
        ["/p2.html"],
    ),
    # A group naming several agents, one of them us.
    (
        b"User-agent: otherbot\nUser-agent: CORPUSFORGE\nDisallow: /p1.html\n\nUser-agent: *\nDisallow: /\n",
        "corpusforge",
        ["/p1.html"],
    ),
    # Two groups for our token are merged (RFC 9309 2.2.1).
    (
        b"User-agent: corpusforge\nDisallow: /p1.html\n\nUser-agent: *\nDisallow: /\n\n"
        b"User-agent: corpusforge\nDisallow: /p2.html\n",
        "corpusforge",
        ["/p1.html", "/p2.html"],
    ),
    # Our group with no rules allows everything, whatever "*" says.
    (b"User-agent: *\nDisallow: /\n\nUser-agent: corpusforge\n", "corpusforge", []),
]


@pytest.mark.parametrize(("robots", "token", "blocked"), ROBOTS_GROUPS)
def test_robots_groups_are_matched_by_our_exact_product_token(tmp_path, servers, robots, token, blocked):
    """Item 17: the group is chosen by the exact product token (case-insensitive), RFC 9309 2.2.1."""
    links = "".join(f'<a href="/p{i}.html">p</a>' for i in range(3))
    s = servers(routes={"/robots.txt": (200, {"Content-Type": "text/plain"}, robots), "/": html(links)})
    s.routes.update({f"/p{i}.html": html(f"page {i}") for i in range(3)})
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], agent_token=token, user_agent=f"{token}/1.0")
    pages = {"/", "/p0.html", "/p1.html", "/p2.html"}
    assert set(s.paths()) - {"/robots.txt"} == pages - set(blocked), step["dropped"]
    assert step["dropped"] == ({"robots_disallowed": len(blocked)} if blocked else {})


# ---------------------------------------------------------------------------------------------- item 42
@pytest.fixture
def fake_browser_binaries(tmp_path, monkeypatch):
    """Executables where find_browser looks, so the backend can be built without Chromium installed."""
    for name, env in (("chromium", "CORPUSFORGE_CHROMIUM"), ("chromedriver", "CORPUSFORGE_CHROMEDRIVER")):
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\nexit 1\n")
        exe.chmod(0o755)
        monkeypatch.setenv(env, str(exe))
    monkeypatch.setenv("CORPUSFORGE_BROWSER_TMP", str(tmp_path))


@pytest.mark.parametrize("euid", [0, 1000])
def test_no_sandbox_is_added_exactly_when_running_as_root(fake_browser_binaries, monkeypatch, caplog, euid):
    """Item 42: the Chrome options the selenium backend builds carry ``--no-sandbox`` as root, and only then.
    A browser that fails to start is reported with its own error."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from corpusforge.crawl.backends.selenium import SeleniumBackend

    built: list[list[str]] = []

    def chrome(*, service, options):  # stands in for webdriver.Chrome: records, then fails to start
        built.append(list(options.arguments))
        raise RuntimeError("not starting a browser in this test")

    monkeypatch.setattr(webdriver, "Chrome", chrome)
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    b = SeleniumBackend(user_agent=UA, timeout_s=5)
    try:
        r = b.render(FetchRequest("http://127.0.0.1:9/", timeout_s=5))
    finally:
        b.close()
    assert r.error == "browser_crashed" and len(built) == 1
    assert "not starting a browser in this test" in caplog.text  # the cause, not an error about the Service
    assert "--headless=new" in built[0] and f"--user-agent={UA}" in built[0]
    assert "--no-proxy-server" in built[0]  # item 14: no proxy from the environment for the pages either
    assert ("--no-sandbox" in built[0]) is (euid == 0)


# ---------------------------------------------------------------------------------------------- item 44
def _our_browser_processes() -> list:
    """chromedriver processes started by this test process and everything below them."""
    import psutil

    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() == "chromedriver" or "chrom" in p.name():
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def _started_for(browser_tmp: Path) -> list[str]:
    """Live processes that inherited ``CORPUSFORGE_BROWSER_TMP=browser_tmp``: every process the backend started,
    even one that left its process group and was re-parented (Chromium's crashpad handler does both)."""
    marker = f"CORPUSFORGE_BROWSER_TMP={browser_tmp}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:  # gone, or not ours to read
            continue
    return found


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@needs_browser
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_chromium_killed_mid_crawl_the_url_is_retried_and_stored_and_nothing_is_left(tmp_path, servers, browser_tmp):
    """Item 44: SIGKILL of the browser while it loads /p2 → that render fails, the URL is retried (static fetch
    and a render in a new browser) and stored, the crawl goes on to the pages after it, and no chromium or
    chromedriver process outlives the crawl. Also item 42 on the real command line and item 17 for the browser."""
    psutil = pytest.importorskip("psutil")
    killed: dict = {}

    def victim(h):
        # The second request for /p2 is the browser's (the first is the static fetch): kill it mid-load.
        if [x.path for x in s.log].count("/p2.html") == 2 and not killed:
            drivers = [p for p in psutil.Process().children() if p.name() == "chromedriver"]
            browsers = [c for d in drivers for c in d.children() if "chrom" in c.name() and c.name() != "chromedriver"]
            assert len(drivers) == 1 and len(browsers) == 1, (drivers, browsers)
            killed.update(t=time.monotonic(), cmdline=browsers[0].cmdline(), procs=[drivers[0], browsers[0]])
            os.kill(browsers[0].pid, signal.SIGKILL)
            time.sleep(0.5)  # the page load is in flight when the browser dies
        h.reply(*html("<p>page two</p>"))

    links = "".join(f'<a href="/p{i}.html">p</a>' for i in range(4))
    s = servers(routes={"/": html(links), "/p2.html": victim} | {f"/p{i}.html": html(f"page {i}") for i in (0, 1, 3)})
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend="selenium", user_agent=UA)
    assert killed, "the browser was never killed"
    assert res.status == DONE and _names(docs) == {"", "p0.html", "p1.html", "p2.html", "p3.html"}
    assert s.paths().count("/p2.html") == 4  # static, the killed render, then the retry: static and render
    assert step["counters"]["retries"] == 1 and step["dropped"] == {}
    assert any(h.path == "/p3.html" and h.t > killed["t"] for h in s.log)  # the crawl went on
    assert ("--no-sandbox" in killed["cmdline"]) is (os.geteuid() == 0)
    assert [h.headers.get("user-agent") for h in s.log] == [UA] * len(s.log)

    def left() -> list:
        return _our_browser_processes() + leftovers(browser_tmp) + _started_for(browser_tmp)

    deadline = time.monotonic() + 15
    while left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left() == []
    assert not any(_alive(p) for p in killed["procs"])

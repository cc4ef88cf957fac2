"""Crawl rules proven on the wire (RELIABILITY items 2, 3, 6, 7, 8, 11, 12, 14, 16, 17) and the browser's binaries,
sandbox flag, crash recovery and leftovers (41, 42, 44, 45). Each test fails when its rule is broken (issue 12: "touched but not proven")."""

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
from tests.crawl.faultserver import (
    TDMREP,
    FaultServer,
    Feed,
    SilentServer,
    endless,
    false_length_then_close,
    html,
    huge_bomb,
    stall_after_headers,
)
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

# Proofs of the crawl rules, many per backend: the full suite (CI) runs them, make test-fast does not.
pytestmark = pytest.mark.slow


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
    assert spy.urls == [s.base + "/robots.txt", s.base + TDMREP, s.base + "/"]
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


# The static fetch paths: requests (shared by requests+bs4, selenium and auto), Scrapy, and LangChain's loader.
WIRE_BACKENDS = ["requests+lxml", "scrapy", pytest.param("langchain", marks=needs_langchain)]


# ---------------------------------------------------------------------------------------------- item 6
@pytest.mark.slow  # ~3 s per case: a real Retry-After wait
@pytest.mark.parametrize(("status", "retry_after"), [(429, "2"), (503, "2"), (429, "date")])
@pytest.mark.parametrize("name", ["requests+lxml", "scrapy"])
def test_retry_after_holds_the_whole_host_and_other_hosts_go_on(tmp_path, servers, name, status, retry_after):
    """Item 6: after a 429/503 with ``Retry-After`` (seconds or an HTTP date) no URL of that host, the others
    included, is requested before that time (access-log times); another host's pages are fetched meanwhile."""
    from email.utils import formatdate

    wall_minus_mono = time.time() - time.monotonic()
    until: dict[str, float] = {}  # the monotonic time before which host A must not be asked again

    def limited(h):
        if "t" in until:
            return h.reply(*html("served at last"))
        now = time.monotonic()
        if retry_after == "date":
            target_wall = float(int(time.time()) + 3)  # an HTTP date has whole seconds: 2-3 s from now
            value = formatdate(target_wall, usegmt=True)
            until["t"] = target_wall - wall_minus_mono
        else:
            value, until["t"] = retry_after, now + float(retry_after)
        h.reply(status, {"Retry-After": value, "Content-Type": "text/html"}, b"later")

    a = servers(
        routes={"/": html('<a href="/limited">l</a><a href="/a1">1</a><a href="/a2">2</a>'), "/limited": limited}
    )
    a.routes.update({"/a1": html("a1"), "/a2": html("a2")})
    links = "".join(f'<a href="/b{i}">b</a>' for i in range(6))
    b = servers(host="127.0.0.2", routes={"/": html(links)} | {f"/b{i}": html(f"b{i}") for i in range(6)})
    res, docs, step = crawl(
        tmp_path, [a.base + "/", b.base + "/"], ["127.0.0.1", "127.0.0.2"], min_delay_s=0.25, backend=name
    )
    assert res.status == DONE and len(docs) == 4 + 7 and step["dropped"] == {}
    assert step["counters"]["retries"] == 1
    t_limited = next(h.t for h in a.log if h.path == "/limited")
    after = [h for h in a.log if h.t > t_limited]
    # The whole host waited: /a1, /a2 and the retried /limited all start at or after the Retry-After time.
    assert sorted(h.path for h in after) == ["/a1", "/a2", "/limited"], a.paths()
    assert min(h.t for h in after) >= until["t"] - 0.02, min(h.t for h in after) - until["t"]
    # Host B went on while A waited (its pages are 0.25 s apart, so they fall inside A's 2 s hold).
    assert sum(t_limited < h.t < until["t"] for h in b.log) >= 4, (
        [(h.path, round(h.t - t_limited, 2)) for h in b.log + a.log],
        until["t"] - t_limited,
    )


# ---------------------------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("name", WIRE_BACKENDS)
def test_false_content_length_and_endless_bodies_stop_at_the_cap_in_bounded_time(tmp_path, servers, name):
    """Item 8: a body that claims 10 GiB and goes on forever, an endless chunked body and an endless
    unframed one are cut at the byte cap (``too_large``) by the client hanging up, seconds after they start
    (each server loop is bounded at 30 s on its own); one that claims 10 GiB, sends a little and closes is
    data loss (Scrapy refuses the claimed size up front: ``too_large``). Nothing of them is stored."""
    cap = 256 << 10
    feeds = {k: Feed() for k in ("length", "chunked", "close")}
    routes = {f"/endless-{k}": endless(f, framing=k, max_s=30) for k, f in feeds.items()}
    routes |= {"/claims-10g": false_length_then_close(), "/ok": html("fine")}
    s = servers(routes=routes | {"/": html("".join(f'<a href="{p}">x</a>' for p in routes))})
    t0 = time.monotonic()
    res, docs, step = crawl(
        tmp_path, [s.base + "/"], ["127.0.0.1"], max_bytes=cap, timeout_s=10.0, max_retries=1, backend=name
    )
    assert time.monotonic() - t0 < 20
    assert _names(docs) == {"", "ok"}
    if name == "scrapy":
        assert step["dropped"] == {"too_large": 4}, step["dropped"]
        assert s.paths().count("/claims-10g") == 1
    else:
        assert step["dropped"] == {"too_large": 3, "data_loss": 1}, step["dropped"]
        assert s.paths().count("/claims-10g") == 2  # data loss is transient: tried once more
    for kind, feed in feeds.items():
        assert s.paths().count(f"/endless-{kind}") == 1  # too_large is final: never asked again
        assert feed.why == "disconnect", (kind, feed)  # the client cut it, not the server's own bound
        assert feed.ended - feed.started < 5, (kind, feed)  # far below the 10 s deadline: the cap cut it
        assert feed.sent < cap + (32 << 20), (kind, feed)  # the cap plus socket buffers, never more
        if not (name == "scrapy" and kind == "length"):  # Scrapy hangs up on the claimed 10 GiB at once
            assert feed.sent > cap, (kind, feed)  # it was the cap that cut it: the client read up to it


# ---------------------------------------------------------------------------------------------- items 2, 3
ROBOTS_DEADLINE_S = 2.0  # the crawl's timeout_s; robots.txt gets min(10 s, timeout_s) in all


def _hung_robots(kind: str, servers):
    """A host whose robots.txt hangs; returns (server, feed or None)."""
    pages = {"/": html('<a href="/p0.html">p</a>'), "/p0.html": html("p0")}
    if kind == "silent":
        return SilentServer(max_s=30), None
    feed = Feed()
    if kind == "stall":
        return servers(routes=pages | {"/robots.txt": stall_after_headers(feed, max_s=30)}), feed
    # Trickles forever: a 4-byte chunk every 0.1 s (chunked: no length lets a client refuse it up front).
    trickle_forever = endless(feed, framing="chunked", block=b"#\n#\n", interval_s=0.1)
    return servers(routes=pages | {"/robots.txt": trickle_forever}), feed


@pytest.mark.parametrize("kind", ["silent", "stall", "trickle"])
@pytest.mark.parametrize("name", WIRE_BACKENDS)
def test_a_hanging_robots_txt_disallows_its_host_within_the_deadline(tmp_path, servers, name, kind):
    """Items 2 and 3: robots.txt from a server that accepts and never answers, one that stops after the
    headers, and one that trickles forever → given up within the robots deadline (the client hangs up; each
    server loop has its own 30 s bound), the host is disallowed and counted, no page of it is requested, and
    the other host is crawled in full."""
    hung, feed = _hung_robots(kind, servers)
    try:
        good = servers(host="127.0.0.2", routes={"/": html('<a href="/g1">g</a>'), "/g1": html("g1")})
        t0 = time.monotonic()
        res, docs, step = crawl(
            tmp_path,
            [hung.base + "/", good.base + "/"],
            ["127.0.0.1", "127.0.0.2"],
            timeout_s=ROBOTS_DEADLINE_S,
            backend=name,
        )
        elapsed = time.monotonic() - t0
    finally:
        if isinstance(hung, SilentServer):
            hung.close()
    assert hung.paths() == ["/robots.txt"]
    if feed is None:
        assert isinstance(hung, SilentServer) and len(hung.hung_up) == 1
        started, ended = hung.log[0].t, hung.hung_up[0]
    else:
        wait_until = time.monotonic() + 3  # the server notices the hang-up at its next write (0.1 s ticks)
        while not feed.ended and time.monotonic() < wait_until:
            time.sleep(0.05)
        assert feed.why == "disconnect", feed
        started, ended = feed.started, feed.ended
    assert ended - started < ROBOTS_DEADLINE_S + 1.0, ended - started  # the deadline, plus a trickle tick
    assert elapsed < ROBOTS_DEADLINE_S + 8  # the whole crawl, start-up included
    assert res.status == DONE and step["dropped"] == {"robots_unavailable": 1}
    assert step["counters"]["robots_skips"] == 1
    assert _names(docs) == {"", "g1"} and all(d.url.startswith(good.base) for d in docs)
    assert good.paths() == ["/robots.txt", "/", "/g1"]


ROBOTS_CAP = 512 * 1024  # RobotsCache.max_bytes: RFC 9309's "at least 500 KiB"


@pytest.mark.parametrize("name", WIRE_BACKENDS)
def test_a_rule_past_the_robots_size_cap_is_not_seen(tmp_path, servers, name):
    """Item 3: a 700 KiB robots.txt is parsed up to 512 KiB: its Disallow before the cap holds, its Disallow
    after the cap is never seen (that page is fetched). Scrapy hands over no bytes of a body past its cap, so
    there the file is "too large to be trusted" and the whole host is disallowed, as robots.py documents."""
    head = b"User-agent: *\nDisallow: /p1.html\n"
    padding = b"# " + b"x" * 60 + b"\n"
    body = head + padding * ((ROBOTS_CAP - len(head)) // len(padding) - 10)
    tail = b"Disallow: /p2.html\n"
    past = body + padding * 200 + tail  # the tail starts ~12 KiB past the cap
    assert len(body) < ROBOTS_CAP < past.index(tail) and len(past) < ROBOTS_CAP + (16 << 10)
    links = "".join(f'<a href="/p{i}.html">p</a>' for i in range(3))
    routes = {"/": html(links)} | {f"/p{i}.html": html(f"p{i}") for i in range(3)}
    s = servers(routes=routes | {"/robots.txt": (200, {"Content-Type": "text/plain"}, past)})
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=name)
    if name == "scrapy":
        assert s.paths() == ["/robots.txt"] and step["dropped"] == {"robots_unavailable": 1}
        return
    assert sorted(set(s.paths())) == ["/", "/p0.html", "/p2.html", "/robots.txt"]
    assert step["dropped"] == {"robots_disallowed": 1}
    # Control: the same rule inside the cap holds (so it was the cap that hid it above).
    s.routes["/robots.txt"] = (200, {"Content-Type": "text/plain"}, body + tail)
    s.log.clear()
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=name, workdir="w2")
    assert sorted(set(s.paths())) == ["/", "/p0.html", "/robots.txt"]
    assert step["dropped"] == {"robots_disallowed": 2}


def _robots_chain(hops: int) -> dict:
    """/robots.txt redirects ``hops`` times (/r1 … /r{hops}); the last is a robots.txt disallowing /p1.html."""
    routes: dict = {"/robots.txt": (302, {"Location": "/r1"}, b"")} if hops else {}
    routes |= {f"/r{i}": (302, {"Location": f"/r{i + 1}"}, b"") for i in range(1, hops)}
    last = f"/r{hops}" if hops else "/robots.txt"
    return routes | {last: (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /p1.html\n")}


@pytest.mark.parametrize("name", WIRE_BACKENDS)
def test_a_robots_redirect_chain_past_the_cap_disallows_the_host(tmp_path, servers, name):
    """Item 3: robots.txt reached in 5 redirects (the cap) is obeyed; in 6 the host is disallowed after
    exactly the original request and 5 hops, and nothing else of it is requested."""
    links = "".join(f'<a href="/p{i}.html">p</a>' for i in range(3))
    pages = {"/": html(links)} | {f"/p{i}.html": html(f"p{i}") for i in range(3)}
    five = servers(routes=pages | _robots_chain(5))
    six = servers(host="127.0.0.2", routes=pages | _robots_chain(6))
    res, docs, step = crawl(tmp_path, [five.base + "/", six.base + "/"], ["127.0.0.1", "127.0.0.2"], backend=name)
    assert five.paths() == ["/robots.txt", "/r1", "/r2", "/r3", "/r4", "/r5", "/", "/p0.html", "/p2.html"]
    assert six.paths() == ["/robots.txt", "/r1", "/r2", "/r3", "/r4", "/r5"]
    assert step["dropped"] == {"robots_disallowed": 1, "robots_unavailable": 1}
    assert all(d.url.startswith(five.base) for d in docs) and len(docs) == 3


# ---------------------------------------------------------------------------------------------- item 41
def _recording_exe(path: Path, record: Path) -> Path:
    """An executable that appends its own path and arguments to ``record``, then fails (no browser starts)."""
    path.write_text(f'#!/bin/sh\necho "$0 $*" >> {record}\nexit 1\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("absent", "named"),
    [
        ("chromium", "chromium was not found"),
        ("chromedriver", "chromedriver was not found"),
        ("both", "chromium and chromedriver were not found"),
    ],
)
@pytest.mark.parametrize("how", ["missing", "not executable"])
def test_a_missing_chromium_or_chromedriver_names_the_debian_packages(tmp_path, monkeypatch, absent, named, how):
    """Item 41: a configured chromium or chromedriver path that does not exist (or cannot be run) stops the
    backend, and the crawl stage, with an error naming what is missing and the Debian packages to install;
    it never falls back to another binary (the real ones are on PATH here) and starts nothing."""
    pytest.importorskip("selenium")
    from corpusforge.crawl.backends.selenium import SeleniumBackend
    from corpusforge.errors import FatalError

    record = tmp_path / "started.log"
    for name, env in (("chromium", "CORPUSFORGE_CHROMIUM"), ("chromedriver", "CORPUSFORGE_CHROMEDRIVER")):
        exe = _recording_exe(tmp_path / name, record)
        if absent in (name, "both"):
            if how == "missing":
                exe = tmp_path / "absent" / name
            else:
                exe.chmod(0o644)
        monkeypatch.setenv(env, str(exe))
    monkeypatch.setenv("CORPUSFORGE_BROWSER_TMP", str(tmp_path))
    before = set(os.listdir(tmp_path))
    with pytest.raises(FatalError) as err:
        SeleniumBackend(user_agent=UA)
    msg = str(err.value)
    assert named in msg and "apt-get install chromium chromium-driver" in msg, msg
    assert "CORPUSFORGE_CHROMIUM" in msg and "CORPUSFORGE_CHROMEDRIVER" in msg  # how to point at them
    assert set(os.listdir(tmp_path)) == before and not record.exists()  # no profile folder, nothing started
    # The crawl stage says the same before it fetches anything.
    s = FaultServer(routes={"/": html("home")})
    try:
        with pytest.raises(ConfigError, match=r"stages\[0\]\.backend: .*apt-get install chromium chromium-driver"):
            crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend="selenium")
    finally:
        s.close()
    assert s.log == [] and not record.exists()


def test_the_configured_chromedriver_is_the_one_started(tmp_path, monkeypatch):
    """Item 41: the chromedriver that runs is the configured one, with the configured chromium as the binary:
    not Selenium Manager's pick (never consulted), nor ``SE_CHROMEDRIVER``'s, nor the one on PATH."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common import selenium_manager

    from corpusforge.crawl.backends.selenium import SeleniumBackend

    record = tmp_path / "started.log"
    driver = _recording_exe(tmp_path / "my-chromedriver", record)
    browser = _recording_exe(tmp_path / "my-chromium", record)
    decoy = _recording_exe(tmp_path / "decoy-chromedriver", record)
    monkeypatch.setenv("CORPUSFORGE_CHROMEDRIVER", str(driver))
    monkeypatch.setenv("CORPUSFORGE_CHROMIUM", str(browser))
    monkeypatch.setenv("CORPUSFORGE_BROWSER_TMP", str(tmp_path))
    monkeypatch.setenv("SE_CHROMEDRIVER", str(decoy))  # Selenium's own override must not win over ours

    asked: list = []
    monkeypatch.setattr(selenium_manager.SeleniumManager, "binary_paths", lambda self, *a: asked.append(a) or {})
    built: list[tuple[str, str]] = []
    real_chrome = webdriver.Chrome

    def chrome(*, service, options):
        built.append((service.path, options.binary_location))
        return real_chrome(service=service, options=options)

    monkeypatch.setattr(webdriver, "Chrome", chrome)
    b = SeleniumBackend(user_agent=UA, timeout_s=5)
    try:
        r = b.render(FetchRequest("http://127.0.0.1:9/", timeout_s=5))
    finally:
        b.close()
    assert r.error == "browser_crashed"  # our fake driver exits at once
    assert built == [(str(driver), str(browser))]
    assert asked == []
    started = record.read_text().splitlines()
    assert len(started) == 1 and started[0].startswith(f"{driver} ") and "--port=" in started[0], started


# ---------------------------------------------------------------------------------------------- item 45
def _marked(browser_tmp: Path) -> list:
    """Live processes (psutil) that inherited ``CORPUSFORGE_BROWSER_TMP=browser_tmp`` or name it on their
    command line: everything the backend of that run started (reaper, chromedriver, chromium)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            mine = p.environ().get("CORPUSFORGE_BROWSER_TMP") == str(browser_tmp)
            if (mine or str(browser_tmp) in " ".join(p.cmdline())) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@needs_browser
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_kill_minus_9_of_corpusforge_run_mid_render_leaves_no_browser(tmp_path, servers, browser_tmp):
    """Item 45: ``kill -9`` of ``corpusforge run`` (a selenium recipe, on a slow site) while Chromium is
    loading a page → within seconds no chromium, chromedriver or helper started by that run is alive, and
    its profile folder is gone."""
    psutil = pytest.importorskip("psutil")
    in_render = []

    def slow(h):
        path = h.path
        if sum(x.path == path for x in s.log) == 2:  # the browser's request (the static fetch came first)
            in_render.append(path)
        time.sleep(1.5)
        h.reply(*html(f"<p>slow page {path}</p>"))

    links = "".join(f'<a href="/p{i}">p</a>' for i in range(10))
    s = servers(routes={"/": html(links)} | {f"/p{i}": slow for i in range(10)})
    spider = tmp_path / "spider.toml"
    spider.write_text(f'name = "t"\nseeds = ["{s.base}/"]\nallowed_domains = ["127.0.0.1"]\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "t"\n[[stages]]\nkind = "crawl"\nspider = "{spider}"\nbackend = "selenium"\n'
        "min_delay_s = 0.0\ntimeout_s = 20.0\n"
    )
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w"]
    env = cli_env() | {"CORPUSFORGE_BROWSER_TMP": str(browser_tmp)}
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not in_render and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert in_render and p.poll() is None, "the browser never loaded a page"
        running = _marked(browser_tmp)
        names = {x.name() for x in running}
        assert "chromedriver" in names and any("chrom" in n and n != "chromedriver" for n in names), names
        os.kill(p.pid, signal.SIGKILL)
        assert p.wait(10) == -signal.SIGKILL
        wait_until = time.monotonic() + 15
        while (_marked(browser_tmp) or leftovers(browser_tmp)) and time.monotonic() < wait_until:
            time.sleep(0.2)
        assert [x.cmdline()[:2] for x in _marked(browser_tmp)] == [] and leftovers(browser_tmp) == []
        assert not any(_alive(x) for x in running)
        assert list(browser_tmp.iterdir()) == []  # the reaper removed the profile folder
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
        for x in _marked(browser_tmp):  # a failed run must not leave its browser behind for the next test
            try:
                x.kill()
            except psutil.NoSuchProcess:
                pass

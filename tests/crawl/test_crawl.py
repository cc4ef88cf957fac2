"""The crawl stage against a loopback fault server (RELIABILITY items 1–17, 23, 33)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusforge.errors import DONE, PARTIAL
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths, validate_folder
from tests.conftest import cli_env
from tests.crawl.faultserver import (
    FaultServer,
    brotli_bomb,
    chunked,
    deflate_bomb,
    endless_chunks,
    gzip_bomb,
    html,
    partial_body,
    stacked_bomb,
    trickle,
)

FAST = {"min_delay_s": 0.0, "backoff_s": 0.05, "timeout_s": 3.0, "max_retries": 2}


def _browser_missing() -> bool:
    import shutil

    return not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()) or not shutil.which("chromedriver")


# The browser tests run in CI (which installs chromium and chromium-driver); elsewhere they skip without them.
needs_browser = pytest.mark.skipif(
    _browser_missing() and not os.environ.get("CI"),
    reason="chromium/chromedriver not installed (apt-get install chromium chromium-driver)",
)


def _langchain_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("langchain_community") is None


# The optional langchain backend runs wherever its extra is installed (the dev extra, so CI runs it).
needs_langchain = pytest.mark.skipif(
    _langchain_missing() and not os.environ.get("CI"), reason="optional extra: pip install corpusforge[langchain]"
)
# One behaviour suite, every backend (RELIABILITY items 1-17).
BACKENDS = [
    "requests+lxml",
    "requests+bs4",
    "scrapy",
    pytest.param("selenium", marks=[needs_browser, pytest.mark.slow]),
    pytest.param("auto", marks=[needs_browser, pytest.mark.slow]),
    pytest.param("langchain", marks=needs_langchain),
]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


def per_page(backend: str) -> int:
    """Requests per stored HTML page: the browser backend renders after the static fetch."""
    # "auto" renders these small pages too: their static HTML has less text than min_text_chars.
    return 2 if backend in ("selenium", "auto") else 1


@pytest.fixture
def servers():
    made: list[FaultServer] = []

    def make(host: str = "127.0.0.1", routes=None) -> FaultServer:
        s = FaultServer(host=host, routes=routes or {})
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def crawl(tmp_path: Path, seeds: list[str], allowed: list[str], *, workdir="w", max_depth=5, **params):
    """Run a one-stage crawl recipe in-process; returns (run result, stored documents, crawl step stats)."""
    spider = tmp_path / "spider.toml"
    spider.write_text(
        f'name = "t"\nseeds = {seeds!r}\nallowed_domains = {allowed!r}\nmax_depth = {max_depth}\n'.replace("'", '"')
    )
    stage = {"kind": "crawl", "spider": str(spider)} | FAST | params
    if stage.get("backend") in ("selenium", "auto") and "timeout_s" not in params:
        stage["timeout_s"] = 15.0  # a page load on a loaded 2-core machine can take seconds
    res = run_recipe(validate_recipe({"name": "t", "workdir": str(tmp_path / workdir), "stages": [stage]}))
    docs = list(iter_documents(manifest_paths(tmp_path / workdir / "crawl"))) if res.status == DONE else []
    step = res.stages[0].steps[0] if res.stages[0].steps else {"dropped": {}, "counters": {}}
    return res, docs, step


def site(n: int = 5) -> dict:
    routes = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow: /private/\n")}
    links = "".join(f'<a href="/p{i}.html">p{i}</a>' for i in range(n))
    routes["/"] = html(links + '<a href="/private/secret.html">s</a>')
    for i in range(n):
        routes[f"/p{i}.html"] = html(f"<p>page {i}</p>")
    routes["/private/secret.html"] = html("secret")
    return routes


def test_robots_disallow_is_never_requested_and_counted(tmp_path, servers, backend):
    s = servers(routes=site())
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    assert res.status == DONE
    assert sorted(d.url.rsplit("/", 1)[1] for d in docs) == ["", "p0.html", "p1.html", "p2.html", "p3.html", "p4.html"]
    assert "/private/secret.html" not in s.paths()
    assert step["dropped"]["robots_disallowed"] == 1
    assert step["input"] == step["output"] + sum(step["dropped"].values())
    # Provenance on every stored document.
    d = docs[0]
    assert d.status == 200 and d.backend == backend and d.robots == "allowed" and d.fetched_at and d.html
    # An identifying User-Agent on every request, robots.txt included.
    assert all("corpusforge" in h.headers["user-agent"] for h in s.log)
    assert validate_folder(tmp_path / "w" / "crawl") == []


@pytest.mark.parametrize(("robots", "expect_pages"), [((500, {}, b"oops"), 0), ((404, {}, b""), 2)])
def test_robots_5xx_disallows_everything_and_4xx_allows(tmp_path, servers, robots, expect_pages, backend):
    s = servers(routes={"/robots.txt": robots, "/": html('<a href="/a.html">a</a>'), "/a.html": html("a")})
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    assert len(docs) == expect_pages
    if expect_pages == 0:
        assert s.paths() == ["/robots.txt"] and step["dropped"] == {"robots_unavailable": 1}


def test_robots_unreachable_host_is_disallowed(tmp_path, backend):
    res, docs, step = crawl(
        tmp_path, ["http://127.0.0.1:9/"], ["127.0.0.1"], backend=backend
    )  # nothing listens on port 9
    assert docs == [] and step["dropped"] == {"robots_unavailable": 1}


@pytest.mark.slow  # 3 s per backend: real Crawl-delay gaps
def test_crawl_delay_spaces_request_starts(tmp_path, servers, backend):
    routes = site(3)
    routes["/robots.txt"] = (200, {}, b"User-agent: *\nCrawl-delay: 0.5\n")  # a fraction, as Protego reads it
    s = servers(routes=routes)
    crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    starts = [h.t for h in s.log if h.path != "/robots.txt"]  # tdmrep.json's request is spaced like a page's
    assert len(starts) == 5 * per_page(backend) + 1  # this robots.txt has no Disallow: /private/ is fetched too
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.49


def test_crawl_delay_above_the_cap_skips_the_host(tmp_path, servers, backend):
    routes = site(2)
    routes["/robots.txt"] = (200, {}, b"User-agent: *\nCrawl-delay: 3600\n")
    s = servers(routes=routes)
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    assert docs == [] and step["dropped"] == {"crawl_delay_too_long": 1} and s.paths() == ["/robots.txt"]


def test_retry_after_is_honoured_then_budget_exhausted(tmp_path, servers, backend):
    calls = []

    def limited(h):
        calls.append(time.monotonic())
        h.reply(429, {"Retry-After": "1", "Content-Type": "text/html"}, b"slow down")

    s = servers(routes={"/": limited})
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], max_retries=2, backend=backend)
    assert len(calls) == 3 and all(b - a >= 0.95 for a, b in zip(calls, calls[1:], strict=False))
    assert step["dropped"] == {"http_429": 1} and step["counters"]["retries"] == 2


def test_bombs_caps_trickle_partial_bodies(tmp_path, servers, backend):
    s = servers(
        routes={
            "/": html(
                '<a href="/bomb">b</a><a href="/big">g</a><a href="/trickle">t</a><a href="/partial">p</a>'
                '<a href="/ok">ok</a>'
            ),
            "/bomb": gzip_bomb(50 << 20),
            "/big": (200, {"Content-Type": "text/html"}, b"x" * (300 << 10)),
            "/trickle": trickle(0.2, 10),
            "/partial": partial_body,
            "/ok": html("fine"),
        }
    )
    t0 = time.monotonic()
    res, docs, step = crawl(
        tmp_path, [s.base + "/"], ["127.0.0.1"], max_bytes=256 << 10, timeout_s=1.5, max_retries=0, backend=backend
    )
    assert time.monotonic() - t0 < 12  # the trickle is cut at its 1.5 s deadline, not after 10 s
    assert sorted(d.url.rsplit("/", 1)[1] for d in docs) == ["", "ok"]
    assert step["dropped"]["too_large"] == 2
    assert step["dropped"]["timeout"] == 1
    assert step["dropped"]["data_loss"] == 1


def test_redirects_file_scheme_offsite_and_loops(tmp_path, servers, backend):
    other = servers(host="127.0.0.2", routes={"/x": html("other host")})
    s = servers(
        routes={
            "/": html(
                '<a href="/to-file">1</a><a href="/loop1">2</a><a href="/to-other">3</a><a href="/moved">4</a>'
                f'<a href="file:///etc/passwd">5</a><a href="{other.base}/x">6</a><a href="ftp://127.0.0.1/f">7</a>'
            ),
            "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
            "/loop1": (302, {"Location": "/loop2"}, b""),
            "/loop2": (302, {"Location": "/loop1"}, b""),
            "/to-other": (302, {"Location": f"{other.base}/x"}, b""),
            "/moved": (301, {"Location": "/final"}, b""),
            "/final": html("final"),
        }
    )
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    urls = {d.url.rsplit("/", 1)[1]: d for d in docs}
    assert set(urls) == {"", "moved"} and urls["moved"].final_url.endswith("/final")
    assert step["dropped"]["scheme_refused"] == 3  # file: redirect, file: link, ftp: link
    assert step["dropped"]["offsite"] == 1 and step["dropped"]["offsite_redirect"] == 1
    assert step["dropped"]["redirect_loop"] == 1
    assert other.log == []  # nothing off the allowed domain was requested


def test_canonical_urls_are_fetched_once_and_traps_stop(tmp_path, servers, backend):
    s = servers(
        routes={
            "/": html(
                '<a href="/a?y=2&x=1">1</a><a href="/a?x=1&y=2#frag">2</a><a href="/a?x=1&amp;y=2">3</a>'
                '<a href="/cal/cal/cal/cal/">trap</a>' + '<a href="/' + "z" * 3000 + '">long</a>'
            ),
            "/a": html("a"),
        }
    )
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    assert [p for p in s.paths() if p.startswith("/a")] == ["/a?x=1&y=2"] * per_page(backend)
    assert step["dropped"]["trap_repeated_segment"] == 1 and step["dropped"]["trap_url_length"] == 1


def test_depth_limit(tmp_path, servers, backend):
    routes = {f"/d{i}": html(f'<a href="/d{i + 1}">next</a>') for i in range(10)}
    s = servers(routes=routes)
    res, docs, step = crawl(tmp_path, [s.base + "/d0"], ["127.0.0.1"], max_depth=3, backend=backend)
    assert len(docs) == 4 and step["dropped"] == {"trap_depth": 1}


def test_noai_and_non_utf8(tmp_path, servers, backend):
    s = servers(
        routes={
            "/": html('<a href="/noai">n</a><a href="/latin">l</a><a href="/meta">m</a>'),
            "/noai": html("no ai please", X_Robots_Tag="noai"),
            "/meta": html('<meta name="robots" content="noindex">x'),
            "/latin": (
                200,
                {"Content-Type": "text/html; charset=iso-8859-1"},
                "<html><body>café naïve</body></html>".encode("latin-1"),
            ),
        }
    )
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend=backend)
    by = {d.url.rsplit("/", 1)[1]: d for d in docs}
    assert set(by) == {"", "latin"} and "café naïve" in by["latin"].html
    assert step["dropped"]["optout_noai"] == 1 and step["dropped"]["optout_noindex"] == 1


def test_max_pages_flag_is_partial_and_the_rerun_continues(tmp_path, servers):
    s = servers(routes=site(8))
    spider = tmp_path / "spider.toml"
    spider.write_text(f'name = "t"\nseeds = ["{s.base}/"]\nallowed_domains = ["127.0.0.1"]\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "t"\n[[stages]]\nkind = "crawl"\nspider = "{spider}"\nmin_delay_s = 0.0\nsegment_pages = 2\n'
    )
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w"]
    first = subprocess.run(
        [*cmd, "--max-pages", "3"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert first.returncode == PARTIAL, first.stderr
    second = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert second.returncode == DONE, second.stderr
    docs = list(iter_documents(manifest_paths(tmp_path / "w" / "crawl")))
    urls = [d.url for d in docs]
    assert len(urls) == len(set(urls)) == 9
    fetched = [p for p in s.paths() if p != "/robots.txt"]
    assert len(fetched) == len(set(fetched)) == 9  # nothing fetched twice across the two runs


def test_kill_minus_9_mid_crawl_then_resume_stores_every_page_exactly_once(tmp_path, servers):
    s = servers(routes=site(30))
    spider = tmp_path / "spider.toml"
    spider.write_text(f'name = "t"\nseeds = ["{s.base}/"]\nallowed_domains = ["127.0.0.1"]\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "t"\n[[stages]]\nkind = "crawl"\nspider = "{spider}"\nmin_delay_s = 0.0\nsegment_pages = 4\n'
    )
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w"]
    env = cli_env() | {"CORPUSFORGE_FAULT": "crawl:11"}  # the process dies hard at the 11th stored page
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == 137
    before = len([p for p in s.paths() if p != "/robots.txt"])
    rerun = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == DONE, rerun.stderr
    urls = [d.url for d in iter_documents(manifest_paths(tmp_path / "w" / "crawl"))]
    assert len(urls) == len(set(urls)) == 31
    refetched = len([p for p in s.paths() if p != "/robots.txt"]) - 31
    assert 0 < refetched <= 4 and before == 11  # only the uncommitted segment's pages were fetched again
    assert validate_folder(tmp_path / "w" / "crawl") == []


def test_recrawl_sends_conditional_requests_and_stores_only_changes(tmp_path, servers):
    pages = {"/": html('<a href="/same">s</a><a href="/etag">e</a><a href="/changes">c</a>')}
    pages["/same"] = html("unchanged page")  # no validators: the body hash tells it is unchanged
    version = {"n": 1}

    def etag(h):
        if h.headers.get("If-None-Match") == '"v1"':
            return h.reply(304, {"ETag": '"v1"'}, b"")
        h.reply(*html("tagged", ETag='"v1"'))

    def changes(h):
        h.reply(*html(f"version {version['n']}"))

    s = servers(routes=pages | {"/etag": etag, "/changes": changes})
    _, first, _ = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], workdir="day1")
    assert len(first) == 4
    version["n"] = 2
    res, second, step = crawl(
        tmp_path, [s.base + "/"], ["127.0.0.1"], workdir="day2", previous=str(tmp_path / "day1" / "crawl")
    )
    assert sorted(d.url.rsplit("/", 1)[1] for d in second) == ["changes"]
    assert step["dropped"]["not_modified"] == 1 and step["dropped"]["unchanged"] == 2
    assert [h.headers.get("if-none-match") for h in s.log if h.path == "/etag"] == [None, '"v1"']


def test_cookies_and_userinfo_never_cross_hosts_or_ports(tmp_path, servers, backend):
    b = servers(host="127.0.0.2", routes={"/": html("b")})
    a2 = servers(routes={"/": html("a2")})
    a = servers(
        routes={
            "/": (
                200,
                {"Content-Type": "text/html", "Set-Cookie": "sid=secret"},
                f'<a href="{b.base}/">b</a><a href="{a2.base}/">a2</a><a href="/again">x</a>'.encode(),
            ),
            "/again": html("again"),
        }
    )
    seed = a.base.replace("http://", "http://user:pw@") + "/"
    res, docs, step = crawl(tmp_path, [seed], ["127.0.0.1", "127.0.0.2"], backend=backend)
    assert len(docs) == 4
    for server in (a, a2, b):
        assert all("authorization" not in h.headers for h in server.log)
    assert all("cookie" not in h.headers for h in b.log + a2.log)


def test_every_bomb_encoding_endless_chunks_broken_chunking_and_resets(tmp_path, servers, backend):
    """Items 7, 8, 10: deflate, brotli and stacked bombs and an endless chunked body stop at the cap;
    broken chunking and a reset mid-body are data loss, never stored."""
    small = lambda: iter([b"<html><body>", b"a first part"])  # noqa: E731
    s = servers(
        routes={
            "/": html(
                "".join(
                    f'<a href="/{p}">{p}</a>' for p in ("deflate", "br", "stacked", "endless", "broken", "reset", "ok")
                )
            ),
            "/deflate": deflate_bomb(50 << 20),
            "/br": brotli_bomb(50 << 20),
            "/stacked": stacked_bomb(50 << 20),
            "/endless": chunked(endless_chunks(max_s=15)),
            "/broken": chunked(small, terminate=False),
            "/reset": chunked(small, reset=True),
            "/ok": html("fine"),
        }
    )
    t0 = time.monotonic()
    res, docs, step = crawl(
        tmp_path, [s.base + "/"], ["127.0.0.1"], max_bytes=256 << 10, max_retries=1, backend=backend
    )
    assert time.monotonic() - t0 < 60
    assert sorted(d.url.rsplit("/", 1)[1] for d in docs) == ["", "ok"]
    assert step["dropped"]["too_large"] == 4, step["dropped"]
    assert step["dropped"]["data_loss"] == 2, step["dropped"]
    # Data loss is transient: each was tried again once before it was given up.
    assert s.paths().count("/broken") == 2 and s.paths().count("/reset") == 2


def test_robots_huge_trickled_and_redirect_chained(tmp_path, servers, backend):
    """Item 3: a huge robots.txt is parsed up to its cap; one that trickles past the deadline or redirects
    past the cap leaves its host disallowed."""
    huge = b"User-agent: *\nDisallow: /private/\n" + b"# padding padding padding padding\n" * 20000  # ~700 KiB
    a = servers(routes=site(2) | {"/robots.txt": (200, {"Content-Type": "text/plain"}, huge)})
    b = servers(host="127.0.0.2", routes=site(2) | {"/robots.txt": trickle(0.3, 20)})
    chain = {f"/r{i}": (302, {"Location": f"/r{i + 1}"}, b"") for i in range(10)}
    c = servers(host="127.0.0.3", routes=site(2) | chain | {"/robots.txt": (302, {"Location": "/r0"}, b"")})
    seeds = [a.base + "/", b.base + "/", c.base + "/"]
    t0 = time.monotonic()
    res, docs, step = crawl(tmp_path, seeds, ["127.0.0.1", "127.0.0.2", "127.0.0.3"], timeout_s=2.0, backend=backend)
    assert time.monotonic() - t0 < 60
    assert "/private/secret.html" not in a.paths()
    assert [p for p in b.paths() if p != "/robots.txt"] == []
    assert [p for p in c.paths() if not p.startswith(("/robots.txt", "/r"))] == []
    assert len([p for p in c.paths() if p.startswith("/r")]) <= 6  # the redirect cap (5 hops)
    assert step["dropped"]["robots_unavailable"] >= 2
    if backend == "scrapy":
        # Scrapy cancels a body over download_maxsize without handing over its first bytes: the host is
        # then treated as unavailable (the safe side of RFC 9309), so nothing of it is fetched.
        assert [p for p in a.paths() if p != "/robots.txt"] == []
    else:
        assert {d.url.rsplit("/", 1)[1] for d in docs} == {"", "p0.html", "p1.html"}


def test_three_hosts_keep_their_own_delay_and_do_not_stall_each_other(tmp_path, servers, backend):
    """Item 5: per host at most one request in flight and at least the minimum delay between starts."""
    spans: dict[str, list[tuple[float, float]]] = {}

    def slow(host):
        def handler(h):
            t = time.monotonic()
            time.sleep(0.05)
            spans.setdefault(host, []).append((t, time.monotonic()))  # before the reply: see test_concurrent
            h.reply(*html("<p>a page</p>"))

        return handler

    made = []
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        links = "".join(f'<a href="/p{i}">p</a>' for i in range(3))
        made.append(servers(host=host, routes={"/": html(links)} | {f"/p{i}": slow(host) for i in range(3)}))
    t0 = time.monotonic()
    res, docs, step = crawl(
        tmp_path,
        [m.base + "/" for m in made],
        ["127.0.0.1", "127.0.0.2", "127.0.0.3"],
        min_delay_s=0.6,
        backend=backend,
    )
    elapsed = time.monotonic() - t0
    assert len(docs) == 12
    for m in made:
        starts = sorted(h.t for h in m.log if h.path != "/robots.txt")
        assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.55, m.host
    for host, sp in spans.items():
        sp.sort()
        assert all(b[0] >= a[1] for a, b in zip(sp, sp[1:], strict=False)), host  # never two at once
    # 4 pages x per_page requests per host at 0.6 s: serially over hosts it would take 3x as long.
    assert elapsed < 3 * 4 * per_page(backend) * 0.6


def test_503_backs_off_exponentially_and_other_hosts_go_on(tmp_path, servers, backend):
    """Item 6 without Retry-After: gaps double; the failing host does not hold the healthy one back."""
    calls = []

    def down(h):
        calls.append(time.monotonic())
        h.reply(503, {"Content-Type": "text/html"}, b"down")

    bad = servers(routes={"/": down})
    links = "".join(f'<a href="/p{i}">p</a>' for i in range(3))
    good = servers(host="127.0.0.2", routes={"/": html(links)} | {f"/p{i}": html("ok") for i in range(3)})
    res, docs, step = crawl(
        tmp_path,
        [bad.base + "/", good.base + "/"],
        ["127.0.0.1", "127.0.0.2"],
        backoff_s=0.3,
        max_retries=3,
        backend=backend,
    )
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert len(calls) == 4 and step["dropped"]["http_503"] == 1
    assert gaps[0] >= 0.28 and gaps[1] >= 0.58 and gaps[2] >= 1.18  # 0.3, 0.6, 1.2 s
    assert len(docs) == 4
    good_starts = [h.t for h in good.log if h.path != "/robots.txt"]
    assert max(good_starts) < calls[-1], (
        [(h.path, round(h.t - calls[0], 2)) for h in good.log],
        [round(c - calls[0], 2) for c in calls],
    )  # the healthy host finished while the other backed off

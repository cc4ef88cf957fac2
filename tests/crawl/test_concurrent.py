"""The concurrent crawl (issue 13): many hosts at once, every per-host rule kept.

Loopback hosts 127.0.0.1 – 127.0.0.4, one server each; handlers record each request's [start, end] so the
tests can prove at most ``per_host_concurrency`` requests in flight per host and the delay between starts.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from corpusforge.errors import DONE, PARTIAL
from corpusforge.storage import iter_documents, manifest_paths, validate_folder
from tests.conftest import cli_env
from tests.crawl.faultserver import TDMREP, FaultServer, html
from tests.crawl.test_crawl import crawl, servers  # noqa: F401  (the servers fixture)

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4")
STATIC = ["requests+lxml", "requests+bs4"]


@pytest.fixture(params=STATIC)
def backend(request) -> str:
    return request.param


class Spans:
    """[start, end] of every page request, per host (monotonic s)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_host: dict[str, list[tuple[float, float]]] = {}

    def slow(self, host: str, body: str, sleep_s: float):
        def handler(h):
            t = time.monotonic()
            time.sleep(sleep_s)
            # The end is taken before the reply goes out: the client cannot start its next request before
            # it has this reply, so a next start is always after this end. Taken after the reply, a server
            # thread descheduled between the write and the clock read made one request look like two at once.
            end = time.monotonic()
            with self.lock:
                self.by_host.setdefault(host, []).append((t, end))
            h.reply(*html(body))

        return handler


def slow_site(spans: Spans, host: str, n: int, sleep_s: float, *, robots: bytes = b"User-agent: *\nDisallow:\n"):
    links = "".join(f'<a href="/p{i}.html">p{i}</a>' for i in range(n))
    routes = {"/robots.txt": (200, {"Content-Type": "text/plain"}, robots), "/": spans.slow(host, links, sleep_s)}
    for i in range(n):
        routes[f"/p{i}.html"] = spans.slow(host, f"<p>page {i} of {host}</p>", sleep_s)
    return routes


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start does not overlap)."""
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    most = cur = 0
    for _, d in events:
        cur += d
        most = max(most, cur)
    return most


@pytest.mark.slow  # about 3 s per case
@pytest.mark.parametrize(("per_host", "sleep_s", "delay_s"), [(1, 0.2, 0.3), (2, 0.5, 0.1)])
def test_hosts_in_parallel_each_within_its_slots_and_delay(tmp_path, servers, backend, per_host, sleep_s, delay_s):  # noqa: F811
    spans, n = Spans(), 6
    made = [servers(host=h, routes=slow_site(spans, h, n, sleep_s)) for h in HOSTS]
    t0 = time.monotonic()
    res, docs, step = crawl(
        tmp_path,
        [m.base + "/" for m in made],
        list(HOSTS),
        backend=backend,
        min_delay_s=delay_s,
        concurrency=8,
        per_host_concurrency=per_host,
    )
    elapsed = time.monotonic() - t0
    assert res.status == DONE
    urls = [d.url for d in docs]
    assert len(urls) == len(set(urls)) == len(HOSTS) * (n + 1)  # every page stored exactly once
    for m in made:
        paths = m.paths()
        assert paths[0] == "/robots.txt" and paths.count("/robots.txt") == 1, m.host  # robots before any fetch
        pages = [p for p in paths if p != "/robots.txt"]
        assert len(pages) == len(set(pages)) == n + 1, m.host  # nothing fetched twice
        starts = sorted(h.t for h in m.log)  # robots.txt counts as a request to its host
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert min(gaps) >= delay_s - 0.02, (m.host, gaps)
        assert max_overlap(spans.by_host[m.host]) <= per_host, m.host
    # Serially, the page requests alone would take their response times end to end.
    serial = sum(b - a for sp in spans.by_host.values() for a, b in sp)
    print(f"per_host={per_host}: serial {serial:.2f} s, concurrent {elapsed:.2f} s, x{serial / elapsed:.1f}")
    assert elapsed < 0.6 * serial
    assert max_overlap([s for sp in spans.by_host.values() for s in sp]) > 1  # hosts were fetched in parallel


@pytest.mark.slow  # about 5 s: the slow host's 2 s responses
def test_a_slow_host_does_not_slow_the_others(tmp_path, servers, backend):  # noqa: F811
    spans = Spans()
    slow = servers(host=HOSTS[0], routes=slow_site(spans, HOSTS[0], 1, 2.0))
    fast = [servers(host=h, routes=slow_site(spans, h, 4, 0.02)) for h in HOSTS[1:]]
    res, docs, step = crawl(
        tmp_path,
        [slow.base + "/", *(m.base + "/" for m in fast)],
        list(HOSTS),
        backend=backend,
        min_delay_s=0.3,
        concurrency=8,
    )
    assert res.status == DONE and len(docs) == 2 + 3 * 5
    slow_second = max(h.t for h in slow.log)  # its page after the 2 s index
    fast_last = max(h.t for m in fast for h in m.log)
    assert fast_last < slow_second  # the fast hosts were done while the slow one was still on its index


def _recipe(tmp_path: Path, bases: list[str], backend: str, **extra) -> Path:
    spider = tmp_path / "spider.toml"
    seeds = ", ".join(f'"{b}/"' for b in bases)
    allowed = ", ".join(f'"{h}"' for h in HOSTS)
    spider.write_text(f'name = "t"\nseeds = [{seeds}]\nallowed_domains = [{allowed}]\n')
    recipe = tmp_path / "r.toml"
    params = {"min_delay_s": 0.0, "segment_pages": 4, "concurrency": 16} | extra
    lines = ['name = "t"', "[[stages]]", 'kind = "crawl"', f'spider = "{spider}"', f'backend = "{backend}"']
    lines += [f"{k} = {v}" for k, v in params.items()]
    recipe.write_text("\n".join(lines) + "\n")
    return recipe


def _pages(made: list[FaultServer]) -> list[str]:
    return [m.host + p for m in made for p in m.paths() if p != "/robots.txt"]


@pytest.mark.slow  # two CLI runs
def test_kill_minus_9_mid_concurrent_crawl_then_resume_stores_every_page_exactly_once(tmp_path, servers, backend):  # noqa: F811
    spans, n = Spans(), 9
    made = [servers(host=h, routes=slow_site(spans, h, n, 0.05)) for h in HOSTS]
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(_recipe(tmp_path, [m.base for m in made], backend))]
    cmd += ["--workdir", "w"]
    env = cli_env() | {"CORPUSFORGE_FAULT": "crawl:11"}  # the process dies hard at the 11th stored page
    killed = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert killed.returncode == 137, killed.stderr
    before = len(_pages(made))
    assert 11 <= before <= 11 + 16  # at most `concurrency` fetched but not yet applied
    rerun = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == DONE, rerun.stderr
    urls = [d.url for d in iter_documents(manifest_paths(tmp_path / "w" / "crawl"))]
    total = len(HOSTS) * (n + 1)
    assert len(urls) == len(set(urls)) == total
    refetched = len(_pages(made)) - total
    assert 0 < refetched <= 3 + 16  # the uncommitted segment's pages and what was in flight
    assert validate_folder(tmp_path / "w" / "crawl") == []


@pytest.mark.slow  # two CLI runs
def test_sigterm_mid_concurrent_crawl_exits_partial_and_the_rerun_completes(tmp_path, servers, backend):  # noqa: F811
    spans, n = Spans(), 9
    made = [servers(host=h, routes=slow_site(spans, h, n, 0.15)) for h in HOSTS]
    recipe = _recipe(tmp_path, [m.base for m in made], backend, min_delay_s=0.1)
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(_pages(made)) < 8 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert p.poll() is None, "the crawl ended before it could be stopped"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == PARTIAL, err
    total = len(HOSTS) * (n + 1)
    assert len(_pages(made)) < total
    rerun = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == DONE, rerun.stderr
    urls = [d.url for d in iter_documents(manifest_paths(tmp_path / "w" / "crawl"))]
    assert len(urls) == len(set(urls)) == total
    fetched = _pages(made)
    assert len(fetched) == len(set(fetched)) == total  # the in-flight pages were kept: nothing fetched twice
    assert validate_folder(tmp_path / "w" / "crawl") == []


def test_a_backend_that_is_not_thread_safe_crawls_sequentially(tmp_path, servers, caplog):  # noqa: F811
    """A plug-in backend that does not say ``thread_safe``, with concurrency 8: never two fetches at once."""
    from corpusforge.crawl.backend import RequestsFetcher
    from corpusforge.registry import BACKENDS
    from tests.crawl.test_crawl import site

    class OneThread(RequestsFetcher):
        name = "one-thread"
        thread_safe = False
        busy = threading.Lock()
        overlaps = 0

        def fetch(self, request):
            if not OneThread.busy.acquire(blocking=False):
                OneThread.overlaps += 1
                OneThread.busy.acquire()
            try:
                time.sleep(0.02)
                return super().fetch(request)
            finally:
                OneThread.busy.release()

    BACKENDS.add("one-thread-test", OneThread)
    try:
        made = [servers(host=h, routes=site(3)) for h in HOSTS[:3]]
        with caplog.at_level("INFO", logger="corpusforge.crawl.crawler"):
            res, docs, step = crawl(
                tmp_path, [m.base + "/" for m in made], list(HOSTS[:3]), backend="one-thread-test", concurrency=8
            )
    finally:
        del BACKENDS._targets["one-thread-test"]
    assert res.status == DONE and len(docs) == 3 * 4
    assert OneThread.overlaps == 0
    assert "fetches from one thread only: crawling one request at a time" in caplog.text


def test_the_scrapy_backend_fetches_hosts_in_parallel_through_its_engine(tmp_path, servers):  # noqa: F811
    """scrapy with concurrency 8: its downloader runs our requests at once, each host within its slot."""
    spans, n = Spans(), 3
    made = [servers(host=h, routes=slow_site(spans, h, n, 0.3)) for h in HOSTS]
    res, docs, step = crawl(
        tmp_path, [m.base + "/" for m in made], list(HOSTS), backend="scrapy", min_delay_s=0.05, concurrency=8
    )
    assert res.status == DONE and len(docs) == len(HOSTS) * (n + 1)
    for m in made:
        assert m.paths()[0] == "/robots.txt"
        assert max_overlap(spans.by_host[m.host]) <= 1, m.host
    assert max_overlap([s for sp in spans.by_host.values() for s in sp]) >= 3  # hosts fetched at once


def test_concurrency_is_not_part_of_the_crawl_config():
    """A crawl may resume with another concurrency: the folder's config (and hash) does not change."""
    from corpusforge.crawl.stage import CrawlStage
    from corpusforge.plan import make_plan
    from corpusforge.recipe import validate_recipe

    base = {"spider": "spiders/demo.toml"}
    assert CrawlStage(**base).config() == CrawlStage(**base, concurrency=8, per_host_concurrency=2).config()
    plans = [
        make_plan(validate_recipe({"name": "c", "stages": [{"kind": "crawl", **base, **extra}]}))[0].config_hash
        for extra in ({}, {"concurrency": 16})
    ]
    assert plans[0] == plans[1]


JS_PAGE = (
    "<html><body><div id='x'></div><script>document.getElementById('x').textContent="
    "'rendered by a script ' + 'lorem ipsum '.repeat(30)</script></body></html>"
)


@pytest.mark.slow  # starts two headless Chromiums
@pytest.mark.parametrize("name", ["selenium", "auto"])
def test_browsers_render_several_hosts_at_once_each_host_within_its_rules(tmp_path, servers, monkeypatch, name):  # noqa: F811
    """A pool of two browsers: renders of different hosts run at once, every host keeps one request at a time
    and the delay between starts (a render is a request of its own), and no browser outlives the crawl."""
    from tests.crawl.test_browser import leftovers

    browser_tmp = tmp_path / "browser"
    browser_tmp.mkdir()
    monkeypatch.setenv("CORPUSFORGE_BROWSER_TMP", str(browser_tmp))
    spans, n, delay, sleep = Spans(), 2, 0.3, 0.4
    # The first two browser loads of /p0.html (of two hosts: one request per host at a time) wait for each
    # other: they meet only if two browsers render at once, whatever each took to start.
    meeting, met, arrivals, lock = threading.Barrier(2, timeout=12), [], [], threading.Lock()

    def js_page(host):
        plain = spans.slow(host, JS_PAGE[len("<html><body>") : -len("</body></html>")], sleep)

        def handler(h):
            if "sec-ch-ua" in {k.lower() for k in h.headers}:
                with lock:
                    arrivals.append(host)
                    first_two = len(arrivals) <= 2
                if first_two:
                    try:
                        meeting.wait()
                        met.append(host)
                    except threading.BrokenBarrierError:
                        pass
            plain(h)

        return handler

    made = []
    for h in HOSTS[:3]:
        routes = slow_site(spans, h, n, sleep)
        routes["/p0.html"] = js_page(h)
        made.append(servers(host=h, routes=routes))
    res, docs, step = crawl(
        tmp_path,
        [m.base + "/" for m in made],
        list(HOSTS[:3]),
        backend=name,
        min_delay_s=delay,
        concurrency=8,
        browsers=2,
        min_text_chars=5,  # auto: the plain pages (the index: "p0p1") have enough static text, p0 none
    )
    assert res.status == DONE
    assert sorted(d.url for d in docs) == sorted(m.base + p for m in made for p in ("/", "/p0.html", "/p1.html"))
    rendered = [d.url.rsplit("/", 1)[1] for d in docs if d.metadata.get("rendered")]
    if name == "selenium":
        assert len(rendered) == len(docs) == 9 and step["counters"]["renders"] == 9
    else:  # only the script-built page has too little static text
        assert rendered == ["p0.html"] * 3 and step["counters"]["renders"] == 3
        assert all("rendered by a script" in d.html for d in docs if d.url.endswith("/p0.html"))
    for m in made:
        assert m.paths()[0] == "/robots.txt", m.host
        starts = sorted(h.t for h in m.log)
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert min(gaps) >= delay - 0.02, (m.host, gaps)
        assert max_overlap(spans.by_host[m.host]) <= 1, m.host
    if name == "selenium":
        assert len([h for m in made for h in m.log if "sec-ch-ua" in h.headers]) == 9  # one load per page
    # Two browser loads of different hosts were in flight at once: two browsers rendered at the same time.
    assert len(met) == 2 and len(set(met)) == 2, (met, arrivals)
    assert leftovers(browser_tmp) == []


@pytest.mark.slow  # about 4 s: the hanging robots.txt
def test_a_robots_txt_that_times_out_does_not_stall_the_other_hosts(tmp_path, servers):  # noqa: F811
    spans = Spans()

    def hang(h):
        time.sleep(4.5)  # past the robots.txt timeout (3 s here)
        h.reply(200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow:\n")

    stuck_routes = slow_site(spans, HOSTS[0], 3, 0.01)
    stuck_routes["/robots.txt"] = hang
    stuck = servers(host=HOSTS[0], routes=stuck_routes)
    fast = [servers(host=h, routes=slow_site(spans, h, 5, 0.01)) for h in HOSTS[1:]]
    res, docs, step = crawl(
        tmp_path,
        [stuck.base + "/", *(m.base + "/" for m in fast)],
        list(HOSTS),
        backend="requests+lxml",
        min_delay_s=0.1,
        concurrency=8,
        timeout_s=3.0,
    )
    assert res.status == DONE
    assert stuck.paths() == ["/robots.txt"]  # unreachable robots.txt: nothing else of that host is fetched
    assert step["dropped"]["robots_unavailable"] == 1
    assert sorted(d.url for d in docs) == sorted(
        m.base + p for m in fast for p in ["/", *(f"/p{i}.html" for i in range(5))]
    )
    robots_start = stuck.log[0].t
    assert max(h.t for m in fast for h in m.log) < robots_start + 3.0  # all done while it still hung


def _spider_recipe(tmp_path: Path, bases: list[str], politeness: str, **params) -> dict:
    spider = tmp_path / "spider.toml"
    seeds = ", ".join(f'"{b}/"' for b in bases)
    allowed = ", ".join(f'"{h}"' for h in HOSTS)
    spider.write_text(f'name = "t"\nseeds = [{seeds}]\nallowed_domains = [{allowed}]\n[politeness]\n{politeness}\n')
    stage = {"kind": "crawl", "spider": str(spider), "min_delay_s": 0.0, "timeout_s": 5.0} | params
    return {"name": "t", "workdir": str(tmp_path / "w"), "stages": [stage]}


@pytest.mark.parametrize(
    ("politeness", "per_host_most", "all_most"),
    [
        ("min_delay_s = 0.0", 3, 8),  # the control: the recipe's 3 per host are used
        ("per_host_concurrency = 1", 1, 8),
        ("per_host_concurrency = 5", 3, 8),  # never looser than the recipe
        ("concurrency = 2", 2, 2),
        ("concurrency = 1", 1, 1),
    ],
)
def test_a_spider_may_only_make_the_crawl_stricter(tmp_path, servers, politeness, per_host_most, all_most):  # noqa: F811
    """The recipe asks for 3 per host and 8 in all; the spider's [politeness] may lower either, not raise it."""
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    spans = Spans()
    made = [servers(host=h, routes=slow_site(spans, h, 6, 0.15)) for h in HOSTS[:3]]
    recipe = _spider_recipe(tmp_path, [m.base for m in made], politeness, concurrency=8, per_host_concurrency=3)
    assert run_recipe(validate_recipe(recipe)).status == DONE
    per_host = max(max_overlap(spans.by_host[m.host]) for m in made)
    overall = max_overlap([s for sp in spans.by_host.values() for s in sp])
    assert per_host <= per_host_most and overall <= all_most, (per_host, overall)
    if per_host_most > 1 and all_most > 2:
        assert per_host > 1, (per_host, overall)  # the limit was reached, so it is what held
    if all_most > 1:
        assert overall > 1, (per_host, overall)


@pytest.mark.parametrize(
    ("politeness", "message"),
    [
        ("concurrency = 0", "politeness.concurrency: must be >= 1"),
        ("per_host_concurrency = -2", "politeness.per_host_concurrency: must be >= 1"),
        ("concurrency = 'many'", "politeness.concurrency"),
        ("browsers = 2", "politeness.browsers: unknown key; allowed: min_delay_s, concurrency, per_host_concurrency"),
    ],
)
def test_a_bad_politeness_value_names_the_spider_file_and_the_key(tmp_path, politeness, message):
    from corpusforge.crawl.spider import load_spider
    from corpusforge.errors import ConfigError

    recipe = _spider_recipe(tmp_path, ["http://127.0.0.1:1"], politeness)
    with pytest.raises(ConfigError, match=message) as info:
        load_spider(recipe["stages"][0]["spider"])
    assert "spider.toml" in str(info.value)


@pytest.mark.slow  # a CLI run of a few seconds
def test_progress_lines_while_crawling_without_control_characters(tmp_path, servers):  # noqa: F811
    spans, n = Spans(), 9
    made = [servers(host=h, routes=slow_site(spans, h, n, 0.05)) for h in HOSTS]
    recipe = _recipe(tmp_path, [m.base for m in made], "requests+lxml", min_delay_s=0.1)
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w", "--max-pages", "30"]
    env = cli_env() | {"CORPUSFORGE_PROGRESS_S": "0.2"}
    raw = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=60)  # bytes: a \r stays one
    got = subprocess.CompletedProcess(cmd, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
    assert got.returncode == PARTIAL, got.stderr
    lines = [x for x in got.stderr.splitlines() if "crawl: " in x and "pages stored" in x]
    assert len(lines) >= 2, got.stderr
    assert all("pages/s" in x and "hosts " in x and "queued" in x and "ETA " in x for x in lines), lines
    assert "\r" not in got.stdout + got.stderr and "\x1b" not in got.stdout + got.stderr


def test_closing_the_scrapy_backend_logs_no_error(servers, caplog):  # noqa: F811
    """Scrapy's engine stopped as an asyncio task: no "await wasn't used with future" from its close."""
    from corpusforge.crawl.backends.scrapy import ScrapyBackend
    from corpusforge.crawl.page import FetchRequest

    s = servers(routes={"/": html("<p>x</p>")})
    with caplog.at_level("ERROR"):
        b = ScrapyBackend(timeout_s=5)
        try:
            r = b.fetch(FetchRequest(s.base + "/", headers={}, max_bytes=1 << 20, timeout_s=5, max_redirects=0))
        finally:
            b.close()
    assert r.status == 200
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("flag", [1, 3])
def test_the_crawl_command_takes_the_concurrency_flag(tmp_path, servers, flag):  # noqa: F811
    spans = Spans()
    made = [servers(host=h, routes=slow_site(spans, h, 3, 0.15)) for h in HOSTS[:3]]
    recipe = _spider_recipe(tmp_path, [m.base for m in made], "min_delay_s = 0.0")
    cmd = [sys.executable, "-m", "corpusforge.cli", "crawl", recipe["stages"][0]["spider"], "--workdir", "w"]
    cmd += ["--concurrency", str(flag), "--set", "stages[0].min_delay_s=0.0"]
    got = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert got.returncode == DONE, got.stderr
    assert len(list(iter_documents(manifest_paths(tmp_path / "w" / "crawl")))) == 3 * 4
    overall = max_overlap([s for sp in spans.by_host.values() for s in sp])
    assert overall == 1 if flag == 1 else overall > 1


def test_the_sequential_loop_counts_robots_txt_as_a_request_to_its_host(tmp_path, servers):  # noqa: F811
    """concurrency 1: the first page of a host waits the delay after its robots.txt (it followed 50 ms after)."""
    spans, delay = Spans(), 0.3
    made = [servers(host=h, routes=slow_site(spans, h, 1, 0.01)) for h in HOSTS[:2]]
    res, docs, step = crawl(tmp_path, [m.base + "/" for m in made], list(HOSTS[:2]), min_delay_s=delay, concurrency=1)
    assert res.status == DONE and len(docs) == 4
    for m in made:
        starts = [h.t for h in m.log]  # robots.txt, tdmrep.json, 2 pages: every gap at least the delay
        assert m.paths(tdmrep=True)[:2] == ["/robots.txt", TDMREP] and len(starts) == 4
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert min(gaps) >= delay - 0.005, (m.host, gaps)

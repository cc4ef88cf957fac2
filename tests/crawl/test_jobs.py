"""Crawl jobs as a cron or systemd unit runs them (RELIABILITY items 24, 33), the spider tooling
(`corpusforge check`, `new-spider`, Python spiders) and the local inputs (HTML folder, JSONL, WARC)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusforge.crawl.spider import load_spider, run_checks
from corpusforge.errors import DONE, PARTIAL
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths, validate_folder
from tests.conftest import cli_env
from tests.crawl.faultserver import FaultServer, html
from tests.crawl.test_crawl import BACKENDS, FAST

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "corpusforge.cli"]


def slow_site(n: int, delay_s: float) -> dict:
    def page(i):
        def handler(h):
            time.sleep(delay_s)
            h.reply(*html(f"<p>page {i}</p>"))

        return handler

    routes = {"/robots.txt": (200, {}, b"User-agent: *\nAllow: /\n")}
    routes["/"] = html("".join(f'<a href="/p{i}.html">p{i}</a>' for i in range(n)))
    return routes | {f"/p{i}.html": page(i) for i in range(n)}


@pytest.fixture
def slow_server():
    s = FaultServer(routes=slow_site(30, 0.15))
    yield s
    s.close()


def _recipe(tmp_path: Path, base: str) -> Path:
    spider = tmp_path / "spider.toml"
    spider.write_text(f'name = "t"\nseeds = ["{base}/"]\nallowed_domains = ["127.0.0.1"]\n')
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        f'name = "t"\n[[stages]]\nkind = "crawl"\nspider = "{spider}"\nmin_delay_s = 0.0\nsegment_pages = 4\n'
    )
    return recipe


def _pages(server: FaultServer) -> list[str]:
    return [p for p in server.paths() if p != "/robots.txt"]


@pytest.mark.slow
def test_sigterm_flushes_state_exits_partial_and_the_next_run_continues(tmp_path, slow_server):
    cmd = [*CLI, "run", str(_recipe(tmp_path, slow_server.base)), "--workdir", "w"]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(_pages(slow_server)) < 6 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, "the crawl ended before it could be stopped"
        p.send_signal(signal.SIGTERM)  # what `systemctl stop` sends
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == PARTIAL, err
    stopped_at = len(_pages(slow_server))
    assert stopped_at < 31
    rerun = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert rerun.returncode == DONE, rerun.stderr
    urls = [d.url for d in iter_documents(manifest_paths(tmp_path / "w" / "crawl"))]
    assert len(urls) == len(set(urls)) == 31
    # The in-flight page finished and was saved before the exit: nothing is fetched twice.
    fetched = _pages(slow_server)
    assert len(fetched) == len(set(fetched)) == 31
    assert validate_folder(tmp_path / "w" / "crawl") == []


@pytest.mark.slow
def test_max_runtime_stops_as_partial_and_resumes(tmp_path, slow_server):
    cmd = [*CLI, "run", str(_recipe(tmp_path, slow_server.base)), "--workdir", "w"]
    t0 = time.monotonic()
    first = subprocess.run(
        [*cmd, "--max-runtime", "1"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert first.returncode == PARTIAL, first.stderr
    assert time.monotonic() - t0 < 20 and 0 < len(_pages(slow_server)) < 31
    second = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert second.returncode == DONE, second.stderr
    urls = [d.url for d in iter_documents(manifest_paths(tmp_path / "w" / "crawl"))]
    assert len(urls) == len(set(urls)) == 31
    assert len(_pages(slow_server)) == 31


@pytest.mark.slow
def test_crawl_command_with_scrapy_backend_and_max_pages(tmp_path):
    s = FaultServer(routes=slow_site(6, 0.0))
    try:
        spider = tmp_path / "site.toml"
        spider.write_text(f'name = "site"\nseeds = ["{s.base}/"]\nallowed_domains = ["127.0.0.1"]\n')
        cmd = [*CLI, "crawl", str(spider), "--backend", "scrapy", "--workdir", "w", "--set", "stages[0].min_delay_s=0"]
        first = subprocess.run(
            [*cmd, "--max-pages", "3"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120
        )
        assert first.returncode == PARTIAL, first.stderr
        assert len(_pages(s)) == 3
        second = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == DONE, second.stderr
        docs = list(iter_documents(manifest_paths(tmp_path / "w" / "crawl")))
        assert len(docs) == 7 and {d.backend for d in docs} == {"scrapy"}
    finally:
        s.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_python_spider_runs_unchanged_on_every_backend(tmp_path, backend):
    s = FaultServer(
        routes={"/": html("".join(f'<a href="/p{i}.html">p</a>' for i in range(6)))}
        | {f"/p{i}.html": html(f"page {i}") for i in range(6)}
    )
    try:
        stage = {
            "kind": "crawl",
            "spider": "tests.crawl.pyspider:EvenPagesSpider",
            "seeds": [s.base + "/"],
            "backend": backend,
        } | FAST
        if backend in ("selenium", "auto"):
            stage["timeout_s"] = 15.0
        res = run_recipe(validate_recipe({"name": "t", "workdir": str(tmp_path / "w"), "stages": [stage]}))
    finally:
        s.close()
    assert res.status == DONE
    docs = list(iter_documents(manifest_paths(tmp_path / "w" / "crawl")))
    assert sorted(d.url.rsplit("/", 1)[1] for d in docs) == ["", "p0.html", "p2.html", "p4.html"]
    assert not any(p in s.paths() for p in ("/p1.html", "/p3.html", "/p5.html"))


def test_spider_checks_pass_offline_for_shipped_spiders_and_fail_loudly():
    for f in sorted((ROOT / "spiders").glob("*.toml")):
        spider = load_spider(str(f))
        assert spider.checks and run_checks(spider) == [], f
    ok = subprocess.run([*CLI, "check"], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ok   spiders/python_docs.toml" in ok.stdout, ok.stdout + ok.stderr


def test_new_spider_writes_a_loadable_skeleton_whose_check_names_the_missing_page(tmp_path):
    made = subprocess.run(
        [*CLI, "new-spider", "blog", "https://blog.example.org/posts/"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    spider = load_spider(str(tmp_path / "spiders" / "blog.toml"))
    assert spider.seeds == ["https://blog.example.org/posts/"] and spider.allowed_domains == ["blog.example.org"]
    assert spider.min_delay_s == 2.0 and (tmp_path / "spiders" / "blog" / "pages").is_dir()
    check = subprocess.run(
        [*CLI, "check", "spiders/blog.toml"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 1 and "example.html not found" in check.stdout
    again = subprocess.run(
        [*CLI, "new-spider", "blog", "https://blog.example.org/"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2 and "exists" in again.stderr
    bad = subprocess.run(
        [*CLI, "new-spider", "x", "file:///etc/passwd"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_sitemaps_are_read_and_their_entries_crawled(tmp_path, backend):
    s = FaultServer(routes={f"/s{i}.html": html(f"from the sitemap {i}") for i in range(3)})
    ns = 'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"'
    xml = {"Content-Type": "application/xml"}
    s.routes["/index.xml"] = (
        200,
        xml,
        f'<?xml version="1.0"?><sitemapindex {ns}><sitemap><loc>{s.base}/a.xml</loc></sitemap></sitemapindex>'.encode(),
    )
    locs = "".join(f"<url><loc>{s.base}/s{i}.html</loc></url>" for i in range(3))
    s.routes["/a.xml"] = (
        200,
        xml,
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        f"<urlset {ns}>{locs}<url><loc>https://elsewhere.example/</loc></url></urlset>".encode(),
    )
    spider = tmp_path / "sm.toml"
    spider.write_text(
        f'name = "sm"\nseeds = []\nsitemaps = ["{s.base}/index.xml"]\nallowed_domains = ["127.0.0.1"]\n'
        'exclude = ["s2"]\n'
    )
    stage = {"kind": "crawl", "spider": str(spider), "backend": backend} | FAST
    if backend in ("selenium", "auto"):
        stage["timeout_s"] = 15.0
    try:
        res = run_recipe(validate_recipe({"name": "t", "workdir": str(tmp_path / "w"), "stages": [stage]}))
    finally:
        s.close()
    assert res.status == DONE
    docs = list(iter_documents(manifest_paths(tmp_path / "w" / "crawl")))
    assert sorted(d.url.rsplit("/", 1)[1] for d in docs) == ["s0.html", "s1.html"]
    step = res.stages[0].steps[0]
    assert step["dropped"]["sitemap_read"] == 2 and step["dropped"]["offsite"] == 1
    assert step["dropped"]["excluded_by_spider"] == 1

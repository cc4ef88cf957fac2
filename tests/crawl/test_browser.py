"""The browser backends (RELIABILITY items 41-46): rendering, timeouts, crashes, no leftover processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusforge.crawl.backends.selenium import SeleniumBackend, find_browser
from corpusforge.crawl.page import FetchRequest
from corpusforge.errors import FatalError
from tests.conftest import cli_env
from tests.crawl.faultserver import FaultServer, html
from tests.crawl.test_crawl import crawl, needs_browser

pytestmark = [needs_browser, pytest.mark.slow, pytest.mark.timeout(120)]

JS_PAGE = (
    200,
    {"Content-Type": "text/html"},
    b"<html><body><div id='x'></div><script>document.getElementById('x').textContent="
    b"'rendered by a script ' + 'lorem ipsum '.repeat(30)</script></body></html>",
)


def leftovers(marker: Path) -> list[str]:
    """Live processes whose command line mentions ``marker`` (zombies excluded)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(marker).encode() in cmd and state != "Z":
            out.append(cmd.replace(b"\0", b" ").decode(errors="replace")[:120])
    return out


@pytest.fixture
def browser_tmp(tmp_path, monkeypatch):
    d = tmp_path / "browser"
    d.mkdir()
    monkeypatch.setenv("CORPUSFORGE_BROWSER_TMP", str(d))
    return d


def test_missing_binaries_name_the_packages(monkeypatch):
    monkeypatch.setenv("CORPUSFORGE_CHROMEDRIVER", "/nonexistent/chromedriver")
    with pytest.raises(FatalError, match="apt-get install chromium chromium-driver"):
        find_browser()


def test_auto_escalates_only_js_pages_and_leaves_nothing_running(tmp_path, browser_tmp):
    s = FaultServer(
        routes={
            "/": html('<a href="/js">js</a><a href="/static">s</a>' + "<p>plenty of static text here</p>" * 20),
            "/js": JS_PAGE,
            "/static": html("<p>static words</p>" * 30),
        }
    )
    try:
        res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], backend="auto", min_text_chars=100)
    finally:
        s.close()
    by = {d.url.rsplit("/", 1)[1]: d for d in docs}
    assert set(by) == {"", "js", "static"}
    assert "rendered by a script" in by["js"].html and by["js"].metadata.get("rendered") is True
    assert step["counters"]["escalations"] == 1 and res.stages[0].extra["escalations"] == 1
    # The browser's request carries our User-Agent too.
    assert all("corpusforge" in h.headers["user-agent"] for h in s.log)
    assert leftovers(browser_tmp) == [] and list(browser_tmp.iterdir()) == []


def test_hanging_page_times_out_in_seconds_and_the_session_goes_on(browser_tmp):
    s = FaultServer(routes={"/hang": lambda h: time.sleep(15), "/js": JS_PAGE})
    b = SeleniumBackend(user_agent="corpusforge-test", timeout_s=2)
    try:
        t0 = time.monotonic()
        r = b.render(FetchRequest(s.base + "/hang", timeout_s=2))
        assert r.error == "timeout" and time.monotonic() - t0 < 10
        r = b.render(FetchRequest(s.base + "/js", timeout_s=5))
        assert r.error is None and "rendered by a script" in (r.rendered_html or "")
    finally:
        b.close()
        s.close()
    assert leftovers(browser_tmp) == []


def test_browser_killed_mid_crawl_is_recreated_and_the_url_retried(browser_tmp):
    s = FaultServer(routes={"/js": JS_PAGE})
    b = SeleniumBackend(user_agent="corpusforge-test", timeout_s=5)
    try:
        assert b.render(FetchRequest(s.base + "/js", timeout_s=5)).error is None
        assert b._group is not None
        os.killpg(b._group, signal.SIGKILL)  # chromedriver and chromium die
        r = b.render(FetchRequest(s.base + "/js", timeout_s=5))
        assert r.error == "browser_crashed"  # the crawler retries it (RETRYABLE_ERRORS)
        r = b.render(FetchRequest(s.base + "/js", timeout_s=5))
        assert r.error is None and b.restarts == 1
    finally:
        b.close()
        s.close()
    assert leftovers(browser_tmp) == []


def test_kill_minus_9_of_corpusforge_leaves_no_browser(tmp_path, browser_tmp):
    s = FaultServer(routes={"/js": JS_PAGE, "/hang": lambda h: time.sleep(30)})
    code = (
        "import sys, time\n"
        "from corpusforge.crawl.backends.selenium import SeleniumBackend\n"
        "from corpusforge.crawl.page import FetchRequest\n"
        "b = SeleniumBackend(user_agent='corpusforge-test', timeout_s=20)\n"
        f"b.render(FetchRequest('{s.base}/js', timeout_s=20))\n"
        "print('rendered', flush=True)\n"
        f"b.render(FetchRequest('{s.base}/hang', timeout_s=20))\n"
    )
    env = cli_env() | {"CORPUSFORGE_BROWSER_TMP": str(browser_tmp)}
    p = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "rendered"
        assert leftovers(browser_tmp)  # the browser is running now
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 15
        while leftovers(browser_tmp) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert leftovers(browser_tmp) == []
    finally:
        if p.poll() is None:
            p.kill()
        s.close()

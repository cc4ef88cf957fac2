"""``selenium`` and ``auto``: Selenium 4 driving the system's headless Chromium.

Every page is first fetched statically (requests, with the byte cap, deadline, redirect and content-type
rules applied by the crawler); a page that comes back as HTML is then rendered by the browser, which is the
second request to that host and waits for the host's next slot. So robots, offsite rules and delays are
enforced before the browser loads anything, and bombs, trickles and redirects to ``file:`` never reach it.
``auto`` renders only pages whose static HTML has too little visible text.

The browser comes from the Debian packages ``chromium`` and ``chromium-driver`` through explicit paths, so
Selenium Manager never downloads anything. As root, ``--no-sandbox`` is added. No proxy from the environment
is used, neither by Chromium nor by Selenium's connection to chromedriver. A page-load timeout of
seconds stops hanging pages; a crashed or killed browser is recreated and the URL retried by the crawler.
No chromium or chromedriver process outlives the backend: chromedriver runs in its own process group, and a
small reaper process (in its own session, reading a pipe from us) kills that group and anything using our
profile folder when the pipe closes — after ``close()``, an exception, or ``kill -9`` of corpusforge.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, ClassVar

from corpusforge.crawl.backend import RequestsFetcher
from corpusforge.crawl.page import FetchRequest, FetchResponse
from corpusforge.crawl.urls import host_key
from corpusforge.errors import FatalError, require

log = logging.getLogger(__name__)

BROWSER_CANDIDATES = ("/usr/bin/chromium", "/usr/lib/chromium/chromium", "/usr/bin/chromium-browser")
DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
# Flags that keep headless Chromium off the network except for the pages we ask for, and quiet.
CHROME_FLAGS = (
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--password-store=basic",
    "--mute-audio",
    "--blink-settings=imagesEnabled=false",  # text is what we keep; fewer requests to the host
    "--disable-breakpad",
    "--disable-crash-reporter",  # no crashpad handler, which would leave its own process group
    "--no-proxy-server",  # no proxy from the environment, like the static fetches (trust_env off)
)

# Kills what we started once its stdin closes (our process ended, however it ended). Each input line is a
# process-group id to kill; the argument is the profile folder whose users are killed too, then removed.
REAPER = r"""
import os, shutil, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
marker, groups = sys.argv[1], set()
for line in sys.stdin:
    line = line.strip()
    if line.startswith("-"):
        groups.discard(int(line[1:]))
    elif line:
        groups.add(int(line))
def info(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        return int(fields[1]), int(fields[2]), cmd
    except (OSError, ValueError, IndexError):
        return None
for _ in range(3):
    procs = {int(p): info(p) for p in os.listdir("/proc") if p.isdigit()}
    kill = {p for p, i in procs.items() if i and (i[1] in groups or marker.encode() in i[2])}
    grew = True
    while grew:  # descendants of those, wherever they moved to
        more = {p for p, i in procs.items() if i and i[0] in kill and p not in kill}
        grew = bool(more)
        kill |= more
    kill.discard(os.getpid())
    for p in kill:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    if not kill:
        break
shutil.rmtree(marker, ignore_errors=True)
"""


# What chromedriver's page_source returns (the root element's outerHTML) and the page's URL, in one round trip.
PAGE_SOURCE_AND_URL = "var e = document.documentElement; return [e ? e.outerHTML : '', document.URL];"


def find_browser() -> tuple[str, str]:
    """Paths of chromium and chromedriver (``CORPUSFORGE_CHROMIUM`` / ``CORPUSFORGE_CHROMEDRIVER`` override)."""

    def pick(env: str, candidates: tuple[str, ...], name: str) -> str | None:
        if os.environ.get(env):
            return os.environ[env] if os.access(os.environ[env], os.X_OK) else None
        for c in candidates:
            if os.access(c, os.X_OK):
                return c
        return shutil.which(name)

    browser = pick("CORPUSFORGE_CHROMIUM", BROWSER_CANDIDATES, "chromium")
    driver = pick("CORPUSFORGE_CHROMEDRIVER", DRIVER_CANDIDATES, "chromedriver")
    missing = [n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None]
    if missing:
        raise FatalError(
            f"the browser backends need headless Chromium, but {' and '.join(missing)} "
            f"{'were' if len(missing) > 1 else 'was'} not found; install the "
            "Debian packages: apt-get install chromium chromium-driver "
            "(or point CORPUSFORGE_CHROMIUM / CORPUSFORGE_CHROMEDRIVER at the binaries)"
        )
    assert browser is not None and driver is not None
    return browser, driver


def direct_service(**kwargs: Any) -> Any:
    """A chromedriver ``Service`` that starts ``executable_path`` whatever ``$SE_CHROMEDRIVER`` says, and whose
    ``stop()`` sends no shutdown request: Selenium sends that one through
    ``$http_proxy``, with the proxy's credentials. ``stop()`` still ends chromedriver (SIGTERM, then SIGKILL)
    after ``quit()`` closed the browser, and ``_stop_browser`` kills its process group."""
    from selenium.webdriver.chrome.service import Service

    class DirectService(Service):
        def send_remote_shutdown_command(self) -> None:
            return None

        def env_path(self) -> str | None:
            # Selenium would let $SE_CHROMEDRIVER replace executable_path (in Service and in webdriver.Chrome):
            # the configured driver is the one started.
            return None

    return DirectService(**kwargs)


def driver_pid(service: Any) -> int | None:
    """chromedriver's pid, or None: Selenium sets ``service.process`` only once it has started the driver, so
    it is absent when ``webdriver.Chrome`` failed before (reading it then would hide the real error)."""
    process = getattr(service, "process", None)
    return process.pid if process is not None else None


class _Browser:
    """One headless Chromium (and its chromedriver) of a backend's pool: started on first use, recreated after a
    crash, each generation in a profile folder of its own under the backend's ``profile_root``."""

    def __init__(self, owner: SeleniumBackend, index: int) -> None:
        self.owner = owner
        self.index = index
        self.driver: Any = None
        self.group: int | None = None
        self.generation = 0
        self.page_timeout_s: float | None = None
        self.cookie_key: str | None = None  # host key of the pages whose cookies the browser may hold
        self.restarts = 0

    def start(self) -> Any:
        webdriver = require("selenium.webdriver", "browser")
        from selenium.webdriver.chrome.options import Options

        o = self.owner
        self.generation += 1
        profile = os.path.join(o.profile_root, f"profile-{self.index}-{self.generation}")
        opts = Options()
        opts.binary_location = o.browser_path
        for flag in CHROME_FLAGS:
            opts.add_argument(flag)
        if os.geteuid() == 0:
            opts.add_argument("--no-sandbox")  # Chromium refuses to start its sandbox as root
        opts.add_argument(f"--user-data-dir={profile}")
        if o.user_agent:
            opts.add_argument(f"--user-agent={o.user_agent}")
        # Selenium would send its commands to chromedriver (on loopback) through $http_proxy. Its suggested
        # replacement, a ClientConfig, is not accepted by webdriver.Chrome in the versions we support.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            opts.ignore_local_proxy_environment_variables()
        service = direct_service(
            executable_path=o.driver_path,
            log_output=subprocess.DEVNULL,
            popen_kw={"start_new_session": True},  # its own process group, which the reaper kills
        )
        t0 = time.monotonic()
        try:
            driver = webdriver.Chrome(service=service, options=opts)
        except Exception:
            pid = driver_pid(service)
            if pid is not None:
                kill_group(pid)
            raise
        finally:
            pid = driver_pid(service)
            if pid is not None:
                o.tell_reaper(str(pid))
        self.group = driver_pid(service)
        try:  # the browser asks for /favicon.ico on its own: not a page we chose to fetch
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*/favicon.ico"]})
        except Exception as exc:
            log.debug("could not block favicon requests: %s", exc)
        self.page_timeout_s = None
        self.cookie_key = None  # a fresh profile: no cookies yet, but clear before the first page anyway
        log.info("started headless Chromium %d in %.1f s (%s)", self.index, time.monotonic() - t0, o.browser_path)
        return driver

    def stop(self) -> None:
        driver, self.driver = self.driver, None
        if driver is not None:
            try:
                driver.quit()
            except Exception as exc:  # a dead browser cannot be asked to quit
                log.debug("browser quit failed: %s", exc)
        if self.group is not None:
            kill_group(self.group)  # whatever quit() left behind
            self.owner.tell_reaper(f"-{self.group}")
            self.group = None

    def recycle(self) -> None:
        self.restarts += 1
        self.stop()

    def render(self, request: FetchRequest) -> FetchResponse:
        from selenium.common.exceptions import TimeoutException

        t0 = time.monotonic()

        def failed(error: str) -> FetchResponse:
            return FetchResponse(request.url, request.url, 0, {}, b"", error=error, elapsed_s=time.monotonic() - t0)

        try:
            if self.driver is None:
                self.driver = self.start()
            if self.page_timeout_s != request.timeout_s:
                # Seconds, not Chromium's default of 300 s: a hanging page must not stall the crawl.
                self.driver.set_page_load_timeout(request.timeout_s)
                self.driver.set_script_timeout(request.timeout_s)
                self.page_timeout_s = request.timeout_s
            # Chromium keys cookies by host, not port or scheme: forget every cookie whenever the page's
            # ``scheme://host:port`` differs from the last rendered one, so none set by one page reaches
            # another host, scheme or port (the same one-jar-per-host-key rule as the static fetches).
            key = host_key(request.url)
            if key != self.cookie_key:
                self.cookie_key = None  # unknown until the clear is confirmed
                self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
                self.cookie_key = key
            self.driver.get(request.url)
            # page_source and current_url in one WebDriver call instead of two.
            got = self.driver.execute_script(PAGE_SOURCE_AND_URL)
            if not (isinstance(got, list) and len(got) == 2 and all(isinstance(x, str) for x in got)):
                got = [self.driver.page_source, self.driver.current_url]
            html, final = got
        except TimeoutException:
            log.info("page load timed out after %.1f s: %s", request.timeout_s, request.url)
            try:  # reuse the session when it still answers
                self.driver.execute_script("window.stop();")
                self.driver.get("about:blank")
            except Exception:
                self.recycle()
            return failed("timeout")
        except Exception as exc:  # WebDriverException, or chromedriver gone (urllib3 connection errors)
            log.warning("browser failed on %s (%s): restarting it", request.url, str(exc).splitlines()[0][:200])
            self.recycle()
            return failed("browser_crashed")
        if len(html.encode("utf-8", errors="replace")) > request.max_bytes:
            return failed("too_large")
        return FetchResponse(request.url, final, 200, {}, b"", rendered_html=html, elapsed_s=time.monotonic() - t0)


def kill_group(pgid: int) -> None:
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


class SeleniumBackend(RequestsFetcher):
    """Static fetches through requests; renders through a pool of ``browsers`` headless Chromiums (default 1),
    each leased to one render at a time, so fetch threads may render at once, one page per browser."""

    name: ClassVar[str] = "selenium"  # type: ignore[misc]
    parser: ClassVar[str] = "lxml"  # type: ignore[misc]
    renders: ClassVar[str] = "always"  # type: ignore[misc]

    @staticmethod
    def check_available() -> None:
        require("selenium", "browser")
        find_browser()

    def __init__(self, *, user_agent: str | None = None, timeout_s: float = 30.0, browsers: int = 1) -> None:
        super().__init__(user_agent=user_agent, timeout_s=timeout_s)
        if browsers < 1:
            raise ValueError(f"browsers must be at least 1, got {browsers}")
        self.check_available()
        self.browser_path, self.driver_path = find_browser()
        # CORPUSFORGE_BROWSER_TMP: where profile folders go (tests use it to find leftovers).
        self.profile_root = tempfile.mkdtemp(
            prefix="corpusforge-chromium-", dir=os.environ.get("CORPUSFORGE_BROWSER_TMP")
        )
        self._reaper: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", REAPER, self.profile_root],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        self._reaper_lock = threading.Lock()
        self._browsers = [_Browser(self, i) for i in range(browsers)]
        self._idle: queue.LifoQueue[_Browser] = queue.LifoQueue()  # LIFO: the warm browser goes first
        for b in reversed(self._browsers):
            self._idle.put(b)

    @property
    def restarts(self) -> int:
        return sum(b.restarts for b in self._browsers)

    @property
    def _group(self) -> int | None:
        """The first running browser's process group (chromedriver's), for tests that kill it."""
        return next((b.group for b in self._browsers if b.group is not None), None)

    def tell_reaper(self, line: str) -> None:
        with self._reaper_lock:
            if self._reaper is not None and self._reaper.stdin is not None:
                try:
                    self._reaper.stdin.write(line.encode() + b"\n")
                    self._reaper.stdin.flush()
                except OSError:
                    pass

    # -- the Backend protocol
    def render(self, request: FetchRequest) -> FetchResponse:
        browser = self._idle.get()  # waits while every browser renders
        try:
            return browser.render(request)
        finally:
            self._idle.put(browser)

    def close(self) -> None:
        super().close()
        try:
            for b in self._browsers:
                b.stop()
        finally:
            with self._reaper_lock:
                reaper, self._reaper = self._reaper, None
            if reaper is not None:
                if reaper.stdin is not None:
                    reaper.stdin.close()  # EOF: the reaper sweeps and removes the profile folder
                try:
                    reaper.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    reaper.kill()
                    reaper.wait()

    def __del__(self) -> None:  # last resort; the reaper also acts when the process dies
        if getattr(self, "_reaper", None) is not None:
            try:
                self.close()
            except Exception:
                pass


class AutoBackend(SeleniumBackend):
    """Static fetch; render in the browser only pages whose static HTML yields too little text."""

    name: ClassVar[str] = "auto"  # type: ignore[misc]
    renders: ClassVar[str] = "auto"  # type: ignore[misc]

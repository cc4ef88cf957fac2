"""RELIABILITY 18 end to end: hostile pages fetched from a loopback server (invalid UTF-8, a wrong charset
header, NUL bytes, deep nesting, an enormous page) are stored or dropped with a reason by the crawl, then parsed
or rejected with a reason by extraction, in bounded time and memory, and no task dies."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from corpusforge.errors import DONE
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths
from tests.crawl.faultserver import FaultServer

PROSE = "The river rose slowly through the night and the lower fields were under water by morning. "


def _page(body: bytes, ctype: str = "text/html; charset=utf-8") -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": ctype}, body


HOSTILE = {
    "/bad-utf8.html": _page(b"<html><body><p>" + PROSE.encode() * 5 + b"caf\xe9 \xff\xfe\xc3(</p></body></html>"),
    "/latin1-says-utf8.html": _page(("<html><body><p>" + PROSE * 5 + "café àéè</p></body></html>").encode("latin-1")),
    "/nul.html": _page(b"<html><body><p>" + (PROSE.encode() + b"\x00") * 5 + b"</p>\x00\x00</body></html>"),
    "/deep.html": _page(b"<html><body>" + b"<div>" * 30_000 + PROSE.encode() + b"</div>" * 30_000 + b"</body></html>"),
    "/huge.html": _page(b"<html><body>" + b"<p>" + PROSE.encode() * 40_000 + b"</p></body></html>"),  # ~3.6 MB
    "/unclosed.html": _page(b"<p>" + b"unclosed <b>tags <i>everywhere " * 20_000),
    "/empty.html": _page(b""),
}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["requests+lxml", "requests+bs4"])
@pytest.mark.parametrize("extractor", ["lxml", "trafilatura"])
def test_hostile_pages_are_stored_or_dropped_with_a_reason_in_bounded_time_and_memory(tmp_path, backend, extractor):
    links = "".join(f'<a href="{p}">{p}</a>' for p in HOSTILE)
    routes = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")}
    routes["/"] = _page(f"<html><body><p>{PROSE}</p>{links}</body></html>".encode())
    server = FaultServer(routes=routes | HOSTILE)
    try:
        spider = tmp_path / "spider.toml"
        spider.write_text(f'name = "h"\nseeds = ["{server.base}/"]\nallowed_domains = ["127.0.0.1"]\nmax_depth = 2\n')
        raw = {
            "name": "h",
            "workdir": str(tmp_path / "w"),
            "workers": 1,
            "stages": [
                {"kind": "crawl", "spider": str(spider), "backend": backend, "min_delay_s": 0.0},
                {
                    "kind": "process",
                    "name": "clean",
                    "tasks": 1,
                    "steps": [{"type": "extract", "extractor": extractor, "timeout_s": 10.0}],
                },
            ],
        }
        tracemalloc.start()
        t0 = time.monotonic()
        res = run_recipe(validate_recipe(raw))
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        server.close()
    assert res.status == DONE, res.message
    assert elapsed < 90, f"{elapsed:.1f} s"
    assert peak < 400 << 20, f"traced peak {peak / 2**20:.0f} MiB"
    crawl, clean = res.stages[0].steps[0], res.stages[1].steps[0]
    for step in (crawl, clean):
        assert step["input"] == step["output"] + sum(step["dropped"].values())
    assert crawl["output"] + crawl["dropped"].get("too_large", 0) == len(HOSTILE) + 1  # every page accounted for
    assert set(clean["dropped"]) <= {"extract_empty", "extract_error", "extract_timeout", "extract_too_large"}
    stored = {d.url.rsplit("/", 1)[1]: d for d in iter_documents(manifest_paths(tmp_path / "w" / "clean"))}
    for name in ("bad-utf8.html", "latin1-says-utf8.html", "nul.html"):
        assert name in stored, f"{name} lost: {clean['dropped']}"
        assert "\x00" not in stored[name].text and "The river rose" in stored[name].text
    assert "café" in stored["latin1-says-utf8.html"].text  # decoded, not mojibake, although the header lies

"""Spider definitions: what to crawl, never how. No I/O happens here.

A spider is a TOML file (``spiders/<name>.toml``)::

    name = "python_docs"
    seeds = ["https://docs.python.org/3/library/"]
    allowed_domains = ["docs.python.org"]
    include = ['^https://docs\\.python\\.org/3/library/']   # follow only links matching one of these
    exclude = ['/genindex', '\\.zip$']                        # never follow links matching these
    max_depth = 3
    sitemaps = ["https://docs.python.org/sitemap.xml"]  # optional: their <loc> URLs are queued like links
    selectors = ["div.body"]       # main-content CSS selectors for extraction (optional)
    [politeness]                   # only ever stricter than the recipe's settings
    min_delay_s = 2.0
    per_host_concurrency = 1       # requests in flight per host (the recipe's, if lower)
    concurrency = 8                # fetches in flight over all hosts (the recipe's, if lower)
    [[checks]]                     # offline checks against saved pages (corpusforge check)
    page = "python_docs/pages/json.html"
    url = "https://docs.python.org/3/library/json.html"
    min_links = 10
    text_contains = ["JSON"]

or a Python class (``module:Class``) with the same attributes and an optional pure ``parse(page)`` that
returns the links to follow.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpusforge.errors import ConfigError
from corpusforge.params import check_value


@dataclass
class SavedPage:
    url: str
    html: str
    parser: str = "lxml"  # how links are parsed: "lxml" or "bs4" (the backend's parser)


@dataclass
class Spider:
    name: str
    seeds: list[str]
    allowed_domains: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    max_depth: int = 5
    selectors: list[str] = field(default_factory=list)
    sitemaps: list[str] = field(default_factory=list)  # sitemap (or sitemap index) URLs, read like seeds
    min_delay_s: float = 0.0  # per-site politeness; the crawler uses max(recipe floor, this)
    # None: the recipe's. Otherwise the crawler uses min(recipe, this): a spider may only be stricter.
    concurrency: int | None = None
    per_host_concurrency: int | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    base_dir: Path = Path(".")

    def __post_init__(self) -> None:
        self._include = [re.compile(p) for p in self.include]
        self._exclude = [re.compile(p) for p in self.exclude]

    def follow(self, url: str) -> bool:
        if any(p.search(url) for p in self._exclude):
            return False
        return not self._include or any(p.search(url) for p in self._include)

    def parse(self, page: SavedPage) -> list[str]:
        """Links on a page (absolute, not yet filtered). Pure: override in a Python spider if needed."""
        return extract_links(page.html, page.url, parser=page.parser)


def extract_links(html: str, base_url: str, *, parser: str = "lxml") -> list[str]:
    """Absolute URLs of ``<a href>`` links, honouring ``<base href>``; ``parser`` is "lxml" or "bs4"."""
    from corpusforge.crawl.urls import resolve

    if not html.strip():
        return []
    if parser == "bs4":
        return _links_bs4(html, base_url)
    import lxml.html

    try:
        root = lxml.html.fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return []
    base = root.xpath("string(//base/@href)") or base_url
    out = []
    for href in root.xpath("//a[@href]/@href"):
        u = resolve(str(base), str(href))
        if u:
            out.append(u)
    return out


def _links_bs4(html: str, base_url: str) -> list[str]:
    from corpusforge.crawl.urls import resolve
    from corpusforge.errors import require

    bs4 = require("bs4", "bs4")
    # html.parser: pure Python, so "requests+bs4" does not depend on lxml for parsing.
    soup = bs4.BeautifulSoup(html, "html.parser")
    base_tag = soup.find("base", href=True)
    base = str(base_tag["href"]) if base_tag is not None else base_url
    out = []
    for a in soup.find_all("a", href=True):
        u = resolve(base, str(a["href"]))
        if u:
            out.append(u)
    return out


_KEYS: dict[str, Any] = {
    "name": str,
    "seeds": list[str],
    "allowed_domains": list[str],
    "include": list[str],
    "exclude": list[str],
    "max_depth": int,
    "selectors": list[str],
    "sitemaps": list[str],
    "politeness": dict,
    "checks": list[dict],
    "description": str,
}


_POLITENESS = {"min_delay_s": (float, 0.0), "concurrency": (int, 1), "per_host_concurrency": (int, 1)}


def _check_table(raw: dict[str, Any]) -> dict[str, Any]:
    """Check a spider file's table (paths are its keys); returns its ``[politeness]`` values."""
    for k, v in raw.items():
        if k not in _KEYS:
            raise ConfigError(f"unknown key; allowed: {', '.join(_KEYS)}", path=k)
        check_value(v, _KEYS[k], k)
    for k in ("name", "seeds"):
        if k not in raw:
            raise ConfigError("required key is missing", path=k)
    pol = raw.get("politeness", {})
    out: dict[str, Any] = {}
    for k, v in pol.items():
        if k not in _POLITENESS:
            raise ConfigError(f"unknown key; allowed: {', '.join(_POLITENESS)}", path=f"politeness.{k}")
        kind, least = _POLITENESS[k]
        value = check_value(v, kind, f"politeness.{k}")
        if value < least:
            raise ConfigError(f"must be >= {least}, got {value}", path=f"politeness.{k}")
        out[k] = kind(value)
    if raw.get("max_depth", 5) < 0:
        raise ConfigError("must be >= 0", path="max_depth")
    for i, pat in enumerate(raw.get("include", []) + raw.get("exclude", [])):
        try:
            re.compile(pat)
        except re.error as exc:
            raise ConfigError(f"bad regular expression {pat!r}: {exc}", path=f"include/exclude[{i}]") from exc
    return out


def load_spider(ref: str, *, path: str = "spider") -> Spider:
    """Load ``spiders/x.toml`` or ``module:Class``; errors name the file and the field."""
    if ":" in ref and not ref.endswith(".toml") and not Path(ref).exists():
        module, _, attr = ref.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot load spider class {ref!r}: {exc}", path=path) from exc
        spider = obj() if isinstance(obj, type) else obj
        if not isinstance(spider, Spider):
            raise ConfigError(f"{ref!r} is not a corpusforge.crawl.spider.Spider", path=path)
        return spider
    file = Path(ref)
    if not file.is_file():
        raise ConfigError(f"spider file {ref!r} not found", path=path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=str(file)) from exc
    try:
        politeness = _check_table(raw)
    except ConfigError as exc:
        raise ConfigError(str(exc), file=str(file)) from None
    return Spider(
        name=raw["name"],
        seeds=raw["seeds"],
        allowed_domains=raw.get("allowed_domains", []),
        include=raw.get("include", []),
        exclude=raw.get("exclude", []),
        max_depth=raw.get("max_depth", 5),
        selectors=raw.get("selectors", []),
        sitemaps=raw.get("sitemaps", []),
        min_delay_s=politeness.get("min_delay_s", 0.0),
        concurrency=politeness.get("concurrency"),
        per_host_concurrency=politeness.get("per_host_concurrency"),
        checks=raw.get("checks", []),
        base_dir=file.parent,
    )


def run_checks(spider: Spider) -> list[str]:
    """Run the spider's offline checks against its saved pages; returns problems (empty = pass)."""
    problems = []
    for i, check in enumerate(spider.checks):
        page_path = spider.base_dir / check.get("page", "")
        if not page_path.is_file():
            problems.append(f"{spider.name} checks[{i}]: saved page {page_path} not found")
            continue
        page = SavedPage(
            url=check.get("url", "http://example.invalid/"),
            html=page_path.read_text(encoding="utf-8", errors="replace"),
        )
        links = [u for u in spider.parse(page) if spider.follow(u)]
        if len(links) < int(check.get("min_links", 0)):
            problems.append(
                f"{spider.name} checks[{i}]: {len(links)} followable links, expected >= {check['min_links']}"
            )
        if check.get("text_contains") or check.get("selectors_match"):
            text = _selected_text(page.html, spider.selectors)
            for needle in check.get("text_contains", []):
                if needle not in text:
                    problems.append(f"{spider.name} checks[{i}]: text {needle!r} not found in the selected content")
    return problems


def _selected_text(html: str, selectors: list[str]) -> str:
    import lxml.html

    root = lxml.html.fromstring(html)
    if not selectors:
        return root.text_content()
    from lxml.cssselect import CSSSelector

    parts = []
    for sel in selectors:
        parts += [el.text_content() for el in CSSSelector(sel)(root)]
    return "\n".join(parts)

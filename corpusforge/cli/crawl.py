"""``corpusforge check`` and ``corpusforge new-spider``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from corpusforge.cli.app import app
from corpusforge.errors import ExitCode

SKELETON = """# Spider for {url}
name = "{name}"
seeds = ["{url}"]
allowed_domains = ["{host}"]
# Follow only links matching one of these regular expressions (empty: follow every allowed link).
include = []
exclude = []
max_depth = 3
# CSS or XPath selectors of the main content (empty: the extractor finds it).
selectors = []

# Only ever stricter than the recipe: the larger min_delay_s, the smaller concurrency values apply.
[politeness]
min_delay_s = 2.0
# per_host_concurrency = 1
# concurrency = 8

# Save a page under {name}/pages/ and describe what must hold on it; `corpusforge check` runs these offline.
[[checks]]
page = "{name}/pages/example.html"
url = "{url}"
min_links = 1
"""


@app.command()
def check(
    spiders: Annotated[list[Path] | None, typer.Argument(help="Spider files (default: spiders/*.toml)")] = None,
) -> None:
    """Run each spider's offline checks against its saved pages (no network)."""
    from corpusforge.crawl.spider import load_spider, run_checks
    from corpusforge.errors import ConfigError

    files = spiders or sorted(Path("spiders").glob("*.toml"))
    if not files:
        typer.echo("corpusforge: error: no spider files given and none in spiders/", err=True)
        raise typer.Exit(ExitCode.BAD_CONFIG)
    failed = 0
    for f in files:
        try:
            spider = load_spider(str(f))
        except ConfigError as exc:
            typer.echo(f"FAIL {f}: {exc}")
            failed += 1
            continue
        problems = run_checks(spider)
        if not spider.checks:
            problems.append(f"{spider.name}: no [[checks]] defined")
        if problems:
            failed += 1
            typer.echo(f"FAIL {f}")
            for p in problems:
                typer.echo(f"  {p}")
        else:
            typer.echo(f"ok   {f} ({len(spider.checks)} check(s))")
    raise typer.Exit(ExitCode.FAILED if failed else ExitCode.DONE)


@app.command("new-spider")
def new_spider(
    name: Annotated[str, typer.Argument(help="Spider name (letters, digits, _)")],
    url: Annotated[str, typer.Argument(help="Seed URL (http or https)")],
    folder: Annotated[Path, typer.Option(help="Where spiders live")] = Path("spiders"),
) -> None:
    """Write a skeleton spiders/NAME.toml and a folder for its saved pages."""
    import re

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        typer.echo(f"corpusforge: error: {url!r} is not an http(s) URL", err=True)
        raise typer.Exit(ExitCode.BAD_CONFIG)
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        typer.echo(f"corpusforge: error: spider name {name!r}: use letters, digits and _", err=True)
        raise typer.Exit(ExitCode.BAD_CONFIG)
    path = folder / f"{name}.toml"
    if path.exists():
        typer.echo(f"corpusforge: error: {path} exists", err=True)
        raise typer.Exit(ExitCode.BAD_CONFIG)
    (folder / name / "pages").mkdir(parents=True, exist_ok=True)
    path.write_text(SKELETON.format(name=name, url=url, host=parts.hostname))
    typer.echo(f"wrote {path}; save a page to {folder / name / 'pages'} and run: corpusforge check {path}")

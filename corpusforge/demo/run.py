"""``corpusforge demo``: serve the embedded site on 127.0.0.1, run every stage, print what happened."""

from __future__ import annotations

import errno
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from corpusforge.errors import ConfigError
from corpusforge.stats import merge_dropped

DEMO_PORT = 18731  # a fixed port keeps the crawl config (its seed URL) stable across reruns; any free one works

SPIDER_TOML = """# Spider for the embedded demo site (written by `corpusforge demo`).
name = "demo"
seeds = ["{seed}"]
allowed_domains = ["127.0.0.1"]
max_depth = 6
"""


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(workdir: Path, fresh: bool) -> None:
    if workdir.exists() and fresh:
        if any(workdir.iterdir()) and not (workdir / "recipe.resolved.toml").is_file():
            raise ConfigError(
                f"{workdir} exists and is not a corpusforge run folder; choose another --workdir", path="--workdir"
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)


def run_demo(
    workdir: Path,
    *,
    pages: int = 400,
    train_iters: int = 200,
    fresh: bool = True,
    workers: int | None = None,
    quiet: bool = False,
) -> int:
    from corpusforge.console import run_with_progress
    from corpusforge.defaults import demo_recipe
    from corpusforge.demo.server import serve
    from corpusforge.demo.site import build_site
    from corpusforge.recipe import validate_recipe

    t0 = time.time()
    workdir = Path(workdir).absolute()
    _prepare(workdir, fresh)
    site = build_site()
    port = _free_port(DEMO_PORT)
    with serve(site, port=port) as (base, access_log):
        spider = workdir / "demo-spider.toml"
        spider.write_text(SPIDER_TOML.format(seed=base))
        raw = demo_recipe(
            seed_url=base, spider=spider, workdir=workdir, pages=pages, train_iters=train_iters, workers=workers or 2
        )
        recipe = validate_recipe(raw, source="corpusforge demo")
        result = run_with_progress(recipe, quiet=quiet)
        requests_seen = len(access_log)
    if not quiet:
        print_summary(result, site_pages=len(site), requests_seen=requests_seen, seconds=time.time() - t0)
    return int(result.status)


def _stage(result: Any, name: str) -> Any:
    return next((o for o in result.stages if o.name == name), None)


def summary_rows(result: Any, *, site_pages: int, requests_seen: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("site pages served", str(site_pages)), ("HTTP requests seen", str(requests_seen))]
    crawl = _stage(result, "crawl")
    if crawl and crawl.steps:
        s = crawl.steps[0]
        rows.append(("pages fetched and stored", str(s["output"])))
        rows.append(("crawl: URLs not stored", ", ".join(f"{k} {v}" for k, v in sorted(s["dropped"].items())) or "-"))
    for o in result.stages:
        if o.kind in ("process", "exact_dedup", "minhash_dedup") and o.steps and "." not in o.name:
            n_in, n_out = o.steps[0]["input"], o.steps[-1]["output"]
            reasons = ", ".join(f"{k} {v}" for k, v in merge_dropped(o.steps).most_common()) or "-"
            rows.append((f"{o.name}: documents in → kept", f"{n_in} → {n_out}   (dropped: {reasons})"))
    tok = _stage(result, "tokenizer")
    if tok and tok.manifest:
        rows.append(("tokenizer", f"vocab {tok.manifest.get('vocab_size', '?')}, {tok.out_dir}/tokenizer.json"))
    tokens = _stage(result, "tokens")
    if tokens and tokens.manifest:
        m = tokens.manifest
        rows.append(
            ("tokens (train / val)", f"{m.get('tokens', {}).get('train', '?')} / {m.get('tokens', {}).get('val', '?')}")
        )
        rows.append(("token shards", f"{len(m.get('files', []))} file(s), dtype {m.get('dtype', '?')}"))
    train = _stage(result, "train")
    if train and train.extra:
        ex = train.extra
        for key, label in (
            ("train_loss", "train loss"),
            ("val_loss", "val loss"),
            ("iters", "iterations"),
            ("tokens_per_s", "tokens/s"),
        ):
            if key in ex:
                rows.append((label, _fmt(ex[key])))
        if ex.get("sample"):
            rows.append(("sample", repr(str(ex["sample"])[:300])))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, list | tuple) and v and all(isinstance(x, float) for x in v):
        return " → ".join(f"{x:.3f}" for x in v)
    return str(v)


def print_summary(result: Any, *, site_pages: int, requests_seen: int, seconds: float) -> None:
    from rich.table import Table

    from corpusforge.console import console

    t = Table(title="corpusforge demo", show_header=False)
    t.add_column("what")
    t.add_column("value", overflow="fold")
    for k, v in summary_rows(result, site_pages=site_pages, requests_seen=requests_seen):
        t.add_row(k, v)
    t.add_row("wall time", f"{seconds:.0f} s")
    t.add_row("outputs", str(result.workdir))
    t.add_row("data card", f"{result.workdir / 'README.md'} (card.json, plots in card/)")
    for o in result.stages:
        t.add_row(f"  {o.name}", f"{o.out_dir}  [{o.status}]")
    console().print(t)

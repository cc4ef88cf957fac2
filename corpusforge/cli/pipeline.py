"""``corpusforge run``, ``plan``, ``validate``, ``crawl``, ``build`` and ``demo``: the pipeline commands.

Each command is thin: it builds or loads a recipe and hands it to the runner (``console.run_with_progress``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from corpusforge.cli.app import (
    ExecutorOpt,
    ForceOpt,
    MaxPagesOpt,
    MaxRuntimeOpt,
    RayAddressOpt,
    SetOpt,
    VerboseOpt,
    WorkdirOpt,
    WorkersOpt,
    app,
    err,
    guarded,
    setup,
)
from corpusforge.errors import ExitCode


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe TOML file, e.g. pipelines/local_html.toml")],
    set_: SetOpt = None,
    workdir: WorkdirOpt = None,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
    max_pages: MaxPagesOpt = None,
    max_runtime: MaxRuntimeOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run every stage of a recipe; finished work is skipped, so a rerun resumes."""
    setup(verbose)
    from corpusforge.console import run_with_progress
    from corpusforge.recipe import load_recipe

    def go() -> int:
        r = load_recipe(recipe, set_ or [], workdir=str(workdir) if workdir else None)
        return run_with_progress(
            r,
            force=force,
            workers=workers,
            max_pages=max_pages,
            max_runtime=max_runtime,
            executor=executor,
            ray_address=ray_address,
        ).status

    raise typer.Exit(guarded(go))


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="A recipe TOML file")], set_: SetOpt = None, workdir: WorkdirOpt = None
) -> None:
    """Validate a recipe and print its stages, folders, task counts and what is already done."""
    from corpusforge.console import console, plan_table
    from corpusforge.recipe import load_recipe

    def go() -> int:
        r = load_recipe(recipe, set_ or [], workdir=str(workdir) if workdir else None)
        console().print(plan_table(r))
        return ExitCode.DONE

    raise typer.Exit(guarded(go))


@app.command()
def validate(
    folder: Annotated[Path, typer.Argument(help="A stage folder with manifest.json, or a run folder")],
) -> None:
    """Check shards against their manifests (rows, bytes, sha256); exit 1 on any truncated or altered file."""
    from corpusforge.storage import MANIFEST, validate_folder

    if not folder.is_dir():
        err(f"{folder}: no such folder")
        raise typer.Exit(ExitCode.BAD_CONFIG)
    targets = [folder] if (folder / MANIFEST).is_file() else sorted(p.parent for p in folder.glob(f"**/{MANIFEST}"))
    if not targets:
        err(f"{folder}: no {MANIFEST} found (is the stage finished?)")
        raise typer.Exit(ExitCode.FAILED)
    bad = 0
    for t in targets:
        problems = validate_folder(t)
        if problems:
            bad += 1
            typer.echo(f"FAIL {t}")
            for p in problems:
                typer.echo(f"  {p}")
        else:
            n = len(json.loads((t / MANIFEST).read_text())["files"])
            typer.echo(f"ok   {t} ({n} file(s))")
    raise typer.Exit(ExitCode.FAILED if bad else ExitCode.DONE)


@app.command()
def crawl(
    spider: Annotated[Path, typer.Argument(help="A spider definition, e.g. spiders/python_docs.toml")],
    backend: Annotated[
        str, typer.Option(help="requests+lxml, requests+bs4, scrapy, selenium, auto or langchain")
    ] = "requests+lxml",
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=256, help="Fetches in flight over all hosts (default 16)")
    ] = None,
    per_host_concurrency: Annotated[
        int | None, typer.Option(min=1, max=16, help="Requests in flight per host (default 1)")
    ] = None,
    browsers: Annotated[
        int | None, typer.Option(min=1, max=32, help="Headless Chromiums for selenium and auto (default 1)")
    ] = None,
    frontier: Annotated[
        str | None,
        typer.Option(help="A frontier shared by many crawler processes: redis://host:port/db or unix:///path.sock"),
    ] = None,
    tasks: Annotated[
        int | None, typer.Option(min=1, max=256, help="Crawler processes sharing --frontier (default 1)")
    ] = None,
    recrawl: Annotated[
        bool,
        typer.Option(
            "--recrawl", help="Make a new snapshot of the crawl in --workdir: changed pages, the rest by reference"
        ),
    ] = False,
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    max_pages: MaxPagesOpt = None,
    max_runtime: MaxRuntimeOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Crawl one spider into document shards (<workdir>/crawl/). Resumes an interrupted crawl, with any
    concurrency. With --frontier redis://… and --tasks N, N crawler processes (here, or Ray tasks with
    --executor ray) share one frontier, each host's politeness kept across all of them."""
    setup(verbose)
    from corpusforge.console import run_with_progress
    from corpusforge.recipe import apply_override, validate_recipe

    def go() -> int:
        raw: dict[str, Any] = {
            "name": spider.stem,
            "workers": 1,
            "stages": [{"kind": "crawl", "spider": str(spider), "backend": backend}],
        }
        limits: dict[str, Any] = {"concurrency": concurrency, "per_host_concurrency": per_host_concurrency}
        limits |= {"browsers": browsers, "frontier": frontier, "tasks": tasks, "recrawl": recrawl or None}
        raw["stages"][0].update({k: v for k, v in limits.items() if v is not None})
        raw["workdir"] = str(workdir or Path("runs") / spider.stem)
        for o in set_ or []:
            apply_override(raw, o)
        r = validate_recipe(raw, source="corpusforge crawl")
        return run_with_progress(
            r, force=force, max_pages=max_pages, max_runtime=max_runtime, executor=executor, ray_address=ray_address
        ).status

    raise typer.Exit(guarded(go))


@app.command()
def build(
    source: Annotated[
        Path, typer.Argument(help="A finished crawl folder (runs/x/crawl), an HTML folder, a .jsonl or a .warc(.gz)")
    ],
    workdir: WorkdirOpt = None,
    vocab_size: Annotated[int, typer.Option(min=64, help="Tokenizer vocabulary size")] = 8192,
    tokenizer: Annotated[str, typer.Option(help="bpe, unigram or char")] = "bpe",
    near_dedup: Annotated[bool, typer.Option(help="MinHash near-duplicate removal after exact dedup")] = True,
    set_: SetOpt = None,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Clean, deduplicate, train a tokenizer and write token shards from a crawl or local files."""
    setup(verbose)
    from corpusforge.console import run_with_progress
    from corpusforge.defaults import build_recipe
    from corpusforge.recipe import apply_override, validate_recipe

    def go() -> int:
        raw = build_recipe(source, workdir=workdir, vocab_size=vocab_size, tokenizer=tokenizer, near_dedup=near_dedup)
        for o in set_ or []:
            apply_override(raw, o)
        r = validate_recipe(raw, source="corpusforge build")
        return run_with_progress(r, force=force, workers=workers, executor=executor, ray_address=ray_address).status

    raise typer.Exit(guarded(go))


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo run goes")] = Path("runs/demo"),
    pages: Annotated[int, typer.Option(min=10, help="Upper bound on pages to crawl")] = 400,
    train_iters: Annotated[int, typer.Option(min=1, help="GPT training iterations")] = 200,
    fresh: Annotated[bool, typer.Option(help="Delete an earlier demo run first")] = True,
    workers: WorkersOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The whole path on an embedded site served on 127.0.0.1 (no network, nothing to download)."""
    setup(verbose)
    from corpusforge.demo.run import run_demo

    raise typer.Exit(
        guarded(lambda: run_demo(workdir, pages=pages, train_iters=train_iters, fresh=fresh, workers=workers))
    )

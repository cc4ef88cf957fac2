"""The ``corpusforge`` command line. Each subcommand is thin: it calls one library function.

Exit codes (README): 0 done, 1 failed, 2 bad config or usage, 3 locked, 4 partial (a bound or a signal
stopped the run; rerun to continue), 5 training diverged (NaN/inf loss).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from corpusforge.errors import (
    ConfigError,
    CorpusforgeError,
    DivergedError,
    FatalError,
    Interrupted,
    LockedError,
    MissingExtraError,
    ShardError,
)
from corpusforge.runner import BAD_CONFIG, DIVERGED, DONE, FAILED, LOCKED, PARTIAL

log = logging.getLogger("corpusforge.cli")
T = TypeVar("T")

app = typer.Typer(
    name="corpusforge",
    help="Web pages → cleaned, deduplicated corpus → tokenizer → Arrow token shards → a small GPT.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print local variables (secrets) in tracebacks
    add_completion=False,
)

SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field: a.b[0].c=value (repeatable)")]
WorkdirOpt = Annotated[Path | None, typer.Option("--workdir", help="Work folder (default: the recipe's workdir)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild stages whose config changed")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes")]
MaxPagesOpt = Annotated[
    int | None, typer.Option("--max-pages", min=1, help="Stop the crawl after N stored pages (exit 4)")
]
MaxRuntimeOpt = Annotated[float | None, typer.Option("--max-runtime", min=1, help="Stop after S seconds (exit 4)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")]


def _err(msg: str) -> None:
    typer.echo(f"corpusforge: error: {msg}", err=True)


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn`` and turn corpusforge errors into a one-line message and the documented exit code."""
    try:
        return fn()
    except ConfigError as exc:
        _err(f"bad config: {exc}")
        raise typer.Exit(BAD_CONFIG) from None
    except LockedError as exc:
        _err(str(exc))
        raise typer.Exit(LOCKED) from None
    except DivergedError as exc:
        _err(f"training diverged: {exc}")
        raise typer.Exit(DIVERGED) from None
    except Interrupted as exc:
        _err(str(exc))
        raise typer.Exit(PARTIAL) from None
    except MissingExtraError as exc:
        _err(str(exc))
        raise typer.Exit(FAILED) from None
    except (FatalError, ShardError, CorpusforgeError) as exc:
        _err(str(exc))
        raise typer.Exit(FAILED) from None


def _setup(verbose: bool) -> None:
    from corpusforge.console import setup_logging

    setup_logging(verbose)


def execute(
    recipe: Any,
    *,
    force: bool = False,
    workers: int | None = None,
    max_pages: int | None = None,
    max_runtime: float | None = None,
    quiet: bool = False,
) -> Any:
    """Run a validated recipe with progress output and print the summary; returns the RunResult."""
    from corpusforge.console import console, reporter, stages_table
    from corpusforge.runner import run_recipe

    with reporter() as rep:
        result = run_recipe(
            recipe, force=force, workers=workers, max_pages=max_pages, max_runtime_s=max_runtime, reporter=rep
        )
    if not quiet:
        console().print(stages_table(result))
    if result.message:
        _err(result.message) if result.status != DONE else typer.echo(result.message)
    return result


@app.command()
def run(
    recipe: Annotated[Path, typer.Argument(help="A recipe TOML file, e.g. pipelines/local_html.toml")],
    set_: SetOpt = None,
    workdir: WorkdirOpt = None,
    force: ForceOpt = False,
    workers: WorkersOpt = None,
    max_pages: MaxPagesOpt = None,
    max_runtime: MaxRuntimeOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Run every stage of a recipe; finished work is skipped, so a rerun resumes."""
    _setup(verbose)
    from corpusforge.recipe import load_recipe

    def go() -> int:
        r = load_recipe(recipe, set_ or [], workdir=str(workdir) if workdir else None)
        return execute(r, force=force, workers=workers, max_pages=max_pages, max_runtime=max_runtime).status

    raise typer.Exit(guarded(go))


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="A recipe TOML file")], set_: SetOpt = None, workdir: WorkdirOpt = None
) -> None:
    """Validate a recipe and print its stages, folders, task counts and what is already done."""
    from corpusforge.console import console
    from corpusforge.plan import make_plan
    from corpusforge.recipe import load_recipe

    def go() -> int:
        from rich.table import Table

        r = load_recipe(recipe, set_ or [], workdir=str(workdir) if workdir else None)
        entries = make_plan(r)
        t = Table(title=f"{r.name} → {r.workdir} (workers={r.workers})")
        for c in ("stage", "kind", "input", "folder", "tasks", "state"):
            t.add_column(c)
        dirs = {e.spec.name: e.home for e in entries}
        for e in entries:
            ctx = e.context(r, dirs)
            try:
                n = str(e.stage.num_tasks(ctx))
            except Exception:  # noqa: BLE001 - input not there yet
                n = "?"
            if (e.out_dir / "manifest.json").is_file():
                state = "done"
            elif (e.out_dir / "completions").is_dir():
                state = f"{len(list((e.out_dir / 'completions').glob('*.json')))} task(s) done"
            else:
                state = "pending"
            t.add_row(e.name, e.spec.kind, e.spec.input or "-", str(e.out_dir), n, state)
        console().print(t)
        return DONE

    raise typer.Exit(guarded(go))


@app.command()
def validate(
    folder: Annotated[Path, typer.Argument(help="A stage folder with manifest.json, or a run folder")],
) -> None:
    """Check shards against their manifests (rows, bytes, sha256); exit 1 on any truncated or altered file."""
    from corpusforge.storage import MANIFEST, validate_folder

    if not folder.is_dir():
        _err(f"{folder}: no such folder")
        raise typer.Exit(BAD_CONFIG)
    targets = [folder] if (folder / MANIFEST).is_file() else sorted(p.parent for p in folder.glob(f"**/{MANIFEST}"))
    if not targets:
        _err(f"{folder}: no {MANIFEST} found (is the stage finished?)")
        raise typer.Exit(FAILED)
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
    raise typer.Exit(FAILED if bad else DONE)


@app.command()
def crawl(
    spider: Annotated[Path, typer.Argument(help="A spider definition, e.g. spiders/python_docs.toml")],
    backend: Annotated[
        str, typer.Option(help="requests+lxml, requests+bs4, scrapy, selenium, auto or langchain")
    ] = "requests+lxml",
    workdir: WorkdirOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    max_pages: MaxPagesOpt = None,
    max_runtime: MaxRuntimeOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Crawl one spider into document shards (<workdir>/crawl/). Resumes an interrupted crawl."""
    _setup(verbose)
    from corpusforge.recipe import apply_override, validate_recipe

    def go() -> int:
        raw: dict[str, Any] = {
            "name": spider.stem,
            "workers": 1,
            "stages": [{"kind": "crawl", "spider": str(spider), "backend": backend}],
        }
        raw["workdir"] = str(workdir or Path("runs") / spider.stem)
        for o in set_ or []:
            apply_override(raw, o)
        r = validate_recipe(raw, source="corpusforge crawl")
        return execute(r, force=force, max_pages=max_pages, max_runtime=max_runtime).status

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
    verbose: VerboseOpt = False,
) -> None:
    """Clean, deduplicate, train a tokenizer and write token shards from a crawl or local files."""
    _setup(verbose)
    from corpusforge.defaults import build_recipe
    from corpusforge.recipe import apply_override, validate_recipe

    def go() -> int:
        raw = build_recipe(source, workdir=workdir, vocab_size=vocab_size, tokenizer=tokenizer, near_dedup=near_dedup)
        for o in set_ or []:
            apply_override(raw, o)
        r = validate_recipe(raw, source="corpusforge build")
        return execute(r, force=force, workers=workers).status

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
    _setup(verbose)
    from corpusforge.demo.run import run_demo

    raise typer.Exit(
        guarded(lambda: run_demo(workdir, pages=pages, train_iters=train_iters, fresh=fresh, workers=workers))
    )


# Commands that live beside the code they drive: each module has ``register(app)``.
for _module in ("corpusforge.crawl.cli", "corpusforge.tokens_cli", "corpusforge.train.cli"):
    try:
        importlib.import_module(_module).register(app)
    except ModuleNotFoundError as _exc:
        if _exc.name != _module:
            raise


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        _err("interrupted")
        sys.exit(PARTIAL)


if __name__ == "__main__":
    main()

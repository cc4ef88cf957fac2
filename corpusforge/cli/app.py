"""The Typer application every command group registers on, the shared options, and ``guarded``.

``guarded`` turns a corpusforge error into one line on stderr and the exit code its type carries
(``corpusforge.errors.ExitCode``): commands never choose exit codes of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperGroup

from corpusforge.errors import ConfigError, CorpusforgeError, DivergedError
from corpusforge.redact import redact_text

T = TypeVar("T")


def _untyped_flags(params: Iterable[Any]) -> None:
    """An on/off flag takes no value: an empty metavar keeps Typer's help from printing ``<bool>`` beside it.
    (Duck-typed: Typer's parameters derive from the click it bundles, not from an installed ``click``.)"""
    for p in params:
        if (getattr(p, "is_flag", False) or getattr(p, "count", False)) and p.metavar is None:
            p.metavar = ""


class _Group(TyperGroup):
    """The command group, with help that shows no value type on flags (``--force``, not ``--force <bool>``)."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _untyped_flags(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _untyped_flags([*cmd.params, *filter(None, [cmd.get_help_option(ctx)])])
        return cmd


app = typer.Typer(
    cls=_Group,
    name="corpusforge",
    help="Web pages → cleaned, deduplicated corpus → tokenizer → Arrow token shards → a small GPT.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # never print local variables (secrets) in tracebacks
    add_completion=False,
)

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="Override a recipe field: a.b[0].c=value (repeatable)"),
]
WorkdirOpt = Annotated[Path | None, typer.Option("--workdir", help="Work folder (default: the recipe's workdir)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild stages whose config changed")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", min=1, help="Worker processes")]
MaxPagesOpt = Annotated[
    int | None, typer.Option("--max-pages", min=1, help="Stop the crawl after N stored pages (exit 4)")
]
MaxRuntimeOpt = Annotated[float | None, typer.Option("--max-runtime", min=1, help="Stop after S seconds (exit 4)")]
ExecutorOpt = Annotated[
    str | None, typer.Option("--executor", help="local (processes on this machine) or ray (default: the recipe's)")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address", help="With --executor ray: auto or ray://host:port joins a cluster (default: start one here)"
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging")]

# What the one-line message starts with, by error type (the rest is the error's own text).
_PREFIX: dict[type[CorpusforgeError], str] = {ConfigError: "bad config: ", DivergedError: "training diverged: "}


def err(msg: str) -> None:
    typer.echo(f"corpusforge: error: {redact_text(msg)}", err=True)


def guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; a corpusforge error becomes a one-line message and its type's exit code."""
    try:
        return fn()
    except CorpusforgeError as exc:
        prefix = next((p for t, p in _PREFIX.items() if isinstance(exc, t)), "")
        err(f"{prefix}{exc}")
        raise typer.Exit(int(exc.exit_code)) from None


def setup(verbose: bool) -> None:
    from corpusforge.console import setup_logging

    setup_logging(verbose)

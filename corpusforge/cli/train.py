"""``corpusforge train``, ``sample`` and ``export``: thin commands over the trainer (torch imported lazily)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from corpusforge.cli.app import app, guarded
from corpusforge.errors import ExitCode
from corpusforge.params import Max, Min
from corpusforge.train.config import NONE_MEANS, TrainConfig  # torch-free


def _describe(tp: Any) -> str:
    """A type hint in words: ``int, 1 to 96``, ``learned|sinusoidal``, ``float >= 0``."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        lo = next((m.value for m in marks if isinstance(m, Min)), None)
        hi = next((m.value for m in marks if isinstance(m, Max)), None)
        bounds = f"{lo:g} to {hi:g}" if lo is not None and hi is not None else ""
        bounds = bounds or (f">= {lo:g}" if lo is not None else f"<= {hi:g}" if hi is not None else "")
        return _describe(base) + (f", {bounds}" if bounds else "")
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    return {bool: "true|false"}.get(tp, getattr(tp, "__name__", str(tp)))


def train_parameters_help() -> str:
    """One line per ``TrainConfig`` field: name = default, then its type and bounds (the help's epilog)."""
    hints = typing.get_type_hints(TrainConfig, include_extras=True)
    lines = []
    for f in dataclasses.fields(TrainConfig):
        default = NONE_MEANS.get(f.name, "none") if f.default is None else f.default
        shown = str(default).lower() if isinstance(default, bool) else default
        lines.append(f"  {f.name} = {shown}   ({_describe(hints[f.name])})")
    head = "Training parameters (--set KEY=VALUE, or KEY = VALUE lines in the --config TOML file), with defaults:"
    return head + "\n\n\b\n" + "\n".join(lines)  # \b: click keeps these lines as they are


@app.command(epilog=train_parameters_help())
def train(
    tokens: Annotated[Path, typer.Argument(help="A tokens folder (runs/x/tokens) with manifest.json")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: checkpoints, metrics.jsonl, loss.png")],
    config: Annotated[Path | None, typer.Option("--config", help="A TOML file of training parameters")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help="Set a training parameter (listed below); repeatable"),
    ] = None,
    max_iters: Annotated[int | None, typer.Option(min=1, help="Shorthand for --set max_iters=N")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Resume even though the training data changed, or start over when every checkpoint is corrupt",
        ),
    ] = False,
) -> None:
    """Train the bundled GPT on token shards; resumes from the newest good checkpoint in --out."""
    import tomllib

    from corpusforge.errors import ConfigError, require
    from corpusforge.params import parse_value, validate_kwargs
    from corpusforge.runner import stop_on_signals
    from corpusforge.stage import STOP

    def go() -> int:
        require("torch", "train")
        params: dict = {}
        if config is not None:
            if not config.is_file():
                raise ConfigError("file not found", file=str(config))
            params.update(tomllib.loads(config.read_text()))
        for item in set_ or []:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got {item!r}", path="--set")
            k, _, v = item.partition("=")
            params[k.strip()] = parse_value(v)
        if max_iters is not None:
            params["max_iters"] = max_iters
        params = validate_kwargs(TrainConfig, params, "")
        if not (tokens / "manifest.json").is_file():
            raise ConfigError(f"{tokens} has no manifest.json: point it at a finished tokens stage", path="TOKENS")
        from corpusforge.train.train import train as run_train

        with stop_on_signals():
            res = run_train(TrainConfig(**params), tokens, out, force=force, should_stop=STOP.is_set)
        if res.val_losses:
            typer.echo(
                f"val loss {res.val_losses[-1][1]:.4f} at iteration {res.val_losses[-1][0]}; "
                f"{res.tokens_per_s:,.0f} tokens/s; checkpoints in {out / 'checkpoints'}"
            )
        if res.sample:
            typer.echo(f"sample: {res.sample[:300]!r}")
        return ExitCode.PARTIAL if res.partial else ExitCode.DONE

    raise typer.Exit(guarded(go))


@app.command()
def sample(
    out: Annotated[Path, typer.Argument(help="A training output folder (with checkpoints/) or one checkpoint")],
    prompt: Annotated[str, typer.Option(help="Text to continue")] = "",
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 200,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    top_k: Annotated[int, typer.Option(min=1)] = 50,
    seed: int = 0,
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.json (default: found from the tokens)")] = None,
) -> None:
    """Generate text from the newest good checkpoint."""
    from corpusforge.errors import require

    def go() -> int:
        require("torch", "train")
        from corpusforge.train.sample import load_model, sample_text

        model, state = load_model(out)
        typer.echo(
            sample_text(
                model,
                Path(state["tokens_dir"]),
                max_new_tokens,
                prompt=prompt,
                temperature=temperature,
                top_k=top_k,
                seed=seed,
                tokenizer_path=tokenizer,
            )
        )
        return ExitCode.DONE

    raise typer.Exit(guarded(go))


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="A training output folder (with checkpoints/)")],
    dest: Annotated[Path, typer.Argument(help="Folder to write (transformers GPT-2 format, safetensors)")],
    tokenizer: Annotated[Path | None, typer.Option(help="tokenizer.json (default: found from the tokens)")] = None,
) -> None:
    """Export the newest good checkpoint for transformers' GPT2LMHeadModel and AutoTokenizer."""
    from corpusforge.errors import require

    def go() -> int:
        require("torch", "train")
        from corpusforge.train.export import export_gpt2

        path = export_gpt2(out, dest, tokenizer_path=tokenizer)
        typer.echo(f"wrote {path}: GPT2LMHeadModel.from_pretrained({str(path)!r})")
        return ExitCode.DONE

    raise typer.Exit(guarded(go))

"""``corpusforge train``, ``sample`` and ``export``: thin commands over the trainer (torch imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corpusforge.cli.app import app, guarded
from corpusforge.errors import ExitCode


@app.command()
def train(
    tokens: Annotated[Path, typer.Argument(help="A tokens folder (runs/x/tokens) with manifest.json")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: checkpoints, metrics.jsonl, loss.png")],
    config: Annotated[Path | None, typer.Option("--config", help="A TOML file of training parameters")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: key=value")] = None,
    max_iters: Annotated[int | None, typer.Option(min=1)] = None,
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
    from corpusforge.train.config import TrainConfig  # torch-free: --set is checked before torch loads

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

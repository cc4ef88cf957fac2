"""``corpusforge finetune``, ``merge``, ``reward`` and ``score``: adapting a trained GPT (``corpusforge/adapt``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from corpusforge.cli.app import app, guarded

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="KEY=VALUE", help="A FinetuneConfig field (lora_r, lr, max_iters, …); repeatable"),
]


def _config(method: str, set_: list[str] | None, max_iters: int | None):  # type: ignore[no-untyped-def]
    from corpusforge.adapt.finetune import FinetuneConfig
    from corpusforge.errors import ConfigError
    from corpusforge.params import parse_value, validate_kwargs

    kw: dict[str, object] = {"method": method}
    for s in set_ or []:
        if "=" not in s:
            raise ConfigError(f"--set expects KEY=VALUE, got {s!r}", path="--set")
        k, _, v = s.partition("=")
        kw[k.strip()] = parse_value(v)
    if max_iters:
        kw["max_iters"] = max_iters
    return FinetuneConfig(**validate_kwargs(FinetuneConfig, kw, "--set"))


def _evals(ev: dict | None) -> str:  # type: ignore[type-arg]
    return ", ".join(f"{k} {v:.4f}" for k, v in ev.items()) if ev else "none"


def _print(report: dict) -> None:  # type: ignore[type-arg]
    step = f"{report['step_s'] * 1000:.1f} ms/step" if report.get("step_s") is not None else "no step timed"
    print(
        f"{report['method']}: {report['trainable_params']:,} trainable parameters "
        f"({report['trainable_share']:.4%}), {step}, "
        f"frozen weights {report['frozen_weight_bytes'] / 2**20:.2f} MiB; "
        f"validation {_evals(report.get('first_eval'))} → {_evals(report.get('final_eval'))}"
    )


@app.command()
def finetune(
    checkpoint_dir: Annotated[Path, typer.Argument(help="A trained model's folder (corpusforge train --out)")],
    data: Annotated[Path, typer.Option("--data", help='JSONL: {"text"} or {"prompt", "response"} rows')],
    out: Annotated[Path, typer.Option("--out", help="Where the adapter (or fine-tuned model) goes")],
    method: Annotated[str, typer.Option("--method", help="lora | prompt | prefix | full")] = "lora",
    set_: SetOpt = None,
    max_iters: Annotated[int | None, typer.Option(min=1, help="Shorthand for --set max_iters=N")] = None,
) -> None:
    """Adapt a trained GPT to new data (the loss on responses only); a rerun resumes from the last checkpoint."""
    from corpusforge.adapt.finetune import finetune as run

    def go() -> int:
        _print(run(checkpoint_dir, data, out, _config(method, set_, max_iters)))
        return 0

    raise typer.Exit(guarded(go))


@app.command()
def merge(
    adapter_dir: Annotated[Path, typer.Argument(help="A LoRA folder (corpusforge finetune --method lora --out)")],
    out: Annotated[Path, typer.Option("--out", help="The merged model's folder (for sample and export)")],
) -> None:
    """Fold a LoRA adapter into its base model's weights: a plain model folder for `corpusforge export`."""
    from corpusforge.adapt.finetune import merge as run

    raise typer.Exit(guarded(lambda: print(run(adapter_dir, out)) or 0))


@app.command()
def reward(
    checkpoint_dir: Annotated[Path, typer.Argument(help="A trained model's folder")],
    data: Annotated[Path, typer.Option("--data", help='JSONL: {"prompt", "completions": [best, ..., worst]}')],
    out: Annotated[Path, typer.Option("--out", help="The reward model's folder")],
    set_: SetOpt = None,
    max_iters: Annotated[int | None, typer.Option(min=1, help="Shorthand for --set max_iters=N")] = None,
) -> None:
    """Train a reward model (the GPT with a scalar head, InstructGPT's pairwise loss); reports held-out pair accuracy."""
    from corpusforge.adapt.finetune import train_reward

    def go() -> int:
        _print(train_reward(checkpoint_dir, data, out, _config("full", set_, max_iters)))
        return 0

    raise typer.Exit(guarded(go))


@app.command()
def score(
    reward_dir: Annotated[Path, typer.Argument(help="A reward model's folder (corpusforge reward --out)")],
    data: Annotated[Path, typer.Option("--data", help='JSONL: {"prompt", "completions": [...]} rows to score')],
) -> None:
    """Print each row's completions with their rewards, one JSON line per row."""
    from corpusforge.adapt.data import load_rows
    from corpusforge.adapt.finetune import score as run

    def go() -> int:
        rows = load_rows(data)
        for row, rewards in zip(rows, run(reward_dir, rows), strict=True):
            print(json.dumps({"prompt": row["prompt"], "rewards": [round(r, 5) for r in rewards]}))
        return 0

    raise typer.Exit(guarded(go))

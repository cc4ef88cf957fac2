"""``corpusforge export-nanogpt``, ``tokenizer-report`` and ``token-lineage``: thin commands over ``corpusforge.tokens``.

A folder argument that is not a finished stage (no ``manifest.json``) is a usage error (exit 2); a shard that
does not match its manifest fails (exit 1), as everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from corpusforge.cli.app import app, guarded
from corpusforge.errors import ConfigError, ExitCode


def _finished_stage(folder: Path, what: str) -> Path:
    if not (folder / "manifest.json").is_file():
        raise ConfigError(f"{folder} has no manifest.json: point it at a finished {what} stage folder", path=what)
    return folder


@app.command("export-nanogpt")
def export_nanogpt_cmd(
    tokens_dir: Annotated[Path, typer.Argument(help="A tokens stage folder (with manifest.json)")],
    out_dir: Annotated[Path, typer.Argument(help="Where train.bin, val.bin and meta.json go")],
) -> None:
    """Write nanoGPT's train.bin/val.bin (flat uint16 little-endian) and meta.json from token shards."""
    from corpusforge.tokens.read import export_nanogpt

    def go() -> int:
        m = export_nanogpt(_finished_stage(tokens_dir, "tokens"), out_dir)
        rows = {f["name"]: f["rows"] for f in m["files"]}
        typer.echo(f"{out_dir}: train.bin {rows['train.bin']:,} tokens, val.bin {rows['val.bin']:,} tokens")
        return ExitCode.DONE

    raise typer.Exit(guarded(go))


@app.command("tokenizer-report")
def tokenizer_report_cmd(
    tokenizer: Annotated[Path, typer.Argument(help="tokenizer.json, or a folder holding one")],
    docs: Annotated[Path, typer.Argument(help="A folder of document shards (with manifest.json)")],
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Another tokenizer.json to compare with")
    ] = None,
    max_docs: Annotated[int, typer.Option(min=1, help="Documents to measure")] = 2000,
) -> None:
    """Bytes, words and characters per token, byte-fallback and unknown rates, per source (JSON)."""
    from corpusforge.storage import iter_documents, manifest_paths
    from corpusforge.tokens.report import tokenizer_report
    from corpusforge.tokens.write import load_tokenizer

    def go() -> int:
        tok = load_tokenizer(tokenizer)
        ref = load_tokenizer(reference) if reference is not None else None
        files = manifest_paths(_finished_stage(docs, "documents"))
        rows = ((d.source, d.text) for d in iter_documents(files, columns=["id", "text", "source"]))
        typer.echo(json.dumps(tokenizer_report(tok, rows, max_docs=max_docs, reference=ref), indent=2, sort_keys=True))
        return ExitCode.DONE

    raise typer.Exit(guarded(go))


@app.command("token-lineage")
def token_lineage_cmd(
    tokens_dir: Annotated[Path, typer.Argument(help="A tokens stage folder")],
    position: Annotated[int, typer.Argument(min=0, help="Token index in the split's stream")],
    split: Annotated[str, typer.Option(help="train or val")] = "train",
) -> None:
    """Which document (id, URL, fetch time, token range) a token of the stream came from."""
    from corpusforge.tokens.read import document_at

    def go() -> int:
        typer.echo(json.dumps(document_at(_finished_stage(tokens_dir, "tokens"), position, split), sort_keys=True))
        return ExitCode.DONE

    raise typer.Exit(guarded(go))

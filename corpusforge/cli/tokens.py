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
    out_dir: Annotated[Path, typer.Argument(help="Where train.bin, val.bin, meta.pkl and meta.json go")],
) -> None:
    """Write nanoGPT's train.bin/val.bin (flat uint16 little-endian), meta.pkl (what its train.py reads
    vocab_size from) and meta.json from token shards."""
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
    position: Annotated[
        int | None, typer.Argument(min=0, help="Token index in the split's stream (or give --url, or --file/--row)")
    ] = None,
    split: Annotated[str, typer.Option(help="The split POSITION indexes: train or val")] = "train",
    url: Annotated[
        str | None, typer.Option("--url", help="Reverse lookup: every token range of this URL, in every split")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="A token shard (train/data-….arrow, or its path); with --row")
    ] = None,
    row: Annotated[int | None, typer.Option("--row", min=0, help="A row of --file (one document)")] = None,
) -> None:
    """Which document (id, URL, fetch time, token range) a token of the stream came from; or, with --url,
    where a URL's tokens are; or, with --file/--row, the token range of one row of a shard (JSON)."""
    from corpusforge.tokens.read import document_at, document_in_file, ranges_of_url

    def go() -> int:
        folder = _finished_stage(tokens_dir, "tokens")
        asked = [
            name for name, given in (("POSITION", position), ("--url", url), ("--file", file)) if given is not None
        ]
        if len(asked) != 1:
            raise ConfigError(
                "name one document: POSITION, or --url URL, or --file F --row N"
                + (f" (not {' and '.join(asked)} together)" if asked else ""),
                path="POSITION",
            )
        if (file is None) != (row is None):
            raise ConfigError("--file and --row go together: --file F --row N", path="--row")
        if url is not None:
            hits = ranges_of_url(folder, url)
            if not hits:
                raise ConfigError(f"no document of {url!r} in {folder}", path="--url")
            out: object = hits
        elif file is not None:
            assert row is not None
            out = document_in_file(folder, file, row)
        else:
            assert position is not None
            out = document_at(folder, position, split)
        typer.echo(json.dumps(out, sort_keys=True))
        return ExitCode.DONE

    raise typer.Exit(guarded(go))

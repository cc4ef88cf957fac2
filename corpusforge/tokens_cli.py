"""``corpusforge export-nanogpt``, ``corpusforge tokenizer-report`` and ``corpusforge token-lineage``.

Each command calls one library function; exit codes: 0 done, 1 failed, 2 bad arguments or input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

DONE, FAILED, BAD_CONFIG = 0, 1, 2


def _fail(msg: str, code: int) -> typer.Exit:
    typer.echo(f"corpusforge: error: {msg}", err=True)
    return typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command("export-nanogpt")
    def export_nanogpt_cmd(
        tokens_dir: Annotated[Path, typer.Argument(help="A tokens stage folder (with manifest.json)")],
        out_dir: Annotated[Path, typer.Argument(help="Where train.bin, val.bin and meta.json go")],
    ) -> None:
        """Write nanoGPT's train.bin/val.bin (flat uint16 little-endian) and meta.json from token shards."""
        from corpusforge.errors import ConfigError, CorpusforgeError, ShardError
        from corpusforge.shards import export_nanogpt

        try:
            m = export_nanogpt(tokens_dir, out_dir)
        except (ConfigError, ShardError) as exc:
            raise _fail(str(exc), BAD_CONFIG) from exc
        except CorpusforgeError as exc:
            raise _fail(str(exc), FAILED) from exc
        rows = {f["name"]: f["rows"] for f in m["files"]}
        typer.echo(f"{out_dir}: train.bin {rows['train.bin']:,} tokens, val.bin {rows['val.bin']:,} tokens")
        raise typer.Exit(DONE)

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
        from corpusforge.errors import ConfigError, ShardError
        from corpusforge.shards import load_tokenizer
        from corpusforge.storage import iter_documents, manifest_paths
        from corpusforge.tokenizer import tokenizer_report

        try:
            tok = load_tokenizer(tokenizer)
            ref = load_tokenizer(reference) if reference is not None else None
            files = manifest_paths(docs)
            rows = ((d.source, d.text) for d in iter_documents(files, columns=["id", "text", "source"]))
            report = tokenizer_report(tok, rows, max_docs=max_docs, reference=ref)
        except (ConfigError, ShardError) as exc:
            raise _fail(str(exc), BAD_CONFIG) from exc
        typer.echo(json.dumps(report, indent=2, sort_keys=True))
        raise typer.Exit(DONE)

    @app.command("token-lineage")
    def token_lineage_cmd(
        tokens_dir: Annotated[Path, typer.Argument(help="A tokens stage folder")],
        position: Annotated[int, typer.Argument(min=0, help="Token index in the split's stream")],
        split: Annotated[str, typer.Option(help="train or val")] = "train",
    ) -> None:
        """Which document (id, URL, fetch time, token range) a token of the stream came from."""
        from corpusforge.errors import ConfigError, ShardError
        from corpusforge.shards import document_at

        try:
            typer.echo(json.dumps(document_at(tokens_dir, position, split), sort_keys=True))
        except (ConfigError, ShardError) as exc:
            raise _fail(str(exc), BAD_CONFIG) from exc
        raise typer.Exit(DONE)

"""``corpusforge publish`` and ``fetch``: a finished stage folder to and from S3-compatible object storage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from corpusforge.cli.app import VerboseOpt, app, guarded, setup

EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--endpoint-url",
        help="An S3-compatible server, e.g. http://127.0.0.1:9000 (default: $AWS_ENDPOINT_URL, or AWS)",
    ),
]


@app.command()
def publish(
    stage_dir: Annotated[Path, typer.Argument(help="A finished stage folder, e.g. runs/x/tokens")],
    dest: Annotated[str, typer.Argument(help="s3://bucket/prefix")],
    endpoint_url: EndpointOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Upload a finished stage folder: every file checked after upload, manifest.json last; resumable."""
    setup(verbose)
    from corpusforge.objstore import publish as do_publish

    def go() -> int:
        report = do_publish(stage_dir, dest, endpoint_url=endpoint_url)
        if report.unchanged:
            typer.echo(f"{dest} already holds this folder (same manifest): nothing to do")
        else:
            typer.echo(
                f"published {stage_dir} to {dest}: {len(report.copied)} file(s) uploaded and checked, "
                f"{len(report.skipped)} already there, manifest.json last"
            )
        return 0

    raise typer.Exit(guarded(go))


@app.command()
def fetch(
    src: Annotated[str, typer.Argument(help="s3://bucket/prefix of a published stage folder")],
    dest: Annotated[Path, typer.Argument(help="Local folder to fill (created)")],
    endpoint_url: EndpointOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Download a published stage folder: every listed file checked against the manifest, manifest last."""
    setup(verbose)
    from corpusforge.objstore import fetch as do_fetch

    def go() -> int:
        report = do_fetch(src, dest, endpoint_url=endpoint_url)
        typer.echo(
            f"fetched {src} into {dest}: {len(report.copied)} file(s) downloaded and checked, "
            f"{len(report.skipped)} already there"
        )
        return 0

    raise typer.Exit(guarded(go))

"""``corpusforge ablate``: train small models on pipeline variants and say which corpus is better."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from corpusforge.cli.app import ForceOpt, VerboseOpt, app, err, guarded, setup
from corpusforge.errors import ExitCode


def print_report(report: dict[str, Any], workdir: Path, wall_s: float) -> None:
    from corpusforge.ablate_report import markdown_table

    # A Markdown table: as readable in a log or a terminal of any width as in a README.
    print(f"\nablation {report['name']}: held-out bits per byte (lower is better); ± is the spread over seeds")
    print("\n".join(markdown_table(report)))
    for row in report["variants"][1:]:
        print(f"{row['name']} vs {report['base']}: {row['verdict']} ({row['diff_mean']:+.4f} bits/byte)")
    print(f"wall time {wall_s:.0f} s; report: {workdir / 'ablation.md'} (ablation.json, ablation.png)")


@app.command()
def ablate(
    ablation: Annotated[
        Path | None, typer.Argument(help="An ablation TOML file (base recipe, variants, held-out set, budget)")
    ] = None,
    demo: Annotated[
        bool, typer.Option("--demo", help="raw vs cleaned vs cleaned+dedup on the embedded demo site")
    ] = False,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="Where the ablation's runs go")] = None,
    tokens: Annotated[int | None, typer.Option(min=1000, help="--demo: training tokens per model")] = None,
    seeds: Annotated[int | None, typer.Option(min=1, help="--demo: seeds per variant")] = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train the same small GPT on each variant of a corpus (same tokenizer, same token budget, seeds) and
    compare held-out bits per byte; a rerun resumes."""
    import time

    setup(verbose)
    if demo == (ablation is not None):
        err("give an ABLATION.toml file or --demo (one of them)")
        raise typer.Exit(int(ExitCode.BAD_CONFIG))

    def go() -> int:
        from corpusforge.ablate import load_ablation, run_ablation

        t0 = time.time()
        if demo:
            from corpusforge.demo.ablate import DEMO_SEEDS, DEMO_TOKENS, run_ablate_demo

            wd = workdir or Path("runs/ablate-demo")
            status, report, _ = run_ablate_demo(
                wd, tokens=tokens or DEMO_TOKENS, seeds=seeds or DEMO_SEEDS, force=force
            )
        else:
            assert ablation is not None
            if tokens or seeds:
                err("--tokens and --seeds are for --demo; set tokens and seeds in the ablation file")
                return int(ExitCode.BAD_CONFIG)
            ab = load_ablation(ablation, workdir=workdir)
            wd = ab.workdir
            status, report = run_ablation(ab, force=force)
        if report is not None:
            print_report(report, Path(wd).absolute(), time.time() - t0)
        return status

    raise typer.Exit(guarded(go))

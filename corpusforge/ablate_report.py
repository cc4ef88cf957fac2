"""An ablation's results: per variant the held-out bits per byte of each seed, the difference to the base and a
verdict; written as ``ablation.json``, ``ablation.md`` and ``ablation.png``.

The spread of a variant is the range (max − min) of its seeds' final held-out bits per byte. The difference to
the base is taken seed by seed (the same seed draws the same initial weights and batch order for each), its
mean and its spread are reported, and the verdict is "better" (lower bits per byte) or "worse" only when the
mean difference exceeds twice the larger of the two seed spreads; otherwise "no measurable difference". With
one seed there is no spread to compare against, and no verdict.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from corpusforge.errors import ConfigError
from corpusforge.storage import atomic_write_bytes, atomic_write_json, load_manifest, sha256_file

REPORT_FORMAT = 1
BETTER, WORSE, SAME, UNJUDGED = "better", "worse", "no measurable difference", "not judged (one seed)"


def curve(train_dir: Path, tokens_per_iter: int) -> list[tuple[int, float]]:
    """(training tokens, held-out bits/byte) at each evaluation of a finished training."""
    path = train_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        if "heldout_bpb" in row:
            out.append((int(row["step"]) * tokens_per_iter, float(row["heldout_bpb"])))
    return out


def verdict(diffs: list[float], spread_v: float, spread_b: float) -> str:
    if len(diffs) < 2:
        return UNJUDGED
    mean = sum(diffs) / len(diffs)
    noise = 2 * max(spread_v, spread_b)
    if mean < -noise:
        return BETTER
    if mean > noise:
        return WORSE
    return SAME


def _decontamination(folder: Path) -> dict[str, int]:
    stats = json.loads((folder / "stats" / "stats.json").read_text())["steps"][0]
    return {
        "documents_in": int(stats["input"]),
        "removed_exact": int(stats["dropped"].get("heldout_exact", 0)),
        "removed_near": int(stats["dropped"].get("heldout_near", 0)),
    }


def collect(ab: Any, plans: list[Any], heldout_dir: Path, heldout_sha: str) -> dict[str, Any]:
    """``ab``: an ``ablate.Ablation``; ``plans``: its ``ablate.VariantPlan`` list (not imported: ablate imports this)."""
    tok_path = ab.tokenizer_path()
    tok_sha = sha256_file(tok_path)
    rows: list[dict[str, Any]] = []
    for vp in plans:
        v = vp.variant
        tokens = load_manifest(vp.folders["tokens"])
        if tokens.get("tokenizer_sha256") != tok_sha:
            raise ConfigError(
                f"variant {v.name}'s token shards ({vp.folders['tokens']}) were made with another tokenizer than "
                f"{tok_path}; rerun with --force so every variant uses the same one",
                path="tokenizer",
            )
        seeds: list[dict[str, Any]] = []
        for s in ab.seeds:
            folder = vp.folders[f"train-seed{s}"]
            points = curve(folder, ab.tokens_per_iter)
            final = [b for t, b in points if t == ab.max_iters * ab.tokens_per_iter]
            if not final:
                raise ConfigError(f"{folder}: no held-out evaluation at the last iteration; rerun the ablation")
            seeds.append({"seed": s, "bpb": final[-1], "curve": points, "folder": str(folder)})
        bpbs = [float(x["bpb"]) for x in seeds]
        rows.append(
            {
                "name": v.name,
                "corpus": v.corpus,
                "run": str(ab.variant_dir(v)) if vp.recipe is not None else None,
                "shared_with": sorted({o.variant for o in vp.shared.values()}),
                "stages_shared": sorted(vp.shared),
                "documents": int(tokens["documents"]["train"]) + int(tokens["documents"].get("val", 0)),
                "corpus_tokens": int(tokens["tokens"]["train"]) + int(tokens["tokens"].get("val", 0)),
                "training_tokens": ab.max_iters * ab.tokens_per_iter,
                "decontamination": _decontamination(vp.folders["decontaminate"]),
                "seeds": seeds,
                "bpb_mean": sum(bpbs) / len(bpbs),
                "bpb_spread": max(bpbs) - min(bpbs),
            }
        )
    base = rows[0]
    for row in rows:
        diffs = [x["bpb"] - b["bpb"] for x, b in zip(row["seeds"], base["seeds"], strict=True)]
        row["diff_mean"] = sum(diffs) / len(diffs)
        row["diff_spread"] = max(diffs) - min(diffs)
        row["verdict"] = None if row is base else verdict(diffs, row["bpb_spread"], base["bpb_spread"])
    return {
        "format": REPORT_FORMAT,
        "name": ab.name,
        "base": base["name"],
        "heldout": {
            "source": str(ab.heldout),
            "folder": str(heldout_dir),
            "sha256": heldout_sha,
            "documents": sum(int(f.get("rows", 0)) for f in load_manifest(heldout_dir)["files"]),
        },
        "tokenizer": {"path": str(tok_path), "sha256": tok_sha, "trained_on": None if ab.tokenizer else base["name"]},
        "model": ab.model,
        "seeds": ab.seeds,
        "training_tokens": ab.max_iters * ab.tokens_per_iter,
        "max_iters": ab.max_iters,
        "tokens_per_iter": ab.tokens_per_iter,
        "metric": "held-out bits per byte (lower is better)",
        "verdict_rule": "better/worse when |mean paired difference| > 2 × the larger seed spread (max − min)",
        "variants": rows,
    }


def _fmt_diff(row: dict[str, Any]) -> str:
    return f"{row['diff_mean']:+.4f} ± {row['diff_spread']:.4f}"


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    out = []
    for row in report["variants"]:
        d = row["decontamination"]
        out.append(
            [
                row["name"] + (" (base)" if row["name"] == report["base"] != "base" else ""),
                f"{row['bpb_mean']:.4f} ± {row['bpb_spread']:.4f}",
                "-" if row["verdict"] is None else _fmt_diff(row),
                row["verdict"] or "-",
                f"{row['training_tokens']:,}",
                f"{row['corpus_tokens']:,}",
                f"{row['documents']:,}",
                f"{d['removed_exact']} / {d['removed_near']}",
            ]
        )
    return out


HEADERS = [
    "variant",
    "held-out bits/byte",
    "Δ vs base",
    "verdict",
    "training tokens",
    "corpus tokens",
    "documents",
    "decontaminated (exact / near)",
]


def markdown_table(report: dict[str, Any]) -> list[str]:
    head = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    return head + ["| " + " | ".join(r) + " |" for r in table_rows(report)]


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Ablation {report['name']}",
        "",
        f"Metric: {report['metric']}, after {report['training_tokens']:,} training tokens per model "
        f"({report['max_iters']} iterations of {report['tokens_per_iter']:,} tokens), seeds "
        f"{', '.join(map(str, report['seeds']))}. ± is the spread over seeds (max − min); Δ is the mean of the "
        f"per-seed differences to the base. Verdict rule: {report['verdict_rule']}.",
        "",
        *markdown_table(report),
    ]
    held, tok = report["heldout"], report["tokenizer"]
    lines += [
        "",
        f"Held-out set: {held['documents']} documents from `{held['source']}` (sha256 {held['sha256'][:16]}…); "
        "every variant's corpus was decontaminated from it first.",
        f"Tokenizer: `{tok['path']}`"
        + (f", trained once on variant {tok['trained_on']}" if tok["trained_on"] else ", given")
        + "; the same for every variant.",
        "",
        "![held-out bits per byte against training tokens](ablation.png)",
        "",
        "## Variants",
        "",
    ]
    for row in report["variants"]:
        run = f"[its run and data card]({Path('variants') / row['name'] / 'README.md'})" if row["run"] else "no run"
        shared = (
            f"; stages {', '.join(row['stages_shared'])} from {', '.join(row['shared_with'])}"
            if row["shared_with"]
            else ""
        )
        lines.append(f"- **{row['name']}** (corpus: stage `{row['corpus']}`): {run}{shared}.")
    return "\n".join(lines) + "\n"


def render_plot(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    styles = ["-", "--", ":", "-."]
    for i, row in enumerate(report["variants"]):
        color = f"C{i % 10}"
        for j, s in enumerate(row["seeds"]):
            xs, ys = zip(*s["curve"], strict=True) if s["curve"] else ((), ())
            ax.plot(xs, ys, styles[j % len(styles)], color=color, label=f"{row['name']} seed {s['seed']}")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"Ablation {report['name']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(ab: Any, report: dict[str, Any]) -> None:
    """``ablation.json``, ``ablation.md`` and (with matplotlib) ``ablation.png``, each written atomically."""
    try:
        atomic_write_bytes(ab.workdir / "ablation.png", render_plot(report))
    except ImportError:
        report["plot_note"] = "no plot: matplotlib is not installed (pip install 'corpusforge[train]')"
    atomic_write_bytes(ab.workdir / "ablation.md", render_markdown(report).encode())
    atomic_write_json(ab.workdir / "ablation.json", report)

"""Default stage lists behind ``corpusforge build`` and ``corpusforge demo``.

They are plain recipe dicts (the same thing a TOML recipe holds), so ``--set`` overrides and validation
apply to them exactly as to a recipe file; ``pipelines/*.toml`` spell the same stages out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def clean_stages(
    *, near_dedup: bool = True, tasks: int = 2, min_words: int = 50, extractor: str | None = "trafilatura"
) -> list[dict[str, Any]]:
    """extract (HTML only: ``extractor=None`` for text) → normalize → quality filters → exact dedup (→ near-dedup)."""
    extract = [{"type": "extract", "extractor": extractor}] if extractor else []
    stages: list[dict[str, Any]] = [
        {
            "kind": "process",
            "name": "clean",
            "tasks": tasks,
            "keep_rejected": True,
            "steps": [
                *extract,
                {"type": "normalize"},
                {"type": "length", "min_words": min_words},
                {"type": "gopher_repetition"},
                {"type": "gopher_quality"},
            ],
        },
        {"kind": "exact_dedup", "name": "dedup"},
    ]
    if near_dedup:
        stages.append({"kind": "minhash_dedup", "name": "near_dedup"})
    return stages


def token_stages(
    *, corpus: str, vocab_size: int = 8192, algorithm: str = "bpe", val_fraction: float = 0.05
) -> list[dict[str, Any]]:
    """Tokenizer trained on ``corpus`` (a stage name), then token shards of the same documents."""
    return [
        {"kind": "tokenizer", "name": "tokenizer", "input": corpus, "algorithm": algorithm, "vocab_size": vocab_size},
        {"kind": "tokens", "name": "tokens", "input": corpus, "tokenizer": "tokenizer", "val_fraction": val_fraction},
    ]


def source_stage(source: Path) -> dict[str, Any]:
    """The first stage for ``corpusforge build SOURCE``, chosen by what SOURCE is."""
    source = Path(source)
    if (source / "manifest.json").is_file():
        return {"kind": "shards", "name": "input", "path": str(source)}
    if source.is_dir():
        return {"kind": "read_html", "name": "input", "path": str(source)}
    name = source.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json")):
        return {"kind": "read_jsonl", "name": "input", "path": str(source)}
    if name.endswith((".warc", ".warc.gz")):
        return {"kind": "read_warc", "name": "input", "path": str(source)}
    from corpusforge.errors import ConfigError

    raise ConfigError(
        "expected a finished stage folder (with manifest.json), a folder of .html files, a .jsonl file or a "
        ".warc/.warc.gz file",
        path="SOURCE",
        file=str(source),
    )


def build_recipe(
    source: Path, *, workdir: Path | None, vocab_size: int, tokenizer: str, near_dedup: bool
) -> dict[str, Any]:
    name = Path(source).resolve().name.split(".")[0] or "build"
    if name == "crawl":  # runs/<x>/crawl → name the build after the run
        name = Path(source).resolve().parent.name
    first = source_stage(source)
    # JSONL holds text already; HTML folders, WARC files and crawls hold HTML to extract from.
    extractor = None if first["kind"] == "read_jsonl" else "trafilatura"
    return {
        "name": name,
        "workdir": str(workdir or Path("runs") / f"{name}-build"),
        "stages": [
            first,
            *clean_stages(near_dedup=near_dedup, extractor=extractor),
            *token_stages(corpus="near_dedup" if near_dedup else "dedup", vocab_size=vocab_size, algorithm=tokenizer),
        ],
    }


def demo_recipe(
    *, seed_url: str, spider: Path, workdir: Path, pages: int, train_iters: int, workers: int = 2
) -> dict[str, Any]:
    """The embedded default: crawl the loopback demo site and run every stage down to a tiny GPT."""
    return {
        "name": "demo",
        "workdir": str(workdir),
        "workers": workers,
        "stages": [
            {
                "kind": "crawl",
                "spider": str(spider),
                "seeds": [seed_url],
                "backend": "requests+lxml",
                # The demo site is our own server on 127.0.0.1: no politeness delay is owed to it.
                "min_delay_s": 0.0,
                "max_pages": pages,
            },
            # The demo pages keep their content in <main> and pydoc lays it out in tables, which trafilatura
            # renders as pipe-separated rows; the lxml extractor reads <main> as paragraphs.
            *clean_stages(near_dedup=True, min_words=50, extractor="lxml"),
            *token_stages(corpus="near_dedup", vocab_size=2048, val_fraction=0.05),
            {
                "kind": "train",
                "name": "train",
                "n_layer": 2,
                "n_head": 4,
                "n_embd": 128,
                "block_size": 128,
                "batch_size": 16,
                "max_iters": train_iters,
                "eval_interval": max(train_iters // 4, 1),
                "eval_iters": 10,
                "warmup_iters": max(train_iters // 10, 1),
                "lr": 2e-3,
                "sample_tokens": 80,
            },
        ],
    }

"""The dataset card of a tokens folder: YAML front matter and tables, from the manifest's fields."""

from __future__ import annotations

import json
from typing import Any

from corpusforge.card import size_category
from corpusforge.tokens.write import SPLITS


def dataset_card(
    manifest: dict[str, Any],
    *,
    name: str,
    tokenizer_report: dict[str, Any] | None = None,
    files: list[dict[str, Any]] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> str:
    """README.md with YAML front matter (HF dataset card fields + corpusforge's counts) from the manifest fields.

    Every number comes from ``manifest`` (the same dict merged into manifest.json), so card and manifest agree.
    """
    tokens, docs = manifest["tokens"], manifest["documents"]
    total = sum(tokens.values())
    size = size_category(sum(docs.values()))
    front = [
        "---",
        f"pretty_name: {json.dumps(name)}",
        "task_categories:",
        "- text-generation",
        f"size_categories:\n- {size}",
        "configs:",
        "- config_name: default",
        "  data_files:",
        *[f"  - split: {s}\n    path: {s}/*.arrow" for s in SPLITS],
        "corpusforge:",
        f"  vocab_size: {manifest['vocab_size']}",
        f"  dtype: {manifest['dtype']}",
        f"  eot_id: {manifest['eot_id']}",
        f"  tokenizer_sha256: {json.dumps(manifest.get('tokenizer_sha256', ''))}",
        *[f"  tokens_{s}: {tokens[s]}" for s in SPLITS],
        *[f"  documents_{s}: {docs[s]}" for s in SPLITS],
        f"  tokens_total: {total}",
        "---",
    ]
    body = [
        f"# {name}: token shards",
        "",
        f"Made by corpusforge: {total:,} tokens in {sum(docs.values()):,} documents, vocabulary "
        f"{manifest['vocab_size']:,} (`{manifest['dtype']}` ids, end-of-text id {manifest['eot_id']}).",
        "Each row is one document: `input_ids` (its tokens followed by `<|endoftext|>`) and its lineage",
        "(`id`, `url`, `fetched_at`, and `consent`: the crawl's opt-out record), so every token range maps back to the page "
        "it came from.",
        "",
        "| split | documents | tokens | shards |",
        "| --- | --- | --- | --- |",
        *[
            f"| {s} | {docs[s]} | {tokens[s]} | {sum(1 for f in files or [] if f['name'].startswith(s + '/'))} |"
            for s in SPLITS
        ],
        "",
        "Load with `datasets.load_from_disk(<this folder>)`; check with `corpusforge validate <this folder>`;",
        "`corpusforge export-nanogpt <this folder> OUT` writes nanoGPT's train.bin/val.bin.",
    ]
    if steps:
        body += ["", "## Processing", ""]
        for st in steps:
            dropped = ", ".join(f"{k}: {v}" for k, v in st.get("dropped", {}).items()) or "none"
            body.append(f"- `{st['name']}`: {st['input']} in, {st['output']} out; dropped: {dropped}")
    if tokenizer_report:
        o = tokenizer_report.get("overall", {})
        body += [
            "",
            "## Tokenizer",
            "",
            f"{tokenizer_report.get('algorithm', '?')}, {o.get('bytes_per_token', '?')} bytes per token, "
            f"{o.get('words_per_token', '?')} words per token, unknown rate {o.get('unknown_rate', '?')} "
            "on a sample of the corpus.",
        ]
    return "\n".join(front + body) + "\n"

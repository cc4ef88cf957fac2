"""Readers of token shards: zero-copy token streams, lineage (token position → document), nanoGPT export."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from corpusforge.errors import ConfigError, FatalError, ShardError
from corpusforge.storage import (
    MANIFEST,
    atomic_write_bytes,
    atomic_write_json,
    commit_temp,
    file_record,
    load_manifest,
    read_listed,
    temp_path,
    write_manifest,
)


def expect_tokens_folder(folder: Path) -> dict[str, Any]:
    """The manifest of a finished tokens folder, or a ``ConfigError`` saying what the folder is instead."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise ConfigError(f"{folder} has no {MANIFEST}: point it at a finished tokens stage folder", path="TOKENS")
    manifest = load_manifest(folder)
    if {"vocab_size", "dtype", "tokens"} <= manifest.keys():
        return manifest
    kind = manifest.get("config", {}).get("kind") if isinstance(manifest.get("config"), dict) else None
    if (folder / "tokenizer.json").is_file():
        what = "a tokenizer (tokenizer.json)"
    elif any(f["name"].endswith(".arrow") for f in manifest.get("files", [])):
        what = f"document shards{f' (a {kind!r} stage)' if kind else ''}"
    else:
        what = f"the output of a {kind!r} stage" if kind else "no token shards"
    raise ConfigError(
        f"{folder} holds {what}, not token shards: give the folder of a tokens stage (train/ and val/ shards of "
        "input_ids, e.g. runs/<name>/tokens, written by the tokens stage or `corpusforge build`)",
        path="TOKENS",
    )


def _split_batches(tokens_dir: Path, split: str, *, verify: bool = True) -> Iterator[pa.RecordBatch]:
    """The record batches of ``split``'s shards in manifest order, each file checked against the manifest
    as it is read (``storage.read_listed``: size, row count, and sha256 unless ``verify`` is False)."""
    manifest = load_manifest(tokens_dir)
    for entry in manifest["files"]:
        if entry["name"].startswith(f"{split}/"):
            yield from read_listed(tokens_dir, entry, verify=verify)


def token_arrays(tokens_dir: Path, split: str = "train", *, verify: bool = True) -> list[np.ndarray]:
    """Zero-copy 1-D views of the flat token stream of each record batch of ``split``'s shards.

    Files are checked against the manifest (presence, size, row count; sha256 with ``verify``) first; a
    mismatch raises ``ShardError``.
    """
    batches = _split_batches(tokens_dir, split, verify=verify)
    return [batch.column(0).flatten().to_numpy(zero_copy_only=True) for batch in batches]


def iter_lineage(tokens_dir: Path, split: str = "train") -> Iterator[tuple[int, int, str, str | None, str | None]]:
    """(start, end, id, url, fetched_at) token ranges over the split's concatenated stream."""
    pos = 0
    for batch in _split_batches(tokens_dir, split):
        offs = batch.column(0).offsets.to_numpy()
        ids, urls, times = (batch.column(i).to_pylist() for i in (1, 2, 3))
        for i in range(batch.num_rows):
            yield pos + int(offs[i]), pos + int(offs[i + 1]), ids[i], urls[i], times[i]
        pos += int(offs[-1])


def splits_of(tokens_dir: Path) -> list[str]:
    """The split names a tokens folder holds (``train``, ``val``), from its manifest's token counts."""
    return sorted(load_manifest(tokens_dir).get("tokens", {}))


def check_split(tokens_dir: Path, split: str) -> None:
    """A ``ConfigError`` naming the unknown split and the ones the folder has."""
    known = splits_of(tokens_dir)
    if split not in known:
        raise ConfigError(
            f"unknown split {split!r} in {tokens_dir}; it holds: {', '.join(known) or 'none'}", path="--split"
        )


def _lineage(batch: pa.RecordBatch, i: int) -> dict[str, Any]:
    """Row ``i``'s lineage: id, url, fetched_at and the crawl's consent record (None where not crawled, or in
    shards written before the column existed)."""
    row = {k: batch.column(k)[i].as_py() for k in ("id", "url", "fetched_at")}
    consent = batch.column("consent")[i].as_py() if "consent" in batch.schema.names else None
    return row | {"consent": None if consent is None else json.loads(consent)}


def document_at(tokens_dir: Path, position: int, split: str = "train") -> dict[str, Any]:
    """The document that holds token ``position`` of ``split``'s stream: id, url, fetched_at, start, end.

    ``position`` indexes the concatenation of ``token_arrays(tokens_dir, split)`` (what the trainer samples).
    """
    check_split(tokens_dir, split)
    pos = 0
    for batch in _split_batches(tokens_dir, split):
        offs = batch.column(0).offsets.to_numpy()
        if position < pos + int(offs[-1]):
            i = int(np.searchsorted(offs, position - pos, side="right")) - 1
            return _lineage(batch, i) | {"start": pos + int(offs[i]), "end": pos + int(offs[i + 1])}
        pos += int(offs[-1])
    raise ConfigError(f"token {position} is past the end of {split} ({pos} tokens)", path="position")


def ranges_of_url(tokens_dir: Path, url: str, splits: list[str] | None = None) -> list[dict[str, Any]]:
    """Reverse lineage: every document of ``url`` in the token shards, with its split and token range.

    One pass over the url column of each split (the token lists are not decoded); the ranges index the
    split's stream, as ``document_at``'s positions do.
    """
    found = []
    for split in splits or splits_of(tokens_dir):
        check_split(tokens_dir, split)
        for start, end, doc_id, doc_url, fetched_at in iter_lineage(tokens_dir, split):
            if doc_url == url:
                found.append(
                    {"split": split, "start": start, "end": end, "id": doc_id, "url": doc_url, "fetched_at": fetched_at}
                )
    return found


def document_in_file(tokens_dir: Path, file: str | Path, row: int) -> dict[str, Any]:
    """Row ``row`` of the token shard ``file`` (a path, or its name in the manifest, ``train/data-….arrow``):
    the document's lineage, its split and its token range in that split's stream."""
    tokens_dir = Path(tokens_dir)
    manifest = load_manifest(tokens_dir)
    names = [f["name"] for f in manifest["files"]]
    wanted = Path(file)
    try:
        name = wanted.resolve().relative_to(tokens_dir.resolve()).as_posix()
    except ValueError:
        name = wanted.as_posix()
    if name not in names:
        shards = [n for n in names if n.endswith(".arrow")]
        raise ConfigError(
            f"{file} is not a token shard listed in {tokens_dir}/{MANIFEST}; it lists {len(shards)}, e.g. "
            + ", ".join(shards[:3]),
            path="--file",
        )
    split = name.split("/", 1)[0]
    pos = 0
    for entry in manifest["files"]:
        if not entry["name"].startswith(f"{split}/"):
            continue
        if entry["name"] != name:
            pos += int(entry.get("tokens", 0))
            continue
        if not 0 <= row < int(entry["rows"]):
            raise ConfigError(
                f"{name} has {entry['rows']} rows (0 to {int(entry['rows']) - 1}), not {row}", path="--row"
            )
        seen = 0
        for batch in read_listed(tokens_dir, entry):
            if row < seen + batch.num_rows:
                i = row - seen
                offs = batch.column(0).offsets.to_numpy()
                doc = _lineage(batch, i)
                where = {"split": split, "file": name, "row": row}
                return doc | where | {"start": pos + int(offs[i]), "end": pos + int(offs[i + 1])}
            seen += batch.num_rows
            pos += int(batch.column(0).offsets.to_numpy()[-1])
    raise ShardError(f"{tokens_dir}/{name}: fewer rows than {MANIFEST} lists; run corpusforge validate")


def export_nanogpt(tokens_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write nanoGPT's ``train.bin``/``val.bin`` (flat uint16 little-endian), ``meta.pkl`` and ``meta.json``,
    manifest last.

    nanoGPT reads ``np.memmap(path, dtype=np.uint16)``, so a vocabulary over 65,536 cannot be exported.
    ``meta.pkl`` is what nanoGPT's ``train.py`` reads its ``vocab_size`` from (a plain dict: vocab_size,
    eot_id, dtype, tokens per split, the tokenizer's sha256); ``meta.json`` holds the same, for everyone else.
    """
    tokens_dir, out_dir = Path(tokens_dir), Path(out_dir)
    manifest = load_manifest(tokens_dir)
    if manifest.get("dtype") != "uint16":
        raise ConfigError(
            f"{tokens_dir}: ids are {manifest.get('dtype')}; nanoGPT's .bin format holds uint16 only", path="dtype"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    files = []
    for split, name in (("train", "train.bin"), ("val", "val.bin")):
        final = out_dir / name
        tmp = temp_path(final)
        n = 0
        try:
            with open(tmp, "wb") as fh:
                for arr in token_arrays(tokens_dir, split, verify=True):
                    fh.write(arr.astype("<u2", copy=False).tobytes())
                    n += len(arr)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FatalError(f"cannot write {final}: {exc}. Check free space.") from exc
        if n != manifest["tokens"][split]:
            tmp.unlink(missing_ok=True)
            raise ShardError(f"{tokens_dir}: {split} holds {n} tokens, manifest says {manifest['tokens'][split]}")
        commit_temp(tmp, final)
        files.append(file_record(final, rows=n))
    meta = {
        "vocab_size": manifest["vocab_size"],
        "eot_id": manifest["eot_id"],
        "dtype": "uint16",
        "tokens": manifest["tokens"],
        "tokenizer_sha256": manifest.get("tokenizer_sha256"),
    }
    atomic_write_json(out_dir / "meta.json", meta)
    # nanoGPT's train.py reads vocab_size from meta.pkl only (pickle.load of a plain dict): the same fields,
    # builtin types only. We write this pickle and never load one.
    atomic_write_bytes(out_dir / "meta.pkl", pickle.dumps(meta, protocol=4))
    files += [file_record(out_dir / "meta.json"), file_record(out_dir / "meta.pkl")]
    return write_manifest(out_dir, files, config={"from": str(tokens_dir.resolve())}, extra={"format_of": "nanogpt"})

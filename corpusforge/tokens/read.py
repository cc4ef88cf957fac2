"""Readers of token shards: zero-copy token streams, lineage (token position → document), nanoGPT export."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from corpusforge.errors import ConfigError, FatalError, ShardError
from corpusforge.storage import (
    MANIFEST,
    TMP_SUFFIX,
    atomic_write_json,
    load_manifest,
    sha256_file,
    write_manifest,
)


def _split_batches(tokens_dir: Path, split: str, *, verify: bool = False) -> Iterator[pa.RecordBatch]:
    """The record batches of ``split``'s shards in manifest order, each file checked against the manifest.

    Always: present and the listed size, and the row count the manifest lists once a file is read (a stream
    cut at a batch boundary still reads, with fewer rows). ``verify``: its sha256 too (reads every byte once).
    Any mismatch raises ``ShardError`` naming the file.
    """
    tokens_dir = Path(tokens_dir)
    manifest = load_manifest(tokens_dir)
    for f in manifest["files"]:
        if not f["name"].startswith(f"{split}/"):
            continue
        path = tokens_dir / f["name"]
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            raise ShardError(f"{path}: missing or size differs from {MANIFEST}; run corpusforge validate")
        if verify and sha256_file(path) != f["sha256"]:
            raise ShardError(f"{path}: sha256 differs from {MANIFEST} (altered); run corpusforge validate")
        rows = 0
        try:
            for batch in ipc.open_stream(pa.memory_map(str(path), "r")):
                rows += batch.num_rows
                yield batch
        except pa.ArrowInvalid as exc:
            raise ShardError(f"{path}: unreadable ({exc}); run corpusforge validate") from exc
        if rows != f["rows"]:
            raise ShardError(f"{path}: {rows} rows, {MANIFEST} says {f['rows']}; run corpusforge validate")


def token_arrays(tokens_dir: Path, split: str = "train", *, verify: bool = False) -> list[np.ndarray]:
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


def document_at(tokens_dir: Path, position: int, split: str = "train") -> dict[str, Any]:
    """The document that holds token ``position`` of ``split``'s stream: id, url, fetched_at, start, end.

    ``position`` indexes the concatenation of ``token_arrays(tokens_dir, split)`` (what the trainer samples).
    """
    pos = 0
    for batch in _split_batches(tokens_dir, split):
        offs = batch.column(0).offsets.to_numpy()
        if position < pos + int(offs[-1]):
            i = int(np.searchsorted(offs, position - pos, side="right")) - 1
            row = {k: batch.column(k)[i].as_py() for k in ("id", "url", "fetched_at")}
            return row | {"start": pos + int(offs[i]), "end": pos + int(offs[i + 1])}
        pos += int(offs[-1])
    raise ConfigError(f"token {position} is past the end of {split} ({pos} tokens)", path="position")


def export_nanogpt(tokens_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Write nanoGPT's ``train.bin``/``val.bin`` (flat uint16 little-endian) and ``meta.json``, manifest last.

    nanoGPT reads ``np.memmap(path, dtype=np.uint16)``, so a vocabulary over 65,536 cannot be exported.
    ``meta.json`` holds what nanoGPT's ``meta.pkl`` would (vocab_size, plus eot_id), as JSON: no pickles.
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
        tmp = final.with_name(name + TMP_SUFFIX)
        n = 0
        try:
            with open(tmp, "wb") as fh:
                for arr in token_arrays(tokens_dir, split, verify=True):
                    fh.write(arr.astype("<u2", copy=False).tobytes())
                    n += len(arr)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FatalError(f"cannot write {final}: {exc}. Check free space.") from exc
        if n != manifest["tokens"][split]:
            raise ShardError(f"{tokens_dir}: {split} holds {n} tokens, manifest says {manifest['tokens'][split]}")
        files.append({"name": name, "rows": n, "bytes": final.stat().st_size, "sha256": sha256_file(final)})
    meta = {
        "vocab_size": manifest["vocab_size"],
        "eot_id": manifest["eot_id"],
        "dtype": "uint16",
        "tokens": manifest["tokens"],
        "tokenizer_sha256": manifest.get("tokenizer_sha256"),
    }
    atomic_write_json(out_dir / "meta.json", meta)
    meta_path = out_dir / "meta.json"
    files.append({"name": "meta.json", "rows": 0, "bytes": meta_path.stat().st_size, "sha256": sha256_file(meta_path)})
    return write_manifest(out_dir, files, config={"from": str(tokens_dir.resolve())}, extra={"format_of": "nanogpt"})

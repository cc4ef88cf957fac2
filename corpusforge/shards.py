"""Documents → train-ready Arrow token shards, with a manifest, lineage and a dataset card.

Layout of a tokens folder (``datasets.load_from_disk(folder)`` reads it as a ``DatasetDict``)::

    tokens/
      dataset_dict.json                       {"splits": ["train", "val"]}
      train/ data-r00000-00000.arrow …        Arrow stream files (what datasets writes)
             dataset_info.json  state.json
      val/   …
      manifest.json  README.md (dataset card)

Each row is one document: ``input_ids`` (list of uint16, or uint32 when the vocabulary exceeds 65,536; the
document's tokens followed by ``<|endoftext|>``) and its lineage: ``id``, ``url``, ``fetched_at``. The
values buffer of ``input_ids`` is a flat token stream that ``token_arrays`` memory-maps without copying;
its offsets are the document boundaries, so token range → document is a binary search over offsets.

The split is by document: ``metadata["split"]`` ("train"/"val") when a document carries one, else a hash
of its id below ``val_fraction`` → val. Shards rotate at ``max_shard_tokens``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from corpusforge.document import Document
from corpusforge.errors import ConfigError, ShardError
from corpusforge.recipe import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import (
    MANIFEST,
    TMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    iter_documents,
    load_manifest,
    sha256_file,
    write_manifest,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
EOT = "<|endoftext|>"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def token_schema(dtype: np.dtype) -> pa.Schema:
    feature = {
        "input_ids": {"feature": {"dtype": dtype.name, "_type": "Value"}, "_type": "List"},
        "id": {"dtype": "string", "_type": "Value"},
        "url": {"dtype": "string", "_type": "Value"},
        "fetched_at": {"dtype": "string", "_type": "Value"},
    }
    meta = {"huggingface": json.dumps({"info": {"features": feature}})}
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.from_numpy_dtype(dtype))),
            ("id", pa.string()),
            ("url", pa.string()),
            ("fetched_at", pa.string()),
        ],
        metadata=meta,
    )


def split_of(doc: Document, val_fraction: float) -> str:
    s = doc.metadata.get("split")
    if s in SPLITS:
        return str(s)
    h = int.from_bytes(hashlib.blake2b(doc.id.encode(), digest_size=8).digest(), "big") / 2**64
    return "val" if h < val_fraction else "train"


def load_tokenizer(ref: Any):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer

    if isinstance(ref, Tokenizer):
        return ref
    path = Path(ref)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"tokenizer {str(path)!r} not found", path="tokenizer")
    return Tokenizer.from_file(str(path))


class _SplitWriter:
    """Stream-format shards for one split of one task, rotated at ``max_tokens``."""

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype, max_tokens: int) -> None:
        self.folder, self.prefix, self.dtype, self.max_tokens = folder, prefix, dtype, max_tokens
        self.schema = token_schema(dtype)
        self.files: list[dict[str, Any]] = []
        self.tokens = self.docs = 0
        self._writer: Any = None
        self._sink: Any = None
        self._file_tokens = self._file_rows = 0

    def _path(self) -> Path:
        return self.folder / f"{self.prefix}-{len(self.files):05d}.arrow"

    def write(self, ids: list[np.ndarray], meta: list[tuple[str, str | None, str | None]]) -> None:
        if not ids:
            return
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self._path().with_name(self._path().name + TMP_SUFFIX)
            self._sink = pa.OSFile(str(tmp), "wb")
            self._writer = ipc.new_stream(self._sink, self.schema)
        lengths = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = np.concatenate(ids).astype(self.dtype, copy=False)
        arr = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
        batch = pa.record_batch(
            [
                arr,
                pa.array([m[0] for m in meta], pa.string()),
                pa.array([m[1] for m in meta], pa.string()),
                pa.array([m[2] for m in meta], pa.string()),
            ],
            schema=self.schema,
        )
        self._writer.write_batch(batch)
        self._file_tokens += int(offsets[-1])
        self._file_rows += len(ids)
        self.tokens += int(offsets[-1])
        self.docs += len(ids)
        if self._file_tokens >= self.max_tokens:
            self._finish()

    def _finish(self) -> None:
        if self._writer is None:
            return
        import os

        final = self._path()
        tmp = final.with_name(final.name + TMP_SUFFIX)
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())
        self._sink.close()
        os.replace(tmp, final)
        fsync_dir(self.folder)
        self.files.append(
            {
                "name": f"{self.folder.name}/{final.name}",
                "rows": self._file_rows,
                "bytes": final.stat().st_size,
                "sha256": sha256_file(final),
                "tokens": self._file_tokens,
            }
        )
        self._writer = None
        self._file_tokens = self._file_rows = 0

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        return self.files

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
                self._sink.close()
            except Exception:  # noqa: BLE001
                pass
            self._path().with_name(self._path().name + TMP_SUFFIX).unlink(missing_ok=True)
        for f in self.files:
            (self.folder.parent / f["name"]).unlink(missing_ok=True)


def tokenize_to_shards(
    docs: Iterable[Document],
    tokenizer: Any,
    out_dir: Path,
    *,
    prefix: str = "data-r00000",
    val_fraction: float = 0.01,
    max_shard_tokens: int = 50_000_000,
    batch_docs: int = 512,
    stats: StepStats | None = None,
) -> dict[str, Any]:
    """Tokenize ``docs`` into split folders of ``out_dir``; returns files and counts (no manifest)."""
    tok = load_tokenizer(tokenizer)
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise ConfigError(f"the tokenizer has no {EOT} token", path="tokenizer")
    dtype = token_dtype(tok.get_vocab_size())
    writers = {s: _SplitWriter(out_dir / s, prefix, dtype, max_shard_tokens) for s in SPLITS}
    stats = stats or StepStats("tokenize")
    eot_arr = np.array([eot], dtype=np.uint32)

    def flush(batch: list[Document]) -> None:
        encs = tok.encode_batch([d.text for d in batch], add_special_tokens=False)
        by_split: dict[str, tuple[list[np.ndarray], list[tuple[str, str | None, str | None]]]] = {
            s: ([], []) for s in SPLITS
        }
        for d, e in zip(batch, encs, strict=True):
            ids, meta = by_split[split_of(d, val_fraction)]
            ids.append(np.concatenate([np.asarray(e.ids, dtype=np.uint32), eot_arr]))
            meta.append((d.id, d.url, d.fetched_at))
        for s, (ids, meta) in by_split.items():
            writers[s].write(ids, meta)

    try:
        batch: list[Document] = []
        for d in docs:
            stats.input += 1
            if not d.text:
                stats.drop("empty_text")
                continue
            stats.output += 1
            batch.append(d)
            if len(batch) >= batch_docs:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        files = [f for s in SPLITS for f in writers[s].close()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return {
        "files": files,
        "tokens": {s: writers[s].tokens for s in SPLITS},
        "documents": {s: writers[s].docs for s in SPLITS},
        "vocab_size": tok.get_vocab_size(),
        "eot_id": eot,
        "dtype": dtype.name,
    }


def write_hf_metadata(out_dir: Path, files: list[dict[str, Any]], dtype: str) -> None:
    """``dataset_dict.json`` and per-split ``state.json`` / ``dataset_info.json`` for ``load_from_disk``."""
    features = json.loads(token_schema(np.dtype(dtype)).metadata[b"huggingface"])["info"]["features"]
    for s in SPLITS:
        names = sorted(f["name"].split("/", 1)[1] for f in files if f["name"].startswith(f"{s}/"))
        (out_dir / s).mkdir(parents=True, exist_ok=True)
        if not names:  # datasets needs at least one file: an empty shard of the right schema
            empty = out_dir / s / "data-empty.arrow"
            with pa.OSFile(str(empty), "wb") as sink, ipc.new_stream(sink, token_schema(np.dtype(dtype))):
                pass
            names = [empty.name]
        fp = hashlib.sha256("".join(names).encode()).hexdigest()[:16]
        atomic_write_json(
            out_dir / s / "state.json",
            {
                "_data_files": [{"filename": n} for n in names],
                "_fingerprint": fp,
                "_format_columns": None,
                "_format_kwargs": {},
                "_format_type": None,
                "_output_all_columns": False,
                "_split": s,
            },
        )
        atomic_write_json(
            out_dir / s / "dataset_info.json",
            {
                "citation": "",
                "description": "corpusforge token shards",
                "features": features,
                "homepage": "",
                "license": "",
            },
        )
    atomic_write_json(out_dir / "dataset_dict.json", {"splits": list(SPLITS)})


def dataset_card(manifest: dict[str, Any], *, name: str, tokenizer_report: dict[str, Any] | None = None) -> str:
    tokens, docs = manifest["tokens"], manifest["documents"]
    front = [
        "---",
        f"pretty_name: {json.dumps(name)}",
        "task_categories:",
        "- text-generation",
        "configs:",
        "- config_name: default",
        "  data_files:",
        *[f"  - split: {s}\n    path: {s}/*.arrow" for s in SPLITS],
        "corpusforge:",
        f"  vocab_size: {manifest['vocab_size']}",
        f"  dtype: {manifest['dtype']}",
        f"  eot_id: {manifest['eot_id']}",
        f"  tokenizer_sha256: {manifest.get('tokenizer_sha256', '')}",
        *[f"  tokens_{s}: {tokens[s]}" for s in SPLITS],
        *[f"  documents_{s}: {docs[s]}" for s in SPLITS],
        "---",
    ]
    body = [
        f"# {name}: token shards",
        "",
        "Made by corpusforge. Each row is one document: `input_ids` (its tokens followed by `<|endoftext|>`)",
        "and its lineage (`id`, `url`, `fetched_at`).",
        "",
        "| split | documents | tokens |",
        "| --- | --- | --- |",
        *[f"| {s} | {docs[s]} | {tokens[s]} |" for s in SPLITS],
        "",
        "Load with `datasets.load_from_disk(<this folder>)`; check with `corpusforge validate <this folder>`.",
    ]
    if tokenizer_report:
        o = tokenizer_report.get("overall", {})
        body += ["", f"Tokenizer: {o.get('bytes_per_token', '?')} bytes per token on the corpus."]
    return "\n".join(front + body) + "\n"


def token_arrays(tokens_dir: Path, split: str = "train") -> list[np.ndarray]:
    """Zero-copy 1-D views of the flat token stream of each record batch of ``split``'s shards.

    Files are checked against the manifest (presence and size) first; a mismatch raises ``ShardError``.
    """
    tokens_dir = Path(tokens_dir)
    manifest = load_manifest(tokens_dir)
    out: list[np.ndarray] = []
    for f in manifest["files"]:
        if not f["name"].startswith(f"{split}/"):
            continue
        path = tokens_dir / f["name"]
        if not path.is_file() or path.stat().st_size != f["bytes"]:
            raise ShardError(f"{path}: missing or size differs from {MANIFEST}; run corpusforge validate")
        reader = ipc.open_stream(pa.memory_map(str(path), "r"))
        for batch in reader:
            col = batch.column(0)
            out.append(col.flatten().to_numpy(zero_copy_only=True))
    return out


class TokensStage(Stage):
    """Tokenize the input stage's documents into token shards with ``tokenizer`` (a stage name or a path)."""

    kind: ClassVar[str] = "tokens"
    produces_documents: ClassVar[bool] = False

    def __init__(
        self,
        *,
        tokenizer: str = "tokenizer",
        val_fraction: Annotated[float, Min(0), Max(0.5)] = 0.01,
        tasks: Annotated[int, Min(1)] = 2,
        max_shard_tokens: Annotated[int, Min(1000), Max(2_000_000_000)] = 50_000_000,
        batch_docs: Annotated[int, Min(1)] = 512,
    ) -> None:
        self.tokenizer = tokenizer
        self.val_fraction = val_fraction
        self.tasks = tasks
        self.max_shard_tokens = max_shard_tokens
        self.batch_docs = batch_docs

    def _tokenizer_path(self, ctx: StageContext) -> Path:
        if self.tokenizer in ctx.stage_dirs:
            return ctx.stage_dirs[self.tokenizer] / "tokenizer.json"
        return Path(self.tokenizer)

    def num_tasks(self, ctx: StageContext) -> int:
        return self.tasks

    def prepare_task(self, ctx: StageContext, rank: int) -> None:
        for s in SPLITS:
            for p in (ctx.out_dir / s).glob(f"data-r{rank:05d}-*"):
                p.unlink(missing_ok=True)

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        files = [f for i, f in enumerate(ctx.input_files()) if i % self.tasks == rank]
        stats = StepStats("tokenize")
        res = tokenize_to_shards(
            iter_documents(files, columns=["id", "text", "url", "fetched_at", "metadata"]),
            self._tokenizer_path(ctx),
            ctx.out_dir,
            prefix=f"data-r{rank:05d}",
            val_fraction=self.val_fraction,
            max_shard_tokens=self.max_shard_tokens,
            batch_docs=self.batch_docs,
            stats=stats,
        )
        extra = {f"tokens_{s}": res["tokens"][s] for s in SPLITS} | {
            f"documents_{s}": res["documents"][s] for s in SPLITS
        }
        return TaskResult(files=res["files"], steps=[stats.to_dict()], extra=extra)

    def finalize(self, ctx: StageContext, results: list[TaskResult]) -> dict[str, Any]:
        tok_path = self._tokenizer_path(ctx)
        tok = load_tokenizer(tok_path)
        dtype = token_dtype(tok.get_vocab_size()).name
        files = [f for r in results for f in r.files]
        write_hf_metadata(ctx.out_dir, files, dtype)
        tokens = {s: sum(r.extra.get(f"tokens_{s}", 0) for r in results) for s in SPLITS}
        documents = {s: sum(r.extra.get(f"documents_{s}", 0) for r in results) for s in SPLITS}
        info = {
            "vocab_size": tok.get_vocab_size(),
            "eot_id": tok.token_to_id(EOT),
            "dtype": dtype,
            "tokenizer_sha256": sha256_file(tok_path),
            "tokenizer_path": str(tok_path.resolve()),
            "tokens": tokens,
            "documents": documents,
        }
        report_path = tok_path.parent / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        atomic_write_bytes(
            ctx.out_dir / "README.md", dataset_card(info, name=ctx.run_dir.name, tokenizer_report=report).encode()
        )
        return info


def write_token_shards(
    docs: Iterable[Document],
    tokenizer: Any,
    out_dir: Path,
    *,
    val_fraction: float = 0.01,
    max_shard_tokens: int = 50_000_000,
    batch_docs: int = 512,
    name: str = "tokens",
) -> dict[str, Any]:
    """Library entry point: tokenize ``docs`` into ``out_dir`` with the manifest written last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(tokenizer)
    res = tokenize_to_shards(
        docs, tok, out_dir, val_fraction=val_fraction, max_shard_tokens=max_shard_tokens, batch_docs=batch_docs
    )
    write_hf_metadata(out_dir, res["files"], res["dtype"])
    info = {k: res[k] for k in ("vocab_size", "eot_id", "dtype", "tokens", "documents")}
    info["tokenizer_sha256"] = hashlib.sha256(tok.to_str().encode()).hexdigest()
    atomic_write_bytes(out_dir / "README.md", dataset_card(info, name=name).encode())
    return write_manifest(out_dir, res["files"], config={"val_fraction": val_fraction}, extra=info)


def iter_lineage(tokens_dir: Path, split: str = "train") -> Iterator[tuple[int, int, str, str | None, str | None]]:
    """(start, end, id, url, fetched_at) token ranges over the split's concatenated stream."""
    manifest = load_manifest(tokens_dir)
    pos = 0
    for f in manifest["files"]:
        if not f["name"].startswith(f"{split}/"):
            continue
        for batch in ipc.open_stream(pa.memory_map(str(Path(tokens_dir) / f["name"]), "r")):
            offs = batch.column(0).offsets.to_numpy()
            ids, urls, times = (batch.column(i).to_pylist() for i in (1, 2, 3))
            for i in range(batch.num_rows):
                yield pos + int(offs[i]), pos + int(offs[i + 1]), ids[i], urls[i], times[i]
            pos += int(offs[-1])

"""Documents → train-ready Arrow token shards, with a manifest, lineage and a dataset card.

Layout of a tokens folder (``datasets.load_from_disk(folder)`` reads it as a ``DatasetDict`` as it is)::

    tokens/
      dataset_dict.json                       {"splits": ["train", "val"]}
      train/ data-r00000-00000.arrow …        Arrow *stream* files (what datasets writes): task r, shard k
             dataset_info.json  state.json    the features and the file list datasets needs
      val/   …                                (an empty split holds one empty shard, data-empty.arrow)
      manifest.json                           files (train/…, val/…) with rows, bytes, sha256, tokens; counts
      README.md                               dataset card: YAML front matter + tables, from the manifest fields

Each row is one document: ``input_ids`` (list of uint16, or uint32 when the vocabulary exceeds 65,536; the
document's tokens followed by ``<|endoftext|>``) and its lineage: ``id``, ``url``, ``fetched_at``, ``consent``. One
record batch per encoded batch (≤ ``batch_docs`` documents, ≤ ``batch_chars`` characters): the values
buffer of ``input_ids`` is a flat token stream that ``token_arrays`` memory-maps without copying, and its
offsets are the document boundaries, so a token position maps back to its document (``document_at``).

The split is by document: ``metadata["split"]`` ("train"/"val") when a document carries one, else a hash
of its id below ``val_fraction`` → val (the tokens stage raises that bound with ``val_bound`` when val
would hold fewer than ``min_val_documents``). Shards rotate once they hold ``max_shard_tokens``. Encoding uses
``tokens_encode.FastBpeEncoder`` (ids identical to ``tokenizers``' ``encode(text, add_special_tokens=False)``;
like it, an added token's text written inside a document, e.g. ``<|endoftext|>``, becomes that token), in
``workers`` processes when asked; the output is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from corpusforge.document import Document
from corpusforge.errors import ConfigError, FatalError
from corpusforge.executors.lifetime import die_with_parent
from corpusforge.stats import StepStats
from corpusforge.storage import (
    atomic_write_json,
    commit_temp,
    file_record,
    temp_path,
)
from corpusforge.tokens.encode import FastBpeEncoder, encode_texts
from corpusforge.tokens.tokenizer import EOT

log = logging.getLogger(__name__)


SPLITS = ("train", "val")


SEED_TOKENS = 4096  # vocabulary tokens put in the encoder's table before the encoder processes fork


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def token_schema(dtype: np.dtype) -> pa.Schema:
    feature = {
        "input_ids": {"feature": {"dtype": dtype.name, "_type": "Value"}, "_type": "List"},
        "id": {"dtype": "string", "_type": "Value"},
        "url": {"dtype": "string", "_type": "Value"},
        "fetched_at": {"dtype": "string", "_type": "Value"},
        "consent": {"dtype": "string", "_type": "Value"},
    }
    meta = {"huggingface": json.dumps({"info": {"features": feature}})}
    return pa.schema(
        [
            ("input_ids", pa.list_(pa.from_numpy_dtype(dtype))),
            ("id", pa.string()),
            ("url", pa.string()),
            ("fetched_at", pa.string()),
            ("consent", pa.string()),  # the crawl's consent record (JSON), None for documents not crawled
        ],
        metadata=meta,
    )


def split_hash(doc_id: str) -> float:
    """A document's place in [0, 1) for the split: a hash of its id, so the same on every run and machine."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") / 2**64


def split_of(doc: Document, val_fraction: float) -> str:
    """``metadata["split"]`` when the document names one, else val when its ``split_hash`` < ``val_fraction``."""
    s = doc.metadata.get("split")
    if s in SPLITS:
        return str(s)
    if val_fraction <= 0:
        return "train"
    return "val" if split_hash(doc.id) < val_fraction else "train"


def val_bound(
    rows: Iterable[tuple[str, str | None, bool]], *, val_fraction: float, min_val_documents: int | None
) -> float:
    """The hash bound that gives val at least ``min_val_documents`` documents: ``val_fraction``, or higher.

    ``rows`` are (id, ``metadata["split"]`` or None, has text) for every input document: one streaming pass
    that keeps only the ``min_val_documents`` smallest hashes. Documents that name their split and empty ones
    (dropped later) are not moved; documents pinned to val count towards the minimum. When the hash split
    gives too few, the bound rises just past the k-th smallest hash, so the documents with the lowest hashes
    move to val, the same ones on every rerun, whatever the number of tasks. At most a fifth of the movable
    documents (at least one) go to val, so a small corpus still trains on most of itself. ``val_fraction`` 0 (no val split)
    and ``min_val_documents`` None leave the bound as it is.
    """
    if val_fraction <= 0 or not min_val_documents:
        return val_fraction
    smallest: list[float] = []  # max-heap (negated) of the min_val_documents smallest movable hashes
    pinned_val = hashed_val = movable = 0
    for doc_id, pinned, has_text in rows:
        if not has_text:
            continue
        if pinned in SPLITS:
            pinned_val += pinned == "val"
            continue
        movable += 1
        h = split_hash(doc_id)
        hashed_val += h < val_fraction
        if len(smallest) < min_val_documents:
            heapq.heappush(smallest, -h)
        elif h < -smallest[0]:
            heapq.heapreplace(smallest, -h)
    need = min(min_val_documents - pinned_val, max(1, movable // 5))
    if movable == 0 or need <= hashed_val:  # nothing to move (an empty corpus, every document pinned)
        return val_fraction
    kth = sorted(-x for x in smallest)[need - 1]
    return max(val_fraction, math.nextafter(kth, 1.0))  # every hash <= kth is below the bound


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
    """Stream-format shards for one split of one task, rotated once a file holds ``max_tokens`` tokens."""

    def __init__(self, folder: Path, prefix: str, dtype: np.dtype, max_tokens: int) -> None:
        self.folder, self.prefix, self.dtype, self.max_tokens = folder, prefix, dtype, max_tokens
        self.schema = token_schema(dtype)
        self.files: list[dict[str, Any]] = []
        self.tokens = self.docs = 0
        self._writer: Any = None
        self._sink: Any = None
        self._tmp = Path()  # this attempt's temp file of the shard being written
        self._file_tokens = self._file_rows = 0

    def _path(self) -> Path:
        return self.folder / f"{self.prefix}-{len(self.files):05d}.arrow"

    def write(self, values: np.ndarray, offsets: np.ndarray, meta: list[tuple[str | None, ...]]) -> None:
        """One record batch: ``values`` (all tokens, EOTs included) and ``offsets`` (len(meta) + 1 bounds)."""
        if not meta:
            return
        if self._writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._tmp = temp_path(self._path())
            self._sink = pa.OSFile(str(self._tmp), "wb")
            self._writer = ipc.new_stream(self._sink, self.schema)
        # Zero-copy: the numpy buffers become the Arrow list column's offsets and values as they are.
        arr = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32, copy=False)), pa.array(values))
        columns = [pa.array(c, pa.string()) for c in zip(*meta, strict=True)]  # id, url, fetched_at, consent
        batch = pa.record_batch([arr, *columns], schema=self.schema)
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise FatalError(f"cannot write token shard in {self.folder}: {exc}. Check free space.") from exc
        n = int(offsets[-1])
        self._file_tokens += n
        self._file_rows += len(meta)
        self.tokens += n
        self.docs += len(meta)
        if self._file_tokens >= self.max_tokens:
            self._finish()

    def _finish(self) -> None:
        if self._writer is None:
            return
        final = self._path()
        try:
            self._writer.close()
            self._sink.close()
        except OSError as exc:
            raise FatalError(f"cannot finish token shard {final}: {exc}. Check free space.") from exc
        commit_temp(self._tmp, final)
        name = f"{self.folder.name}/{final.name}"
        self.files.append(file_record(final, name=name, rows=self._file_rows, tokens=self._file_tokens))
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
            except Exception:  # noqa: BLE001 - best effort on an already failing path
                pass
            self._tmp.unlink(missing_ok=True)
            self._writer = None
        for f in self.files:
            (self.folder.parent / f["name"]).unlink(missing_ok=True)
        self.files = []


def with_eot(flat: np.ndarray, lengths: np.ndarray, eot: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Append ``eot`` to each document of a flat id stream: (values in ``dtype``, offsets of len(lengths) + 1)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths + 1, out=offsets[1:])
    values = np.empty(int(offsets[-1]), dtype=dtype)
    ends = offsets[1:] - 1
    keep = np.ones(len(values), dtype=bool)
    keep[ends] = False
    values[keep] = flat
    values[ends] = eot
    return values, offsets


class _EncodeJob:
    """Encoder state of one process: texts → (values with EOTs in the shard dtype, offsets, counter deltas)."""

    def __init__(self, tokenizer: Any, eot: int, dtype: str, verify_every: int) -> None:
        if isinstance(tokenizer, str):
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_str(tokenizer)
        self.encoder = FastBpeEncoder(tokenizer, verify_every=verify_every)
        self.eot, self.dtype = eot, np.dtype(dtype)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        before = dict(self.encoder.stats)
        flat, lengths = encode_texts(self.encoder, texts)
        values, offsets = with_eot(flat, lengths, self.eot, self.dtype)
        return values, offsets, {k: v - before.get(k, 0) for k, v in self.encoder.stats.items()}


# Per-process state of a pool worker (set once by the pool's initializer; the parent never touches it).
_WORKER: dict[str, _EncodeJob] = {}


def _worker_init(tokenizer_json: str, eot: int, dtype: str, verify_every: int, parent: int | None = None) -> None:
    die_with_parent(parent=parent)  # an encoder outlives neither its task nor a kill -9 of the run
    _WORKER["job"] = _EncodeJob(tokenizer_json, eot, dtype, verify_every)


def _worker_init_forked(job: _EncodeJob, parent: int | None = None) -> None:
    """fork: the parent's seeded encoder, inherited as it is (no tokenizer to parse, no table to rebuild)."""
    die_with_parent(parent=parent)
    _WORKER["job"] = job


def _encode_job(texts: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    return _WORKER["job"](texts)


class _Encoders:
    """Encode batches in this process (``workers=1``) or in a pool, keeping results in submission order."""

    def __init__(self, tok: Any, eot: int, dtype: np.dtype, workers: int, verify_every: int) -> None:
        self.workers = workers
        self.pending: deque[tuple[Any, Any]] = deque()
        self.counters: Counter[str] = Counter()
        import multiprocessing as mp

        self.pool: Any = None
        if workers > 1 and mp.current_process().daemon:
            log.info("encoding in this process: a daemonic worker cannot start encoder processes")
            workers = self.workers = 1
        if workers > 1:
            # fork (where there is one): no re-import of the caller's __main__ as spawn needs. The children
            # must not touch tokenizers' thread pool (a fork copies no threads): TOKENIZERS_PARALLELISM=false
            # in their environment makes their encode_batch sequential (and silences tokenizers' fork
            # warning); the parent's setting is restored at once.
            # With fork the parent builds one encoder and seeds its table with the vocabulary's whole-word
            # tokens (``FastBpeEncoder.seed_vocabulary``): every child starts from that copy, so the head of the
            # word distribution is encoded once, not once per child, and no child parses the tokenizer again.
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            if method == "fork":
                job = _EncodeJob(tok, eot, dtype.name, verify_every)
                job.encoder.seed_vocabulary(limit=SEED_TOKENS)
                init: tuple[Any, ...] = (job, os.getpid())
                initializer: Callable[..., None] = _worker_init_forked
            else:
                init, initializer = (tok.to_str(), eot, dtype.name, verify_every, os.getpid()), _worker_init
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                self.pool = mp.get_context(method).Pool(workers, initializer=initializer, initargs=init)
            finally:
                if saved is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
        else:
            self.local = _EncodeJob(tok, eot, dtype.name, verify_every)

    def submit(self, texts: list[str], tag: Any) -> None:
        if self.pool is None:
            self.pending.append((tag, self.local(texts)))
        else:
            self.pending.append((tag, self.pool.apply_async(_encode_job, (texts,))))

    def ready(self, *, drain: bool = False) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
        """Finished batches in order; waits only while more than 2 per worker are in flight (or ``drain``)."""
        while self.pending and (drain or self.pool is None or len(self.pending) > 2 * self.workers):
            tag, res = self.pending.popleft()
            values, offsets, counters = res if self.pool is None else res.get()
            self.counters.update(counters)
            yield tag, values, offsets

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def tokenize_to_shards(
    docs: Iterable[Document],
    tokenizer: Any,
    out_dir: Path,
    *,
    prefix: str = "data-r00000",
    val_fraction: float = 0.01,
    max_shard_tokens: int = 50_000_000,
    batch_docs: int = 1024,
    batch_chars: int = 500_000,
    workers: int = 1,
    verify_every: int = 64,
    stats: StepStats | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Tokenize ``docs`` into split folders of ``out_dir``; returns files and counts (no manifest).

    Documents are grouped by split into batches of at most ``batch_docs`` documents or ``batch_chars``
    characters; each batch becomes one record batch of a shard. ``workers`` > 1 encodes in that many processes.
    """
    tok = load_tokenizer(tokenizer)
    eot = tok.token_to_id(EOT)
    if eot is None:
        raise ConfigError(f"the tokenizer has no {EOT} token", path="tokenizer")
    dtype = token_dtype(tok.get_vocab_size())
    writers = {s: _SplitWriter(out_dir / s, prefix, dtype, max_shard_tokens) for s in SPLITS}
    stats = stats or StepStats("tokenize")
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    metas: dict[str, list[tuple[str | None, ...]]] = {s: [] for s in SPLITS}
    chars = dict.fromkeys(SPLITS, 0)
    encoders = _Encoders(tok, eot, dtype, workers, verify_every)

    def submit(s: str) -> None:
        encoders.submit(texts[s], (s, metas[s]))
        texts[s], metas[s], chars[s] = [], [], 0

    def write(drain: bool = False) -> None:
        for (s, meta), values, offsets in encoders.ready(drain=drain):
            writers[s].write(values, offsets, meta)

    stopped = False
    try:
        for d in docs:
            if should_stop is not None and should_stop():
                stopped = True
                break
            stats.input += 1
            if not d.text:
                stats.drop("empty_text")
                continue
            stats.output += 1
            s = split_of(d, val_fraction)
            texts[s].append(d.text)
            consent = None if d.consent is None else json.dumps(d.consent, sort_keys=True)
            metas[s].append((d.id, d.url, d.fetched_at, consent))
            chars[s] += len(d.text)
            if len(texts[s]) >= batch_docs or chars[s] >= batch_chars:
                submit(s)
                write()
        for s in SPLITS:
            if texts[s]:
                submit(s)
        write(drain=True)
        files = [f for s in SPLITS for f in writers[s].close()] if not stopped else []
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        encoders.close()
    if stopped:
        for w in writers.values():
            w.abort()
    stats.counters.update({f"encoder_{k}": v for k, v in encoders.counters.items() if k != "docs"})
    if encoders.counters.get("mismatches"):
        log.warning(
            "fast encoder mismatches: %d (those batches were re-encoded with tokenizers)",
            encoders.counters["mismatches"],
        )
    return {
        "files": files,
        "partial": stopped,
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

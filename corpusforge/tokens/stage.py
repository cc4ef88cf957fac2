"""The ``tokens`` stage and the library entry point ``write_token_shards``: documents → token shards, manifest last."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pyarrow.compute as pc

from corpusforge.document import Document
from corpusforge.errors import ConfigError, TaskError
from corpusforge.params import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import (
    MANIFEST,
    atomic_write_bytes,
    atomic_write_json,
    file_record,
    iter_batches,
    iter_documents,
    sha256_file,
    write_manifest,
)
from corpusforge.tokens.card import dataset_card
from corpusforge.tokens.report import tokenizer_report
from corpusforge.tokens.tokenizer import EOT, Algorithm, hf_files, train_tokenizer
from corpusforge.tokens.write import (
    SPLITS,
    load_tokenizer,
    token_dtype,
    tokenize_to_shards,
    val_bound,
    write_hf_metadata,
)


def _unit(doc_id: str) -> float:
    """A deterministic number in [0, 1) from a document id (sampling without randomness)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") / 2**64


class TokenizerStage(Stage):
    """Train a tokenizer on the input stage's documents.

    ``max_chars`` (default 200 M characters) bounds the training sample and so its memory; each source gets
    a share proportional to its size, chosen by a hash of the document id; ``max_doc_chars`` (default 100 k)
    caps what one document contributes.
    """

    kind: ClassVar[str] = "tokenizer"

    def __init__(
        self,
        *,
        algorithm: Algorithm = "bpe",
        vocab_size: Annotated[int, Min(64), Max(1 << 22)] = 8192,
        special_tokens: list[str] | None = None,
        min_frequency: Annotated[int, Min(1)] = 2,
        max_chars: Annotated[int, Min(1000)] = 200_000_000,
        max_doc_chars: Annotated[int, Min(100)] = 100_000,
        reference: str | None = None,
        report_docs: Annotated[int, Min(1)] = 2000,
    ) -> None:
        self.algorithm = algorithm
        self.reference = reference
        self.report_docs = report_docs
        self.vocab_size = vocab_size
        self.special_tokens = special_tokens
        self.min_frequency = min_frequency
        self.max_chars = max_chars
        self.max_doc_chars = max_doc_chars

    def parallel(self) -> bool:
        return False

    def _sample(self, ctx: StageContext, files: list[Path], stats: StepStats) -> Iterator[str]:
        sizes: Counter[str] = Counter()
        for d in iter_documents(files, columns=["id", "text", "source"]):
            sizes[d.source] += min(len(d.text), self.max_doc_chars)
        total = sum(sizes.values()) or 1
        keep_p = {s: min(1.0, self.max_chars * (n / total) / max(n, 1)) for s, n in sizes.items()}
        # The hash draw meets the budget on average; the hard cap (10 % over) bounds memory whatever the draw.
        hard_cap = int(self.max_chars * 1.1)
        taken = 0
        for d in iter_documents(files, columns=["id", "text", "source"]):
            stats.input += 1
            ctx.fault_at(stats.input)
            if _unit(d.id) >= keep_p[d.source]:
                stats.drop("not_sampled")
            elif taken >= hard_cap:
                stats.drop("over_budget")
            else:
                text = d.text[: self.max_doc_chars]
                taken += len(text)
                stats.output += 1
                stats.counters["chars"] += len(text)
                yield text

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        files = ctx.input_files()
        stats = StepStats("tokenizer_sample")
        sample = self._sample(ctx, files, stats)
        first = next(sample, None)
        # Checked before training: BPE on nothing is the bare byte alphabet (useless downstream) and Unigram
        # on nothing fails inside the trainer; both get this message instead.
        if first is None:
            raise TaskError(
                f"no text to train the tokenizer on: its input {ctx.in_dir} holds 0 documents; the earlier stages' "
                "'dropped (why)' counts say which filter removed them"
            )
        tok = train_tokenizer(
            itertools.chain([first], sample),
            algorithm=self.algorithm,
            vocab_size=self.vocab_size,
            special_tokens=self.special_tokens,
            min_frequency=self.min_frequency,
        )
        out = ctx.out_dir
        path = out / "tokenizer.json"
        atomic_write_bytes(path, tok.to_str(pretty=True).encode("utf-8"))
        for name, data in hf_files(path).items():
            atomic_write_bytes(out / name, data)
        reference = None
        if self.reference:
            from tokenizers import Tokenizer

            ref = Path(self.reference)
            ref = ref / "tokenizer.json" if ref.is_dir() else ref
            if not ref.is_file():
                raise ConfigError(f"reference tokenizer {str(ref)!r} not found", path="reference")
            reference = Tokenizer.from_file(str(ref))
        report = tokenizer_report(
            tok,
            ((d.source, d.text) for d in iter_documents(files, columns=["id", "text", "source"])),
            max_docs=self.report_docs,
            reference=reference,
        )
        report |= {"algorithm": self.algorithm, "vocab_size": tok.get_vocab_size(), "eot_id": tok.token_to_id(EOT)}
        atomic_write_json(out / "report.json", report)
        names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "report.json"]
        records = [file_record(out / n) for n in names]
        return TaskResult(
            files=records,
            steps=[stats.to_dict()],
            extra={"vocab_size": tok.get_vocab_size(), **{k: v for k, v in report["overall"].items()}},
        )

    def finalize(self, ctx: StageContext, results: list[TaskResult]) -> dict[str, Any]:
        rep = json.loads((ctx.out_dir / "report.json").read_text())
        return {
            "vocab_size": rep["vocab_size"],
            "eot_id": rep["eot_id"],
            "algorithm": self.algorithm,
            "tokenizer_sha256": sha256_file(ctx.out_dir / "tokenizer.json"),
        }


def tokenizer_sha256(ref: Any) -> str:
    """sha256 of the tokenizer file, or of the pretty JSON the tokenizer stage writes for an in-memory one."""
    from tokenizers import Tokenizer

    if isinstance(ref, Tokenizer):
        return hashlib.sha256(ref.to_str(pretty=True).encode("utf-8")).hexdigest()
    path = Path(ref)
    return sha256_file(path / "tokenizer.json" if path.is_dir() else path)


def _manifest_info(res_list: list[dict[str, Any]], tok: Any, tok_ref: Any) -> dict[str, Any]:
    return {
        "vocab_size": tok.get_vocab_size(),
        "eot_id": tok.token_to_id(EOT),
        "dtype": token_dtype(tok.get_vocab_size()).name,
        "tokenizer_sha256": tokenizer_sha256(tok_ref),
        "tokens": {s: sum(r["tokens"][s] for r in res_list) for s in SPLITS},
        "documents": {s: sum(r["documents"][s] for r in res_list) for s in SPLITS},
    }


def _split_rows(files: list[Path]) -> Iterator[tuple[str, str | None, bool]]:
    """(id, ``metadata["split"]`` or None, has text) of every document, for ``val_bound``. Reads the id and
    metadata columns and the text column's lengths only (no text is decoded); the files are checked against
    their manifest by size and rows here, and in full when the task reads them."""
    for path in files:
        for batch in iter_batches(path, verify=False):
            names = batch.schema.names
            ids = batch.column("id").to_pylist()
            texts = batch.column("text")
            has_text = pc.fill_null(pc.greater(pc.binary_length(texts), 0), False).to_pylist()
            metas = batch.column("metadata").to_pylist() if "metadata" in names else [None] * batch.num_rows
            for doc_id, meta, text in zip(ids, metas, has_text, strict=True):
                pinned = json.loads(meta).get("split") if meta and '"split"' in meta else None
                yield doc_id, pinned if isinstance(pinned, str) else None, bool(text)


class TokensStage(Stage):
    """Tokenize the input stage's documents into token shards with ``tokenizer`` (a stage name or a path).

    Tasks share the input by file, or by document when there are fewer files than tasks; ``workers`` encoder
    processes per task (the runner already runs tasks in parallel, so 1 is usually right).

    The split: a hash of each document's id below ``val_fraction`` → val. When that gives val fewer than
    ``min_val_documents`` documents (default 10, enough for an evaluation that is not one page's; None: no
    minimum), the documents with the lowest hashes move to val too, never more than a fifth of the corpus
    (``write.val_bound``: one pass over the input's ids first, the same choice on every rerun).
    """

    kind: ClassVar[str] = "tokens"

    def __init__(
        self,
        *,
        tokenizer: str = "tokenizer",
        val_fraction: Annotated[float, Min(0), Max(0.5)] = 0.01,
        tasks: Annotated[int, Min(1)] = 2,
        max_shard_tokens: Annotated[int, Min(1000), Max(2_000_000_000)] = 50_000_000,
        batch_docs: Annotated[int, Min(1)] = 1024,
        workers: Annotated[int, Min(1), Max(256)] = 1,
        min_val_documents: Annotated[int, Min(1)] | None = 10,
    ) -> None:
        self.tokenizer = tokenizer
        self.val_fraction = val_fraction
        self.min_val_documents = min_val_documents
        self.tasks = tasks
        self.max_shard_tokens = max_shard_tokens
        self.batch_docs = batch_docs
        self.workers = workers

    def _tokenizer_path(self, ctx: StageContext) -> Path:
        if self.tokenizer in ctx.stage_dirs:
            return ctx.stage_dirs[self.tokenizer] / "tokenizer.json"
        path = Path(self.tokenizer)
        return path / "tokenizer.json" if path.is_dir() else path

    def num_tasks(self, ctx: StageContext) -> int:
        return self.tasks

    def prepare_task(self, ctx: StageContext, rank: int) -> None:
        for s in SPLITS:
            for p in (ctx.out_dir / s).glob(f"data-r{rank:05d}-*"):
                p.unlink(missing_ok=True)

    def _docs(self, ctx: StageContext, rank: int) -> Iterator[Document]:
        cols = ["id", "text", "url", "fetched_at", "consent", "metadata"]
        files = ctx.input_files()
        if len(files) >= self.tasks:
            docs = iter_documents([f for i, f in enumerate(files) if i % self.tasks == rank], columns=cols)
        else:
            docs = (d for i, d in enumerate(iter_documents(files, columns=cols)) if i % self.tasks == rank)
        for n, d in enumerate(docs, 1):
            ctx.fault_at(n)  # the task's n-th document, whichever way the input is shared
            yield d

    def _val_bound(self, ctx: StageContext) -> float:
        """The split's hash bound over the whole input (every task computes the same one)."""
        if self.val_fraction <= 0 or not self.min_val_documents:
            return self.val_fraction
        return val_bound(
            _split_rows(ctx.input_files()), val_fraction=self.val_fraction, min_val_documents=self.min_val_documents
        )

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        tok_path = self._tokenizer_path(ctx)
        if not tok_path.is_file():
            raise ConfigError(
                f"tokenizer {str(tok_path)!r} not found: name a tokenizer stage or a tokenizer.json", path="tokenizer"
            )
        stats = StepStats("tokenize")
        res = tokenize_to_shards(
            self._docs(ctx, rank),
            tok_path,
            ctx.out_dir,
            prefix=f"data-r{rank:05d}",
            val_fraction=self._val_bound(ctx),
            max_shard_tokens=self.max_shard_tokens,
            batch_docs=self.batch_docs,
            workers=self.workers,
            stats=stats,
            should_stop=ctx.stop_requested,
        )
        extra = {f"tokens_{s}": res["tokens"][s] for s in SPLITS} | {
            f"documents_{s}": res["documents"][s] for s in SPLITS
        }
        return TaskResult(files=res["files"], steps=[stats.to_dict()], extra=extra, partial=res["partial"])

    def finalize(self, ctx: StageContext, results: list[TaskResult]) -> dict[str, Any]:
        tok_path = self._tokenizer_path(ctx)
        tok = load_tokenizer(tok_path)
        files = [f for r in results for f in r.files]
        per_task = [
            {
                "tokens": {s: r.extra.get(f"tokens_{s}", 0) for s in SPLITS},
                "documents": {s: r.extra.get(f"documents_{s}", 0) for s in SPLITS},
            }
            for r in results
        ]
        info = _manifest_info(per_task, tok, tok_path) | {"tokenizer_path": str(tok_path.resolve())}
        info["val_split"] = {
            "val_fraction": self.val_fraction,
            "min_val_documents": self.min_val_documents,
            "hash_below": self._val_bound(ctx),  # what the tasks used: val_fraction, or higher for the minimum
        }
        write_hf_metadata(ctx.out_dir, files, info["dtype"])
        report_path = tok_path.parent / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        stats_path = ctx.out_dir / "stats" / "stats.json"
        steps = json.loads(stats_path.read_text()).get("steps") if stats_path.is_file() else None
        card = dataset_card(info, name=ctx.run_dir.name, tokenizer_report=report, files=files, steps=steps)
        atomic_write_bytes(ctx.out_dir / "README.md", card.encode())
        return info


def write_token_shards(
    docs: Iterable[Document],
    tokenizer: Any,
    out_dir: Path,
    *,
    val_fraction: float = 0.01,
    max_shard_tokens: int = 50_000_000,
    workers: int = 1,
    batch_docs: int = 1024,
    verify_every: int = 64,
    name: str = "tokens",
) -> dict[str, Any]:
    """Library entry point: tokenize ``docs`` into ``out_dir`` (shards, HF metadata, card), manifest last.

    ``tokenizer`` is a ``tokenizers.Tokenizer``, a tokenizer.json path or a folder holding one. Returns the
    manifest. An existing manifest in ``out_dir`` is removed first, so a half-rewritten folder never looks done.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for s in SPLITS:
        for p in (out_dir / s).glob("data-*.arrow*"):
            p.unlink()
    tok = load_tokenizer(tokenizer)
    stats = StepStats("tokenize")
    res = tokenize_to_shards(
        docs,
        tok,
        out_dir,
        val_fraction=val_fraction,
        max_shard_tokens=max_shard_tokens,
        batch_docs=batch_docs,
        workers=workers,
        verify_every=verify_every,
        stats=stats,
    )
    write_hf_metadata(out_dir, res["files"], res["dtype"])
    info = _manifest_info([res], tok, tokenizer)
    card = dataset_card(info, name=name, files=res["files"], steps=[stats.to_dict()])
    atomic_write_bytes(out_dir / "README.md", card.encode())
    config = {"val_fraction": val_fraction, "max_shard_tokens": max_shard_tokens}
    return write_manifest(out_dir, res["files"], config=config, extra=info | {"steps": [stats.to_dict()]})

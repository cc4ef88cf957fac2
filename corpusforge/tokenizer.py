"""Tokenizer training with HF ``tokenizers``: byte-level BPE, Unigram, or character level.

Training reads the corpus as a stream with bounded memory: a character budget (``max_chars``) shared across
sources in proportion to their size, taken by a deterministic hash of the document id, and a per-document
cap (``max_doc_chars``). The same input gives a byte-identical ``tokenizer.json``. Beside it the stage writes
``tokenizer_config.json`` and ``special_tokens_map.json`` so ``transformers.AutoTokenizer`` loads the folder
offline, and ``report.json`` (bytes, words and characters per token, unknown-token rate, per source).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from corpusforge.errors import ConfigError
from corpusforge.recipe import Max, Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import atomic_write_bytes, atomic_write_json, iter_documents, sha256_file

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<unk>"
Algorithm = Literal["bpe", "unigram", "char"]


def train_tokenizer(
    texts: Iterable[str],
    *,
    algorithm: Algorithm = "bpe",
    vocab_size: int = 8192,
    special_tokens: list[str] | None = None,
    min_frequency: int = 2,
):  # type: ignore[no-untyped-def]
    """Train a tokenizer on ``texts``. ``<|endoftext|>`` is always id 0; ``<|pad|>`` id 1 (BPE, Unigram)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [EOT, PAD, *[s for s in (special_tokens or []) if s not in (EOT, PAD)]]
    if algorithm == "char":
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        vocab = {s: i for i, s in enumerate([EOT, *[s for s in specials if s not in (EOT, PAD)]])}
        for c in sorted(chars):
            vocab.setdefault(c, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
        # Every character is its own pre-token (Oniguruma: (?m) lets "." match newlines); WordLevel maps it.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens([s for s in specials if s in vocab])
        return tok
    if algorithm == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif algorithm == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=[*specials, UNK], unk_token=UNK, show_progress=False
        )
    else:  # pragma: no cover - validated by the recipe
        raise ConfigError(f"unknown tokenizer algorithm {algorithm!r}", path="algorithm")
    tok.train_from_iterator(texts, trainer=trainer)
    return _canonical_unigram(tok) if algorithm == "unigram" else tok


def _canonical_unigram(tok):  # type: ignore[no-untyped-def]
    """Make Unigram training byte-reproducible.

    ``tokenizers``' Unigram trainer sums floats in hash-map order, so two runs on the same input give the same
    pieces with scores that differ around 1e-15 and tied pieces in another order. Scores are rounded to 10
    decimals and the non-special pieces sorted by (score descending, piece): the tokenizations are unchanged
    in practice and the file is identical from run to run.
    """
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    specials = {a["content"] for a in data.get("added_tokens", [])}
    head = [[p, s] for p, s in vocab if p in specials]
    rest = sorted(([p, round(s, 10)] for p, s in vocab if p not in specials), key=lambda e: (-e[1], e[0]))
    data["model"]["vocab"] = head + rest
    pieces = [p for p, _ in data["model"]["vocab"]]
    if data["model"].get("unk_id") is not None:
        data["model"]["unk_id"] = pieces.index(UNK)
    for a in data.get("added_tokens", []):
        a["id"] = pieces.index(a["content"])
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def hf_files(tokenizer_json: Path, *, model_max_length: int = 1024) -> dict[str, bytes]:
    """The small JSON files transformers' AutoTokenizer needs beside tokenizer.json."""
    tok = json.loads(tokenizer_json.read_text())
    vocab_tokens = {a["content"] for a in tok.get("added_tokens", [])}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "eos_token": EOT,
        "bos_token": EOT,
        "clean_up_tokenization_spaces": False,
    }
    specials: dict[str, str] = {"eos_token": EOT, "bos_token": EOT}
    if PAD in vocab_tokens:
        config["pad_token"] = specials["pad_token"] = PAD
    if UNK in vocab_tokens:
        config["unk_token"] = specials["unk_token"] = UNK
    enc = lambda o: (json.dumps(o, indent=2, sort_keys=True) + "\n").encode()  # noqa: E731
    return {"tokenizer_config.json": enc(config), "special_tokens_map.json": enc(specials)}


def _unit(doc_id: str) -> float:
    """A deterministic number in [0, 1) from a document id (sampling without randomness)."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") / 2**64


def tokenizer_report(tok, docs: Iterable[tuple[str, str]], *, max_docs: int = 2000) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Bytes, words and characters per token and the unknown-token rate, overall and per source."""
    unk_id = tok.token_to_id(UNK)
    per: dict[str, Counter[str]] = {}
    for i, (source, text) in enumerate(docs):
        if i >= max_docs:
            break
        ids = tok.encode(text).ids
        c = per.setdefault(source, Counter())
        c["docs"] += 1
        c["tokens"] += len(ids)
        c["bytes"] += len(text.encode("utf-8"))
        c["chars"] += len(text)
        c["words"] += len(text.split())
        if unk_id is not None:
            c["unk"] += sum(1 for t in ids if t == unk_id)

    def summarize(c: Counter[str]) -> dict[str, Any]:
        n = max(c["tokens"], 1)
        return {
            "docs": c["docs"],
            "tokens": c["tokens"],
            "bytes_per_token": round(c["bytes"] / n, 4),
            "chars_per_token": round(c["chars"] / n, 4),
            "words_per_token": round(c["words"] / n, 4),
            "unknown_rate": round(c["unk"] / n, 6),
        }

    total: Counter[str] = Counter()
    for c in per.values():
        total.update(c)
    return {"overall": summarize(total), "per_source": {s: summarize(c) for s, c in sorted(per.items())}}


class TokenizerStage(Stage):
    """Train a tokenizer on the input stage's documents.

    ``max_chars`` (default 200 M characters) bounds the training sample and so its memory; each source gets
    a share proportional to its size, chosen by a hash of the document id; ``max_doc_chars`` (default 100 k)
    caps what one document contributes.
    """

    kind: ClassVar[str] = "tokenizer"
    produces_documents: ClassVar[bool] = False

    def __init__(
        self,
        *,
        algorithm: Algorithm = "bpe",
        vocab_size: Annotated[int, Min(64), Max(1 << 22)] = 8192,
        special_tokens: list[str] | None = None,
        min_frequency: Annotated[int, Min(1)] = 2,
        max_chars: Annotated[int, Min(1000)] = 200_000_000,
        max_doc_chars: Annotated[int, Min(100)] = 100_000,
    ) -> None:
        self.algorithm = algorithm
        self.vocab_size = vocab_size
        self.special_tokens = special_tokens
        self.min_frequency = min_frequency
        self.max_chars = max_chars
        self.max_doc_chars = max_doc_chars

    def parallel(self) -> bool:
        return False

    def _sample(self, files: list[Path], stats: StepStats) -> Iterator[str]:
        sizes: Counter[str] = Counter()
        for d in iter_documents(files, columns=["id", "text", "source"]):
            sizes[d.source] += min(len(d.text), self.max_doc_chars)
        total = sum(sizes.values()) or 1
        keep_p = {s: min(1.0, self.max_chars * (n / total) / max(n, 1)) for s, n in sizes.items()}
        for d in iter_documents(files, columns=["id", "text", "source"]):
            stats.input += 1
            if _unit(d.id) < keep_p[d.source]:
                stats.output += 1
                yield d.text[: self.max_doc_chars]
            else:
                stats.drop("not_sampled")

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        files = ctx.input_files()
        stats = StepStats("tokenizer_sample")
        tok = train_tokenizer(
            self._sample(files, stats),
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
        report = tokenizer_report(
            tok, ((d.source, d.text) for d in iter_documents(files, columns=["id", "text", "source"]))
        )
        report |= {"algorithm": self.algorithm, "vocab_size": tok.get_vocab_size(), "eot_id": tok.token_to_id(EOT)}
        atomic_write_json(out / "report.json", report)
        names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "report.json"]
        records = [
            {"name": n, "rows": 0, "bytes": (out / n).stat().st_size, "sha256": sha256_file(out / n)} for n in names
        ]
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

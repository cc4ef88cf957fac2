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

from corpusforge.errors import ConfigError, TaskError
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
    kind: Algorithm | None = None,
    vocab_size: int = 8192,
    special_tokens: list[str] | None = None,
    min_frequency: int = 2,
    algorithm: Algorithm | None = None,
):  # type: ignore[no-untyped-def]
    """Train a tokenizer on ``texts`` (``kind``: "bpe", "unigram" or "char"; ``algorithm`` is the same).

    ``<|endoftext|>`` is always id 0; ``<|pad|>`` id 1 (BPE, Unigram); ``special_tokens`` follow. "char" is a
    vocabulary of exactly the characters seen (+ the specials), in code point order.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if kind is not None and algorithm is not None and kind != algorithm:
        raise ConfigError(f"kind={kind!r} and algorithm={algorithm!r} disagree", path="kind")
    algorithm = kind or algorithm or "bpe"

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
    trainer: Any
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
        # Byte-level pieces, as for BPE: lossless on any text (whitespace runs and indentation kept, no unknown
        # characters), where Metaspace splits every space into its own piece.
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=[*specials, UNK],
            unk_token=UNK,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:  # pragma: no cover - validated by the recipe
        raise ConfigError(f"unknown tokenizer algorithm {algorithm!r}", path="algorithm")
    tok.train_from_iterator(texts, trainer=trainer)
    return _canonical_unigram(tok) if algorithm == "unigram" else tok


def _canonical_unigram(tok):  # type: ignore[no-untyped-def]
    """Make Unigram training byte-reproducible.

    ``tokenizers``' Unigram trainer sums floats in hash-map order, so two runs on the same input give the same
    pieces with scores that differ around 1e-15 and tied pieces in another order; and it scores the required
    characters it did not pick in hash-set order. Scores are rounded to 10 decimals, the required-character
    run is re-dealt in name order, and the non-special pieces sorted by (score descending, piece): the
    tokenizations are unchanged in practice and the file is identical from run to run.
    """
    from tokenizers import Tokenizer

    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    specials = {a["content"] for a in data.get("added_tokens", [])}
    head = [[p, s] for p, s in vocab if p in specials]
    rest = [[p, round(s, 10)] for p, s in vocab if p not in specials]
    # Characters the trainer must keep but did not choose get scores min - 0.0001·k in hash-set order: find
    # that run (three steps of 0.0001 in a row) and give its scores to its pieces in name order instead.
    for i in range(len(rest) - 2):
        a, b, c = rest[i][1], rest[i + 1][1], rest[i + 2][1]
        if abs(a - b - 1e-4) < 1e-8 and abs(b - c - 1e-4) < 1e-8:
            cut = a + 1e-9
            tail = [e for e in rest if e[1] <= cut]
            scores = sorted((e[1] for e in tail), reverse=True)
            names = sorted(e[0] for e in tail)
            rest = [e for e in rest if e[1] > cut] + [[n, sc] for n, sc in zip(names, scores, strict=True)]
            break
    rest.sort(key=lambda e: (-e[1], e[0]))
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


def _byte_level_chars() -> list[str]:
    """GPT-2's map of the 256 byte values to the printable characters byte-level vocabularies are made of."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def _byte_fallback_ids(tok) -> set[int]:  # type: ignore[no-untyped-def]
    """Ids of tokens that are one lone byte of a multi-byte character (byte-level ``Ā``…, or ``<0xNN>``)."""
    vocab = tok.get_vocab()
    ids = {vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab}
    if "ByteLevel" in json.dumps(json.loads(tok.to_str()).get("pre_tokenizer")):
        chars = _byte_level_chars()
        ids |= {vocab[chars[b]] for b in range(0x80, 0x100) if chars[b] in vocab}
    return ids


def tokenizer_report(  # type: ignore[no-untyped-def]
    tok, docs: Iterable[tuple[str, str]], *, max_docs: int = 2000, reference=None
) -> dict[str, Any]:
    """Bytes, words and characters per token, byte-fallback and unknown rates, overall and per source.

    ``docs`` yields (source, text); at most ``max_docs`` per source are measured. With a ``reference``
    tokenizer the same figures for it follow under "reference", and ``tokens_vs_reference`` (< 1: ours is
    shorter).
    """
    tokenizers_ = {"ours": tok} | ({"reference": reference} if reference is not None else {})
    special = {name: (t.token_to_id(UNK), _byte_fallback_ids(t)) for name, t in tokenizers_.items()}
    per: dict[str, dict[str, Counter[str]]] = {name: {} for name in tokenizers_}
    seen: Counter[str] = Counter()
    batch: list[tuple[str, str]] = []

    def encode_all(t, texts: list[str]) -> list[list[int] | None]:  # type: ignore[no-untyped-def]
        try:
            return [e.ids for e in t.encode_batch(texts, add_special_tokens=False)]
        except Exception:  # a character-level vocabulary without <unk> refuses unseen characters
            out: list[list[int] | None] = []
            for text in texts:
                try:
                    out.append(t.encode(text, add_special_tokens=False).ids)
                except Exception:  # noqa: BLE001 - counted as unknown below
                    out.append(None)
            return out

    def measure() -> None:
        texts = [t for _, t in batch]
        for name, t in tokenizers_.items():
            unk_id, byte_ids = special[name]
            vocab = t.get_vocab()
            for (source, text), ids in zip(batch, encode_all(t, texts), strict=True):
                c = per[name].setdefault(source, Counter())
                c["docs"] += 1
                if ids is None:  # one token per character, the unseen ones unknown
                    c["tokens"] += len(text)
                    c["unk"] += sum(1 for ch in text if ch not in vocab)
                    ids = []
                c["tokens"] += len(ids)
                c["bytes"] += len(text.encode("utf-8"))
                c["chars"] += len(text)
                c["words"] += len(text.split())
                c["unk"] += sum(1 for i in ids if i == unk_id) if unk_id is not None else 0
                c["byte_fallback"] += sum(1 for i in ids if i in byte_ids) if byte_ids else 0
        batch.clear()

    for source, text in docs:
        if seen[source] >= max_docs:
            continue
        seen[source] += 1
        batch.append((source, text))
        if len(batch) >= 256:
            measure()
    measure()

    def summarize(c: Counter[str]) -> dict[str, Any]:
        n = max(c["tokens"], 1)
        return {
            "docs": c["docs"],
            "tokens": c["tokens"],
            "bytes_per_token": round(c["bytes"] / n, 4),
            "chars_per_token": round(c["chars"] / n, 4),
            "words_per_token": round(c["words"] / n, 4),
            "byte_fallback_rate": round(c["byte_fallback"] / n, 6),
            "unknown_rate": round(c["unk"] / n, 6),
        }

    def report(by_source: dict[str, Counter[str]]) -> dict[str, Any]:
        total: Counter[str] = Counter()
        for c in by_source.values():
            total.update(c)
        return {"overall": summarize(total), "per_source": {s: summarize(c) for s, c in sorted(by_source.items())}}

    out = report(per["ours"])
    if reference is not None:
        out["reference"] = report(per["reference"])
        ref_tokens = max(out["reference"]["overall"]["tokens"], 1)
        out["tokens_vs_reference"] = round(out["overall"]["tokens"] / ref_tokens, 4)
    return out


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

    def _sample(self, files: list[Path], stats: StepStats) -> Iterator[str]:
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
        tok = train_tokenizer(
            self._sample(files, stats),
            algorithm=self.algorithm,
            vocab_size=self.vocab_size,
            special_tokens=self.special_tokens,
            min_frequency=self.min_frequency,
        )
        if stats.output == 0:  # a tokenizer of nothing but the byte alphabet would be useless downstream
            raise TaskError(
                f"no text to train the tokenizer on: its input {ctx.in_dir} holds 0 documents; the earlier stages' "
                "'dropped (why)' counts say which filter removed them"
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

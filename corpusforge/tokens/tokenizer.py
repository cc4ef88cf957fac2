"""Tokenizer training with HF ``tokenizers``: byte-level BPE, Unigram, or character level.

Training reads the corpus as a stream with bounded memory: a character budget (``max_chars``) shared across
sources in proportion to their size, taken by a deterministic hash of the document id, and a per-document
cap (``max_doc_chars``). The same input gives a byte-identical ``tokenizer.json``. Beside it the stage writes
``tokenizer_config.json`` and ``special_tokens_map.json`` so ``transformers.AutoTokenizer`` loads the folder
offline, and ``report.json`` (bytes, words and characters per token, unknown-token rate, per source).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from corpusforge.errors import ConfigError

log = logging.getLogger(__name__)


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

"""How well a tokenizer fits a corpus: bytes, words and characters per token, byte-fallback and unknown rates, per source."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from corpusforge.tokens.tokenizer import UNK


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

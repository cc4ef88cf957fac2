"""A faster encoder for byte-level BPE that gives exactly the ids of ``tokenizers``' ``Tokenizer.encode``.

Byte-level BPE first splits text into pre-tokens with GPT-2's regular expression, then runs the BPE merges on
each pre-token independently. Web text is Zipfian: a few thousand words (" the", ",", "\\n\\n") make up
most of it, so a table of unit → ids turns the pre-tokenizing and the merges into one dictionary lookup. A
batch of documents is encoded as: cut every text into units (see ``UNIT_PATTERN``), look every unit up (the
batch's misses are added: an ASCII unit as the ids of its GPT-2 pre-tokens, cut in Python with the ASCII form of
the expression, all the batch's new units in one ``findall``, each distinct new pre-token run through the BPE
model itself, ``model.tokenize`` of its byte-level string; any other unit encoded whole by ``encode_batch``),
then one numpy gather builds the flat id stream and the per-document lengths.

Cold text (words not yet in the table) is where the time goes on a real, non-repeating corpus, and there
``tokenizers``' own pre-tokenizer (its Oniguruma expression, per call) costs far more than the merges: a new
pre-token costs about 10 µs through ``encode``/``encode_batch`` and 3-5 µs through ``model.tokenize``. The
byte-level string is made with a table read off the tokenizer's own pre-tokenizer, and the vocabulary's
whole-word tokens can be put in the table up front (``seed_vocabulary``) through the same path.

Exactness is kept by construction and checked: a tokenizer whose pipeline differs from plain byte-level BPE
(a normalizer, prefix space, dropout, a template) gets no fast path; a document containing an added token's
text (``<|endoftext|>`` written out) is encoded by ``tokenizers``; and every ``verify_every``-th document is
also encoded by ``tokenizers`` and compared. A mismatch switches the encoder to ``tokenizers`` for the rest of
the stream and is counted, never silently kept.

The table is bounded (``max_entries`` units, then cleared), so memory stays flat as the corpus grows.
A character-level tokenizer (``train_tokenizer(kind="char")``) gets its own fast path: code points → ids by
one sorted-table lookup. Anything else (Unigram, other pipelines) is encoded by ``tokenizers`` itself.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# GPT-2's pre-tokenizer (what ``tokenizers``' ByteLevel(use_regex=True) runs, with Oniguruma):
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# None of its pieces crosses from a run of non-space characters into the whitespace after it, and a space
# before such a run always joins the run's first piece; a whitespace run of k characters before a non-space
# becomes k-1 characters then the last one. So text cuts into *units* that are pre-tokenized independently:
# " ?" + a non-space run, or those whitespace pieces. Units are fewer and cheaper to find than pieces (one
# short expression with no Unicode classes), and a unit's ids are what ``tokenizers`` gives the unit alone.
# Whitespace is Oniguruma's \s for Unicode (the White_Space property), spelled out so that Python's ``re``
# agrees with it on every code point (tests check all of them against ``tokenizers``).
WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
UNIT_PATTERN = f" ?[^{WHITESPACE}]+|[{WHITESPACE}]+(?![^{WHITESPACE}])|[{WHITESPACE}]"


# GPT-2's expression restricted to ASCII, where \p{L} is [A-Za-z], \p{N} is [0-9] and \s the six ASCII
# white-space characters for Oniguruma and Python alike: it cuts an ASCII unit into the pre-tokens tokenizers
# makes of it, so a new unit's ids are its pre-tokens' ids, and far fewer distinct pre-tokens than units reach
# the BPE merges (" os.path.join(" and " os.getcwd()" share " os" and ".").
ASCII_PRETOKEN = re.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^ \t\n\x0b\x0c\rA-Za-z0-9]+"
    r"|[ \t\n\x0b\x0c\r]+(?![^ \t\n\x0b\x0c\r])|[ \t\n\x0b\x0c\r]+"
)

CHAR_SPLIT = {"type": "Split", "pattern": {"Regex": "(?m)."}, "behavior": "Isolated", "invert": False}


def is_char_level(tokenizer_json: dict[str, Any]) -> bool:
    """The character-level tokenizer ``train_tokenizer(kind="char")`` makes: one id per code point."""
    model = tokenizer_json.get("model") or {}
    return (
        model.get("type") == "WordLevel"
        and tokenizer_json.get("normalizer") is None
        and tokenizer_json.get("pre_tokenizer") == CHAR_SPLIT
    )


def fast_path_supported(tokenizer_json: dict[str, Any]) -> str | None:
    """None when the tokenizer is plain byte-level BPE this encoder reproduces; else the reason it is not."""
    model = tokenizer_json.get("model") or {}
    if is_char_level(tokenizer_json):
        return None if not (tokenizer_json.get("truncation") or tokenizer_json.get("padding")) else "truncation"
    if model.get("type") != "BPE":
        return f"model {model.get('type')!r} is not BPE"
    if model.get("dropout") not in (None, 0, 0.0):
        return "BPE dropout is random"
    if tokenizer_json.get("normalizer") is not None:
        return "a normalizer is set"
    if tokenizer_json.get("truncation") or tokenizer_json.get("padding"):
        return "truncation or padding is set"
    pre = tokenizer_json.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
        return "the pre-tokenizer is not ByteLevel(add_prefix_space=False, use_regex=True)"
    return None


class FastBpeEncoder:
    """Encode batches of texts into a flat id stream + per-text lengths, identical to ``Tokenizer.encode``."""

    def __init__(self, tokenizer: Any, *, max_entries: int = 1_000_000, verify_every: int = 64) -> None:
        self.tok = tokenizer
        data = json.loads(tokenizer.to_str())
        self.reason = fast_path_supported(data)
        # Character level: code point → id through a sorted table (searchsorted), no pre-tokens at all.
        self.char_level = is_char_level(data)
        if self.char_level:
            vocab = {k: v for k, v in data["model"]["vocab"].items() if len(k) == 1}
            keys = sorted(vocab)
            self.char_keys = np.array([ord(k) for k in keys], dtype=np.uint32)
            self.char_ids = np.array([vocab[k] for k in keys], dtype=np.uint32)
        self.specials = [a["content"] for a in data.get("added_tokens", [])]
        self.max_entries = max_entries
        self.verify_every = verify_every
        self.units = re.compile(UNIT_PATTERN)
        self.whitespace = set(re.findall(f"[{WHITESPACE}]", "".join(map(chr, range(0x3001)))))
        self.stats = {"docs": 0, "verified": 0, "mismatches": 0, "exact_fallback_docs": 0, "table_resets": 0}
        # ASCII pre-token → the string the BPE model sees (its bytes through GPT-2's byte → character table),
        # read off tokenizers' own pre-tokenizer, one character at a time; None: new pre-tokens go through
        # ``Tokenizer.encode_batch`` instead of the model.
        self.byte_map = self._ascii_byte_map() if self.fast and not self.char_level else None
        self._clear()

    def _ascii_byte_map(self) -> dict[int, str] | None:
        """``str.translate`` table of the ByteLevel pre-tokenizer for the 128 ASCII characters, or None."""
        pre = getattr(self.tok, "pre_tokenizer", None)
        model = getattr(self.tok, "model", None)
        if pre is None or model is None or not hasattr(model, "tokenize"):
            return None
        table = {}
        for b in range(128):
            splits = pre.pre_tokenize_str(chr(b))
            if len(splits) != 1 or len(splits[0][0]) != 1:
                return None
            table[b] = splits[0][0]
        return table

    def seed_vocabulary(self, limit: int | None = None) -> int:
        """Put every vocabulary token that is itself an ASCII unit (" the", "(", "self") in the table at once.

        The most frequent words are single tokens, so this covers the head of a Zipfian corpus before any text
        is seen. Their ids still come from the BPE model (a token is not always what the merges make of its
        own text), through the path a missed unit takes, so they are exact by construction. Worth it where the
        table is shared: the encoder processes fork from a seeded parent (``shards._Encoders``), so the head is
        encoded once instead of once per process. ``limit``: only the first ``limit`` tokens by id (a trained
        BPE numbers its tokens in merge order, most frequent first), which bounds the cost (about 5 µs a token)
        for a large vocabulary. Returns the number of units added.
        """
        if self.byte_map is None or self.n_entries:
            return 0
        # Byte-level string → text for the ASCII bytes; any other character stays non-ASCII and is skipped.
        back = {ord(c): chr(b) for b, c in self.byte_map.items()}
        full = self.units.fullmatch
        vocab = self.tok.get_vocab(with_added_tokens=False)
        tokens = sorted(vocab, key=vocab.__getitem__)[:limit] if limit is not None else vocab
        texts = (t.translate(back) for t in tokens)
        units = [t for t in texts if t.isascii() and full(t) and not any(sp in t for sp in self.specials)]
        if units:
            self._encode_units(units)
        return len(units)

    @property
    def fast(self) -> bool:
        return self.reason is None

    def _clear(self) -> None:
        self.index: dict[str, int] = {}
        self.pretokens: dict[str, int] = {}
        self.starts = np.zeros(1024, dtype=np.int64)
        self.lens = np.zeros(1024, dtype=np.int64)
        self.ids = np.zeros(4096, dtype=np.uint32)
        self.n_entries = 0
        self.n_ids = 0

    def _add(self, id_lists: Sequence[Sequence[int]]) -> range:
        """Append table entries (a unit's ids, or a whole document's) and return their indices."""
        lens = np.fromiter((len(x) for x in id_lists), dtype=np.int64, count=len(id_lists))
        flat = np.fromiter((i for x in id_lists for i in x), dtype=np.uint32, count=int(lens.sum()))
        return self._add_flat(flat, lens)

    def _add_flat(self, flat: np.ndarray, lens: np.ndarray) -> range:
        """Append entries given as one flat id array and each entry's number of ids."""
        k, n = self.n_entries, len(lens)
        size = len(self.starts)
        while k + n > size:
            size *= 2
        if size != len(self.starts):
            self.starts = np.resize(self.starts, size)
            self.lens = np.resize(self.lens, size)
        size = len(self.ids)
        while self.n_ids + len(flat) > size:
            size *= 2
        if size != len(self.ids):
            self.ids = np.resize(self.ids, size)
        self.starts[k : k + n] = self.n_ids + np.cumsum(lens) - lens
        self.lens[k : k + n] = lens
        self.ids[self.n_ids : self.n_ids + len(flat)] = flat
        self.n_ids += len(flat)
        self.n_entries += n
        return range(k, k + n)

    def _gather(self, entries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of table ``entries`` back to back, and the cumulative id counts (len(entries) + 1 bounds)."""
        lens = self.lens[entries]
        cum = np.zeros(len(entries) + 1, dtype=np.int64)
        np.cumsum(lens, out=cum[1:])
        # Output position j of entry e reads ids[starts[e] + (j - cum[e's slot])].
        gather = np.repeat(self.starts[entries] - cum[:-1], lens) + np.arange(cum[-1], dtype=np.int64)
        return self.ids[gather], cum

    def _pretoken_entries(self, pieces: list[str]) -> np.ndarray:
        """Table entries of ``pieces`` (pre-tokens, or non-ASCII units), adding those not yet in ``self.pretokens``.

        A new ASCII pre-token goes straight to the BPE model (``model.tokenize`` of its byte-level string, a few
        microseconds: tokenizers' own pre-tokenizing, not the merges, is what makes ``encode`` slow); anything else
        (a non-ASCII unit, or every piece when there is no ``byte_map``) through one ``encode_batch`` call.
        """
        known = self.pretokens
        want = [p for p in dict.fromkeys(pieces) if p not in known]
        if want:
            table = self.byte_map
            if table is not None:
                tokenize = self.tok.model.tokenize
                ascii_new = [p for p in want if p.isascii()]
                if ascii_new:
                    ids = [[t.id for t in tokenize(p.translate(table))] for p in ascii_new]
                    known.update(zip(ascii_new, self._add(ids), strict=True))
                want = [p for p in want if not p.isascii()]
            if want:
                encs = self.tok.encode_batch(want, add_special_tokens=False)
                known.update(zip(want, self._add([e.ids for e in encs]), strict=True))
        return np.fromiter(map(known.__getitem__, pieces), dtype=np.int64, count=len(pieces))

    def _encode_units(self, units: list[str]) -> None:
        """Add new units to ``self.index``: ASCII ones as their pre-tokens' ids, others encoded whole.

        Pre-tokens (and non-ASCII units) are table entries too, keyed in ``self.pretokens``. The ASCII units that
        end in a non-space (nearly all) are cut into pre-tokens by ONE ``findall`` over them joined by "\\n": a
        unit is " ?" + non-spaces, so in the joined text every "\\n" is a pre-token of its own and every unit
        keeps exactly the pre-tokens it has alone (no alternative of the expression crosses a white space).
        """
        ws = self.whitespace
        words = [u for u in units if u.isascii() and u[-1] not in ws] if self.byte_map is not None else []
        if words:
            flat_pieces = ASCII_PRETOKEN.findall("\n".join(words))
            entries = self._pretoken_entries(flat_pieces)
            sep = np.flatnonzero(entries == self.pretokens["\n"]) if len(words) > 1 else np.zeros(0, np.int64)
            if len(sep) != len(words) - 1:  # cannot happen (see above); kept as a guard
                words = []
            else:
                keep = np.ones(len(entries), dtype=bool)
                keep[sep] = False
                flat, cum = self._gather(entries[keep])
                # Unit k holds the pieces between separators k-1 and k; with the separators dropped its pieces
                # are [ends[k-1], ends[k]) where ends[k] = sep[k] - k.
                ends = np.append(sep - np.arange(len(sep)), len(entries) - len(sep))
                bounds = np.concatenate([[0], ends])
                self.index.update(zip(words, self._add_flat(flat, np.diff(cum[bounds])), strict=True))
        rest = [u for u in units if u not in self.index] if words else units
        if not rest:
            return
        split = ASCII_PRETOKEN.findall
        cut = [split(u) if u.isascii() else [u] for u in rest]
        flat_pieces = [p for c in cut for p in c]
        flat, cum = self._gather(self._pretoken_entries(flat_pieces))
        bounds = np.zeros(len(rest) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, cut), dtype=np.int64, count=len(cut)), out=bounds[1:])
        self.index.update(zip(rest, self._add_flat(flat, np.diff(cum[bounds])), strict=True))

    def _exact(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids uint32 of all texts back to back, number of ids of each text as int64)."""
        if not self.fast:
            encs = self.tok.encode_batch(list(texts), add_special_tokens=False)
            lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
            flat = np.fromiter((i for e in encs for i in e.ids), dtype=np.uint32, count=int(lengths.sum()))
            self.stats["docs"] += len(texts)
            self.stats["exact_fallback_docs"] += len(texts)
            return flat, lengths
        if self.char_level:
            return self._encode_chars(texts)
        if self.n_entries > self.max_entries:
            self.stats["table_resets"] += 1
            self._clear()
        get = self.index.get
        pieces: list[str] = []
        # Entry index of every pre-token, -1 for a miss; a document with an added token's text is one entry.
        doc_pieces = np.zeros(len(texts) + 1, dtype=np.int64)
        whole: dict[int, int] = {}  # position in ``pieces`` → entry holding a whole document's exact ids
        for i, text in enumerate(texts):
            if any(s in text for s in self.specials):
                whole[len(pieces)] = self._add([self._exact(text)])[0]
                pieces.append("")
                self.stats["exact_fallback_docs"] += 1
            else:
                pieces += self.units.findall(text)
            doc_pieces[i + 1] = len(pieces)
        entries = np.fromiter(map(get, pieces, repeat(-1)), dtype=np.int64, count=len(pieces))
        for pos, e in whole.items():
            entries[pos] = e
        missing = np.flatnonzero(entries < 0)
        if len(missing):
            # A pre-token encoded alone is that same pre-token (the expression matches it whole), so the
            # misses of a batch go through tokenizers once, in Rust, and join the table.
            self._encode_units(list(dict.fromkeys([pieces[i] for i in missing.tolist()])))
            entries[missing] = [self.index[pieces[i]] for i in missing.tolist()]
        flat, cum = self._gather(entries)
        tok_bounds = cum[doc_pieces]
        lengths = np.diff(tok_bounds)
        self._verify(texts, flat, tok_bounds)
        self.stats["docs"] += len(texts)
        return flat, lengths

    def _encode_chars(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for text in texts:
            cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            pos = np.searchsorted(self.char_keys, cps).clip(0, max(len(self.char_keys) - 1, 0))
            if any(sp in text for sp in self.specials) or not np.array_equal(self.char_keys[pos], cps):
                # An added token written out, or a character outside the vocabulary: tokenizers decides.
                try:
                    parts.append(np.asarray(self._exact(text), dtype=np.uint32))
                except Exception as exc:  # tokenizers raises its own type for a character it cannot map
                    from corpusforge.errors import ConfigError

                    raise ConfigError(
                        f"the character-level tokenizer cannot encode a document ({exc}); train it on text "
                        "that has every character of the corpus",
                        path="tokenizer",
                    ) from exc
                self.stats["exact_fallback_docs"] += 1
            else:
                parts.append(self.char_ids[pos])
        lengths = np.fromiter((len(a) for a in parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
        self._verify(texts, flat, np.concatenate([[0], np.cumsum(lengths)]))
        self.stats["docs"] += len(texts)
        return flat, lengths

    def _verify_prefix(self, text: str, limit: int = 20_000) -> str:
        """A prefix of a long text whose ids are a prefix of the text's ids (verifying stays cheap).

        Character level: any cut. Byte-level BPE: a cut between a non-space and a whitespace character, where
        units (and so pre-tokens) end the same in the prefix as in the whole text.
        """
        if len(text) <= limit:
            return text
        if self.char_level:
            return text[:limit]
        ws = self.whitespace
        for k in range(limit, limit // 2, -1):
            if text[k] in ws and text[k - 1] not in ws:
                return text[:k]
        return text

    def _verify(self, texts: Sequence[str], flat: np.ndarray, bounds: np.ndarray) -> None:
        if not self.verify_every:
            return
        first = (-self.stats["docs"]) % self.verify_every
        for i in range(first, len(texts), self.verify_every):
            self.stats["verified"] += 1
            got = flat[bounds[i] : bounds[i + 1]]
            text = self._verify_prefix(texts[i])
            want = self._exact(text)
            if len(text) < len(texts[i]):
                got = got[: len(want)]
            if len(got) != len(want) or not np.array_equal(got, np.asarray(want, dtype=np.uint32)):
                self.stats["mismatches"] += 1
                self.reason = "a verified document differed from tokenizers' ids"
                log.warning(
                    "fast encoder: document %d of this stream differs from tokenizers' encode; "
                    "encoding the rest with tokenizers",
                    self.stats["docs"] + i,
                )
                # Fix this batch in place is not possible (lengths change): the caller re-encodes it.
                raise _Mismatch


class _Mismatch(Exception):
    """Internal: a verified document differed; the batch is re-encoded with ``tokenizers``."""


def encode_texts(encoder: FastBpeEncoder, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``encoder.encode`` that re-encodes a batch with ``tokenizers`` when verification fails."""
    try:
        return encoder.encode(texts)
    except _Mismatch:
        return encoder.encode(texts)  # ``reason`` is now set: the exact path

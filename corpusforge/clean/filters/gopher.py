"""Gopher quality and repetition rules (Rae et al. 2021, "Scaling Language Models: Methods, Analysis &
Insights from Training Gopher", appendix A, "MassiveWeb" filtering). Defaults are the published values.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Annotated, ClassVar

from corpusforge.document import Document
from corpusforge.params import Max, Min
from corpusforge.step import Filter

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
_WORD = re.compile(r"\w+", re.UNICODE)
_BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "–", "-", "*", "·")

Fraction = Annotated[float, Min(0), Max(1)]


class GopherQualityFilter(Filter):
    """Gopher's quality rules. Reasons:

    - ``gopher_short_doc`` / ``gopher_long_doc``: fewer than 50 or more than 100,000 words;
    - ``gopher_mean_word_length``: mean word length outside [3, 10] characters;
    - ``gopher_symbol_ratio``: more than 0.1 hash symbols or ellipses per word;
    - ``gopher_bullet_lines``: more than 90% of lines start with a bullet;
    - ``gopher_ellipsis_lines``: more than 30% of lines end with an ellipsis;
    - ``gopher_alpha_words``: fewer than 80% of words contain an alphabetic character;
    - ``gopher_stop_words``: fewer than 2 of the stop words the, be, to, of, and, that, have, with.
    """

    name: ClassVar[str] = "gopher_quality"

    def __init__(
        self,
        *,
        min_words: Annotated[int, Min(0)] | None = 50,
        max_words: Annotated[int, Min(1)] | None = 100_000,
        min_mean_word_length: Annotated[float, Min(0)] | None = 3,
        max_mean_word_length: Annotated[float, Min(0)] | None = 10,
        max_symbol_word_ratio: Annotated[float, Min(0)] | None = 0.1,
        max_bullet_lines_ratio: Fraction | None = 0.9,
        max_ellipsis_lines_ratio: Fraction | None = 0.3,
        min_alpha_words_ratio: Fraction | None = 0.8,
        min_stop_words: Annotated[int, Min(0)] | None = 2,
    ) -> None:
        super().__init__()
        self.min_words, self.max_words = min_words, max_words
        self.min_mwl, self.max_mwl = min_mean_word_length, max_mean_word_length
        self.max_symbol = max_symbol_word_ratio
        self.max_bullet, self.max_ellipsis = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.min_alpha, self.min_stop = min_alpha_words_ratio, min_stop_words

    def reject(self, doc: Document) -> str | None:
        text = doc.text
        words = text.split()
        n = len(words)
        if self.min_words is not None and n < self.min_words:
            return "gopher_short_doc"
        if self.max_words is not None and n > self.max_words:
            return "gopher_long_doc"
        if n == 0:
            return "gopher_short_doc"
        mean_len = sum(len(w) for w in words) / n
        if (self.min_mwl is not None and mean_len < self.min_mwl) or (
            self.max_mwl is not None and mean_len > self.max_mwl
        ):
            return "gopher_mean_word_length"
        if self.max_symbol is not None:
            symbols = text.count("#") + text.count("...") + text.count("…")
            if symbols / n > self.max_symbol:
                return "gopher_symbol_ratio"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if lines:
            if self.max_bullet is not None:
                bullets = sum(1 for ln in lines if ln.lstrip().startswith(_BULLETS))
                if bullets / len(lines) > self.max_bullet:
                    return "gopher_bullet_lines"
            if self.max_ellipsis is not None:
                ell = sum(1 for ln in lines if ln.rstrip().endswith(("...", "…")))
                if ell / len(lines) > self.max_ellipsis:
                    return "gopher_ellipsis_lines"
        if self.min_alpha is not None:
            alpha = sum(1 for w in words if any(c.isalpha() for c in w))
            if alpha / n < self.min_alpha:
                return "gopher_alpha_words"
        if self.min_stop is not None:
            lowered = {w.lower() for w in _WORD.findall(text)}
            if sum(1 for s in STOP_WORDS if s in lowered) < self.min_stop:
                return "gopher_stop_words"
        return None


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n)), strict=False))


class GopherRepetitionFilter(Filter):
    """Gopher's repetition rules. Reasons:

    - ``gopher_dup_line_fraction`` (> 0.30 of lines are duplicates), ``gopher_dup_para_fraction`` (> 0.30),
      ``gopher_dup_line_char_fraction`` (> 0.20 of characters in duplicate lines),
      ``gopher_dup_para_char_fraction`` (> 0.20);
    - ``gopher_top_{n}gram`` for n = 2, 3, 4: the most frequent n-gram covers more than 0.20, 0.18, 0.16 of
      the characters;
    - ``gopher_dup_{n}gram`` for n = 5..10: characters in duplicated n-grams above 0.15, 0.14, 0.13, 0.12,
      0.11, 0.10.
    """

    name: ClassVar[str] = "gopher_repetition"

    def __init__(
        self,
        *,
        max_dup_line_fraction: Fraction | None = 0.30,
        max_dup_para_fraction: Fraction | None = 0.30,
        max_dup_line_char_fraction: Fraction | None = 0.20,
        max_dup_para_char_fraction: Fraction | None = 0.20,
        top_ngram_fractions: dict[str, float] | None = None,
        dup_ngram_fractions: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.line, self.para = max_dup_line_fraction, max_dup_para_fraction
        self.line_chars, self.para_chars = max_dup_line_char_fraction, max_dup_para_char_fraction
        top = top_ngram_fractions or {"2": 0.20, "3": 0.18, "4": 0.16}
        dup = dup_ngram_fractions or {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10}
        self.top = {int(k): v for k, v in top.items()}
        self.dup = {int(k): v for k, v in dup.items()}

    @staticmethod
    def _dup_stats(items: list[str]) -> tuple[float, float]:
        if not items:
            return 0.0, 0.0
        seen: set[str] = set()
        dup_n = dup_chars = 0
        for it in items:
            if it in seen:
                dup_n += 1
                dup_chars += len(it)
            seen.add(it)
        total_chars = sum(len(i) for i in items) or 1
        return dup_n / len(items), dup_chars / total_chars

    def reject(self, doc: Document) -> str | None:
        text = doc.text
        paras = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()]
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        frac, chars = self._dup_stats(paras)
        if self.para is not None and frac > self.para:
            return "gopher_dup_para_fraction"
        if self.para_chars is not None and chars > self.para_chars:
            return "gopher_dup_para_char_fraction"
        frac, chars = self._dup_stats(lines)
        if self.line is not None and frac > self.line:
            return "gopher_dup_line_fraction"
        if self.line_chars is not None and chars > self.line_chars:
            return "gopher_dup_line_char_fraction"
        words = text.split()
        total = sum(len(w) for w in words) or 1
        for n, limit in sorted(self.top.items()):
            grams = _ngrams(words, n)
            if not grams:
                continue
            gram, count = Counter(grams).most_common(1)[0]
            if count > 1 and sum(len(w) for w in gram) * count / total > limit:
                return f"gopher_top_{n}gram"
        for n, limit in sorted(self.dup.items()):
            grams = _ngrams(words, n)
            if not grams:
                continue
            seen: set[tuple[str, ...]] = set()
            covered = [False] * len(words)
            for i, g in enumerate(grams):
                if g in seen:
                    for j in range(i, i + n):
                        covered[j] = True
                seen.add(g)
            dup_chars = sum(len(w) for w, c in zip(words, covered, strict=True) if c)
            if dup_chars / total > limit:
                return f"gopher_dup_{n}gram"
        return None

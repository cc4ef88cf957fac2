"""FineWeb's extra quality rules (Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the
Finest Text Data at Scale", section 3.3, the "FineWeb custom filters"). Defaults are the published values.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from corpusforge.document import Document
from corpusforge.params import Max, Min
from corpusforge.step import Filter

Fraction = Annotated[float, Min(0), Max(1)]
_END_PUNCT = (".", "!", "?", '"', "”", "'", "’")


class FineWebQualityFilter(Filter):
    """FineWeb's rules. Reasons:

    - ``fineweb_line_punct_ratio``: fewer than 12% of lines end in terminal punctuation;
    - ``fineweb_short_line_ratio``: more than 67% of lines are at most 30 characters long;
    - ``fineweb_char_dup_ratio``: more than 1% of the characters are in lines that repeat an earlier line;
    - ``fineweb_list_ratio``: more than 0.3 newlines per word (lists, tables, menus).
    """

    name: ClassVar[str] = "fineweb_quality"

    def __init__(
        self,
        *,
        min_line_punct_ratio: Fraction | None = 0.12,
        max_short_line_ratio: Fraction | None = 0.67,
        short_line_chars: Annotated[int, Min(1)] = 30,
        max_char_dup_ratio: Fraction | None = 0.01,
        max_newline_word_ratio: Annotated[float, Min(0)] | None = 0.3,
    ) -> None:
        super().__init__()
        self.min_punct = min_line_punct_ratio
        self.max_short = max_short_line_ratio
        self.short_line_chars = short_line_chars
        self.max_dup = max_char_dup_ratio
        self.max_newline = max_newline_word_ratio

    def reject(self, doc: Document) -> str | None:
        lines = [ln.strip() for ln in doc.text.split("\n") if ln.strip()]
        if not lines:
            return "fineweb_line_punct_ratio" if self.min_punct is not None else None
        if self.min_punct is not None and sum(ln.endswith(_END_PUNCT) for ln in lines) / len(lines) < self.min_punct:
            return "fineweb_line_punct_ratio"
        if self.max_short is not None:
            short = sum(len(ln) <= self.short_line_chars for ln in lines)
            if short / len(lines) > self.max_short:
                return "fineweb_short_line_ratio"
        if self.max_dup is not None:
            seen: set[str] = set()
            dup_chars = 0
            for ln in lines:
                if ln in seen:
                    dup_chars += len(ln)
                seen.add(ln)
            total = sum(len(ln) for ln in lines)
            if total and dup_chars / total > self.max_dup:
                return "fineweb_char_dup_ratio"
        if self.max_newline is not None:
            words = len(doc.text.split())
            if words and doc.text.count("\n") / words > self.max_newline:
                return "fineweb_list_ratio"
        return None

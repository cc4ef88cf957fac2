"""Length bounds in words and characters."""

from __future__ import annotations

from typing import Annotated, ClassVar

from corpusforge.document import Document
from corpusforge.params import Min
from corpusforge.step import Filter


class LengthFilter(Filter):
    """Drop documents outside [min, max] words or characters. ``None`` disables a bound.

    Defaults follow Gopher's document length rule (Rae et al. 2021, "Scaling Language Models", appendix A):
    50 to 100,000 words. Reasons: ``length_too_few_words``, ``length_too_many_words``,
    ``length_too_few_chars``, ``length_too_many_chars``.
    """

    name: ClassVar[str] = "length"

    def __init__(
        self,
        *,
        min_words: Annotated[int, Min(0)] | None = 50,
        max_words: Annotated[int, Min(1)] | None = 100_000,
        min_chars: Annotated[int, Min(0)] | None = None,
        max_chars: Annotated[int, Min(1)] | None = None,
    ) -> None:
        super().__init__()
        self.min_words, self.max_words, self.min_chars, self.max_chars = min_words, max_words, min_chars, max_chars

    def reject(self, doc: Document) -> str | None:
        n = len(doc.text.split())
        if self.min_words is not None and n < self.min_words:
            return "length_too_few_words"
        if self.max_words is not None and n > self.max_words:
            return "length_too_many_words"
        if self.min_chars is not None and len(doc.text) < self.min_chars:
            return "length_too_few_chars"
        if self.max_chars is not None and len(doc.text) > self.max_chars:
            return "length_too_many_chars"
        return None

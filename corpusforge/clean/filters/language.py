"""Language identification with py3langid (Lui & Baldwin 2012's langid.py model, shipped inside the package:
nothing is downloaded). The label and its probability go to ``metadata["language"]`` /
``metadata["language_score"]``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from corpusforge.document import Document
from corpusforge.errors import require
from corpusforge.params import Max, Min
from corpusforge.step import Filter


class LanguageFilter(Filter):
    """Keep documents in ``languages`` (ISO 639-1 codes; ``None`` keeps every language, labelling only)
    whose probability is at least ``min_score``. Default: English at 0.65, FineWeb's threshold (Penedo et al.
    2024, which used fastText's lid.176). ``max_chars`` of text are classified (speed; the start is enough).

    Reasons: ``language_not_allowed``, ``language_low_score``.
    """

    name: ClassVar[str] = "language"

    def __init__(
        self,
        *,
        languages: tuple[str, ...] | None = ("en",),
        min_score: Annotated[float, Min(0), Max(1)] | None = 0.65,
        max_chars: Annotated[int, Min(100)] = 10_000,
    ) -> None:
        super().__init__()
        self.languages = frozenset(languages) if languages is not None else None
        self.min_score = min_score
        self.max_chars = max_chars
        self._model: Any = None  # loaded on first use (≈0.7 s), once per step instance

    def _classify(self, text: str) -> tuple[str, float]:
        if self._model is None:
            langid = require("py3langid.langid", "clean")
            self._model = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE, norm_probs=True)
        lang, score = self._model.classify(text[: self.max_chars])
        return str(lang), float(score)

    def reject(self, doc: Document) -> str | None:
        lang, score = self._classify(doc.text)
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        if self.languages is not None and lang not in self.languages:
            return "language_not_allowed"
        if self.min_score is not None and score < self.min_score:
            return "language_low_score"
        return None

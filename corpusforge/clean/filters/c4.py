"""C4's line and document rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a
Unified Text-to-Text Transformer", section 2.2, "Colossal Clean Crawled Corpus").

Line rules remove lines from the text; document rules drop the document with a named reason. The defaults
are the published ones; ``None`` disables a rule.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar

from corpusforge.document import Document
from corpusforge.params import Min
from corpusforge.step import Mapper

# C4 keeps only lines that end in terminal punctuation; a closing quote after it counts too.
_END_PUNCT = (".", "!", "?", '"', "”", "'", "’")
# Wikipedia-style citation and edit markers, removed from lines ("[1]", "[citation needed]", "[edit]").
_CITATION = re.compile(r"\[\d+\]|\[citation needed\]|\[edit\]", re.I)
# A crude sentence splitter (C4 used NLTK's punkt): sentence-ending punctuation followed by space or end.
_SPACES = re.compile(r" {2,}")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4Filter(Mapper):
    """C4's rules.

    Line rules (counted in ``counters``): keep only lines ending in terminal punctuation
    (``line_end_punct``), with at least ``min_words_per_line`` = 3 words, not containing "javascript"
    (``remove_javascript_lines``) nor a cookie/terms/privacy policy phrase (``remove_policy_lines``);
    citation markers such as ``[1]`` are stripped (``remove_citations``).
    Document rules (drop reasons): ``c4_lorem_ipsum``; ``c4_curly_bracket`` (code); ``c4_bad_words`` (any
    of ``bad_words``, empty by default: C4 used the "List of Dirty, Naughty, Obscene, and Otherwise Bad
    Words", pass your own); ``c4_too_few_sentences`` (fewer than ``min_sentences`` = 3 after the line
    rules); ``c4_empty`` when no line survives.
    """

    name: ClassVar[str] = "c4"

    def __init__(
        self,
        *,
        line_end_punct: bool = True,
        min_words_per_line: Annotated[int, Min(0)] | None = 3,
        remove_javascript_lines: bool = True,
        remove_policy_lines: bool = True,
        remove_citations: bool = True,
        drop_lorem_ipsum: bool = True,
        drop_curly_bracket: bool = True,
        bad_words: list[str] | None = None,
        min_sentences: Annotated[int, Min(0)] | None = 3,
    ) -> None:
        super().__init__()
        self.line_end_punct = line_end_punct
        self.min_words_per_line = min_words_per_line
        self.remove_javascript_lines = remove_javascript_lines
        self.remove_policy_lines = remove_policy_lines
        self.remove_citations = remove_citations
        self.drop_lorem_ipsum = drop_lorem_ipsum
        self.drop_curly_bracket = drop_curly_bracket
        self.bad_words = (
            re.compile(r"\b(?:" + "|".join(re.escape(w.lower()) for w in bad_words) + r")\b") if bad_words else None
        )
        self.min_sentences = min_sentences

    def _line_reason(self, line: str) -> str | None:
        low = line.lower()
        if self.remove_javascript_lines and "javascript" in low:
            return "lines_javascript"
        if self.remove_policy_lines and any(p in low for p in POLICY_PHRASES):
            return "lines_policy"
        if self.line_end_punct and not line.endswith(_END_PUNCT):
            return "lines_no_end_punct"
        if self.min_words_per_line is not None and len(line.split()) < self.min_words_per_line:
            return "lines_too_few_words"
        return None

    def map(self, doc: Document) -> Document | None:
        low = doc.text.lower()
        if self.drop_lorem_ipsum and "lorem ipsum" in low:
            self._reject(doc, "c4_lorem_ipsum")
            return None
        if self.drop_curly_bracket and "{" in doc.text:
            self._reject(doc, "c4_curly_bracket")
            return None
        if self.bad_words is not None and self.bad_words.search(low):
            self._reject(doc, "c4_bad_words")
            return None
        kept: list[str] = []
        for raw in doc.text.split("\n"):
            line = raw.strip()
            if not line:
                if kept and kept[-1]:
                    kept.append("")  # keep paragraph breaks between surviving lines
                continue
            if self.remove_citations:
                line = _SPACES.sub(" ", _CITATION.sub("", line)).strip()
            reason = self._line_reason(line)
            if reason is not None:
                self.stats.counters[reason] += 1
                continue
            kept.append(line)
        text = "\n".join(kept).strip()
        if not text:
            self._reject(doc, "c4_empty")
            return None
        if self.min_sentences is not None and len(_SENTENCE_END.findall(text)) < self.min_sentences:
            self._reject(doc, "c4_too_few_sentences")
            return None
        doc.text = text
        return doc

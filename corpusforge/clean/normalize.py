"""Text normalization: mojibake repair (ftfy), Unicode normal form, control characters, whitespace.

Paragraph breaks (blank lines) are kept; runs of spaces and tabs become one space; other control
characters (C0/C1, except newline and tab) are removed; NUL bytes never survive.
"""

from __future__ import annotations

import re
import unicodedata
from typing import ClassVar, Literal

from corpusforge.document import Document
from corpusforge.step import Mapper

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]+")


def normalize_text(text: str, *, form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFC", fix_mojibake: bool = True) -> str:
    if fix_mojibake:
        import ftfy

        # Only repair mis-decoded text here; the Unicode form below decides about ligatures and widths.
        text = ftfy.fix_text(
            text, normalization=None, fix_latin_ligatures=False, fix_character_width=False, uncurl_quotes=False
        )
    text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class Normalize(Mapper):
    """``form``: NFC by default (keeps distinctions such as ligatures and full-width forms), NFKC optional."""

    name: ClassVar[str] = "normalize"

    def __init__(self, *, form: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFC", fix_mojibake: bool = True) -> None:
        super().__init__()
        self.form = form
        self.fix_mojibake = fix_mojibake

    def map(self, doc: Document) -> Document | None:
        doc.text = normalize_text(doc.text, form=self.form, fix_mojibake=self.fix_mojibake)
        if not doc.text:
            self._reject(doc, "normalize_empty")
            return None
        return doc

"""PII masking: e-mail addresses, phone numbers and IP addresses replaced by placeholders, with counts.

Never drops a document. Counts go to the step's ``counters`` (``pii_email``, ``pii_phone``, ``pii_ip``) and
the document's ``metadata["pii"]`` (only when something was masked). Patterns are deliberately
conservative (precision over recall), like the masking in FineWeb (Penedo et al. 2024) and BigScience ROOTS.
"""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar

from corpusforge.document import Document
from corpusforge.step import Mapper

_EMAIL = re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# International or North-American style numbers: +CC and/or area code, separators, 7–15 digits in total.
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _valid_ip(s: str) -> bool:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_unspecified)


class PiiMasker(Mapper):
    """``email``, ``phone``, ``ip``: the placeholder for each kind; ``None`` leaves that kind alone."""

    name: ClassVar[str] = "pii"

    def __init__(
        self,
        *,
        email: str | None = "<EMAIL>",
        phone: str | None = "<PHONE>",
        ip: str | None = "<IP>",
    ) -> None:
        super().__init__()
        self.email, self.phone, self.ip = email, phone, ip

    def map(self, doc: Document) -> Document | None:
        text = doc.text
        found: dict[str, int] = {}

        def sub(kind: str, pattern: re.Pattern[str], repl: str, check=None) -> None:  # type: ignore[no-untyped-def]
            nonlocal text

            def one(m: re.Match[str]) -> str:
                if check is not None and not check(m.group(0)):
                    return m.group(0)
                found[kind] = found.get(kind, 0) + 1
                return repl

            text = pattern.sub(one, text)

        if self.email is not None:
            sub("email", _EMAIL, self.email)
        if self.ip is not None:  # before phones: "192.168.100.200" must not look like a phone number
            sub("ip", _IPV4, self.ip, _valid_ip)
            sub("ip", _IPV6, self.ip, _valid_ip)
        if self.phone is not None:
            sub("phone", _PHONE, self.phone, lambda s: 7 <= sum(c.isdigit() for c in s) <= 15)
        if found:
            doc.text = text
            doc.metadata["pii"] = found
            for k, v in found.items():
                self.stats.counters[f"pii_{k}"] += v
        return doc

"""Secrets never reach a file or the console: credentials in URLs, and values of secret-looking keys.

``redact(obj)`` returns a copy of a config-like object (dicts, lists, strings) with

- the userinfo of every URL replaced (``https://user:pass@host/`` → ``https://***@host/``), and
- the value of every key that names a secret (password, passwd, secret, token, api_key, authorization,
  cookie, proxy_auth…) replaced by ``"***"``.

It is applied to everything corpusforge writes about a run (``recipe.resolved.toml``, ``stage.json``,
manifests, hence the dataset cards) and, through ``RedactingFilter``, to every log record and traceback; the
CLI redacts its one-line error messages. The crawler itself never sends credentials (canonical URLs carry no
userinfo, and no Authorization, cookie or proxy header is ever added). Config hashes are computed on the
redacted form, so a resolved recipe (where credentials read ``***``) reruns as the same config.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
# scheme://user[:password]@ — the userinfo of any URL-like text (not an e-mail address: it needs "://").
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^\s/@?#\"']+)@")
# A key is a secret when one of its _/- separated words is one of these (so "max_tokens" and "tokenizer" are not).
_SECRET_WORDS = {
    "password", "passwd", "pass", "pwd", "secret", "token", "apikey", "authorization", "auth", "cookie",
    "credential", "credentials", "bearer",
}  # fmt: skip
_NOT_SECRET = {"agent_token"}  # the robots.txt product token: a public name
# key: value / key=value / "key": "value" in free text; an Authorization value runs to the end of the line.
_PAIR = re.compile(r"(?P<key>[\w-]+)(?P<sep>[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;}]+(?: [^\s\"',;}]+)?)")


def _secret_key(key: Any) -> bool:
    if not isinstance(key, str) or key.lower() in _NOT_SECRET:
        return False
    words = re.split(r"[_\-\s]+", key.lower())
    return any(w in _SECRET_WORDS or w.replace("-", "") == "apikey" for w in words) or "api_key" in key.lower()


def _mask_pair(m: re.Match[str]) -> str:
    if not _secret_key(m.group("key")):
        # "value: proxy_password=x": the match of a harmless key swallowed a pair; look inside its value.
        return f"{m.group('key')}{m.group('sep')}{_PAIR.sub(_mask_pair, m.group('value'))}"
    value = m.group("value")
    # "Authorization: Bearer abc": both words are the secret; elsewhere only the first word is the value.
    if m.group("key").lower() != "authorization" and " " in value:
        return f"{m.group('key')}{m.group('sep')}{MASK} {value.split(' ', 1)[1]}"
    return f"{m.group('key')}{m.group('sep')}{MASK}"


def redact_text(text: str) -> str:
    """``text`` with URL userinfo and ``secret_key=value`` pairs masked."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", text)
    return _PAIR.sub(_mask_pair, text)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, strings; anything else as is) with every secret masked."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: MASK if _secret_key(k) and obj[k] not in (None, "") else redact(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    return obj


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message, arguments and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Format first: a dict, list or object argument (a spider's settings, a list of seeds) holds secrets too.
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed logging call: keep its text, masked, without failing
            message = f"{record.msg} (arguments: {record.args!r})"
        record.msg, record.args = redact_text(message), None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, redact_text(text)
        return True

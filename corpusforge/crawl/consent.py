"""The AI-training opt-out policy: the signals a site and a page give, whether they reserve the page, and the
``consent`` record stored with every crawled document.

Signals, in the order the crawler meets them:

1. robots.txt (``crawl.robots``): our own group decides whether we may fetch at all; a group naming a known
   AI-training agent (``ai_agents.toml``: GPTBot, CCBot, Google-Extended, ...) that disallows the URL is the
   site saying "not for AI training" → ``optout_robots_ai``, before any request for the page.
2. TDMRep (W3C TDM Reservation Protocol community report): ``/.well-known/tdmrep.json``, a JSON array of
   rules ``{"location": "/path*", "tdm-reservation": 1, "tdm-policy": "https://..."}`` whose locations are
   path patterns (``*`` any characters, a final ``$`` the end; else a prefix); the first rule that matches
   the path applies. A reserved path → ``optout_tdm_reservation`` before the page is fetched. After the
   fetch, the ``tdm-reservation`` response header or ``<meta name="tdm-reservation" content="1">`` reserve
   the page too. Any signal saying 1 reserves it: the strictest wins.
3. Robots directives, per agent: ``X-Robots-Tag`` (``noai``, or ``otherbot: noindex, nofollow``: a name
   before a colon scopes the directives after it, up to the next name) and ``<meta name="robots">`` or
   ``<meta name="<agent>">``. Only directives for everyone, for our token, or (as an AI opt-out) for a known
   AI-training agent apply: ``otherbot: noindex`` is not ours. ``noai`` → ``optout_noai``; ``noindex`` →
   ``optout_noindex`` (``honour_noindex``); ``noai`` or ``noindex`` addressed to an AI-training agent →
   ``optout_ai_agent``. ``noimageai`` concerns images: recorded, the text is kept.

With ``ai_optout = false`` nothing of 1-2 and no ``noai`` is honoured, but every signal is still recorded.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corpusforge.errors import ConfigError

log = logging.getLogger(__name__)

AGENTS_FILE = Path(__file__).with_name("ai_agents.toml")
TDM_KEY = " tdmrep"  # the shared robots store's key for a host's tdmrep.json: "<host> tdmrep" (never a URL)
TDM_MAX_BYTES = 64 * 1024
HEAD_CHARS = 65536  # meta tags are read from the start of the page (the head), not the whole body
# Directives that carry a value after a colon: ``max-snippet: 20`` is not an agent named max-snippet.
VALUED = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
AGENT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")
META = re.compile(r"<meta\b[^>]*>", re.I)
ATTR = re.compile(r"""([^\s=/>"']+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""")


# ---------------------------------------------------------------------------------------------- agents
def load_agents(extra: list[str] | None = None, extra_file: str | None = None) -> tuple[str, ...]:
    """The AI-training agents' product tokens: the bundled list, then ``extra_file``'s, then ``extra``."""
    tokens = [a["token"] for a in _read_agents(AGENTS_FILE)]
    if extra_file:
        tokens += [a["token"] for a in _read_agents(Path(extra_file))]
    tokens += list(extra or [])
    out: list[str] = []
    for t in tokens:
        if t.lower() not in out:
            out.append(t.lower())
    return tuple(out)


def _read_agents(path: Path) -> list[dict[str, Any]]:
    where = "ai_agents_file"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path=where) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", path=where) from exc
    agents = data.get("agent")
    if not isinstance(agents, list) or not agents:
        raise ConfigError(f"{path}: expected [[agent]] tables with a 'token' each", path=where)
    for i, a in enumerate(agents):
        if (
            not isinstance(a, dict)
            or not isinstance(a.get("token"), str)
            or not AGENT_NAME.fullmatch(a["token"].lower())
        ):
            raise ConfigError(f"{path}: agent {i + 1} needs a 'token' (a robots.txt product token)", path=where)
    return agents


# ---------------------------------------------------------------------------------------------- TDMRep
@dataclass(frozen=True)
class TdmRules:
    """A host's tdmrep.json: ``status`` ok / missing (4xx) / unavailable / invalid / not_read."""

    status: str
    rules: tuple[tuple[re.Pattern[str], str, int, str | None], ...] = ()

    def match(self, url: str) -> tuple[str, int, str | None] | None:
        """(location, reservation, policy) of the first rule matching ``url``'s path, or None."""
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for pattern, location, reservation, policy in self.rules:
            if pattern.match(path):
                return location, reservation, policy
        return None


NO_TDM = TdmRules("not_read")


def location_pattern(location: str) -> re.Pattern[str]:
    """A tdmrep.json location as a regex over the path: ``*`` any characters, a final ``$`` the end."""
    anchored = location.endswith("$")
    body = location[:-1] if anchored else location
    return re.compile("".join(".*" if c == "*" else re.escape(c) for c in body) + ("$" if anchored else ""))


def parse_tdmrep(status: str, text: str | None, host: str) -> TdmRules:
    if status != "ok" or text is None:
        return TdmRules(status)
    try:
        data = json.loads(text)
        rules = []
        for r in data:
            location = r["location"]
            reservation = int(r.get("tdm-reservation", 0))
            policy = r.get("tdm-policy")
            if not isinstance(location, str) or reservation not in (0, 1):
                raise ValueError(f"bad rule {r!r}")
            rules.append(
                (location_pattern(location), location, reservation, policy if isinstance(policy, str) else None)
            )
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("%s/.well-known/tdmrep.json is not a list of TDMRep rules (%s): ignored", host, exc)
        return TdmRules("invalid")
    return TdmRules("ok", tuple(rules))


# ---------------------------------------------------------------------------------------------- page signals
def directives(value: str) -> dict[str, set[str]]:
    """A robots directive list (``X-Robots-Tag`` or a meta content) → {agent or "*": directive names}."""
    out: dict[str, set[str]] = {}
    scope = "*"
    for part in value.split(","):
        part = part.strip().lower()
        if ":" in part:
            head, rest = (p.strip() for p in part.split(":", 1))
            if head not in VALUED and AGENT_NAME.fullmatch(head):
                scope, part = head, rest
        name = part.split(":", 1)[0].strip()
        if name:
            out.setdefault(scope, set()).add(name)
    return out


def meta_tags(html: str) -> list[tuple[str, str]]:
    """(lower-cased name, content) of the ``<meta name=... content=...>`` tags in the page's head."""
    found = []
    for m in META.finditer(html[:HEAD_CHARS]):
        # findall gives "" for the two quoting styles not used: the value is whichever is not empty.
        attrs = {k.lower(): dq or sq or bare for k, dq, sq, bare in ATTR.findall(m.group(0))}
        if "name" in attrs and "content" in attrs:
            found.append((attrs["name"].strip().lower(), attrs["content"].strip()))
    return found


@dataclass
class PageSignals:
    """What a page's response and HTML say: directives for us (and everyone), for AI-training agents, TDMRep."""

    mine: set[str] = field(default_factory=set)
    ai: dict[str, set[str]] = field(default_factory=dict)
    tdm: dict[str, str] = field(default_factory=dict)  # "header" / "meta" → "0" or "1"; "policy" → URL

    def merge(self, other: PageSignals) -> PageSignals:
        """Both pages' signals (the static page and its render)."""
        ai = {a: self.ai.get(a, set()) | other.ai.get(a, set()) for a in set(self.ai) | set(other.ai)}
        return PageSignals(self.mine | other.mine, ai, self.tdm | other.tdm)

    def tdm_reserved(self) -> bool:
        return "1" in (self.tdm.get("header"), self.tdm.get("meta"))


# ---------------------------------------------------------------------------------------------- the policy
class ConsentPolicy:
    """Decides the opt-outs of one crawl and writes each stored page's ``consent`` record."""

    def __init__(self, *, agent_token: str, ai_optout: bool, honour_noindex: bool, agents: tuple[str, ...]) -> None:
        self.token = agent_token.lower()
        self.ai_optout = ai_optout
        self.honour_noindex = honour_noindex
        self.agents = tuple(a for a in agents if a != self.token)

    @classmethod
    def from_settings(cls, s: Any) -> ConsentPolicy:
        return cls(
            agent_token=s.agent_token,
            ai_optout=s.ai_optout,
            honour_noindex=s.honour_noindex,
            agents=load_agents(s.ai_agents, s.ai_agents_file),
        )

    def site_refusal(self, url: str, rules: Any, tdm: TdmRules) -> str | None:
        """The opt-out robots.txt or tdmrep.json gives ``url`` before it is fetched, or None."""
        if not self.ai_optout:
            return None
        if rules.ai_disallowing(url):
            return "optout_robots_ai"
        got = tdm.match(url)
        if got is not None and got[1] == 1:
            return "optout_tdm_reservation"
        return None

    def page(self, headers: dict[str, str], html: str) -> PageSignals:
        sig = PageSignals()
        self._add(sig, directives(headers.get("x-robots-tag", "")))
        if "tdm-reservation" in headers:
            sig.tdm["header"] = headers["tdm-reservation"].strip()
        if "tdm-policy" in headers:
            sig.tdm["policy"] = headers["tdm-policy"].strip()
        for name, content in meta_tags(html):
            if name == "robots" or name == self.token or name in self.agents:
                self._add(sig, {("*" if name == "robots" else name): set(directives(content).get("*", set()))})
            elif name == "tdm-reservation":
                sig.tdm.setdefault("meta", content)
            elif name == "tdm-policy":
                sig.tdm.setdefault("policy", content)
        return sig

    def _add(self, sig: PageSignals, by_agent: dict[str, set[str]]) -> None:
        for agent, names in by_agent.items():
            if agent in ("*", self.token):
                sig.mine |= names
            elif agent in self.agents:
                sig.ai.setdefault(agent, set()).update(names)

    def page_refusal(self, sig: PageSignals) -> str | None:
        """The opt-out a fetched page gives itself, or None (then it is stored)."""
        if self.ai_optout and "noai" in sig.mine:
            return "optout_noai"
        if self.ai_optout and sig.tdm_reserved():
            return "optout_tdm_reservation"
        if self.ai_optout and any(n & {"noai", "noindex", "none"} for n in sig.ai.values()):
            return "optout_ai_agent"
        if self.honour_noindex and ("noindex" in sig.mine or "none" in sig.mine):
            return "optout_noindex"
        return None

    def record(self, url: str, rules: Any, tdm: TdmRules, sig: PageSignals) -> dict[str, Any]:
        """The ``consent`` record of a stored page: each signal checked and what it said."""
        file_rule = tdm.match(url)
        rec: dict[str, Any] = {
            "policy": "ai_optout" if self.ai_optout else "off",
            "robots_txt": rules.status,  # ok, or missing (4xx: everything allowed)
            "robots_ai_groups": sorted(rules.ai_parsers),  # AI agents this robots.txt has a group for
            "robots_ai_disallowed": rules.ai_disallowing(url),
            "tdmrep_json": tdm.status,
            "tdm_reservation_file": None if file_rule is None else file_rule[1],
            "tdm_reservation_header": sig.tdm.get("header"),
            "tdm_reservation_meta": sig.tdm.get("meta"),
            "tdm_policy": sig.tdm.get("policy") or (None if file_rule is None else file_rule[2]),
            "directives": sorted(sig.mine),
            "ai_agent_directives": {a: sorted(n) for a, n in sorted(sig.ai.items())},
        }
        return rec

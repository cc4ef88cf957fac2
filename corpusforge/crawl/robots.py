"""robots.txt per RFC 9309, cached per ``scheme://host:port``.

- 2xx: parsed (size-capped at ``max_bytes``, RFC 9309 asks parsers to handle at least 500 KiB);
- 4xx (including 404): everything allowed;
- 5xx, unreachable, timeout, too large to be trusted: everything disallowed ("complete disallow");
- redirects are followed up to 5 hops (RFC 9309 §2.3.1.2), on the same or another host.

Our group is chosen here, by the exact product token (RFC 9309 §2.2.1: case-insensitive; every group naming
it, merged; else the ``*`` groups; else none), and only its rules go to Protego: Protego alone would take a
group named ``corpus`` for ``corpusforge`` (it matches a group's name as a prefix of the token).

Also records ``Crawl-delay`` for our token, and the groups that name a known AI-training agent
(``crawl/ai_agents.toml``): the AI-training opt-out policy (``crawl.consent``) honours a URL disallowed for
any of them. The host's ``/.well-known/tdmrep.json`` (TDMRep) is read and cached here too, as a request of
its own.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from corpusforge.crawl.consent import NO_TDM, TDM_KEY, TDM_MAX_BYTES, TdmRules, parse_tdmrep
from corpusforge.crawl.page import FetchRequest

log = logging.getLogger(__name__)


# "key: value" lines; the value stops at a comment. Protego's spellings of the user-agent key are accepted too.
LINE = re.compile(r"^\s*([A-Za-z][A-Za-z _-]*?)\s*:\s*([^#]*?)\s*(?:#.*)?$")
AGENT_KEYS = ("user-agent", "useragent", "user agent")
PRODUCT_TOKEN = re.compile(r"[A-Za-z_-]+")  # RFC 9309 §2.2.1: the token's characters
NOT_IN_GROUPS = ("sitemap",)  # lines that belong to the file, not to a group


def rules_for(text: str, token: str) -> str:
    """The rules of ``text`` that apply to the product ``token``, as one ``User-agent: *`` group."""
    groups = parse_groups(text)
    mine = groups.get(token.lower(), groups.get("*", []))
    return "\n".join(["User-agent: *", *mine]) + "\n"


def parse_groups(text: str) -> dict[str, list[str]]:
    """Every group's rules by lower-cased product token (``*`` included), groups naming a token merged."""
    groups: dict[str, list[str]] = {}
    agents: list[str] = []
    in_rules = False  # a user-agent line after rules starts a new group; consecutive ones share a group
    for raw in text.lstrip("\ufeff").splitlines():
        m = LINE.match(raw)
        if m is None:
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key in AGENT_KEYS:
            if in_rules:
                agents, in_rules = [], False
            name = PRODUCT_TOKEN.match(value)
            agent = "*" if value == "*" else (name.group(0).lower() if name else "")
            if agent not in agents:
                agents.append(agent)
            groups.setdefault(agent, [])
        elif agents and key not in NOT_IN_GROUPS:
            in_rules = True
            for agent in agents:
                groups[agent].append(f"{key}: {value}")
    return groups


@dataclass
class RobotsRules:
    status: str  # "ok", "missing" (4xx), "unavailable" (5xx/unreachable → disallow all)
    parser: object | None = None
    crawl_delay_s: float | None = None
    # The AI-training agents this robots.txt has a group of its own for, and each one's parser.
    ai_parsers: dict[str, Any] = field(default_factory=dict)

    def ai_disallowing(self, url: str) -> list[str]:
        """The AI-training agents whose own group disallows ``url`` (their tokens, lower case)."""
        return [agent for agent, p in self.ai_parsers.items() if not p.can_fetch(url, agent)]

    def allowed(self, url: str, agent: str) -> bool:
        if self.status == "missing":
            return True
        if self.status != "ok" or self.parser is None:
            return False
        return bool(self.parser.can_fetch(url, agent))  # type: ignore[attr-defined]


class RobotsCache:
    def __init__(
        self,
        backend: object,
        *,
        agent_token: str,
        user_agent: str,
        max_bytes: int = 512 * 1024,
        timeout_s: float = 10.0,
        max_redirects: int = 5,
        ai_agents: tuple[str, ...] = (),
        tdmrep: bool = False,
    ) -> None:
        self.backend = backend
        self.ai_agents = tuple(a.lower() for a in ai_agents if a.lower() != agent_token.lower())
        self.tdmrep = tdmrep  # whether /.well-known/tdmrep.json is read (the AI-training opt-out policy)
        self._tdm: dict[str, TdmRules] = {}
        self.agent_token = agent_token
        self.user_agent = user_agent
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self._cache: dict[str, RobotsRules] = {}
        # A store shared by the processes of one crawl (the Redis frontier): robots.txt is read once per host
        # for all of them. ``get(host)`` → a record or None; ``put(host, record, crawl_delay_s)``.
        self.shared: Any = None

    def rules(self, host: str) -> RobotsRules:
        """Rules for ``scheme://host:port`` (fetched once per crawl)."""
        if host not in self._cache:
            got = self.cached(host)
            if got is None:
                got, text = self._fetch(host)
                if self.shared is not None:
                    self.shared.robots_put(host, {"status": got.status, "text": text}, got.crawl_delay_s)
                self._cache[host] = got
        return self._cache[host]

    def cached(self, host: str) -> RobotsRules | None:
        """Rules for ``host`` if already fetched (by this process, or by another of a shared crawl), else None
        (never fetches)."""
        got = self._cache.get(host)
        if got is None and self.shared is not None:
            record = self.shared.robots_get(host)
            if record is not None:
                got = self._cache[host] = self._parse(record["status"], record.get("text"))
        return got

    def _parse(self, status: str, text: str | None) -> RobotsRules:
        if status != "ok" or text is None:
            return RobotsRules(status)
        import protego

        groups = parse_groups(text)
        mine = "\n".join(["User-agent: *", *groups.get(self.agent_token.lower(), groups.get("*", []))]) + "\n"
        parser = protego.Protego.parse(mine)
        ai = {
            a: protego.Protego.parse("\n".join(["User-agent: *", *groups[a]]) + "\n")
            for a in self.ai_agents
            if a in groups
        }
        return RobotsRules("ok", parser, parser.crawl_delay(self.agent_token), ai)

    # ------------------------------------------------------------------ TDMRep
    def tdm_cached(self, host: str) -> TdmRules | None:
        """The host's tdmrep.json rules if read (by any process of the crawl); a placeholder when not asked for."""
        if not self.tdmrep:
            return NO_TDM
        got = self._tdm.get(host)
        if got is None and self.shared is not None:
            record = self.shared.robots_get(host + TDM_KEY)
            if record is not None:
                got = self._tdm[host] = parse_tdmrep(record["status"], record.get("text"), host)
        return got

    def tdm_rules(self, host: str) -> TdmRules:
        """The host's ``/.well-known/tdmrep.json`` rules (fetched once per crawl: a request to the host)."""
        got = self.tdm_cached(host)
        if got is None:
            status, text = self._get_small(f"{host}/.well-known/tdmrep.json", TDM_MAX_BYTES)
            got = self._tdm[host] = parse_tdmrep(status, text, host)
            if self.shared is not None:
                self.shared.robots_put(host + TDM_KEY, {"status": status, "text": text}, None)
        return got

    def _get_small(self, url: str, max_bytes: int) -> tuple[str, str | None]:
        """("ok", text) for a 2xx (redirects followed), ("missing", None) for a 4xx, else ("unavailable", None)."""
        for _ in range(self.max_redirects + 1):
            resp = self.backend.fetch(  # type: ignore[attr-defined]
                FetchRequest(
                    url, headers={"User-Agent": self.user_agent}, max_bytes=max_bytes, timeout_s=self.timeout_s
                )
            )
            if resp.error:
                return "unavailable", None
            if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                url = urljoin(url, resp.headers["location"])
                if not url.startswith(("http://", "https://")):
                    return "unavailable", None
                continue
            if 200 <= resp.status < 300:
                return "ok", resp.body.decode("utf-8", errors="replace")
            return ("missing" if 400 <= resp.status < 500 else "unavailable"), None
        return "unavailable", None

    def _fetch(self, host: str) -> tuple[RobotsRules, str | None]:
        """The host's rules and, when it served a robots.txt, its text."""
        url = f"{host}/robots.txt"
        for _ in range(self.max_redirects + 1):
            resp = self.backend.fetch(  # type: ignore[attr-defined]
                FetchRequest(
                    url, headers={"User-Agent": self.user_agent}, max_bytes=self.max_bytes + 1, timeout_s=self.timeout_s
                )
            )
            if resp.error == "too_large":
                # Parse what fits under the cap, as RFC 9309 allows.
                resp.error = None
                resp.body = resp.body[: self.max_bytes]
            if resp.error:
                log.info("robots.txt for %s unavailable (%s): host disallowed", host, resp.error)
                return RobotsRules("unavailable"), None
            if resp.status in (301, 302, 303, 307, 308) and "location" in resp.headers:
                url = urljoin(url, resp.headers["location"])
                if not url.startswith(("http://", "https://")):
                    return RobotsRules("unavailable"), None
                continue
            if 200 <= resp.status < 300:
                text = resp.body.decode("utf-8", errors="replace")
                return self._parse("ok", text), text
            if 400 <= resp.status < 500:
                return RobotsRules("missing"), None
            return RobotsRules("unavailable"), None
        return RobotsRules("unavailable"), None

"""The AI-training opt-out policy on a loopback site with real headers and files (issue 16)."""

from __future__ import annotations

import json

import pytest

from corpusforge.crawl.consent import ConsentPolicy, directives, load_agents, location_pattern, meta_tags
from corpusforge.errors import ConfigError
from tests.crawl.faultserver import TDMREP, html
from tests.crawl.test_crawl import crawl, servers  # noqa: F401

ROBOTS = b"""User-agent: CCBot
Disallow: /ai-no/

User-agent: Google-Extended
Disallow: /ai-no/

User-agent: otherbot
Disallow: /

User-agent: *
Allow: /
"""
TDM_FILE = json.dumps(
    [
        {"location": "/tdm-file/*", "tdm-reservation": 1, "tdm-policy": "https://example.org/policy.json"},
        {"location": "/tdm-zero$", "tdm-reservation": 0},
    ]
).encode()
PAGES = {
    "/ai-no/x": html("a page for people only"),
    "/tdm-file/x": html("reserved by the site's tdmrep.json"),
    "/tdm-zero": html("tdmrep.json says not reserved"),
    "/tdm-header": html("reserved by a header", Tdm_Reservation="1"),
    "/tdm-meta": html('<meta name="tdm-reservation" content="1">reserved by a meta tag'),
    "/other-bot": html("noindex for another bot only", X_Robots_Tag="otherbot: noindex, nofollow"),
    "/gpt-noindex": html("noindex for GPTBot", X_Robots_Tag="GPTBot: noindex"),
    "/meta-ours": html('<meta content="noai" name="corpusforge">noai for us, content before name'),
    "/meta-other": html('<meta name="somebot" content="noindex">noindex for some other bot'),
    "/imageai": html("images not for AI", X_Robots_Tag="noimageai"),
    "/noai": html("no AI", X_Robots_Tag="noai"),
    "/plain": html("a plain page"),
}


def _site(servers):  # noqa: F811
    routes = {
        "/robots.txt": (200, {"Content-Type": "text/plain"}, ROBOTS),
        TDMREP: (200, {"Content-Type": "application/json"}, TDM_FILE),
        "/": html("".join(f'<a href="{p}">{p}</a>' for p in PAGES)),
    }
    return servers(routes=routes | PAGES)


def test_every_signal_is_honoured_and_recorded_per_document(tmp_path, servers):  # noqa: F811
    s = _site(servers)
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"])
    stored = {d.url.removeprefix(s.base): d for d in docs}
    assert sorted(stored) == ["/", "/imageai", "/meta-other", "/other-bot", "/plain", "/tdm-zero"]
    assert step["dropped"] == {
        "optout_robots_ai": 1,  # /ai-no/x: CCBot's and Google-Extended's groups disallow it
        "optout_tdm_reservation": 3,  # tdmrep.json, the header, the meta tag
        "optout_ai_agent": 1,  # GPTBot: noindex
        "optout_noai": 2,  # X-Robots-Tag: noai, <meta name="corpusforge" content="noai">
    }
    # Refused before any request: robots.txt and tdmrep.json decide from the URL alone.
    assert "/ai-no/x" not in s.paths() and "/tdm-file/x" not in s.paths()
    assert s.paths(tdmrep=True).count(TDMREP) == 1 and s.paths()[0] == "/robots.txt"
    c = stored["/tdm-zero"].consent
    assert c["policy"] == "ai_optout" and c["robots_txt"] == "ok" and c["tdmrep_json"] == "ok"
    assert c["robots_ai_groups"] == ["ccbot", "google-extended"] and c["robots_ai_disallowed"] == []
    assert c["tdm_reservation_file"] == 0 and c["tdm_reservation_header"] is None
    assert (
        stored["/other-bot"].consent["directives"] == [] and stored["/other-bot"].consent["ai_agent_directives"] == {}
    )
    assert (
        stored["/imageai"].consent["directives"] == ["noimageai"] and stored["/imageai"].robots == "allowed;noimageai"
    )
    assert stored["/plain"].consent["tdm_reservation_file"] is None
    assert set(stored["/plain"].metadata["headers"]) >= {"content-type"}


def test_with_the_policy_off_nothing_ai_specific_is_honoured_but_everything_is_recorded(tmp_path, servers):  # noqa: F811
    s = _site(servers)
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], ai_optout=False)
    stored = {d.url.removeprefix(s.base): d for d in docs}
    assert len(stored) == len(PAGES) + 1 and step["dropped"] == {}
    assert TDMREP not in s.paths(tdmrep=True)  # the file is not read when nothing would honour it
    assert stored["/tdm-header"].consent["tdm_reservation_header"] == "1"
    assert stored["/tdm-meta"].consent["tdm_reservation_meta"] == "1"
    assert stored["/gpt-noindex"].consent["ai_agent_directives"] == {"gptbot": ["noindex"]}
    assert stored["/noai"].consent["directives"] == ["noai"] and stored["/noai"].consent["policy"] == "off"
    assert stored["/ai-no/x"].consent["robots_ai_disallowed"] == ["ccbot", "google-extended"]


def test_an_agent_the_user_adds_is_honoured(tmp_path, servers):  # noqa: F811
    extra = tmp_path / "agents.toml"
    extra.write_text('[[agent]]\ntoken = "FileBot"\nsource = "https://example.org/filebot"\n')
    robots = b"User-agent: MyAIBot\nDisallow: /a\n\nUser-agent: FileBot\nDisallow: /b\n"
    routes = {"/robots.txt": (200, {}, robots), "/": html('<a href="/a">a</a><a href="/b">b</a><a href="/c">c</a>')}
    s = servers(routes=routes | {p: html(p) for p in ("/a", "/b", "/c")})
    res, docs, step = crawl(tmp_path, [s.base + "/"], ["127.0.0.1"], ai_agents=["MyAIBot"], ai_agents_file=str(extra))
    assert sorted(d.url.removeprefix(s.base) for d in docs) == ["/", "/c"]
    assert step["dropped"] == {"optout_robots_ai": 2} and "/a" not in s.paths() and "/b" not in s.paths()


def test_a_bad_agents_file_names_the_file(tmp_path):
    bad = tmp_path / "agents.toml"
    bad.write_text('[[agent]]\nname = "no token"\n')
    with pytest.raises(ConfigError, match="agents.toml: agent 1 needs a 'token'"):
        load_agents(extra_file=str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_agents(extra_file=str(tmp_path / "missing.toml"))


def test_the_bundled_agent_list_cites_a_source_for_each_agent():
    import tomllib

    from corpusforge.crawl.consent import AGENTS_FILE

    agents = tomllib.loads(AGENTS_FILE.read_text())["agent"]
    assert {"gptbot", "ccbot", "google-extended"} <= set(load_agents())
    assert all(a["source"].startswith("https://") and a["operator"] for a in agents)


@pytest.mark.parametrize(
    ("value", "expect"),
    [
        ("noai, noimageai", {"*": {"noai", "noimageai"}}),
        ("otherbot: noindex, nofollow", {"otherbot": {"noindex", "nofollow"}}),
        ("noai, GPTBot: noindex, CCBot: none", {"*": {"noai"}, "gptbot": {"noindex"}, "ccbot": {"none"}}),
        (
            "max-snippet: 20, unavailable_after: 2030-01-01, noindex",
            {"*": {"max-snippet", "unavailable_after", "noindex"}},
        ),
        ("", {}),
    ],
)
def test_robots_directives_are_scoped_per_agent(value, expect):
    assert directives(value) == expect


def test_meta_tags_read_any_attribute_order_and_quoting():
    page = (
        '<head><META CONTENT=\'noai\' NAME=Robots><meta name="tdm-reservation" content="1"/><meta charset=utf-8></head>'
    )
    assert meta_tags(page) == [("robots", "noai"), ("tdm-reservation", "1")]


def test_tdmrep_locations_match_like_robots_paths():
    assert location_pattern("/a/*.html").match("/a/b/c.html")
    assert location_pattern("/a$").match("/a") and not location_pattern("/a$").match("/ab")
    assert location_pattern("/a").match("/abc") and not location_pattern("/a").match("/b/a")


def test_directives_for_another_agent_do_not_apply_to_us():
    policy = ConsentPolicy(agent_token="corpusforge", ai_optout=True, honour_noindex=True, agents=load_agents())
    sig = policy.page({"x-robots-tag": "otherbot: noindex"}, '<meta name="somebot" content="noai">')
    assert policy.page_refusal(sig) is None
    sig = policy.page({"x-robots-tag": "corpusforge: noindex"}, "")
    assert policy.page_refusal(sig) == "optout_noindex"


def test_the_sequential_loop_spaces_tdmrep_json_after_robots_txt_when_the_first_url_is_refused(tmp_path, servers):  # noqa: F811
    """concurrency 1: a refused first URL gave robots.txt no delay, so tdmrep.json followed it at once."""
    robots = b"User-agent: *\nDisallow: /private\n"
    routes = {"/robots.txt": (200, {}, robots), "/": html("home"), "/private/a": html("p")}
    s = servers(routes=routes)
    res, docs, step = crawl(
        tmp_path, [s.base + "/private/a", s.base + "/"], ["127.0.0.1"], min_delay_s=0.3, concurrency=1
    )
    assert [d.url.removeprefix(s.base) for d in docs] == ["/"] and step["dropped"] == {"robots_disallowed": 1}
    starts = [h.t for h in s.log]
    assert s.paths(tdmrep=True) == ["/robots.txt", TDMREP, "/"]
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 0.3 - 0.005, starts

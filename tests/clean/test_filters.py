"""C4, FineWeb, URL blocklist, language, PII and site-boilerplate steps: each reason asserted."""

from __future__ import annotations

import pytest

from corpusforge.clean.boilerplate import SiteBoilerplate
from corpusforge.clean.filters.c4 import C4Filter
from corpusforge.clean.filters.fineweb import FineWebQualityFilter
from corpusforge.clean.filters.language import LanguageFilter
from corpusforge.clean.filters.url import UrlBlocklistFilter
from corpusforge.clean.pii import PiiMasker
from corpusforge.document import Document
from corpusforge.recipe import build_step

SENTS = [
    "The committee met on Tuesday to review the proposal in detail.",
    "Members agreed that the plan was sound and well argued.",
    "The chair asked for a written summary of the main risks.",
    "Several people raised concerns about the timeline for delivery.",
]


def doc(text: str, url: str | None = "http://127.0.0.1/a", i: int = 0) -> Document:
    return Document(id=f"d{i}", text=text, url=url)


def test_c4_line_rules_and_document_reasons():
    lines = SENTS[:3] + [SENTS[3] + " See [1] here."]
    text = "\n".join(lines + ["Menu", "Enable JavaScript to view this site properly.", "We use cookies on this site."])
    step = C4Filter()
    out = list(step.run([doc(text)]))
    assert out[0].text.split("\n") == SENTS[:3] + [SENTS[3] + " See  here.".replace("  ", " ")]
    assert step.stats.counters["lines_javascript"] == 1 and step.stats.counters["lines_no_end_punct"] == 1
    assert step.stats.counters["lines_policy"] == 1
    cases = {
        "c4_lorem_ipsum": "\n".join(SENTS) + "\nLorem ipsum dolor sit amet.",
        "c4_curly_bracket": "\n".join(SENTS) + "\nfunction f() { return 1; }",
        "c4_too_few_sentences": SENTS[0],
        "c4_empty": "Home\nAbout\nContact",
    }
    for reason, text in cases.items():
        f = C4Filter()
        assert list(f.run([doc(text)])) == [] and dict(f.stats.dropped) == {reason: 1}, reason
    bad = C4Filter(bad_words=["darn"])
    assert list(bad.run([doc("\n".join(SENTS) + "\nWell darn it all.")])) == []
    assert bad.stats.dropped == {"c4_bad_words": 1}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\n".join(SENTS), None),
        ("\n".join(f"a line without an end number {i}" for i in range(20)), "fineweb_line_punct_ratio"),
        ("\n".join(["Short one."] * 1 + [f"Item {i}." for i in range(10)] + SENTS[:2]), "fineweb_short_line_ratio"),
        ("\n".join(SENTS + [SENTS[0]]), "fineweb_char_dup_ratio"),
    ],
)
def test_fineweb_reasons(text, reason):
    assert FineWebQualityFilter().reject(doc(text)) == reason


def test_fineweb_list_ratio():
    text = "\n".join(f"{w} is here." for w in "alpha beta gamma delta epsilon zeta eta theta".split())
    f = FineWebQualityFilter(max_short_line_ratio=None, max_newline_word_ratio=0.2)
    assert f.reject(doc(text)) == "fineweb_list_ratio"


def test_url_blocklist(tmp_path):
    listed = tmp_path / "domains"
    listed.write_text("# adult\nbad.example\n")
    f = UrlBlocklistFilter(domains=["spam.test"], domains_file=str(listed), url_substrings=["/casino/"])
    urls = ["http://a.spam.test/x", "https://BAD.example./p", "http://ok.test/casino/1", "http://ok.test/a", None]
    assert [f.reject(doc("x", u)) for u in urls] == [
        "url_blocked_domain",
        "url_blocked_domain",
        "url_blocked_substring",
        None,
        None,
    ]


def test_language_labels_and_reasons():
    f = LanguageFilter()
    en, fr = doc(" ".join(SENTS)), doc("Le comité s'est réuni mardi pour examiner la proposition en détail.")
    assert f.reject(en) is None and en.metadata["language"] == "en" and en.metadata["language_score"] > 0.9
    assert f.reject(fr) == "language_not_allowed" and fr.metadata["language"] == "fr"
    assert LanguageFilter(languages=None).reject(fr) is None
    assert LanguageFilter(languages=("en",), min_score=1.0).reject(doc("ok")) in (
        "language_low_score",
        "language_not_allowed",
    )


def test_pii_masks_and_counts():
    step = PiiMasker()
    text = "Write to jane.doe@example.org, call +1 415-555-0123 or (030) 1234 5678; host 203.0.113.9. Year 2021-2022."
    out = list(step.run([doc(text)]))[0]
    assert out.text == "Write to <EMAIL>, call <PHONE> or <PHONE>; host <IP>. Year 2021-2022."
    assert out.metadata["pii"] == {"email": 1, "phone": 2, "ip": 1}
    assert step.stats.counters == {"pii_email": 1, "pii_phone": 2, "pii_ip": 1}
    assert PiiMasker(email=None).map(doc("a@b.example")).text == "a@b.example"


def test_site_boilerplate_removes_lines_repeated_across_a_site():
    nav, cookie = "Home | Docs | Blog", "This site uses cookies."
    docs = [doc(f"{nav}\n\nUnique body text number {i}.\n\n{cookie}", f"http://site.test/{i}", i) for i in range(5)]
    docs.append(doc(f"{nav}\n\n{cookie}", "http://site.test/empty", 9))
    docs.append(doc(f"{nav}\n\nOther site.", "http://other.test/", 10))
    step = SiteBoilerplate(window_docs=6)  # two windows: bounded memory; the last host is alone in its window
    out = list(step.run(docs))
    assert [d.text for d in out[:5]] == [f"Unique body text number {i}." for i in range(5)]
    assert out[-1].text == f"{nav}\n\nOther site."  # another host: one page is not boilerplate
    assert step.stats.dropped == {"site_boilerplate_empty": 1}
    assert step.stats.input == step.stats.output + 1


def test_every_clean_step_builds_from_a_recipe_spec():
    for name in (
        "extract",
        "normalize",
        "length",
        "gopher_quality",
        "gopher_repetition",
        "c4",
        "fineweb_quality",
        "url_blocklist",
        "language",
        "pii",
        "site_boilerplate",
    ):
        assert build_step({"type": name}, path="steps[0]").name == name


# --------------------------------------------------------------------- reasons not covered elsewhere
LONG = "The committee met on Tuesday and reviewed every one of the proposals that the members had sent in."


def test_gopher_char_fraction_reasons_and_long_doc():
    from corpusforge.clean.filters.gopher import GopherQualityFilter, GopherRepetitionFilter

    shorts = [f"Short note {i}." for i in range(5)]
    # One paragraph in seven repeats (≤ 0.30 by count) but it holds > 0.20 of the characters.
    paras = "\n\n".join([LONG, LONG] + shorts)
    assert GopherRepetitionFilter().reject(doc(paras)) == "gopher_dup_para_char_fraction"
    lines = "\n".join([LONG, LONG] + shorts)  # the same as lines of one paragraph
    assert GopherRepetitionFilter().reject(doc(lines)) == "gopher_dup_line_char_fraction"
    assert GopherRepetitionFilter(max_dup_line_char_fraction=None, max_dup_para_char_fraction=None).reject(
        doc(paras)
    ) not in ("gopher_dup_para_char_fraction", "gopher_dup_line_char_fraction")  # None disables a rule
    giant = doc(" ".join(SENTS) * 50)
    assert GopherQualityFilter(max_words=500).reject(giant) == "gopher_long_doc"
    assert GopherQualityFilter().reject(giant) is None


def test_length_character_bounds():
    from corpusforge.clean.filters.basic import LengthFilter

    f = LengthFilter(min_words=None, max_words=None, min_chars=10, max_chars=20)
    assert [f.reject(doc(t)) for t in ("short", "just right here", "x" * 21)] == [
        "length_too_few_chars",
        None,
        "length_too_many_chars",
    ]


def test_language_low_score_reason_and_stats_per_reason():
    f = LanguageFilter(languages=None, min_score=0.99)
    mixed = doc("Le comité met on Tuesday; der Ausschuss tagte am Dienstag; il comitato si è riunito.")
    assert f.reject(mixed) == "language_low_score" and mixed.metadata["language_score"] < 0.99
    step = LanguageFilter()
    out = list(step.run([doc(" ".join(SENTS), i=1), doc("Der Ausschuss tagte am Dienstag im Rathaus.", i=2)]))
    assert [d.id for d in out] == ["d1"] and step.stats.dropped == {"language_not_allowed": 1}

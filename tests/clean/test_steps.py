"""Extraction, normalization and filters, reasons asserted (RELIABILITY items 18–20)."""

from __future__ import annotations

import time

import pytest

from corpusforge.clean.extract import Extract
from corpusforge.clean.filters.basic import LengthFilter
from corpusforge.clean.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from corpusforge.clean.normalize import Normalize, normalize_text
from corpusforge.document import Document

PROSE = (
    "The committee met on Tuesday to review the proposal. Members agreed that the plan was sound and that "
    "the budget should be revised before the next meeting. Several people raised concerns about the timeline, "
    "and the chair asked for a written summary of the risks with the options to reduce them. "
)


def doc(text: str = "", html: str | None = None, i: int = 0) -> Document:
    return Document(id=f"d{i:04d}", text=text, html=html, url=f"http://127.0.0.1/{i}")


def test_extract_keeps_main_text_and_paragraphs_drops_boilerplate():
    html = (
        "<html><head><title>A page</title><script>var x=1;</script></head><body>"
        "<nav>Home | About | Contact</nav><main><h1>Heading</h1><p>First paragraph here.</p>"
        "<p>Second paragraph here.</p></main><footer>Copyright footer</footer></body></html>"
    )
    for extractor in ("lxml", "trafilatura"):
        out = list(Extract(extractor=extractor).run([doc(html=html * 1)]))
        assert len(out) == 1
        text = out[0].text
        assert "First paragraph here." in text and "Second paragraph here." in text
        assert "var x" not in text and "Home | About" not in text
        assert out[0].metadata["title"] == "A page" and out[0].html is None
    lx = list(Extract(extractor="lxml").run([doc(html=html)]))[0].text
    assert "First paragraph here.\n\nSecond paragraph here." in lx


def test_extract_selectors_and_failure_reasons():
    html = '<html><body><div class="body"><p>Wanted text.</p></div><div class="ad">Buy now</div></body></html>'
    out = list(Extract(extractor="selectors", selectors=["div.body"]).run([doc(html=html)]))
    assert out[0].text == "Wanted text."
    d = doc(html=html)
    d.metadata["selectors"] = ["//div[@class='body']"]  # a spider's XPath selector, carried by the document
    assert list(Extract().run([d]))[0].text == "Wanted text."
    step = Extract(max_html_bytes=2048)
    bad = [doc(html="<html><body></body></html>", i=1), doc(html="<p>x</p>" * 1000, i=2), doc(i=3)]
    assert list(step.run(bad)) == []
    assert dict(step.stats.dropped) == {"extract_empty": 1, "extract_too_large": 1, "extract_no_html": 1}


def test_extract_survives_hostile_html_in_bounded_time():
    nested = "<div>" * 50_000 + "deep" + "</div>" * 50_000
    nul = (
        "<html><body><p>a\x00b</p>"
        + "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        + "</body></html>"
    )
    step = Extract(extractor="lxml")
    t0 = time.time()
    out = list(step.run([doc(html=nested, i=1), doc(html=nul, i=2), doc(html="\x00\x00\x00", i=3)]))
    assert time.time() - t0 < 30
    assert step.stats.input == 3 and step.stats.output + sum(step.stats.dropped.values()) == 3
    assert all("\x00" not in d.text for d in out)


def test_normalize():
    assert normalize_text("cafÃ©  \t costs\x07 5\u00a0€\r\n\n\n\nnext") == "café costs 5 €\n\nnext"
    assert normalize_text("ﬁne", form="NFKC") == "fine" and normalize_text("ﬁne") == "ﬁne"
    step = Normalize()
    assert list(step.run([doc(" \x00\x01 ")])) == [] and step.stats.dropped == {"normalize_empty": 1}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("too short " * 10, "gopher_short_doc"),
        ("a b c d " * 40, "gopher_mean_word_length"),
        ("#tag " * 60 + PROSE, "gopher_symbol_ratio"),
        ("\n".join(f"• bulleted item number {i} belongs with the others" for i in range(60)), "gopher_bullet_lines"),
        (
            "\n".join(f"this line number {i} trails away with the other words and then..." for i in range(60)),
            "gopher_ellipsis_lines",
        ),
        ("12345 67890 " * 40 + PROSE[:100], "gopher_alpha_words"),
        ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do " * 10, "gopher_stop_words"),
        (PROSE * 2, None),
    ],
)
def test_gopher_quality_reasons(text, reason):
    assert GopherQualityFilter().reject(doc(text)) == reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\n\n".join(["The same paragraph repeats here again."] * 5 + [PROSE]), "gopher_dup_para_fraction"),
        ("\n".join(["same line of text"] * 8 + PROSE.split(". ")), "gopher_dup_line_fraction"),
        ("the cat " * 80 + PROSE, "gopher_top_2gram"),
        (PROSE + " ".join(PROSE.split()[:30]) * 3, "gopher_dup_5gram"),
        (PROSE + "\n\n" + PROSE.replace("committee", "board").replace("budget", "cost").upper()[:50], None),
    ],
)
def test_gopher_repetition_reasons(text, reason):
    assert GopherRepetitionFilter().reject(doc(text)) == reason


def test_length_filter_reasons_and_none_disables():
    f = LengthFilter(min_words=3, max_words=5, min_chars=None, max_chars=None)
    assert [f.reject(doc(t)) for t in ("a b", "a b c", "a b c d e f")] == [
        "length_too_few_words",
        None,
        "length_too_many_words",
    ]
    assert LengthFilter(min_words=None, max_words=None).reject(doc("")) is None

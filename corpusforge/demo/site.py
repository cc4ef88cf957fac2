"""The embedded demo site: Python standard-library documentation rendered by ``pydoc``, served on 127.0.0.1.

Every Python installation carries the text, so the demo needs no network and no data files. Only modules
from ``MODULES`` are rendered; each is imported, so the list holds pure library modules that have no side
effects on import (no ``this``, ``antigravity``, ``idlelib``, GUI or network start-up code).

Besides the real pages the site plants what a curation pipeline must catch, with known counts:
- exact duplicates: the same page under ``/mirror/`` (identical main text, different URL);
- near-duplicates: ``/archive/<mod>-old.html`` with a few words changed and a notice added;
- junk: link-farm tag pages, keyword spam, a page of numbers, a near-empty "coming soon" page;
- ``/private/`` pages that robots.txt disallows (never fetched), and links to ``file:`` and off-site URLs
  that the crawler must refuse;
- opt-outs from AI training: ``/members/`` closed to GPTBot in robots.txt (never fetched) and a page sent with
  ``tdm-reservation: 1`` (TDMRep).
"""

from __future__ import annotations

import html
import importlib
import random
import re
from dataclasses import dataclass, field

MODULES = (
    "abc argparse ast base64 bisect calendar cmd codecs collections colorsys configparser contextlib copy csv "
    "dataclasses datetime decimal difflib enum filecmp fnmatch fractions functools getopt gettext glob graphlib "
    "gzip hashlib heapq hmac html inspect ipaddress itertools json keyword linecache locale logging numbers "
    "operator optparse pathlib pprint queue random re reprlib sched secrets shlex shutil statistics string "
    "struct tarfile tempfile textwrap threading tokenize traceback types typing uuid warnings weakref zipfile"
).split()

MIRRORED = ("json", "heapq", "textwrap", "fnmatch", "bisect", "colorsys")  # exact duplicates under /mirror/
ARCHIVED = ("difflib", "statistics", "shlex", "glob", "graphlib")  # near-duplicates under /archive/

# ``/members/`` is open to us but closed to an AI-training crawler: the AI-training opt-out policy honours it.
ROBOTS_TXT = "User-agent: GPTBot\nDisallow: /members/\n\nUser-agent: *\nDisallow: /private/\n"

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body>
<div class="cookie-banner">We use cookies to improve your experience. By browsing this site you accept cookies.</div>
<header><nav><a href="/">Home</a> | <a href="/lib/">Library</a> | <a href="/tags/">Tags</a> | <a href="/about.html">About</a></nav></header>
<aside class="sidebar"><h3>Modules</h3><ul>{sidebar}</ul></aside>
<main><article>
{body}
</article></main>
<footer><p>Demo documentation mirror served by corpusforge. Copyright the Python Software Foundation.</p>
<p><a href="/private/admin.html">Admin</a> | <a href="https://www.python.org/">python.org</a></p></footer>
</body></html>
"""


@dataclass
class Page:
    body: bytes
    status: int = 200
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _render_module(name: str) -> str:
    import pydoc

    module = importlib.import_module(name)
    doc = pydoc.HTMLDoc().docmodule(module)
    # pydoc joins docstring words with &nbsp; to keep its layout; plain spaces read like prose.
    doc = doc.replace("&nbsp;", " ")
    known = set(MODULES)

    def relink(m: re.Match[str]) -> str:
        target = m.group(1)
        return f'href="/lib/{target}.html{m.group(2) or ""}"' if target in known else 'href="#"'

    doc = re.sub(r'href="([A-Za-z_][\w.]*)\.html(#[^"]*)?"', relink, doc)
    return doc.replace('href="."', 'href="/lib/"')


def _wrap(title: str, body: str, sidebar: str) -> bytes:
    return _TEMPLATE.format(title=html.escape(title), body=body, sidebar=sidebar).encode("utf-8")


def _perturb(text: str, rate: float, rng: random.Random) -> str:
    """Replace about ``rate`` of the words of the text outside tags (a near-duplicate)."""
    parts = re.split(r"(<[^>]+>)", text)
    out = []
    for part in parts:
        if part.startswith("<"):
            out.append(part)
            continue
        words = part.split(" ")
        for i, w in enumerate(words):
            if w.isalpha() and rng.random() < rate:
                words[i] = rng.choice(["the", "a", "this", "that", "value", "item"])
        out.append(" ".join(words))
    return "".join(out)


def build_site(seed: int = 0) -> dict[str, Page]:
    """Path → page for the whole demo site (deterministic)."""
    rng = random.Random(seed)
    sidebar = "".join(f'<li><a href="/lib/{m}.html">{m}</a></li>' for m in MODULES)
    pages: dict[str, Page] = {}
    docs = {m: _render_module(m) for m in MODULES}
    for m, body in docs.items():
        pages[f"/lib/{m}.html"] = Page(_wrap(f"Python: {m}", body, sidebar))
    for m in MIRRORED:
        pages[f"/mirror/{m}.html"] = Page(_wrap(f"Python: {m}", docs[m], sidebar))
    for m in ARCHIVED:
        notice = "<p>This is an archived copy of an older revision of this page.</p>"
        pages[f"/archive/{m}-old.html"] = Page(
            _wrap(f"Python: {m} (archived)", notice + _perturb(docs[m], 0.01, rng), sidebar)
        )
    # Junk.
    words = "buy cheap best python tutorial free download online course discount".split()
    for i in range(4):
        spam = " ".join(rng.choice(words) for _ in range(400))
        pages[f"/junk/offer-{i}.html"] = Page(_wrap("Best offers", f"<p>{spam}</p>", sidebar))
    numbers = (
        "<table>"
        + "".join("<tr>" + "".join(f"<td>{rng.randint(0, 99999)}</td>" for _ in range(8)) + "</tr>" for _ in range(60))
        + "</table>"
    )
    pages["/junk/numbers.html"] = Page(_wrap("Table", numbers, sidebar))
    pages["/junk/soon.html"] = Page(_wrap("Coming soon", "<p>Coming soon.</p>", sidebar))
    tags = sorted({m[0] for m in MODULES})
    for t in tags:
        links = " ".join(f'<a href="/lib/{m}.html">{m}</a>' for m in MODULES if m.startswith(t))
        pages[f"/tags/{t}.html"] = Page(_wrap(f"Tag {t}", f"<p>{links}</p>", sidebar))
    pages["/tags/"] = Page(_wrap("Tags", " ".join(f'<a href="/tags/{t}.html">{t}</a>' for t in tags), sidebar))
    pages["/members/notes.html"] = Page(_wrap("Members", "<p>Notes for members, not for AI training.</p>", sidebar))
    pages["/licensed/terms.html"] = Page(
        _wrap("Licensed", "<p>Text whose rights holder reserves text and data mining.</p>", sidebar),
        headers={"tdm-reservation": "1", "tdm-policy": "http://127.0.0.1/licensed/policy.json"},
    )
    pages["/private/admin.html"] = Page(_wrap("Admin", "<p>Private area: must never be crawled.</p>", sidebar))
    pages["/about.html"] = Page(
        _wrap("About", '<p>About this mirror. Local file link: <a href="file:///etc/passwd">passwd</a>.</p>', sidebar)
    )
    index_links = "".join(f'<li><a href="/lib/{m}.html">{m}</a></li>' for m in MODULES)
    index_links += "".join(f'<li><a href="/mirror/{m}.html">mirror of {m}</a></li>' for m in MIRRORED)
    index_links += "".join(f'<li><a href="/archive/{m}-old.html">{m} (old)</a></li>' for m in ARCHIVED)
    index_links += '<li><a href="/members/notes.html">members</a></li><li><a href="/licensed/terms.html">terms</a></li>'
    index_links += "".join(
        f'<li><a href="/junk/{p}">{p}</a></li>'
        for p in ["offer-0.html", "offer-1.html", "offer-2.html", "offer-3.html", "numbers.html", "soon.html"]
    )
    index = f"<h1>Python standard library</h1><ul>{index_links}</ul>"
    pages["/"] = Page(_wrap("Python library mirror", index, sidebar))
    pages["/lib/"] = Page(_wrap("Library", index, sidebar))
    pages["/robots.txt"] = Page(ROBOTS_TXT.encode(), content_type="text/plain")
    return pages

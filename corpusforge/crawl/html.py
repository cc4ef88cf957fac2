"""What the crawler reads from a fetched page before storing it: charset, visible text, sitemaps, opt-outs.

Pure functions over bytes and strings (no I/O); the crawler and the local inputs share them.
"""

from __future__ import annotations

import re


def charset_of(content_type: str) -> str | None:
    m = re.search(r"charset=[\"']?([\w-]+)", content_type or "", re.I)
    return m.group(1).lower() if m else None


def decode_html(body: bytes, content_type: str) -> str:
    """Decode with the header charset, else a meta charset, else detection (charset-normalizer)."""
    charset = None
    m = re.search(r"charset=([\w-]+)", content_type or "", re.I)
    if m:
        charset = m.group(1)
    if charset is None:
        m2 = re.search(rb"<meta[^>]+charset=[\"']?([\w-]+)", body[:4096], re.I)
        if m2:
            charset = m2.group(1).decode("ascii", "replace")
    if charset:
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        from charset_normalizer import from_bytes

        best = from_bytes(body).best()
        return str(best) if best is not None else body.decode("utf-8", errors="replace")


def visible_text_chars(html: str) -> int:
    """Characters of visible text (scripts, styles and templates excluded), whitespace collapsed."""
    import lxml.html

    if not html.strip():
        return 0
    try:
        root = lxml.html.fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return 0
    for bad in root.xpath("//script|//style|//noscript|//template"):
        bad.drop_tree()
    return len(" ".join(root.text_content().split()))


def sitemap_locs(body: bytes) -> list[str] | None:
    """``<loc>`` URLs of a sitemap or sitemap index, or None when the body is not one (no entities, no network)."""
    import lxml.etree

    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = lxml.etree.fromstring(body, parser)
    except (lxml.etree.XMLSyntaxError, ValueError):
        return None
    if root is None or lxml.etree.QName(root).localname not in ("urlset", "sitemapindex"):
        return None
    return [str(t).strip() for t in root.xpath("//*[local-name()='loc']/text()") if str(t).strip()]

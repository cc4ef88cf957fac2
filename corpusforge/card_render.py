"""A data card's dict (``corpusforge.card.collect_card``) rendered: README.md and the PNG plots.

Rendering only: nothing here reads a run folder, so every figure shown is one card.json holds.
"""

from __future__ import annotations

import io
import json
from typing import Any

import tomli_w

TOP_ROWS = 20  # rows of the README's domain and source tables (card.json keeps more)
_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
_EMPTY = {"null": "(not set)", "[]": "(none)", "{}": "(none)", "": "(empty)"}  # consent values, as shown
PLOTS = {"dropped": "dropped.png", "lengths": "lengths.png", "tokens_per_domain": "tokens_per_domain.png"}


# ------------------------------------------------------------------------------------------- markdown
def _n(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else ("-" if v is None else str(v))


def _reasons(dropped: dict[str, int]) -> str:
    return ", ".join(f"`{k}` {v:,}" for k, v in dropped.items()) or "-"


def _front_matter(card: dict[str, Any]) -> list[str]:
    # JSON strings are YAML scalars, so names with colons or quotes stay one value.
    lines = ["---", f"pretty_name: {json.dumps(card['name'])}", f"license: {json.dumps(card['license'])}"]
    if card["language"]:
        lines += ["language:", *[f"- {json.dumps(lang)}" for lang in card["language"]]]
    lines += ["task_categories:", "- text-generation", "size_categories:", f"- {json.dumps(card['size_category'])}"]
    lines += ["tags:", "- corpusforge"]
    if card["tokens"]:
        lines += ["configs:", "- config_name: default", "  data_files:"]
        for split in card["tokens"]["tokens"]:
            lines += [f"  - split: {split}", f"    path: {card['tokens']['stage']}/{split}/*.arrow"]
    t = card["tokens"] or {}
    lines += [
        "corpusforge:",
        f"  status: {json.dumps(card['status'])}",
        f"  documents: {(card['dataset'] or {}).get('documents', 0)}",
        *[f"  tokens_{k}: {v}" for k, v in t.get("tokens", {}).items()],
        f"  tokens_total: {t.get('total', 0)}",
        "---",
    ]
    return lines


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|")  # a "|" in a value would end its table cell


def _license_text(card: dict[str, Any]) -> str:
    if card["license"] == "unknown":
        return (
            "License: **unknown**. The recipe declares no license for this data (set one with a top-level "
            '`license = "..."`, a Hugging Face license id such as `cc-by-4.0`); each page keeps the terms its site '
            "publishes."
        )
    if card["license"] == "other":
        return "License: **other**, as the recipe declares: a license outside the Hub's list; see the sources' terms."
    return f"License: **{card['license']}**, as the recipe declares (its top-level `license` key)."


def _stage_rows(card: dict[str, Any]) -> list[str]:
    rows = ["| stage | kind | status | in | out | dropped (why) |", "| --- | --- | --- | --- | --- | --- |"]
    for d in card["stages"]:
        n_in, n_out = d.get("documents_in"), d.get("documents_out")
        rows.append(
            f"| {d['name']} | {d['kind']} | {d['status']} | {_n(n_in)} | {_n(n_out)} | {_reasons(d.get('dropped', {}))} |"
        )
    return rows


def _domain_rows(card: dict[str, Any]) -> list[str]:
    data, inp, tokens = card["dataset"], card["input"] or {}, (card["tokens"] or {}).get("per_domain", {})
    in_domains = inp.get("domains", {})
    names = sorted(set(data["domains"]) | set(in_domains), key=lambda k: (-data["domains"].get(k, 0), k))
    head = "| domain |" + (f" documents in `{inp['stage']}` |" if inp else "") + " documents | tokens |"
    rows = [head, "| --- |" + (" --- |" if inp else "") + " --- | --- |"]
    for k in names[:TOP_ROWS]:
        before = f" {_n(in_domains.get(k, 0))} |" if inp else ""
        rows.append(f"| {k} |{before} {_n(data['domains'].get(k, 0))} | {_n(tokens.get(k, 0))} |")
    if len(names) > TOP_ROWS:
        rows.append(f"\n{len(names) - TOP_ROWS:,} more domain(s) in card.json.")
    return rows


def _optout_lines(card: dict[str, Any]) -> list[str]:
    o = card["optouts"]
    if not o["checked"]:
        lines = [
            "No crawl stage in this run, so no robots.txt or opt-out signal was checked here (documents read from "
            "an earlier crawl carry that crawl's consent records)."
        ]
    elif o["total"]:
        lines = [
            f"The crawl left out {o['total']:,} URL(s) whose sites opt out or disallow crawling: "
            f"{_reasons(o['by_reason'])}."
        ]
    else:
        lines = ["The crawl met no opt-out and no robots.txt disallow."]
    consent = (card["dataset"] or {}).get("consent")
    if consent:
        lines += ["", f"Consent records on {consent['documents']:,} stored document(s):", ""]
        lines += ["| signal | value | documents |", "| --- | --- | --- |"]
        for signal, values in consent["signals"].items():
            lines += [f"| {_cell(signal)} | {_cell(_EMPTY.get(v, v))} | {n:,} |" for v, n in values.items()]
    return lines


def _dataset_lines(card: dict[str, Any]) -> list[str]:
    data = card["dataset"]
    if data is None:
        return ["No document stage finished: no dataset to describe yet."]
    f, c = data["fetched"], data["chars"]
    fetched = (
        f"Fetched between {f['first']} and {f['last']} ({f['documents']:,} of {data['documents']:,} documents "
        "carry a fetch time)."
        if f["documents"]
        else "No document carries a fetch time (local inputs)."
    )
    lines = [
        f"The dataset is stage `{data['stage']}`: {data['documents']:,} documents from "
        f"{data['distinct_domains']:,} domain(s), {c['total']:,} characters (shortest {c['min']:,}, mean "
        f"{c['mean']:,}, longest {c['max']:,}).",
        fetched,
        "",
        "| source | documents |",
        "| --- | --- |",
        *[f"| {_cell(k)} | {v:,} |" for k, v in list(data["sources"].items())[:TOP_ROWS]],
        "",
        *_domain_rows(card),
    ]
    if data["languages"]:
        lines += ["", "Languages (from the documents' `language` labels): " + _reasons(data["languages"]) + "."]
    return lines


def _token_lines(card: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    tok = card["tokenizer"]
    if tok:
        o = tok["overall"]
        lines += [
            f"Tokenizer (`{tok['stage']}`): {tok['algorithm']}, vocabulary {_n(tok['vocab_size'])}; on "
            f"{_n(o.get('docs'))} sampled documents {o.get('bytes_per_token', '-')} bytes and "
            f"{o.get('words_per_token', '-')} words per token, unknown rate {o.get('unknown_rate', '-')}, "
            f"byte fallback rate {o.get('byte_fallback_rate', '-')}.",
            "",
        ]
    t = card["tokens"]
    if t:
        lines += [f"Token shards (`{t['stage']}`, `{t['dtype']}` ids): {t['total']:,} tokens.", ""]
        lines += ["| split | documents | tokens |", "| --- | --- | --- |"]
        lines += [f"| {s} | {_n(t['documents'].get(s))} | {_n(n)} |" for s, n in t["tokens"].items()]
    return lines or ["No tokenizer or tokens stage finished."]


CARD_MARK = "<!-- written by corpusforge: the run's data card, rewritten by every run -->"


def render_readme(card: dict[str, Any]) -> str:
    """README.md for ``card`` (the dict of ``collect_card``): front matter, then one section per topic."""
    status = {
        "done": "every stage finished",
        "partial": "the run stopped early; rerun it to continue",
        "failed": "a stage failed; the figures below cover the stages that finished",
    }.get(card["status"], card["status"])
    body = [
        f"# {card['name']}",
        "",
        f"Data card of a corpusforge run ({status}). Every count below is read from the stages' manifests and "
        "stats; card.json holds the same figures.",
    ]
    if card["message"]:
        body += ["", f"> {card['message']}"]
    link = card.get("ablation")
    if link:
        body += [
            "",
            f"This run is variant **{link['variant']}** of the ablation {link['ablation']}: its comparison with the "
            f"other variants is in [{link['report']}]({link['report']}). Stages it shares with an earlier variant "
            "are read from that variant's folder (the `shards` stages below), and described in its card.",
        ]
    body += ["", _license_text(card), "", "## Stages", "", *_stage_rows(card)]
    if card["optouts"]["checked"]:
        body += ["", "A crawl's *in* counts the URLs it considered, its *out* the pages it stored."]
    body += ["", "## Sources and domains", "", *_dataset_lines(card)]
    body += ["", "## Opt-outs and consent", "", *_optout_lines(card)]
    body += ["", "## Deduplication", ""]
    if card["dedup"]:
        body += ["| stage | kind | in | removed | rate |", "| --- | --- | --- | --- | --- |"]
        body += [
            f"| {d['stage']} | {d['kind']} | {d['documents_in']:,} | {d['removed']:,} | {d['rate']:.2%} |"
            for d in card["dedup"]
        ]
    else:
        body.append("No dedup stage finished.")
    body += ["", "## Tokens", "", *_token_lines(card), "", "## Plots", ""]
    if card["plots"]:
        titles = {
            "dropped": "Documents dropped",
            "lengths": "Document lengths",
            "tokens_per_domain": "Tokens per domain",
        }
        for k, v in card["plots"].items():
            body += [f"![{titles[k]}]({v})", ""]
    if card["plots_note"]:
        body += [card["plots_note"], ""]
    if card["recipe"] is not None:
        recipe = tomli_w.dumps(card["recipe"]).rstrip()
        body += ["## Recipe", "", "As resolved (`recipe.resolved.toml`), secrets masked:", "", "```toml"]
        body += [recipe, "```"]
    return "\n".join(_front_matter(card) + body).rstrip() + f"\n\n{CARD_MARK}\n"


# ---------------------------------------------------------------------------------------------- plots
def _figure(height_in: float) -> Any:
    from matplotlib.figure import Figure  # the object API: no pyplot, no global state, no display

    return Figure(figsize=(7.0, height_in), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same bytes on a rerun
    return buf.getvalue()


def _barh(labels: list[str], values: list[int], *, title: str, xlabel: str, groups: list[str] | None = None) -> bytes:
    fig = _figure(1.2 + 0.28 * len(labels))
    ax = fig.add_subplot()
    order = list(dict.fromkeys(groups or [""]))  # one colour per group (stage), in order of appearance
    colors = [_COLORS[order.index(g) % len(_COLORS)] for g in groups] if groups else _COLORS[0]
    ax.barh(range(len(labels)), values, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()  # largest first, top down
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    for i, v in enumerate(values):
        ax.annotate(f"{v:,}", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.margins(x=0.12)
    return _png(fig)


def render_plots(card: dict[str, Any]) -> dict[str, bytes]:
    """PNG bytes per plot that has data: drops per stage and reason, document lengths, tokens per domain.

    Raises ``ImportError`` when matplotlib is missing.
    """
    import matplotlib  # noqa: F401  (fail here, before any figure is made, when the extra is missing)

    out: dict[str, bytes] = {}
    drops = [(d["name"], k, v) for d in card["stages"] for k, v in d.get("dropped", {}).items() if v]
    if drops:
        drops = sorted(drops, key=lambda t: -t[2])[:30]
        out["dropped"] = _barh(
            [f"{stage}: {why}" for stage, why, _ in drops],
            [n for _, _, n in drops],
            title="Dropped, per stage and reason",
            xlabel="documents (for a crawl: URLs)",
            groups=[stage for stage, _, _ in drops],
        )
    hist = ((card["dataset"] or {}).get("chars") or {}).get("histogram") or []
    if hist:
        fig = _figure(3.0)
        ax = fig.add_subplot()
        labels = [f"{h['min_chars']:,}–{h['max_chars']:,}" for h in hist]
        ax.bar(range(len(hist)), [h["documents"] for h in hist], color="#55a868")
        ax.set_xticks(range(len(hist)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"Document length ({card['dataset']['stage']})", fontsize=10)
        ax.set_xlabel("characters (bins double in width)", fontsize=9)
        ax.set_ylabel("documents", fontsize=9)
        out["lengths"] = _png(fig)
    per_domain = list(((card["tokens"] or {}).get("per_domain") or {}).items())[:TOP_ROWS]
    if per_domain:
        out["tokens_per_domain"] = _barh(
            [k for k, _ in per_domain], [v for _, v in per_domain], title="Tokens per domain", xlabel="tokens"
        )
    return out

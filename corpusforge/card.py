"""The run-level data card: ``<workdir>/README.md``, ``<workdir>/card.json`` and plots under ``<workdir>/card/``.

``write_card(workdir, stages, ...)`` describes a whole run: every stage's documents in and out with the drop
reasons (the crawl included), the sources and domains of the dataset and its fetch dates, the license the
recipe declares, the opt-outs and dedup rates, the tokenizer's figures, tokens per split and per domain, and
the resolved recipe with its secrets masked. README.md opens with Hugging Face dataset-card front matter.

Every figure is taken from what the stages wrote (``manifest.json``, ``stats/stats.json``,
``tokenizer/report.json``) or counted from the shards those manifests list, read through ``iter_batches``
(checked against the manifest as they are read, one batch in memory at a time). README.md is rendered from
card.json's dict, so the two never disagree. Files are written atomically and only when their bytes change,
so rerunning a finished run changes no file. Plots need matplotlib (the ``train`` extra); without it the card
says so and has none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpusforge.card_render import CARD_MARK, PLOTS, render_plots, render_readme
from corpusforge.redact import redact, redact_text
from corpusforge.stats import merge_dropped
from corpusforge.storage import MANIFEST, atomic_write_bytes, iter_batches, load_manifest

log = logging.getLogger(__name__)

CARD_FORMAT = 1
PLOT_DIR = "card"
CARD_ALT = "DATACARD.md"  # the card's name in a workdir whose README.md is not one of ours
NOT_DOCUMENTS = ("tokenizer", "tokens", "train")  # stage kinds whose folders hold no document shards
DEDUP_KINDS = ("exact_dedup", "minhash_dedup")
OPTOUT_PREFIX, OPTOUTS = "optout_", ("robots_disallowed",)  # the crawl's drop reasons that are opt-outs
MAX_KEYS = 1000  # distinct domains or sources kept in card.json; the rest are summed under "(other)"
MAX_VALUES = 20  # distinct values per consent signal

# Hugging Face's size_categories buckets, by number of rows (examples): (exclusive upper bound, label).
SIZE_BUCKETS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)


def size_category(n: int) -> str:
    """The Hugging Face ``size_categories`` label for ``n`` rows: ``n<1K`` … ``100B<n<1T``, then ``n>1T``.

    A bound belongs to the bucket above it (1,000 rows is ``1K<n<10K``), as the Hub files datasets.
    """
    for bound, label in SIZE_BUCKETS:
        if n < bound:
            return label
    return "n>1T"


@dataclass
class CardStage:
    """One recipe stage as the card sees it: its folder and how the run left it."""

    name: str
    kind: str
    folder: Path
    status: str  # the runner's: "done", "skipped" (finished earlier), "partial", "failed", "not run"
    input: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("done", "skipped") and (self.folder / MANIFEST).is_file()


# --------------------------------------------------------------------------------------------- reading
def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("data card: cannot read %s (%s); its figures are left out", path, exc)
        return None


def _host(url: Any) -> str:
    if not url:
        return "(no url)"
    try:
        host = urlsplit(str(url)).hostname
    except ValueError:
        host = None
    return host or "(no host)"


def _shards(folder: Path) -> list[Path]:
    """The document shards a finished folder lists (top-level ``.arrow`` files, not ``rejected/``)."""
    return [folder / f["name"] for f in load_manifest(folder)["files"] if f["name"].endswith(".arrow")]


def _column(batch: pa.RecordBatch, name: str) -> list[Any]:
    if name not in batch.schema.names:
        return [None] * batch.num_rows
    return batch.column(name).to_pylist()


def _batches(paths: list[Path], columns: list[str]) -> Iterator[pa.RecordBatch]:
    for path in paths:
        for batch in iter_batches(path):
            yield batch.select([c for c in columns if c in batch.schema.names])


def _ranked(obj: Any) -> Any:
    """``obj`` with each dict of counts most common first again (card.json stores keys sorted by name)."""
    if not isinstance(obj, dict):
        return obj
    if obj and all(isinstance(v, int) for v in obj.values()):
        return dict(sorted(obj.items(), key=lambda kv: (-kv[1], kv[0])))
    return {k: _ranked(v) for k, v in obj.items()}


def _capped(counts: Counter[str], limit: int = MAX_KEYS) -> dict[str, int]:
    """Most common first (ties by name), at most ``limit`` keys; the rest summed as ``(other)``, ranked too."""
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    out = dict(ranked[:limit])
    rest = sum(v for _, v in ranked[limit:])
    if rest:
        out["(other)"] = out.get("(other)", 0) + rest
    return _ranked(out)


def _consent_values(value: Any) -> dict[str, str]:
    """A document's consent record (JSON text or a struct) flattened to signal → value; {} if unreadable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {"(unreadable)": "yes"}
    if not isinstance(value, dict):
        return {} if value is None else {"(value)": json.dumps(value, sort_keys=True)}
    flat: dict[str, str] = {}
    for key, v in value.items():
        inner = v.items() if isinstance(v, dict) else [(None, v)]
        for sub, val in inner:
            label = f"{key}.{sub}" if sub is not None else str(key)
            flat[label] = val if isinstance(val, str) else json.dumps(val, sort_keys=True)
    return flat


def _language(metadata: str) -> str | None:
    """The language label (the ``language`` filter's, or an input's own field) in a metadata JSON text."""
    try:
        meta = json.loads(metadata)
    except json.JSONDecodeError:
        return None
    lang = meta.get("language") if isinstance(meta, dict) else None
    return lang if isinstance(lang, str) and lang else None


def scan_documents(folder: Path) -> dict[str, Any]:
    """Counts over a finished document folder, streamed: sources, domains, fetch dates, lengths, languages
    and (when the documents carry one) consent records by signal and value."""
    sources: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    languages: Counter[str] = Counter()
    consent: dict[str, Counter[str]] = {}
    hist: Counter[int] = Counter()  # bin 0: empty; bin k: 2**(k-1) <= characters < 2**k
    n = chars = dated = with_consent = 0
    first = last = None
    shortest, longest = None, 0
    cols = ["url", "source", "fetched_at", "text", "metadata", "consent"]
    for batch in _batches(_shards(folder), cols):
        n += batch.num_rows
        domains.update(_host(u) for u in _column(batch, "url"))
        sources.update(s or "(none)" for s in _column(batch, "source"))
        for f in _column(batch, "fetched_at"):
            if f:
                dated += 1
                first = f if first is None or f < first else first
                last = f if last is None or f > last else last
        if "text" in batch.schema.names and batch.num_rows:
            lengths = pc.fill_null(pc.utf8_length(batch.column("text")), 0).to_numpy(zero_copy_only=False)
            chars += int(lengths.sum())
            shortest = int(lengths.min()) if shortest is None else min(shortest, int(lengths.min()))
            longest = max(longest, int(lengths.max()))
            bins = np.where(lengths > 0, np.floor(np.log2(np.maximum(lengths, 1))).astype(np.int64) + 1, 0)
            hist.update({int(b): int(c) for b, c in enumerate(np.bincount(bins)) if c})
        for meta in _column(batch, "metadata"):
            if meta and '"language"' in meta:  # parse only the records that can hold a label
                lang = _language(meta)
                if lang:
                    languages[lang] += 1
        if "consent" in batch.schema.names:
            for record in _column(batch, "consent"):
                flat = _consent_values(record)
                with_consent += bool(flat)
                for signal, value in flat.items():
                    consent.setdefault(signal, Counter())[value] += 1
    histogram = []
    if hist:
        for b in range(min(hist), max(hist) + 1):
            lo, hi = (0, 0) if b == 0 else (2 ** (b - 1), 2**b - 1)
            histogram.append({"min_chars": lo, "max_chars": hi, "documents": hist.get(b, 0)})
    return {
        "documents": n,
        "sources": _capped(sources),
        "domains": _capped(domains),
        "distinct_domains": len(domains),
        "fetched": {"first": first, "last": last, "documents": dated},
        "chars": {
            "total": chars,
            "min": shortest or 0,
            "max": longest,
            "mean": round(chars / n, 1) if n else 0,
            "histogram": histogram,
        },
        "languages": _capped(languages),
        "consent": (
            {"documents": with_consent, "signals": {k: _capped(v, MAX_VALUES) for k, v in sorted(consent.items())}}
            if consent
            else None
        ),
    }


def scan_domains(folder: Path) -> dict[str, int]:
    """Documents per domain of a finished document folder (only the ``url`` column is read)."""
    domains: Counter[str] = Counter()
    for batch in _batches(_shards(folder), ["url"]):
        domains.update(_host(u) for u in _column(batch, "url"))
    return _capped(domains)


def scan_token_domains(folder: Path) -> dict[str, int]:
    """Tokens per domain of a finished tokens folder, from each row's ``url`` lineage and list length."""
    tokens: Counter[str] = Counter()
    for f in load_manifest(folder)["files"]:
        if not f["name"].endswith(".arrow"):
            continue
        for batch in _batches([folder / f["name"]], ["url", "input_ids"]):
            lengths = pc.list_value_length(batch.column("input_ids")).to_pylist()
            for url, k in zip(_column(batch, "url"), lengths, strict=True):
                tokens[_host(url)] += int(k or 0)
    return _capped(tokens)


def stage_summary(st: CardStage) -> dict[str, Any]:
    """A stage's status and, once finished, its counts from manifest.json and stats/stats.json."""
    # "skipped" (finished by an earlier run) reads "done": the card of a rerun is the same card, byte for byte.
    status = "done" if st.status == "skipped" else st.status
    out: dict[str, Any] = {"name": st.name, "kind": st.kind, "input": st.input, "status": status}
    if not st.finished:
        return out
    manifest = load_manifest(st.folder)
    out |= {"rows": manifest.get("rows", 0), "files": len(manifest.get("files", [])), "bytes": manifest.get("bytes")}
    stats = _json(st.folder / "stats" / "stats.json") or {}
    steps = [
        {"name": s["name"], "input": s["input"], "output": s["output"], "dropped": dict(s.get("dropped", {}))}
        for s in stats.get("steps", [])
    ]
    if not steps and st.kind not in NOT_DOCUMENTS:
        out["documents_out"] = out["rows"]  # a folder of shards made elsewhere (kind "shards"): what it holds
    if steps:
        dropped = merge_dropped(steps)
        out |= {
            "documents_in": steps[0]["input"],
            "documents_out": steps[-1]["output"],
            "dropped": dict(sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
            "steps": steps,
        }
    return out


# ------------------------------------------------------------------------------------------- the card
class _Scans:
    """Scans of finished folders, reused from the previous card.json while the folder's manifest.json is the
    same bytes: a finished folder never changes, so rerunning a finished run reads no shard again."""

    def __init__(self, workdir: Path) -> None:
        prev = _json(workdir / "card.json") or {}
        self.prev = prev if prev.get("card_format") == CARD_FORMAT else {}
        self.now: dict[str, dict[str, str]] = {}

    def get(self, key: str, folder: Path, scan: Any, old: Any) -> Any:
        """``scan(folder)``, or ``old(previous card)`` when the previous card scanned the same manifest."""
        digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
        self.now[key] = {"folder": str(folder), "manifest_sha256": digest}
        if self.prev.get("scans", {}).get(key) == self.now[key]:
            try:
                return _ranked(old(self.prev))
            except (KeyError, TypeError):  # an older card without that figure: scan again
                pass
        return scan(folder)


def _last(stages: list[CardStage], kind: str) -> CardStage | None:
    return next((s for s in reversed(stages) if s.kind == kind and s.finished), None)


def _dataset_stage(stages: list[CardStage]) -> CardStage | None:
    """The documents the dataset is made of: what the tokens stage read, else the last finished documents."""
    by_name = {s.name: s for s in stages}
    tokens = _last(stages, "tokens")
    if tokens is not None and tokens.input in by_name and by_name[tokens.input].finished:
        return by_name[tokens.input]
    return next((s for s in reversed(stages) if s.kind not in NOT_DOCUMENTS and s.finished), None)


def _optouts(stages: list[CardStage], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    crawls = [d for s, d in zip(stages, summaries, strict=True) if s.kind == "crawl"]
    reasons: Counter[str] = Counter()
    for d in crawls:
        # optout_* (noai, TDM reservation, AI-agent robots groups…) and robots.txt disallows of any agent.
        reasons.update({k: v for k, v in d.get("dropped", {}).items() if k.startswith(OPTOUT_PREFIX) or k in OPTOUTS})
    return {
        "checked": bool(crawls),
        "stages": [d["name"] for d in crawls],
        "total": sum(reasons.values()),
        "by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _dedup(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for d in summaries:
        if d["kind"] in DEDUP_KINDS and "documents_in" in d:
            removed = sum(d["dropped"].values())
            rate = round(removed / d["documents_in"], 6) if d["documents_in"] else 0.0
            out.append(
                {
                    "stage": d["name"],
                    "kind": d["kind"],
                    "documents_in": d["documents_in"],
                    "removed": removed,
                    "rate": rate,
                }
            )
    return out


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


def _recipe(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "recipe.resolved.toml"
    try:
        return redact(tomllib.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        log.warning("data card: cannot read %s (%s)", path, exc)
        return None


def collect_card(
    workdir: Path,
    stages: list[CardStage],
    *,
    name: str,
    license: str = "unknown",
    status: str = "done",
    message: str = "",
) -> dict[str, Any]:
    """The card as a JSON-ready dict (what card.json holds, and what README.md is rendered from)."""
    workdir = Path(workdir)
    summaries = [stage_summary(s) for s in stages]
    card: dict[str, Any] = {
        "card_format": CARD_FORMAT,
        "name": name,
        "license": license,
        "status": status,
        "message": redact_text(message),
        "stages": summaries,
        "optouts": _optouts(stages, summaries),
        "dedup": _dedup(summaries),
        "dataset": None,
        "input": None,
        "tokenizer": None,
        "tokens": None,
    }
    scans = _Scans(workdir)
    data = _dataset_stage(stages)
    if data is not None:
        docs = scans.get("dataset", data.folder, scan_documents, lambda p: _without(p["dataset"], "stage"))
        card["dataset"] = {"stage": data.name} | docs
        first = next((s for s in stages if s.kind not in NOT_DOCUMENTS and s.finished), None)
        if first is not None and first.name != data.name:
            domains = scans.get("input", first.folder, scan_domains, lambda p: dict(p["input"]["domains"]))
            card["input"] = {"stage": first.name, "domains": domains}
    tok = _last(stages, "tokenizer")
    if tok is not None:
        report = _json(tok.folder / "report.json") or {}
        card["tokenizer"] = {
            "stage": tok.name,
            "algorithm": report.get("algorithm"),
            "vocab_size": report.get("vocab_size"),
            "eot_id": report.get("eot_id"),
            "overall": report.get("overall", {}),
            "per_source": report.get("per_source", {}),
        }
    tokens = _last(stages, "tokens")
    if tokens is not None:
        m = load_manifest(tokens.folder)
        card["tokens"] = {
            "stage": tokens.name,
            "tokens": dict(m.get("tokens", {})),
            "documents": dict(m.get("documents", {})),
            "total": sum(m.get("tokens", {}).values()),
            "dtype": m.get("dtype"),
            "per_domain": scans.get(
                "tokens", tokens.folder, scan_token_domains, lambda p: dict(p["tokens"]["per_domain"])
            ),
        }
    rows = sum(card["tokens"]["documents"].values()) if card["tokens"] else (card["dataset"] or {}).get("documents", 0)
    card["rows"] = rows
    card["size_category"] = size_category(rows)
    langs = (card["dataset"] or {}).get("languages", {})
    labelled = sum(langs.values())
    # A language is listed when it labels at least 1 % of the labelled documents ("(other)" is not a code).
    card["language"] = [k for k, v in langs.items() if k != "(other)" and labelled and v / labelled >= 0.01]
    card["recipe"] = _recipe(workdir)
    card["ablation"] = _json(workdir / "ablation-link.json")  # written by ``corpusforge ablate`` for its variants
    card["scans"] = scans.now
    return card


# ---------------------------------------------------------------------------------------------- writing
def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.is_file() or path.read_bytes() != data:
        atomic_write_bytes(path, data)


def write_card(
    workdir: Path,
    stages: list[CardStage],
    *,
    name: str,
    license: str = "unknown",
    status: str = "done",
    message: str = "",
    plots: bool = True,
) -> dict[str, Any]:
    """Write ``card.json``, ``README.md`` and ``card/*.png`` in ``workdir``; returns the card dict.

    A file is rewritten only when its bytes change; a plot that no longer has data is removed.
    """
    workdir = Path(workdir)
    card = collect_card(workdir, stages, name=name, license=license, status=status, message=message)
    images: dict[str, bytes] = {}
    card["plots_note"] = None
    if plots:
        try:
            images = render_plots(card)
        except ImportError:
            card["plots_note"] = (
                "No plots: matplotlib is not installed (`pip install 'corpusforge[train]'`, then run the recipe again: "
                "finished stages are skipped and the card gets its plots)."
            )
    else:
        card["plots_note"] = "No plots: none were asked for."
    card["plots"] = {k: f"{PLOT_DIR}/{PLOTS[k]}" for k in images}
    if images:
        (workdir / PLOT_DIR).mkdir(exist_ok=True)
    for key, data in images.items():
        _write_if_changed(workdir / PLOT_DIR / PLOTS[key], data)
    for key, file in PLOTS.items():
        if key not in images:
            (workdir / PLOT_DIR / file).unlink(missing_ok=True)
    _write_if_changed(
        workdir / "card.json", (json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    )
    readme = workdir / "README.md"
    text = render_readme(card)
    if readme.is_file() and CARD_MARK not in readme.read_text(encoding="utf-8", errors="replace"):
        # A workdir that already had a README of its own (a project folder used as the workdir): never
        # overwritten; the card goes beside it.
        log.warning("%s is not a corpusforge card: the data card is written to %s instead", readme, CARD_ALT)
        readme = workdir / CARD_ALT
    _write_if_changed(readme, text.encode())
    return card


def write_run_card(recipe: Any, result: Any) -> dict[str, Any]:
    """The card of a run the runner just finished (``recipe``: a ``Recipe``; ``result``: its ``RunResult``).

    A recipe stage expanded into sub-stages (MinHash) takes the status of the first that did not finish.
    """
    from corpusforge.errors import DONE, PARTIAL

    outcomes = {o.name: o for o in result.stages}
    stages = []
    for spec in recipe.stages:
        final = outcomes.get(spec.name)
        parts = [o for n, o in outcomes.items() if n == spec.name or n.startswith(spec.name + ".")]
        unfinished = [o for o in parts if o.status not in ("done", "skipped")]
        status = unfinished[0].status if unfinished else (final.status if final else "not run")
        folder = final.out_dir if final else recipe.workdir / spec.name
        stages.append(CardStage(name=spec.name, kind=spec.kind, folder=folder, status=status, input=spec.input))
    run_status = "done" if result.status == DONE else "partial" if result.status == PARTIAL else "failed"
    return write_card(
        recipe.workdir,
        stages,
        name=recipe.name,
        license=getattr(recipe, "license", "unknown"),
        status=run_status,
        message=result.message,
        # CORPUSFORGE_CARD_PLOTS=0: the card without its plots (~0.2 s per run, 0.7 s in a fresh process).
        plots=os.environ.get("CORPUSFORGE_CARD_PLOTS", "1") != "0",
    )

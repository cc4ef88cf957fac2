"""Exact and MinHash dedup through the runner (RELIABILITY item 21)."""

from __future__ import annotations

import random

from corpusforge.document import Document
from corpusforge.errors import DONE
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths
from tests.helpers import write_doc_shards as _shards


def _corpus(n_unrelated=60, seed=0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    docs = []
    base = [" ".join(rng.choice(vocab) for _ in range(300)) for _ in range(n_unrelated)]
    for i, t in enumerate(base):
        docs.append(Document(id=f"u{i:03d}", text=t))
    for i in range(10):  # exact duplicates (whitespace and case differ)
        docs.append(Document(id=f"x{i:03d}", text=base[i].upper().replace(" ", "  ")))
    for i in range(10, 20):  # near duplicates: 1% of the words changed
        words = base[i].split()
        for j in rng.sample(range(len(words)), 3):
            words[j] = rng.choice(vocab)
        docs.append(Document(id=f"y{i:03d}", text=" ".join(words)))
    return docs


def _run(tmp_path, name, docs, workers):
    _shards(tmp_path / f"{name}-in", docs)
    raw = {
        "name": name,
        "workdir": str(tmp_path / name),
        "workers": workers,
        "stages": [
            {"kind": "shards", "name": "input", "path": str(tmp_path / f"{name}-in")},
            {"kind": "exact_dedup", "name": "dedup"},
            {"kind": "minhash_dedup", "name": "near"},
        ],
    }
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE, res.message
    return res, sorted(d.id for d in iter_documents(manifest_paths(tmp_path / name / "near")))


def test_dedup_removes_exact_and_near_duplicates_keeps_unrelated(tmp_path):
    res, kept = _run(tmp_path, "a", _corpus(), workers=1)
    assert kept == sorted(f"u{i:03d}" for i in range(60))  # representatives: the smallest ids
    exact = next(o for o in res.stages if o.name == "dedup").steps[0]
    near = next(o for o in res.stages if o.name == "near").steps[0]
    assert exact["dropped"] == {"exact_duplicate": 10} and near["dropped"] == {"near_duplicate": 10}
    clusters = list(iter_documents([]))  # cluster membership is written for inspection
    from corpusforge.storage import read_table

    t = read_table(manifest_paths(tmp_path / "a" / "near" / "clusters")[0])
    members = dict(zip(t.column("id").to_pylist(), t.column("cluster").to_pylist(), strict=True))
    assert members["y010"] == "u010" and clusters == []


def test_dedup_is_deterministic_across_workers_and_order(tmp_path):
    docs = _corpus(seed=1)
    shuffled = docs[:]
    random.Random(5).shuffle(shuffled)
    _, a = _run(tmp_path, "one", docs, workers=1)
    _, b = _run(tmp_path, "two", shuffled, workers=2)
    assert a == b


def test_duplicate_ids_and_empty_docs_keep_counts_balanced(tmp_path):
    docs = [
        Document(id="same", text="x y z " * 20),
        Document(id="same", text="x y z " * 20),
        Document(id="e1", text=""),
        Document(id="e2", text=""),
    ]
    res, kept = _run(tmp_path, "c", docs, workers=1)
    for o in res.stages:
        for s in o.steps:
            assert s["input"] == s["output"] + sum(s["dropped"].values())
    assert kept == ["e1", "same"]


def test_duplicate_ids_with_other_texts_and_non_string_urls_are_counted_and_kept(tmp_path):
    import json

    words = [f"w{i}" for i in range(400)]
    t1, t2 = " ".join(words[:200]), " ".join(words[200:])
    lines = [
        {"id": "a", "text": t1, "url": 123},
        {"id": "a", "text": t2, "url": "http://127.0.0.1/a2"},
        {"id": "b", "text": t1.upper()},  # an exact duplicate of the first (case differs)
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    raw = {
        "name": "ids",
        "workdir": str(tmp_path / "w"),
        "stages": [{"kind": "read_jsonl", "name": "input", "path": str(src)}, {"kind": "exact_dedup", "name": "dedup"}],
    }
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE, res.message
    read, dedup = res.stages[0].steps[0], res.stages[1].steps[0]
    assert read["output"] == 3 and read["counters"]["url_not_a_string"] == 1
    assert dedup["counters"]["duplicate_id_different_text"] == 1
    assert dedup["dropped"] == {"exact_duplicate": 1}
    kept = list(iter_documents(manifest_paths(tmp_path / "w" / "dedup")))
    assert sorted((d.id, d.text[:3]) for d in kept) == [("a", "w0 "), ("a", "w20")]
    first = next(d for d in kept if d.text.startswith("w0 "))
    assert first.url is None and first.metadata["url_raw"] == 123

"""The validation split's minimum size, token lineage by URL and by shard row, and nanoGPT's meta.pkl."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from corpusforge.cli import app
from corpusforge.document import Document
from corpusforge.errors import DONE
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.stage import StageContext
from corpusforge.storage import ShardWriter, load_manifest, validate_folder, write_manifest
from corpusforge.tokens.read import document_at, export_nanogpt, token_arrays
from corpusforge.tokens.stage import TokensStage, write_token_shards
from corpusforge.tokens.tokenizer import EOT, train_tokenizer
from corpusforge.tokens.write import val_bound

WORDS = "river field rain morning water animals ground farmers night slowly".split()


def _hash(doc_id: str) -> float:
    # The split's hash, written out here on purpose: the test pins the rule, not the helper.
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") / 2**64


def _text(i: int) -> str:
    return " ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(5 + i % 17))


def _docs(n: int, **meta) -> list[Document]:
    return [
        Document(id=f"doc{i:04d}", text=_text(i), url=f"http://127.0.0.1/p/{i % 50}", metadata=dict(meta))
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([_text(i) for i in range(60)], algorithm="char")


def _val_ids(folder) -> list[str]:
    import pyarrow.ipc as ipc

    ids = []
    for f in load_manifest(folder)["files"]:
        if f["name"].startswith("val/"):
            with open(folder / f["name"], "rb") as fh:
                ids += ipc.open_stream(fh).read_all().column("id").to_pylist()
    return sorted(ids)


def _recipe(tmp_path, workdir, *, docs, tasks, **tokens):
    return validate_recipe(
        {
            "name": "split",
            "workdir": str(tmp_path / workdir),
            "stages": [
                {"kind": "test_source", "name": "docs", "docs": docs, "tasks": 2},
                {"kind": "tokenizer", "input": "docs", "algorithm": "char"},
                {"kind": "tokens", "input": "docs", "tasks": tasks, **tokens},
            ],
        }
    )


def test_too_small_a_val_split_takes_the_lowest_hashes_the_same_ones_whatever_the_tasks(tmp_path):
    ids = [f"d{i:05d}" for i in range(120)]  # the test_source stage's ids
    by_hash = sorted(ids, key=_hash)
    assert sum(_hash(i) < 0.01 for i in ids) < 8  # the hash split alone gives val fewer than asked for
    got = {}
    for tasks in (1, 3):
        res = run_recipe(_recipe(tmp_path, f"w{tasks}", docs=120, tasks=tasks, val_fraction=0.01, min_val_documents=8))
        assert res.status == DONE
        folder = tmp_path / f"w{tasks}" / "tokens"
        m = load_manifest(folder)
        assert m["documents"] == {"train": 112, "val": 8}
        assert m["tokens"]["val"] == sum(map(len, token_arrays(folder, "val")))
        assert m["tokens"]["train"] == sum(map(len, token_arrays(folder, "train")))
        assert m["val_split"]["min_val_documents"] == 8 and m["val_split"]["hash_below"] > 0.01
        got[tasks] = _val_ids(folder)
    assert got[1] == got[3] == sorted(by_hash[:8])


def test_a_large_enough_hash_split_is_left_alone_and_a_small_corpus_keeps_most_for_training(tmp_path):
    rows = [(f"x{i}", None, True) for i in range(1000)]
    assert val_bound(rows, val_fraction=0.05, min_val_documents=10) == 0.05  # ~50 already
    assert val_bound(rows, val_fraction=0.05, min_val_documents=None) == 0.05
    assert val_bound(rows, val_fraction=0.0, min_val_documents=10) == 0.0  # no val split asked for: none made
    res = run_recipe(_recipe(tmp_path, "tiny", docs=7, tasks=1, val_fraction=0.01, min_val_documents=10))
    assert res.status == DONE
    assert load_manifest(tmp_path / "tiny" / "tokens")["documents"] == {"train": 6, "val": 1}  # at least one
    res = run_recipe(_recipe(tmp_path, "small", docs=26, tasks=1, val_fraction=0.01, min_val_documents=10))
    assert load_manifest(tmp_path / "small" / "tokens")["documents"] == {"train": 21, "val": 5}  # a fifth


def test_pinned_splits_count_and_empty_documents_are_not_moved(tmp_path, tok):
    docs = _docs(60)
    for d in docs[:3]:
        d.metadata["split"] = "val"  # count towards the minimum
    for d in docs[3:6]:
        d.metadata["split"] = "train"  # never moved
    lowest = sorted(docs[6:], key=lambda d: _hash(d.id))
    lowest[0].text = ""  # the lowest hash is empty: dropped, so not one of the val documents
    expected = {d.id for d in docs[:3]} | {d.id for d in lowest[1:4]}
    folder = tmp_path / "docs"
    with ShardWriter(folder, "00000") as w:
        for d in docs:
            w.write(d)
    write_manifest(folder, w.files, config={})
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text(tok.to_str())
    out = tmp_path / "tokens"
    out.mkdir()
    ctx = StageContext(
        run_dir=tmp_path,
        out_dir=out,
        in_dir=folder,
        stage_name="tokens",
        stage_dirs={"tokenizer": tmp_path / "tokenizer"},
    )
    stage = TokensStage(val_fraction=1e-9, min_val_documents=6, tasks=2)
    results = [stage.run_task(ctx, r) for r in range(2)]
    info = stage.finalize(ctx, results)
    write_manifest(out, [f for r in results for f in r.files], config={}, extra=info)
    assert set(_val_ids(out)) == expected
    assert info["documents"] == {"train": 53, "val": 6}


def _shards(tmp_path, tok):
    docs = _docs(120)
    m = write_token_shards(docs, tok, tmp_path / "t", val_fraction=0.2, max_shard_tokens=1500, batch_docs=16)
    return tmp_path / "t", docs, m


def test_lineage_by_url_gives_every_range_of_that_page_in_every_split(tmp_path, tok):
    folder, docs, _ = _shards(tmp_path, tok)
    url = "http://127.0.0.1/p/7"  # documents 7, 57 and 107 share it
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "--url", url])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert sorted(h["id"] for h in hits) == ["doc0007", "doc0057", "doc0107"]
    by_id = {d.id: d for d in docs}
    for h in hits:
        ids = np.concatenate(token_arrays(folder, h["split"]))[h["start"] : h["end"]].tolist()
        assert ids[-1] == tok.token_to_id(EOT)
        assert ids[:-1] == tok.encode(by_id[h["id"]].text, add_special_tokens=False).ids
        assert document_at(folder, h["start"], h["split"])["id"] == h["id"]
    assert {h["split"] for h in hits} <= {"train", "val"}
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "--url", "http://127.0.0.1/none"])
    assert r.exit_code == 2 and "no document of 'http://127.0.0.1/none'" in r.output


def test_lineage_by_file_and_row_matches_the_position_lookup(tmp_path, tok):
    folder, _, m = _shards(tmp_path, tok)
    shards = [f for f in m["files"] if f["name"].startswith("train/")]
    assert len(shards) >= 2  # the row's range must count the shards before it
    second = shards[1]
    for row in (0, second["rows"] - 1):
        for given in (second["name"], str(folder / second["name"])):  # its manifest name or its path
            r = CliRunner().invoke(app, ["token-lineage", str(folder), "--file", given, "--row", str(row)])
            assert r.exit_code == 0, r.output
            hit = json.loads(r.output)
            at = document_at(folder, hit["start"], "train")
            assert (hit["id"], hit["start"], hit["end"]) == (at["id"], at["start"], at["end"])
            assert hit["split"] == "train" and hit["row"] == row and hit["start"] >= shards[0]["tokens"]
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "--file", second["name"], "--row", str(second["rows"])])
    assert r.exit_code == 2 and f"has {second['rows']} rows" in r.output
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "--file", "train/nope.arrow", "--row", "0"])
    assert r.exit_code == 2 and "not a token shard listed" in r.output
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "--file", second["name"]])
    assert r.exit_code == 2 and "--file and --row go together" in r.output
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "3", "--url", "http://127.0.0.1/p/1"])
    assert r.exit_code == 2 and "not POSITION and --url together" in r.output


def test_an_unknown_split_is_named_with_the_splits_there_are(tmp_path, tok):
    folder, _, _ = _shards(tmp_path, tok)
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "0", "--split", "test"])
    assert r.exit_code == 2
    assert "unknown split 'test'" in r.output and "it holds: train, val" in r.output
    r = CliRunner().invoke(app, ["token-lineage", str(folder), "0", "--split", "val"])
    assert r.exit_code == 0 and json.loads(r.output)["start"] == 0


def test_export_nanogpt_writes_the_meta_pkl_that_nanogpt_reads(tmp_path, tok):
    folder, _, m = _shards(tmp_path, tok)
    export_nanogpt(folder, tmp_path / "nano")
    data_dir = str(tmp_path / "nano")
    # As nanoGPT's train.py does it:
    meta_path = os.path.join(data_dir, "meta.pkl")
    assert os.path.exists(meta_path)
    with open(meta_path, "rb") as f:
        meta = pickle.load(f)
    meta_vocab_size = meta["vocab_size"]
    assert meta_vocab_size == tok.get_vocab_size() == m["vocab_size"]
    assert type(meta) is dict and meta == json.loads((tmp_path / "nano" / "meta.json").read_text())
    assert {f["name"] for f in load_manifest(tmp_path / "nano")["files"]} == {
        "train.bin",
        "val.bin",
        "meta.json",
        "meta.pkl",
    }
    assert validate_folder(tmp_path / "nano") == []


def test_an_empty_or_fully_pinned_corpus_has_no_val_bound_to_move(tmp_path):
    """An empty input, or one whose documents all name their split, left the bound as it was (it raised)."""
    assert val_bound([], val_fraction=0.01, min_val_documents=10) == 0.01
    pinned = [(f"x{i}", "train", True) for i in range(5)]
    assert val_bound(pinned, val_fraction=0.01, min_val_documents=10) == 0.01

"""Tokenizer training, the tokenizer stage and its report (RELIABILITY item 22)."""

from __future__ import annotations

import json
import os

import pytest

from corpusforge.document import Document
from corpusforge.errors import ConfigError
from corpusforge.stage import StageContext
from corpusforge.storage import ShardWriter, write_manifest
from corpusforge.tokens.report import tokenizer_report
from corpusforge.tokens.stage import TokenizerStage
from corpusforge.tokens.tokenizer import EOT, PAD, hf_files, train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

HARD = "emoji 👩‍💻🚀🇫🇷, CJK 漢字かなカナ한국어, control \x00\x01\x07\x1b\x7f\t\r\n, rtl שלום, math ∑∫ 𝔘, é vs é"
TEXTS = [
    f"Section {i}. The {w} module provides functions for {w} handling; see also {w}.open() and {i * 13}."
    for i in range(120)
    for w in ("json", "pathlib", "itertools", "collections")
] + ["漢字かなカナ한국어 😀 café naïve " * 5]


def _doc_shards(folder, n=160):
    with ShardWriter(folder, "00000", batch_rows=64) as w:
        for i in range(n):
            w.write(
                Document(
                    id=f"doc{i:04d}",
                    text=(TEXTS[-1] if i == 7 else TEXTS[i % len(TEXTS)]) * 3,
                    source="manual" if i % 3 else "wiki",
                    url=f"http://127.0.0.1/{i}",
                )
            )
    write_manifest(folder, w.files, config={})
    return folder


def _stage_run(tmp_path, name, **params):
    docs = _doc_shards(tmp_path / "docs") if not (tmp_path / "docs").is_dir() else tmp_path / "docs"
    out = tmp_path / name
    out.mkdir()
    ctx = StageContext(run_dir=tmp_path, out_dir=out, in_dir=docs, stage_name=name)
    stage = TokenizerStage(**params)
    res = stage.run_task(ctx, 0)
    extra = stage.finalize(ctx, [res])
    return out, res, extra


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_round_trip_and_transformers_offline(tmp_path, kind):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = train_tokenizer(TEXTS, kind=kind, vocab_size=600, special_tokens=["<|user|>"])
    assert tok.token_to_id(EOT) == 0 and tok.token_to_id(PAD) == 1 and tok.token_to_id("<|user|>") == 2
    assert tok.decode(tok.encode(HARD).ids) == HARD
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str(pretty=True))
    for name, data in hf_files(path).items():
        (tmp_path / name).write_bytes(data)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf(HARD)["input_ids"] == tok.encode(HARD).ids
    assert hf.decode(hf(HARD)["input_ids"]) == HARD
    assert hf.eos_token == EOT and hf.eos_token_id == 0 and hf.pad_token_id == 1


def test_char_level_is_exactly_the_characters_seen():
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    tok = train_tokenizer([text], kind="char")
    assert tok.get_vocab_size() == len(set(text)) + 1 and tok.token_to_id(EOT) == 0
    ids = tok.encode(text).ids
    assert len(ids) == len(text) and tok.decode(ids) == text
    # Code-point order: ids are stable however the text is shuffled.
    assert train_tokenizer([text[::-1]], kind="char").to_str() == tok.to_str()


def test_kind_and_algorithm_are_one_parameter():
    assert train_tokenizer(TEXTS[:50], kind="char").to_str() == train_tokenizer(TEXTS[:50], algorithm="char").to_str()
    with pytest.raises(ConfigError):
        train_tokenizer(TEXTS, kind="bpe", algorithm="char")


def test_stage_output_is_byte_identical_and_reports(tmp_path):
    out_a, res, extra = _stage_run(tmp_path, "tok_a", vocab_size=500, max_chars=20_000)
    out_b, _, _ = _stage_run(tmp_path, "tok_b", vocab_size=500, max_chars=20_000)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "report.json"):
        assert (out_a / name).read_bytes() == (out_b / name).read_bytes(), name
    assert {f["name"] for f in res.files} >= {"tokenizer.json", "report.json"}
    assert extra["eot_id"] == 0 and 300 < extra["vocab_size"] <= 500 and len(extra["tokenizer_sha256"]) == 64
    # The character budget holds: about 20 k characters were sampled of ~55 k, never more than 10 % over.
    sample = res.steps[0]
    assert sample["counters"]["chars"] <= 22_000 and sample["dropped"]["not_sampled"] > 0
    assert sample["input"] == sample["output"] + sum(sample["dropped"].values())
    report = json.loads((out_a / "report.json").read_text())
    assert set(report["per_source"]) == {"manual", "wiki"}
    o = report["overall"]
    assert 1.0 < o["bytes_per_token"] < 10 and 0 < o["words_per_token"] < 1 and o["unknown_rate"] == 0
    assert 0 < o["byte_fallback_rate"] < 0.05  # the CJK/emoji document falls back to bytes in a 500 vocab


def test_report_beside_a_reference_tokenizer(tmp_path):
    ref = train_tokenizer(TEXTS, kind="char")
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "tokenizer.json").write_text(ref.to_str())
    out, _, _ = _stage_run(tmp_path, "tok", vocab_size=500, reference=str(tmp_path / "ref"), report_docs=50)
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["docs"] == 100  # 50 per source
    assert report["reference"]["overall"]["chars_per_token"] == 1.0
    assert report["tokens_vs_reference"] < 0.5  # BPE is much shorter than characters
    direct = tokenizer_report(ref, [("s", "abc")], reference=ref)
    assert direct["tokens_vs_reference"] == 1.0
    # A character-level vocabulary meets characters it never saw: counted as unknown, not a crash.
    unseen = tokenizer_report(ref, [("s", "Section ☃☃")])["overall"]
    assert unseen["tokens"] == 10 and unseen["unknown_rate"] == 0.2


def test_stage_rejects_a_missing_reference(tmp_path):
    with pytest.raises(ConfigError, match="reference"):
        _stage_run(tmp_path, "tok", vocab_size=300, reference=str(tmp_path / "nope.json"))


@pytest.mark.parametrize("algorithm", ["bpe", "unigram", "char"])
def test_no_documents_gives_the_same_clear_message_for_every_algorithm(tmp_path, algorithm):
    from corpusforge.errors import FAILED
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    raw = {
        "name": "empty",
        "workdir": str(tmp_path / "w"),
        "stages": [
            {"kind": "test_source", "docs": 0},
            {"kind": "tokenizer", "algorithm": algorithm, "vocab_size": 300},
        ],
    }
    res = run_recipe(validate_recipe(raw))
    assert res.status == FAILED
    assert "no text to train the tokenizer on" in res.message and "0 documents" in res.message
    assert "TypeError" not in res.message and "vocabulary is not large enough" not in res.message

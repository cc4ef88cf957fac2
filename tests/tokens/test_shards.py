"""Token shards: fast encoder exactness, dtype boundary, stage + manifest + card, lineage, nanoGPT export
(RELIABILITY items 27, 54)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from corpusforge.document import Document
from corpusforge.stage import StageContext
from corpusforge.storage import ShardWriter, load_manifest, validate_folder, write_manifest
from corpusforge.tokens.encode import WHITESPACE, FastBpeEncoder, encode_texts
from corpusforge.tokens.read import document_at, export_nanogpt, token_arrays
from corpusforge.tokens.stage import TokensStage, write_token_shards
from corpusforge.tokens.tokenizer import EOT, train_tokenizer
from corpusforge.tokens.write import load_tokenizer, tokenize_to_shards

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

WORDS = "the of and to in is for that with as on module function returns value list dict path file".split()
TRICKY = [
    "  leading spaces,  double  spaces and trailing   ",
    "tabs\tand\t\tnewlines\n\n\nindent\n    code = f(x)  # comment\r\nwindows line",
    "contractions: it's, we'll, they're, I'd, don't 'quoted' ''",
    "numbers 12345 3.14159 1e-9 0xFF 1,000,000 ١٢٣ ⅷ",
    "unicode: café naïve Ünïcödé 漢字かなカナ한국어 😀👩‍💻🇫🇷 ∑∫ 𝔘 שלום مرحبا",
    "whitespace zoo:\u00a0nbsp\u2003em\u3000ideographic\u2028line\u2029para\x85nel\x1c\x1d\x1e\x1f\x0b\x0c end",
    f"special token written out {EOT} in the middle <|pad|> too",
    "",
    " ",
    "\n",
    "x",
]


def _texts(n=300, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(5, 80)))
        seps = rng.choice([" ", "  ", "\n", ", ", ". ", "\t", " \n "], size=len(words))
        out.append("".join(f"{w}{s}" for w, s in zip(words, seps, strict=True)) + TRICKY[i % len(TRICKY)])
    return out


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(_texts(400, seed=1) + TRICKY * 3, kind="bpe", vocab_size=600)


def _exact(tok, texts):
    return [tok.encode(t, add_special_tokens=False).ids for t in texts]


def _split(flat, lengths):
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [flat[bounds[i] : bounds[i + 1]].tolist() for i in range(len(lengths))]


def test_fast_encoder_ids_are_identical_to_tokenizers(bpe):
    texts = _texts(300) + TRICKY
    enc = FastBpeEncoder(bpe, max_entries=200)  # tiny table: forces clears between batches
    assert enc.fast
    got = []
    for i in range(0, len(texts), 37):
        flat, lengths = encode_texts(enc, texts[i : i + 37])
        assert flat.dtype == np.uint32
        got += _split(flat, lengths)
    assert got == _exact(bpe, texts)
    assert enc.stats["mismatches"] == 0 and enc.stats["table_resets"] > 0 and enc.stats["exact_fallback_docs"] >= 1


@pytest.mark.slow
def test_fast_encoder_agrees_with_tokenizers_on_code_points(bpe):
    # Every code point up to U+3100, every 97th above it, and each whitespace character, in the contexts where
    # pre-tokenizing is subtle (before/after spaces and letters, doubled, at the end).
    cps = [*range(0x3100), *range(0x3100, 0x110000, 97), *(ord(c) for c in WHITESPACE if c != "-")]
    chars = [chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF]
    texts = [f"a{c}{c}b {c}x {c}{c} {c}\n{c} 1{c}'s{c}" for c in chars]
    enc = FastBpeEncoder(bpe, verify_every=0)
    flat, lengths = enc.encode(texts)
    want = [e.ids for e in bpe.encode_batch(texts, add_special_tokens=False)]
    got = _split(flat, lengths)
    bad = [repr(t) for t, g, w in zip(texts, got, want, strict=True) if g != w]
    assert not bad, bad[:5]


def test_unigram_uses_tokenizers_itself_and_char_level_is_exact():
    texts = _texts(40) + TRICKY
    uni = train_tokenizer(texts, kind="unigram", vocab_size=400)
    enc = FastBpeEncoder(uni)
    assert not enc.fast
    flat, lengths = encode_texts(enc, texts)
    assert _split(flat, lengths) == _exact(uni, texts)
    char = train_tokenizer(texts, kind="char")
    long = "".join(texts) * 20  # past the verification prefix
    enc = FastBpeEncoder(char, verify_every=1)
    assert enc.fast and enc.char_level
    flat, lengths = encode_texts(enc, [*texts, long])
    assert _split(flat, lengths) == _exact(char, [*texts, long]) and enc.stats["mismatches"] == 0
    from corpusforge.errors import ConfigError

    with pytest.raises(ConfigError, match="character"):
        enc.encode(["a character never seen: ☃"])


def test_long_documents_are_verified_on_a_prefix(bpe):
    long = " ".join(_texts(400))
    enc = FastBpeEncoder(bpe, verify_every=1)
    assert len(enc._verify_prefix(long)) < len(long)
    flat, lengths = encode_texts(enc, [long, "short"])
    assert _split(flat, lengths) == _exact(bpe, [long, "short"]) and enc.stats["verified"] == 2
    assert enc.stats["mismatches"] == 0


def _docs(texts, **meta):
    return [
        Document(
            id=f"doc{i:04d}",
            text=t,
            url=f"http://127.0.0.1/p/{i}",
            fetched_at=f"2026-11-22T00:00:{i % 60:02d}Z",
            metadata=dict(meta),
        )
        for i, t in enumerate(texts)
    ]


def test_workers_give_byte_identical_shards(tmp_path, bpe):
    docs = _docs(_texts(500))
    one = write_token_shards(docs, bpe, tmp_path / "w1", val_fraction=0.1, max_shard_tokens=4000, batch_docs=60)
    two = write_token_shards(
        docs, bpe, tmp_path / "w2", val_fraction=0.1, max_shard_tokens=4000, batch_docs=60, workers=2
    )
    assert [f["sha256"] for f in one["files"]] == [f["sha256"] for f in two["files"]]
    assert len(one["files"]) > 2 and one["tokens"] == two["tokens"]
    flat = np.concatenate(token_arrays(tmp_path / "w2", "train") + token_arrays(tmp_path / "w2", "val"))
    # One EOT per document, plus one per "<|endoftext|>" written out in a text (tokenizers' encode makes it the
    # special token; the document boundaries are the list offsets, so lineage is unaffected).
    written = sum(d.text.count(EOT) for d in docs)
    assert flat.dtype == np.uint16 and int((flat == 0).sum()) == sum(one["documents"].values()) + written


def _word_level(n_vocab):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {EOT: 0} | {f"t{i}": i for i in range(1, n_vocab)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([EOT])
    return tok


@pytest.mark.parametrize(("n_vocab", "dtype"), [(65536, "uint16"), (65537, "uint32")])
def test_dtype_switches_at_65536_and_datasets_reads_it(tmp_path, n_vocab, dtype):
    import datasets

    tok = _word_level(n_vocab)
    top = n_vocab - 1
    docs = _docs([f"t{top} t1 t2", f"t3 t{top}", "t5"], split="train") + _docs(["t7 t8"], split="val")
    m = write_token_shards(docs, tok, tmp_path / "t")
    assert m["dtype"] == dtype and m["vocab_size"] == n_vocab
    flat = np.concatenate(token_arrays(tmp_path / "t", "train"))
    assert flat.dtype == np.dtype(dtype) and flat.tolist() == [top, 1, 2, 0, 3, top, 0, 5, 0]
    ds = datasets.load_from_disk(str(tmp_path / "t"))
    assert ds["train"].features["input_ids"].feature.dtype == dtype
    assert ds["train"][0]["input_ids"] == [top, 1, 2, 0] and ds["val"][0]["input_ids"] == [7, 8, 0]
    assert ds["val"][0]["id"] == "doc0000"  # the val document of its own list


def test_token_arrays_are_zero_copy_views(tmp_path, bpe):
    write_token_shards(_docs(_texts(200)), bpe, tmp_path / "t", val_fraction=0.0, batch_docs=50)
    arrays = token_arrays(tmp_path / "t", "train")
    assert len(arrays) == 4
    for a in arrays:
        assert not a.flags.owndata and not a.flags.writeable  # a view of the memory-mapped file


def _doc_shards(folder, docs, per_file):
    files = []
    for k in range(0, len(docs), per_file):
        with ShardWriter(folder, f"{k // per_file:05d}", batch_rows=40) as w:
            for d in docs[k : k + per_file]:
                w.write(d)
        files += w.files
    write_manifest(folder, files, config={})


@pytest.mark.parametrize("per_file", [1000, 70])  # 1 input file (tasks share by document) or 5 (by file)
def test_stage_manifest_card_lineage_and_validate(tmp_path, bpe, per_file):
    import datasets
    import yaml

    docs = _docs(_texts(330))
    docs[3].metadata["split"] = "val"
    docs[4].text = ""
    for d in docs[::3]:  # crawled documents carry a consent record; the others (local files) none
        d.consent = {"policy": "ai_optout", "robots_txt": "ok", "tdm_reservation_header": None}
    _doc_shards(tmp_path / "clean", docs, per_file)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text(bpe.to_str(pretty=True))
    out = tmp_path / "tokens"
    out.mkdir()
    ctx = StageContext(
        run_dir=tmp_path,
        out_dir=out,
        in_dir=tmp_path / "clean",
        stage_name="tokens",
        stage_dirs={"tokenizer": tmp_path / "tokenizer"},
    )
    stage = TokensStage(tokenizer="tokenizer", val_fraction=0.1, tasks=2, max_shard_tokens=3000)
    results = [stage.run_task(ctx, r) for r in range(2)]
    assert all(r.files for r in results)  # both tasks got work
    extra = stage.finalize(ctx, results)
    # What the runner does: manifest from the tasks' files, finalize's fields merged in.
    manifest = write_manifest(out, [f for r in results for f in r.files], config={}, extra=extra)
    assert validate_folder(out) == []
    assert extra["documents"]["train"] + extra["documents"]["val"] == 329  # the empty one is dropped
    assert sum(r.steps[0]["dropped"].get("empty_text", 0) for r in results) == 1
    assert extra["tokenizer_sha256"] == load_manifest(out)["tokenizer_sha256"]

    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    cf = front["corpusforge"]
    assert cf["tokens_train"] == manifest["tokens"]["train"] and cf["documents_val"] == manifest["documents"]["val"]
    assert cf["vocab_size"] == manifest["vocab_size"] and cf["tokenizer_sha256"] == manifest["tokenizer_sha256"]

    ds = datasets.load_from_disk(str(out))
    assert ds["train"].num_rows == manifest["documents"]["train"] and "doc0003" in ds["val"]["id"]

    # Lineage: any token position maps back to its document, whose text decodes from the range.
    by_id = {d.id: d for d in docs}
    flat = np.concatenate(token_arrays(out, "train"))
    assert len(flat) == manifest["tokens"]["train"]
    for pos in np.random.default_rng(0).integers(0, len(flat), size=25).tolist():
        hit = document_at(out, pos, "train")
        assert hit["start"] <= pos < hit["end"]
        ids = flat[hit["start"] : hit["end"]].tolist()
        d = by_id[hit["id"]]
        assert ids[-1] == bpe.token_to_id(EOT) and bpe.decode(ids[:-1], skip_special_tokens=False) == d.text
        assert hit["url"] == d.url and hit["fetched_at"] == d.fetched_at
        assert hit["consent"] == d.consent  # the crawl's consent record travels with the tokens
    assert any(by_id[document_at(out, p, "train")["id"]].consent for p in range(0, len(flat), 97))


def test_validate_catches_a_cut_footer_and_a_missing_shard(tmp_path, bpe):
    m = write_token_shards(
        _docs(_texts(200)), bpe, tmp_path / "t", val_fraction=0.0, max_shard_tokens=3000, batch_docs=20
    )
    first, second = (tmp_path / "t" / f["name"] for f in m["files"][:2])
    first.write_bytes(first.read_bytes()[:-8])  # the end-of-stream marker cut off
    second.unlink()
    problems = validate_folder(tmp_path / "t")
    assert any("truncated" in p for p in problems) and any("missing" in p for p in problems)


def test_stop_request_leaves_no_shard(tmp_path, bpe):
    calls = iter(range(10**6))
    res = tokenize_to_shards(_docs(_texts(300)), bpe, tmp_path, batch_docs=20, should_stop=lambda: next(calls) >= 150)
    assert res["partial"] and res["files"] == []
    assert not list(tmp_path.rglob("*.arrow")) and not list(tmp_path.rglob("*.tmp"))


def test_export_nanogpt_and_cli(tmp_path, bpe):
    from typer.testing import CliRunner

    from corpusforge.cli import app

    write_token_shards(_docs(_texts(200)), bpe, tmp_path / "t", val_fraction=0.2)
    runner = CliRunner()
    r = runner.invoke(app, ["export-nanogpt", str(tmp_path / "t"), str(tmp_path / "nano")])
    assert r.exit_code == 0, r.output
    for split in ("train", "val"):
        data = np.memmap(tmp_path / "nano" / f"{split}.bin", dtype=np.uint16, mode="r")  # how nanoGPT reads it
        assert np.array_equal(data, np.concatenate(token_arrays(tmp_path / "t", split)))
    meta = json.loads((tmp_path / "nano" / "meta.json").read_text())
    assert meta["vocab_size"] == bpe.get_vocab_size() and meta["eot_id"] == 0
    assert validate_folder(tmp_path / "nano") == []
    r = runner.invoke(app, ["export-nanogpt", str(tmp_path / "nothing"), str(tmp_path / "x")])
    assert r.exit_code == 2
    r = runner.invoke(app, ["token-lineage", str(tmp_path / "t"), "5"])
    assert r.exit_code == 0 and json.loads(r.output)["start"] == 0


def test_uint32_export_is_refused(tmp_path):
    write_token_shards(_docs(["t65536 t1"]), _word_level(65537), tmp_path / "t", val_fraction=0.0)
    from corpusforge.errors import ConfigError

    with pytest.raises(ConfigError, match="uint16"):
        export_nanogpt(tmp_path / "t", tmp_path / "nano")


def test_load_tokenizer_accepts_a_folder_and_names_what_is_missing(tmp_path, bpe):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(bpe.to_str())
    assert load_tokenizer(tmp_path / "tok").get_vocab_size() == bpe.get_vocab_size()
    from corpusforge.errors import ConfigError

    with pytest.raises(ConfigError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")


def test_tokenizer_and_tokens_stages_through_the_runner(tmp_path):
    import datasets
    import yaml

    from corpusforge.errors import DONE
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    raw = {
        "name": "tok",
        "workdir": str(tmp_path / "w"),
        "workers": 2,
        "stages": [
            {"kind": "test_source", "name": "docs", "docs": 400, "tasks": 3},
            {"kind": "tokenizer", "name": "tokenizer", "input": "docs", "vocab_size": 300, "max_chars": 20_000},
            {"kind": "tokens", "name": "tokens", "input": "docs", "tokenizer": "tokenizer", "val_fraction": 0.1},
        ],
    }
    assert run_recipe(validate_recipe(raw)).status == DONE
    tokens, tok_dir = tmp_path / "w" / "tokens", tmp_path / "w" / "tokenizer"
    assert validate_folder(tokens) == [] and validate_folder(tok_dir) == []
    m = load_manifest(tokens)
    assert m["documents"]["train"] + m["documents"]["val"] == 400 and m["dtype"] == "uint16"
    assert m["tokenizer_sha256"] == load_manifest(tok_dir)["tokenizer_sha256"]
    assert sum(f["rows"] for f in m["files"]) == 400
    front = yaml.safe_load((tokens / "README.md").read_text().split("---")[1])["corpusforge"]
    assert front["tokens_train"] == m["tokens"]["train"] and front["documents_val"] == m["documents"]["val"]
    ds = datasets.load_from_disk(str(tokens))
    assert ds["train"].num_rows == m["documents"]["train"]
    assert sum(map(len, token_arrays(tokens, "val"))) == m["tokens"]["val"]
    before = {p: p.stat().st_mtime_ns for p in tokens.rglob("*.arrow")}
    assert run_recipe(validate_recipe(raw)).status == DONE  # a rerun is a no-op
    assert {p: p.stat().st_mtime_ns for p in tokens.rglob("*.arrow")} == before


def test_ascii_units_built_from_pretokens_match_tokenizers(bpe):
    """New ASCII units are assembled from their pre-tokens' ids: random ASCII (controls, quotes, contractions)."""
    rng = np.random.default_rng(7)
    alphabet = [chr(c) for c in range(128)] + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", " '", "''"] * 4
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 120)))) for _ in range(400)]
    enc = FastBpeEncoder(bpe, verify_every=0)
    flat, lengths = enc.encode(texts)
    assert _split(flat, lengths) == _exact(bpe, texts)
    assert enc.pretokens and enc.stats["exact_fallback_docs"] == 0  # the pre-token path was taken


def test_new_pretokens_go_to_the_bpe_model_and_match_the_encode_batch_path(bpe):
    """Misses: ASCII pre-tokens through ``model.tokenize`` (units cut in one joined ``findall``), or, without the
    byte map, through ``encode_batch``: both give tokenizers' ids, on words, whitespace runs and non-ASCII."""
    rng = np.random.default_rng(11)
    alphabet = [chr(c) for c in range(128)] + ["é", "漢", "😀", "\u3000", "'s", " '", "''"] * 3
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 150)))) for _ in range(300)]
    texts += _texts(100) + TRICKY
    model_path = FastBpeEncoder(bpe, verify_every=0)
    assert model_path.byte_map is not None and model_path.byte_map[32] == "Ġ" and model_path.byte_map[10] == "Ċ"
    batch_path = FastBpeEncoder(bpe, verify_every=0)
    batch_path.byte_map = None  # what a tokenizer whose pre-tokenizer cannot be read gets
    for enc in (model_path, batch_path):
        got = []
        for i in range(0, len(texts), 50):
            got += _split(*encode_texts(enc, texts[i : i + 50]))
        assert got == _exact(bpe, texts)
    assert model_path.stats["mismatches"] == batch_path.stats["mismatches"] == 0


def test_seeded_vocabulary_units_are_exact(bpe, tmp_path):
    enc = FastBpeEncoder(bpe, verify_every=0)
    n = enc.seed_vocabulary()
    assert n > 100 and " the" in enc.index and enc.seed_vocabulary() == 0  # once, into an empty table
    assert 0 < FastBpeEncoder(bpe).seed_vocabulary(limit=300) < n
    units = list(enc.index)
    flat, cum = enc._gather(np.asarray([enc.index[u] for u in units], dtype=np.int64))
    got = [flat[cum[i] : cum[i + 1]].tolist() for i in range(len(units))]
    assert got == _exact(bpe, units)
    texts = _texts(200) + TRICKY
    assert _split(*encode_texts(enc, texts)) == _exact(bpe, texts)
    # The forked encoder processes start from a seeded table: same shards as one process.
    docs = _docs(texts)
    one = write_token_shards(docs, bpe, tmp_path / "w1", val_fraction=0.0, batch_docs=40)
    two = write_token_shards(docs, bpe, tmp_path / "w2", val_fraction=0.0, batch_docs=40, workers=2)
    assert [f["sha256"] for f in one["files"]] == [f["sha256"] for f in two["files"]]

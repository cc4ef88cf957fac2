"""Tokenizer training and token shards (RELIABILITY items 22, 27, 54)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from corpusforge.document import Document
from corpusforge.storage import validate_folder
from corpusforge.tokens.read import iter_lineage, token_arrays
from corpusforge.tokens.stage import write_token_shards
from corpusforge.tokens.tokenizer import EOT, hf_files, train_tokenizer
from corpusforge.tokens.write import token_dtype

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEXTS = [
    f"Document {i}: the quick brown fox jumps over the lazy dog, {i * 7} times. Ünïcödé café 😀 世界。"
    for i in range(300)
]


def _docs(n=300):
    return [
        Document(
            id=f"doc{i:04d}",
            text=TEXTS[i % len(TEXTS)] * (1 + i % 4),
            url=f"http://127.0.0.1/{i}",
            fetched_at="2026-11-22T00:00:00Z",
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("algorithm", ["bpe", "unigram", "char"])
def test_training_is_byte_identical_and_has_eot(algorithm):
    a = train_tokenizer(TEXTS, algorithm=algorithm, vocab_size=400).to_str()
    b = train_tokenizer(TEXTS, algorithm=algorithm, vocab_size=400).to_str()
    assert a == b
    tok = train_tokenizer(TEXTS, algorithm=algorithm, vocab_size=400)
    assert tok.token_to_id(EOT) == 0


def test_bpe_round_trips_emoji_cjk_control_characters_and_loads_in_transformers(tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = train_tokenizer(TEXTS, vocab_size=500)
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str())
    for name, data in hf_files(path).items():
        (tmp_path / name).write_bytes(data)
    hard = "emoji 👩‍💻🚀, CJK 漢字かなカナ한국어, control \x01\x07\t\r\n and NUL-free text"
    assert tok.decode(tok.encode(hard).ids) == hard
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf.decode(hf(hard)["input_ids"]) == hard
    assert hf.eos_token == EOT and hf.pad_token == "<|pad|>"


def test_char_tokenizer_vocabulary():
    tok = train_tokenizer(["abca\nb"], algorithm="char")
    assert tok.get_vocab_size() == 1 + 4  # EOT + a b c \n
    assert tok.decode(tok.encode("cab\n").ids) == "cab\n"


def test_dtype_switches_at_the_vocabulary_boundary():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_shards_load_validate_lineage(tmp_path):
    import datasets

    tok = train_tokenizer(TEXTS, vocab_size=400)
    docs = _docs()
    docs[5].metadata["split"] = "val"
    m = write_token_shards(docs, tok, tmp_path / "tokens", val_fraction=0.1, max_shard_tokens=5000, batch_docs=32)
    assert m["dtype"] == "uint16" and m["documents"]["train"] + m["documents"]["val"] == 300
    assert len([f for f in m["files"] if f["name"].startswith("train/")]) > 1  # rotated
    assert validate_folder(tmp_path / "tokens") == []
    ds = datasets.load_from_disk(str(tmp_path / "tokens"))
    assert ds["train"].num_rows == m["documents"]["train"] and ds["val"].num_rows == m["documents"]["val"]
    assert "doc0005" in ds["val"]["id"]
    # Every document's token range maps back to its id and URL and decodes to its text + EOT.
    flat = np.concatenate(token_arrays(tmp_path / "tokens", "train"))
    assert flat.dtype == np.uint16 and len(flat) == m["tokens"]["train"]
    by_id = {d.id: d for d in docs}
    n = 0
    for start, end, doc_id, url, fetched in iter_lineage(tmp_path / "tokens", "train"):
        ids = flat[start:end].tolist()
        assert ids[-1] == 0 and tok.decode(ids[:-1]) == by_id[doc_id].text
        assert url == by_id[doc_id].url and fetched == "2026-11-22T00:00:00Z"
        n += 1
    assert n == m["documents"]["train"]
    card = (tmp_path / "tokens" / "README.md").read_text()
    front = card.split("---")[1]
    assert f"tokens_train: {m['tokens']['train']}" in front and f"documents_val: {m['documents']['val']}" in front


def test_validate_catches_truncation_at_a_batch_boundary_and_a_flipped_byte(tmp_path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    tok = train_tokenizer(TEXTS, vocab_size=400)
    write_token_shards(_docs(), tok, tmp_path / "t", val_fraction=0.0, batch_docs=50)
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    shard = tmp_path / "t" / manifest["files"][0]["name"]
    data = shard.read_bytes()
    reader = ipc.open_stream(pa.BufferReader(data))
    batches = list(reader)
    # Rewrite with the first batch only: a well-formed stream that reads without error.
    with pa.OSFile(str(shard), "wb") as sink, ipc.new_stream(sink, reader.schema) as w:
        w.write_batch(batches[0])
    assert len(batches) > 1 and validate_folder(tmp_path / "t")
    from corpusforge.errors import ShardError

    with pytest.raises(ShardError):
        token_arrays(tmp_path / "t", "train")
    flipped = bytearray(data)
    flipped[len(flipped) - 40] ^= 0x01
    shard.write_bytes(bytes(flipped))
    assert any("sha256" in p for p in validate_folder(tmp_path / "t"))


def _batch_ends(data):
    """Byte offsets in a stream file where each record batch message ends (a cut there reads cleanly)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    src = pa.BufferReader(data)
    reader = ipc.MessageReader.open_stream(src)
    ends = []
    while True:
        try:
            msg = reader.read_next_message()
        except StopIteration:
            break
        if msg.type == "record batch":
            ends.append(src.tell())
    return ends


def test_cli_validate_and_every_reader_fail_on_a_cut_at_a_batch_boundary_and_a_flipped_byte(tmp_path):
    from typer.testing import CliRunner

    from corpusforge.cli import app
    from corpusforge.errors import ShardError
    from corpusforge.tokens.read import document_at, export_nanogpt

    tok = train_tokenizer(TEXTS, vocab_size=400)
    folder = tmp_path / "t"
    m = write_token_shards(_docs(), tok, folder, val_fraction=0.0, batch_docs=50)
    runner = CliRunner()
    assert runner.invoke(app, ["validate", str(folder)]).exit_code == 0
    shard = folder / m["files"][0]["name"]
    data = shard.read_bytes()
    ends = _batch_ends(data)
    assert len(ends) >= 3
    # Cut right after the second record batch: no end-of-stream marker, but every remaining message whole,
    # so pyarrow reads the two batches without complaint.
    import pyarrow as pa
    import pyarrow.ipc as ipc

    shard.write_bytes(data[: ends[1]])
    assert sum(b.num_rows for b in ipc.open_stream(pa.BufferReader(data[: ends[1]]))) == 100
    r = runner.invoke(app, ["validate", str(folder)])
    assert r.exit_code == 1 and "FAIL" in r.output and "truncated" in r.output
    for read in (
        lambda: token_arrays(folder, "train"),
        lambda: list(iter_lineage(folder, "train")),
        lambda: document_at(folder, 10**6, "train"),
        lambda: export_nanogpt(folder, tmp_path / "nano"),
    ):
        with pytest.raises(ShardError, match="manifest|run corpusforge validate"):
            read()
    # The same size with one byte flipped inside the token values: validate (sha256) and the verifying readers.
    flipped = bytearray(data)
    flipped[ends[0] - 64] ^= 0x01
    shard.write_bytes(bytes(flipped))
    r = runner.invoke(app, ["validate", str(folder)])
    assert r.exit_code == 1 and "sha256" in r.output
    with pytest.raises(ShardError, match="sha256"):
        token_arrays(folder, "train", verify=True)
    with pytest.raises(ShardError, match="sha256"):
        export_nanogpt(folder, tmp_path / "nano2")
    assert not (tmp_path / "nano2" / "manifest.json").exists()


def test_readers_check_row_counts_even_when_the_size_matches(tmp_path):
    """A manifest whose row count disagrees (same bytes) is refused by the readers, not read as is."""
    from corpusforge.errors import ShardError

    tok = train_tokenizer(TEXTS, vocab_size=400)
    folder = tmp_path / "t"
    write_token_shards(_docs(), tok, folder, val_fraction=0.0, batch_docs=50)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][0]["rows"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match="rows"):
        token_arrays(folder, "train")
    with pytest.raises(ShardError, match="rows"):
        list(iter_lineage(folder, "train"))

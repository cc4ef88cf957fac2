from __future__ import annotations

import json

import pytest

from corpusforge.document import Document, stable_id
from corpusforge.errors import ShardError
from corpusforge.storage import (
    ShardWriter,
    clean_temp_files,
    iter_documents,
    load_manifest,
    validate_folder,
    write_manifest,
)


def _docs(n: int) -> list[Document]:
    return [
        Document(
            id=f"d{i}",
            text=f"text number {i} " * 5,
            url=f"http://127.0.0.1/{i}",
            source="t",
            metadata={"i": i, "ünï": "çødé"},
        )
        for i in range(n)
    ]


def test_document_row_round_trip():
    d = Document.from_url(
        "http://127.0.0.1/a", text="hello", status=200, fetched_at="2026-01-01T00:00:00Z", metadata={"k": [1, 2]}
    )
    assert d.id == stable_id("http://127.0.0.1/a") and len(d.id) == 16
    assert Document.from_row(d.to_row()) == d


def test_writer_rotates_and_reads_back(tmp_path):
    with ShardWriter(tmp_path, "00000", max_bytes=2000, batch_rows=10) as w:
        for d in _docs(100):
            w.write(d)
    names = [f["name"] for f in w.files]
    assert names[0] == "00000.arrow" and names[1] == "00000-001.arrow" and len(names) > 2
    assert sum(f["rows"] for f in w.files) == 100
    assert not list(tmp_path.glob("*.tmp"))
    back = list(iter_documents(tmp_path / n for n in names))
    assert back == _docs(100)


def test_abort_leaves_no_file(tmp_path):
    w = ShardWriter(tmp_path, "00001", max_bytes=2000, batch_rows=10)
    for d in _docs(50):
        w.write(d)
    w.abort()
    assert not list(tmp_path.iterdir())


def test_writer_failure_inside_context_removes_partial_output(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "00002", batch_rows=5) as w:
            for d in _docs(20):
                w.write(d)
            raise RuntimeError("boom")
    assert not list(tmp_path.glob("*.arrow")) and not list(tmp_path.glob("*.tmp"))


def _folder(tmp_path, n=60):
    with ShardWriter(tmp_path, "00000", batch_rows=10) as w:
        for d in _docs(n):
            w.write(d)
    write_manifest(tmp_path, w.files, config={"test": True})
    return tmp_path / "00000.arrow"


def test_manifest_and_validate_ok(tmp_path):
    _folder(tmp_path)
    m = load_manifest(tmp_path)
    assert m["rows"] == 60 and m["config"] == {"test": True} and "corpusforge" in m["versions"]
    assert validate_folder(tmp_path) == []


def test_validate_catches_truncation_at_batch_boundary_and_flipped_byte(tmp_path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    shard = _folder(tmp_path)
    # Rewrite the shard with its first batches only: a well-formed Arrow file, but fewer rows.
    good = shard.read_bytes()
    table = ipc.open_file(pa.BufferReader(good)).read_all()
    with pa.OSFile(str(shard), "wb") as sink, ipc.new_file(sink, table.schema) as w:
        w.write_table(table.slice(0, 20))
    problems = validate_folder(tmp_path)
    assert problems and "00000.arrow" in problems[0]
    # A flipped byte with the size unchanged.
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = validate_folder(tmp_path)
    assert problems and "sha256" in problems[0]
    # A missing manifest.
    (tmp_path / "manifest.json").unlink()
    assert "no manifest.json" in validate_folder(tmp_path)[0]
    with pytest.raises(ShardError):
        load_manifest(tmp_path)


def test_clean_temp_files(tmp_path):
    (tmp_path / "00000.arrow.tmp").write_bytes(b"partial")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.json.tmp").write_text("{")
    assert clean_temp_files(tmp_path) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_manifest_is_json_with_sorted_files(tmp_path):
    write_manifest(
        tmp_path,
        [{"name": "b", "rows": 1, "bytes": 2, "sha256": "x"}, {"name": "a", "rows": 1, "bytes": 2, "sha256": "y"}],
        config={},
    )
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [f["name"] for f in m["files"]] == ["a", "b"] and m["rows"] == 2

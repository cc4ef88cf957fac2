"""Local inputs (corpusforge/inputs.py): HTML folders, JSONL, WARC; counted drops, nothing read as complete
that was cut short."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from corpusforge.errors import DONE
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths


def _local(tmp_path: Path, stage: dict) -> tuple[int, list, dict]:
    res = run_recipe(validate_recipe({"name": "t", "workdir": str(tmp_path / "w"), "stages": [stage]}))
    out = tmp_path / "w" / stage["kind"]
    docs = list(iter_documents(manifest_paths(out))) if res.status == DONE else []
    return res.status, docs, res.stages[0].steps[0] if res.stages[0].steps else {}


def test_local_html_folder(tmp_path):
    d = tmp_path / "site"
    (d / "sub").mkdir(parents=True)
    (d / "a.html").write_text("<html><body>alpha</body></html>")
    (d / "sub" / "b.htm").write_bytes("<html><body>caf\xe9</body></html>".encode("latin-1"))
    (d / "big.html").write_text("<p>x</p>" * 500)
    (d / "notes.txt").write_text("not html")
    status, docs, step = _local(tmp_path, {"kind": "read_html", "path": str(d), "max_bytes": 1000})
    assert status == DONE
    by = {d.metadata["path"]: d for d in docs}
    assert set(by) == {"a.html", "sub/b.htm"} and "café" in by["sub/b.htm"].html
    assert step["dropped"] == {"too_large": 1} and step["input"] == 3


def test_local_jsonl_counts_bad_lines(tmp_path):
    f = tmp_path / "in.jsonl.gz"
    lines = [
        json.dumps({"id": "a", "text": "hello", "url": "https://x.org/a", "lang": "en"}),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": "c", "text": 5}),
        json.dumps({"text": "no id"}),
        "",
    ]
    f.write_bytes(gzip.compress("\n".join(lines).encode()))
    status, docs, step = _local(tmp_path, {"kind": "read_jsonl", "path": str(f)})
    assert status == DONE
    assert [d.text for d in docs] == ["hello", "no id"] and docs[0].id == "a" and docs[0].metadata == {"lang": "en"}
    assert step["dropped"] == {"bad_json": 1, "not_an_object": 1, "wrong_type": 1}


def test_local_warc_keeps_html_responses(tmp_path):
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    f = tmp_path / "crawl.warc.gz"
    with open(f, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        for url, ctype, body in [
            ("https://x.org/", "text/html; charset=utf-8", b"<html><body>warc page</body></html>"),
            ("https://x.org/img.png", "image/png", b"\x89PNG"),
        ]:
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(w.create_warc_record(url, "response", payload=BytesIO(body), http_headers=http))
        w.write_record(w.create_warc_record("https://x.org/", "request", payload=BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
    status, docs, step = _local(tmp_path, {"kind": "read_warc", "path": str(f)})
    assert status == DONE
    assert [(d.url, d.status, d.backend) for d in docs] == [("https://x.org/", 200, "warc")]
    assert "warc page" in docs[0].html and step["dropped"] == {"content_type": 1}


def test_missing_local_input_is_a_config_error(tmp_path):
    from corpusforge.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        run_recipe(
            validate_recipe(
                {
                    "name": "t",
                    "workdir": str(tmp_path / "w"),
                    "stages": [{"kind": "read_html", "path": str(tmp_path / "nope")}],
                }
            )
        )


def _warc(path: Path, n: int, *, gz: bool) -> bytes:
    from io import BytesIO

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = BytesIO()
    w = WARCWriter(buf, gzip=gz)
    for i in range(n):
        body = b"<html><body><p>" + f"page {i} ".encode() * 1500 + b"</p></body></html>"
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        w.write_record(
            w.create_warc_record(f"http://127.0.0.1/{i}", "response", payload=BytesIO(body), http_headers=http)
        )
    return buf.getvalue()


@pytest.mark.parametrize("gz", [False, True], ids=["warc", "warc.gz"])
def test_a_warc_cut_mid_record_keeps_the_records_before_and_stores_no_partial_page(tmp_path, gz, caplog):
    data = _warc(tmp_path, 4, gz=gz)
    f = tmp_path / ("cut.warc.gz" if gz else "cut.warc")
    f.write_bytes(data[: int(len(data) * 0.6)])  # inside the third record
    status, docs, step = _local(tmp_path, {"kind": "read_warc", "path": str(f)})
    assert status == DONE
    assert [d.url for d in docs] == ["http://127.0.0.1/0", "http://127.0.0.1/1"]
    assert all(d.html.endswith("</html>") for d in docs)
    assert step["dropped"] == {"truncated_record": 1} and step["input"] == 3
    stats = json.loads((tmp_path / "w" / "read_warc" / "stats" / "stats.json").read_text())
    assert stats["task_extra"][0]["truncated_files"] == [str(f)]
    assert str(f) in caplog.text and "cut short" in caplog.text
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "all.warc").write_bytes(_warc(tmp_path, 4, gz=False))
    status, docs, step = _local(tmp_path / "x", {"kind": "read_warc", "path": str(whole)})
    assert len(docs) == 4 and step["dropped"] == {}


def test_a_cut_jsonl_and_a_cut_gzip_keep_what_came_before(tmp_path):
    rows = [json.dumps({"id": f"r{i}", "text": f"record {i} " * 50}) + "\n" for i in range(6)]
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(rows)[:-40])  # the last line loses its end (and its newline)
    status, docs, step = _local(tmp_path / "a", {"kind": "read_jsonl", "path": str(plain)})
    assert status == DONE and [d.id for d in docs] == [f"r{i}" for i in range(5)]
    assert step["dropped"] == {"truncated_record": 1}
    packed = gzip.compress("".join(rows).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(packed[: len(packed) - 30])  # the gzip trailer and the end of the stream are gone
    status, docs, step = _local(tmp_path / "b", {"kind": "read_jsonl", "path": str(cut)})
    assert status == DONE and len(docs) >= 1 and all(d.text.endswith(f"record {d.id[1:]} ") for d in docs)
    assert step["dropped"] == {"truncated_record": 1}
    assert len(docs) < 6


def test_gzip_complete_tells_a_whole_stream_from_a_cut_one(tmp_path):
    from corpusforge.inputs import gzip_complete

    data = gzip.compress(b"x" * 100_000) + gzip.compress(b"second member")
    (tmp_path / "ok.gz").write_bytes(data)
    (tmp_path / "cut.gz").write_bytes(data[:-5])
    (tmp_path / "cut1.gz").write_bytes(data[: len(data) // 3])
    assert gzip_complete(tmp_path / "ok.gz")
    assert not gzip_complete(tmp_path / "cut.gz") and not gzip_complete(tmp_path / "cut1.gz")


def test_an_input_file_changed_under_the_same_path_is_refused_unless_forced(tmp_path):
    import os

    from corpusforge.errors import ConfigError

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"r{i}", "text": f"row {i}"}) + "\n" for i in range(3)))
    raw = {"name": "t", "workdir": str(tmp_path / "w"), "stages": [{"kind": "read_jsonl", "path": str(src)}]}
    assert run_recipe(validate_recipe(raw)).status == DONE
    assert run_recipe(validate_recipe(raw)).status == DONE  # unchanged: a no-op
    with open(src, "a") as fh:
        fh.write(json.dumps({"id": "r3", "text": "row 3"}) + "\n")
    with pytest.raises(ConfigError, match="input files of stage 'read_jsonl' changed since it ran.*--force"):
        run_recipe(validate_recipe(raw))
    res = run_recipe(validate_recipe(raw), force=True)
    assert res.status == DONE and res.stages[0].manifest["rows"] == 4
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, touched: also a change
    with pytest.raises(ConfigError, match="changed since it ran"):
        run_recipe(validate_recipe(raw))

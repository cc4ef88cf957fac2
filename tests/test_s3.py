"""S3-compatible object storage (issue 14), against moto's threaded server on 127.0.0.1: inputs read from
``s3://``, a finished stage folder published and fetched back, a killed publish resumed, credentials kept out.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from corpusforge.errors import DONE, ConfigError, FatalError
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths, validate_folder
from tests.conftest import cli_env

SECRET = "s3cr3t-never-written-anywhere"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS variables point at it."""
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "corpusforge-test",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": url,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from pyarrow import fs as pafs

    from corpusforge.objstore import filesystem

    pafs.S3FileSystem(endpoint_override=url, region="us-east-1", allow_bucket_creation=True).create_dir("bucket")
    fs = filesystem()
    try:
        yield fs, url, env
    finally:
        server.stop()


def _put(fs, key: str, data: bytes) -> None:
    with fs.open_output_stream(key) as out:
        out.write(data)


def _rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"d{i}", "text": f"Document number {i} says something of its own, sentence {i}.", "url": f"u{i}"}
        for i in range(start, start + n)
    ]


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _read(tmp_path: Path, kind: str, path: str, name: str, **params) -> list:
    recipe = {"name": "t", "workdir": str(tmp_path / name), "stages": [{"kind": kind, "path": path, **params}]}
    res = run_recipe(validate_recipe(recipe))
    assert res.status == DONE, res.message
    return sorted((d.id, d.text, d.html) for d in iter_documents(manifest_paths(tmp_path / name / kind)))


def test_read_jsonl_from_a_prefix_gives_what_the_same_files_give_locally(tmp_path, s3):
    fs, url, _ = s3
    a, b = _jsonl(_rows(5)), gzip.compress(_jsonl(_rows(4, start=5)))
    _put(fs, "bucket/in/part-0.jsonl", a)
    _put(fs, "bucket/in/sub/part-1.jsonl.gz", b)
    _put(fs, "bucket/in/notes.txt", b"not an input")
    local = tmp_path / "in"
    (local / "sub").mkdir(parents=True)
    (local / "part-0.jsonl").write_bytes(a)
    (local / "sub" / "part-1.jsonl.gz").write_bytes(b)
    remote = _read(tmp_path, "read_jsonl", "s3://bucket/in", "remote", tasks=2, source="in")
    assert len(remote) == 9
    assert remote == _read(tmp_path, "read_jsonl", str(local), "local", tasks=2, source="in")


def test_read_html_and_warc_from_object_storage(tmp_path, s3):
    fs, url, _ = s3
    _put(fs, "bucket/site/a.html", b"<html><body><p>first page</p></body></html>")
    _put(fs, "bucket/site/d/b.htm", b"<html><body><p>second page</p></body></html>")
    docs = _read(tmp_path, "read_html", "s3://bucket/site/", "html", endpoint_url=url)
    assert [h for _, _, h in docs] and all("page" in h for _, _, h in docs) and len(docs) == 2
    warcio = pytest.importorskip("warcio")
    import io

    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
    body = b"<html><body><p>archived</p></body></html>"
    w.write_record(
        w.create_warc_record("http://example.org/", "response", payload=io.BytesIO(body), http_headers=headers)
    )
    assert warcio
    _put(fs, "bucket/warc/x.warc.gz", buf.getvalue())
    got = _read(tmp_path, "read_warc", "s3://bucket/warc/x.warc.gz", "warc")
    assert len(got) == 1 and "archived" in got[0][2]


def test_a_missing_bucket_or_an_empty_prefix_is_a_config_error_naming_the_field(tmp_path, s3):
    for path, message in (("s3://no-such-bucket/x", "no-such-bucket"), ("s3://bucket/empty/", "no input files")):
        recipe = {"name": "t", "workdir": str(tmp_path / "w"), "stages": [{"kind": "read_jsonl", "path": path}]}
        with pytest.raises(ConfigError, match=message) as info:
            validate_recipe(recipe)
        assert "stages[0].path" in str(info.value)
        assert SECRET not in str(info.value)


def _finished_tokens(tmp_path: Path, shared_data: Path) -> Path:
    """A small build's tokens folder (clean, dedup, tokenizer, tokens) from Shakespeare's speeches."""
    from corpusforge.defaults import build_recipe

    text = (shared_data / "tinyshakespeare.txt").read_text()[:120_000]
    speeches = [s.replace("\n", " ") for s in text.split("\n\n") if len(s.split()) > 60]
    rows = [{"id": f"d{i}", "text": " ".join(speeches[i : i + 2])} for i in range(0, 60, 2)]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = build_recipe(src, workdir=tmp_path / "build", vocab_size=300, tokenizer="bpe", near_dedup=False)
    assert run_recipe(validate_recipe(raw)).status == DONE
    return tmp_path / "build" / "tokens"


def _cli(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", *args],
        cwd=cwd,
        env=cli_env() | env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow  # a build, then CLI publish and fetch runs
def test_publish_killed_midway_then_rerun_then_fetch_gives_a_loadable_tokens_folder(tmp_path, s3, shared_data):
    fs, url, env = s3
    tokens = _finished_tokens(tmp_path, shared_data)
    dest = "s3://bucket/published/tokens"
    killed = _cli("publish", str(tokens), dest, cwd=tmp_path, env=env | {"CORPUSFORGE_FAULT": "publish:2"})
    assert killed.returncode == 137, killed.stderr
    assert fs.get_file_info("bucket/published/tokens/manifest.json").type.name == "NotFound"  # never before the files
    early = _cli("fetch", dest, str(tmp_path / "early"), cwd=tmp_path, env=env)
    assert early.returncode != 0 and "publish did not finish" in early.stderr
    rerun = _cli("publish", str(tokens), dest, cwd=tmp_path, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "2 already there" in rerun.stdout  # the verified files of the killed run were not sent again
    again = _cli("publish", str(tokens), dest, cwd=tmp_path, env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    got = _cli("fetch", dest, str(tmp_path / "fetched"), cwd=tmp_path, env=env)
    assert got.returncode == 0, got.stderr
    fetched = tmp_path / "fetched"
    assert validate_folder(fetched) == []
    assert json.loads((fetched / "manifest.json").read_text()) == json.loads((tokens / "manifest.json").read_text())
    datasets = pytest.importorskip("datasets")
    dd = datasets.load_from_disk(str(fetched))
    assert dd["train"].num_rows > 0
    # The credentials are in no file written, here or in the bucket.
    written = [p for p in (tmp_path / "build").rglob("*") if p.is_file()] + [
        p for p in fetched.rglob("*") if p.is_file()
    ]
    assert all(SECRET.encode() not in p.read_bytes() for p in written)
    from pyarrow import fs as pafs

    for info in fs.get_file_info(pafs.FileSelector("bucket", recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as s:
                assert SECRET.encode() not in s.read()


def test_a_stage_folder_that_differs_from_its_manifest_is_not_published(tmp_path, s3, shared_data):
    from corpusforge.objstore import publish

    tokens = _finished_tokens(tmp_path, shared_data)
    shard = next(tokens.rglob("*.arrow"))
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FatalError, match="does not match its manifest.json"):
        publish(tokens, "s3://bucket/bad")
    with pytest.raises(ConfigError, match="not a finished stage folder"):
        publish(tmp_path, "s3://bucket/bad")


def test_a_fetched_file_that_differs_from_the_manifest_is_refused(tmp_path, s3, shared_data):
    from corpusforge.objstore import fetch, publish

    fs, url, _ = s3
    tokens = _finished_tokens(tmp_path, shared_data)
    publish(tokens, "s3://bucket/t")
    name = json.loads((tokens / "manifest.json").read_text())["files"][0]["name"]
    _put(fs, f"bucket/t/{name}", b"replaced behind our back")
    with pytest.raises(FatalError, match="sha256"):
        fetch("s3://bucket/t", tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()

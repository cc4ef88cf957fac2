"""Proofs of RELIABILITY items the audit found weakly tested: 59, 31, 58, 51, 56, 57, 27, 52."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from corpusforge.errors import BAD_CONFIG, DONE, FAILED, ConfigError, ShardError
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import (
    MANIFEST,
    iter_documents,
    load_manifest,
    manifest_paths,
    sha256_file,
    validate_folder,
)
from tests.conftest import cli_env

SECRET = "SECRETxyz123"


def _cli(*args, cwd, env=None, timeout=120, **kw):
    return subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", *map(str, args)],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# --------------------------------------------------------------------------------------------------- 59
def _rows(n: int) -> str:
    return "".join(json.dumps({"id": f"r{i}", "text": f"record {i} " * 50}) + "\n" for i in range(n))


@pytest.mark.parametrize("gz", [False, True], ids=["jsonl", "jsonl.gz"])
def test_a_cut_jsonl_is_named_in_the_stats_and_in_a_warning(tmp_path, gz, caplog):
    """59: a cut JSONL / .jsonl.gz names the file in stats.json (task_extra truncated_files) and a warning."""
    if gz:
        packed = gzip.compress(_rows(6).encode())
        f = tmp_path / "cut.jsonl.gz"
        f.write_bytes(packed[: len(packed) - 30])  # the end of the stream and the trailer are gone
    else:
        f = tmp_path / "cut.jsonl"
        f.write_text(_rows(6)[:-40])  # the last line loses its end
    whole = tmp_path / "whole.jsonl"
    whole.write_text(_rows(3))
    caplog.set_level(logging.WARNING)
    raw = {"name": "t", "workdir": str(tmp_path / "w"), "stages": [{"kind": "read_jsonl", "path": str(f)}]}
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE, res.message
    assert res.stages[0].steps[0]["dropped"] == {"truncated_record": 1}
    stats = json.loads((tmp_path / "w" / "read_jsonl" / "stats" / "stats.json").read_text())
    assert stats["task_extra"][0]["truncated_files"] == [str(f)]
    cut_lines = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert cut_lines and all(str(f) in m for m in cut_lines), caplog.text
    # A whole file is not reported.
    caplog.clear()
    raw = {"name": "t", "workdir": str(tmp_path / "w2"), "stages": [{"kind": "read_jsonl", "path": str(whole)}]}
    assert run_recipe(validate_recipe(raw)).status == DONE
    stats = json.loads((tmp_path / "w2" / "read_jsonl" / "stats" / "stats.json").read_text())
    assert not any(t.get("truncated_files") for t in stats.get("task_extra", []))
    assert "cut short" not in caplog.text


# --------------------------------------------------------------------------------------------------- 31
RECIPE = """
name = "t"
workers = 2

[[stages]]
kind = "test_source"
docs = {docs}
tasks = 3

[[stages]]
kind = "process"
name = "clean"
tasks = 2
steps = [{{ type = "test_min_words", min_words = {min_words} }}]
"""


def _recipe(tmp_path: Path, docs=300, min_words=12, name="r.toml") -> Path:
    p = tmp_path / name
    p.write_text(RECIPE.format(docs=docs, min_words=min_words))
    return p


def _marked_files(stage: Path) -> set[str]:
    names: set[str] = set()
    for marker in (stage / "completions").glob("*.json"):
        names |= {f["name"] for f in json.loads(marker.read_text())["files"]}
    return names


def test_after_a_write_error_every_final_shard_is_listed_by_a_marker(tmp_path):
    """31: after EFBIG mid-stage, no shard under a final name lacks a completion marker listing it (with its
    size and sha256), and no temp file is left."""
    import resource
    import signal

    recipe = _recipe(tmp_path, docs=3000)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    out = _cli("run", recipe, "--workdir", "w", cwd=tmp_path, preexec_fn=limit)
    assert out.returncode == FAILED, out.stderr
    src = tmp_path / "w" / "test_source"
    assert not (src / MANIFEST).exists()
    arrows = {p.name for p in src.glob("*.arrow")}
    assert arrows <= _marked_files(src), f"unmarked shards: {sorted(arrows - _marked_files(src))}"
    for marker in (src / "completions").glob("*.json"):
        for f in json.loads(marker.read_text())["files"]:
            path = src / f["name"]
            assert path.stat().st_size == f["bytes"] and sha256_file(path) == f["sha256"]
    assert not list((tmp_path / "w").rglob("*.tmp"))


# --------------------------------------------------------------------------------------------------- 58
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_in_a_step_parameter_are_refused_with_the_field_path(bad):
    """58: a process step's float (a filter's ratio)."""
    raw = {
        "name": "t",
        "stages": [
            {"kind": "test_source"},
            {"kind": "process", "steps": [{"type": "gopher_quality", "max_symbol_word_ratio": bad}]},
        ],
    }
    with pytest.raises(ConfigError) as e:
        validate_recipe(raw)
    assert str(e.value).startswith("stages[1].steps[0].max_symbol_word_ratio: expected a finite number"), e.value


@pytest.mark.parametrize("text", ["nan", "inf"])
def test_nan_from_the_command_line_into_a_step_parameter_is_refused(tmp_path, text):
    p = tmp_path / "r.toml"
    p.write_text(
        'name = "t"\n[[stages]]\nkind = "test_source"\n'
        '[[stages]]\nkind = "process"\nname = "clean"\nsteps = [{ type = "gopher_quality" }]\n'
    )
    out = _cli("run", p, "--workdir", "w", "--set", f"clean.steps[0].max_symbol_word_ratio={text}", cwd=tmp_path)
    assert out.returncode == BAD_CONFIG, out.stderr
    assert "steps[0].max_symbol_word_ratio: expected a finite number" in out.stderr, out.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_train_set_lr_nan_is_refused_with_exit_2_naming_lr(tmp_path):
    pytest.importorskip("torch")
    for text in ("nan", "inf"):
        out = _cli("train", tmp_path / "none", "--out", tmp_path / "o", "--set", f"lr={text}", cwd=tmp_path)
        assert out.returncode == BAD_CONFIG, out.stdout + out.stderr
        assert "lr: expected a finite number" in out.stderr, out.stderr
        assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------------- 51
@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('backend = "requets+lxml"', ["stages[0].backend", "Did you mean 'requests+lxml'"]),
        ("min_delay_s = -1", ["stages[0].min_delay_s", ">= 0"]),
    ],
    ids=["backend", "delay"],
)
def test_cli_crawl_config_errors_exit_2_with_the_field_path_before_anything_starts(tmp_path, line, words):
    """51: unknown backend / negative delay through ``corpusforge run``: exit 2, field path, nothing made."""
    spider = Path(__file__).resolve().parent.parent / "spiders" / "demo.toml"
    p = tmp_path / "crawl.toml"
    p.write_text(f'name = "c"\n[[stages]]\nkind = "crawl"\nspider = "{spider}"\n{line}\n')
    out = _cli("run", p, "--workdir", "w", cwd=tmp_path)
    assert out.returncode == BAD_CONFIG, out.stderr
    for w in words:
        assert w in out.stderr, out.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------------------- 56
def _jsonl_folder(folder: Path, letters: str) -> None:
    """Two JSONL files whose records have the same lengths: shards of identical size, different bytes."""
    folder.mkdir(parents=True)
    for k, name in enumerate(("a", "b")):
        (folder / f"{name}.jsonl").write_text(
            "".join(json.dumps({"id": f"{name}{i}", "text": f"{letters[k]}ord " * 30}) + "\n" for i in range(20))
        )


def _swap_raw(tmp_path: Path, workdir: str, letters: str) -> dict:
    _jsonl_folder(tmp_path / f"in-{workdir}", letters)
    return {
        "name": "t",
        "workdir": str(tmp_path / workdir),
        "workers": 1,
        "stages": [
            {"kind": "read_jsonl", "name": "docs", "path": str(tmp_path / f"in-{workdir}"), "tasks": 2},
            {"kind": "exact_dedup", "name": "dedup", "input": "docs"},
        ],
    }


@pytest.mark.parametrize("how", ["exchanged", "other_run"])
def test_a_swapped_shard_in_a_finished_stage_stops_the_next_reader(tmp_path, how):
    """56: two shards of the same size exchanged, or one replaced by another run's shard of the same name."""
    raw = _swap_raw(tmp_path, "w", "wx")
    assert run_recipe(validate_recipe(raw)).status == DONE
    docs = tmp_path / "w" / "docs"
    a, b = docs / "00000.arrow", docs / "00001.arrow"
    if how == "exchanged":
        assert a.stat().st_size == b.stat().st_size and sha256_file(a) != sha256_file(b)
        tmp = docs / "swap"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    else:
        other = _swap_raw(tmp_path, "o", "yz")
        assert run_recipe(validate_recipe(other)).status == DONE
        theirs = tmp_path / "o" / "docs" / "00000.arrow"
        assert theirs.stat().st_size == a.stat().st_size and sha256_file(theirs) != sha256_file(a)
        shutil.copyfile(theirs, a)
    assert validate_folder(docs)  # validate sees it
    with pytest.raises(ShardError, match=r"docs/00000\.arrow: .*sha256"):
        list(iter_documents(manifest_paths(docs)))
    raw["stages"][1]["max_shard_bytes"] = 1 << 20  # dedup rebuilt (forced); docs skipped (sizes match)
    res = run_recipe(validate_recipe(raw), force=True)
    assert res.status == FAILED and "docs/0000" in res.message and "sha256" in res.message, res.message
    assert not (tmp_path / "w" / "dedup" / MANIFEST).exists()


# --------------------------------------------------------------------------------------------------- 57
@pytest.mark.slow
def test_cli_a_step_failing_on_most_documents_fails_the_run_then_force_rebuilds(tmp_path):
    """57: exit 1, the cause on stderr without -v, no manifest; --force with a changed config rebuilds it."""
    p = tmp_path / "r.toml"
    p.write_text(
        'name = "t"\n[[stages]]\nkind = "test_source"\ndocs = 200\ntasks = 2\n'
        '[[stages]]\nkind = "process"\nname = "clean"\nsteps = [{ type = "test_fail_most" }]\n'
    )
    out = _cli("run", p, "--workdir", "w", cwd=tmp_path)
    assert out.returncode == FAILED, out.stderr
    assert "step 'test_fail_most' failed on" in out.stderr and "cannot parse" in out.stderr, out.stderr
    assert not (tmp_path / "w" / "clean" / MANIFEST).exists()
    assert (tmp_path / "w" / "test_source" / MANIFEST).is_file()
    fixed = ("--set", "clean.steps[0].fail=false")
    out = _cli("run", p, "--workdir", "w", *fixed, "--force", cwd=tmp_path)
    assert out.returncode == DONE, out.stderr
    assert validate_folder(tmp_path / "w" / "clean") == []
    assert load_manifest(tmp_path / "w" / "clean")["rows"] == 200


# --------------------------------------------------------------------------------------------------- 27
def _stream_shard(path: Path, batches: int, rows: int = 5) -> None:
    schema = pa.schema([("input_ids", pa.list_(pa.uint16()))])
    with pa.OSFile(str(path), "wb") as sink, ipc.new_stream(sink, schema) as w:
        for b in range(batches):
            w.write_batch(pa.record_batch([pa.array([[b, i, 1, 2] for i in range(rows)], schema[0].type)], schema))


def test_a_stream_shard_cut_at_a_batch_boundary_is_refused_naming_the_file(tmp_path):
    """27: an IPC stream cut after batch k reads without any Arrow error; the manifest check refuses it, both
    as a size mismatch and (manifest size and sha256 matched to the cut file) as a row-count mismatch."""
    from corpusforge.storage import file_record, iter_batches, write_manifest

    folder = tmp_path / "tok"
    folder.mkdir()
    whole = tmp_path / "whole.arrow"
    _stream_shard(whole, 3)
    cut_at = tmp_path / "one.arrow"  # the bytes of a stream with only the first batch, minus its end marker
    _stream_shard(cut_at, 1)
    k1 = cut_at.stat().st_size - 8  # the 8-byte end-of-stream marker
    assert whole.read_bytes()[:k1] == cut_at.read_bytes()[:k1]
    shard = folder / "00000.arrow"
    shutil.copyfile(whole, shard)
    write_manifest(folder, [file_record(shard, rows=15)], config={})
    assert sum(b.num_rows for b in iter_batches(shard)) == 15
    shard.write_bytes(whole.read_bytes()[:k1])
    # Unlisted, the cut stream reads without error: only the manifest can tell.
    assert sum(b.num_rows for b in ipc.open_stream(pa.BufferReader(shard.read_bytes()))) == 5
    with pytest.raises(ShardError, match=r"tok/00000\.arrow: missing or size differs"):
        list(iter_batches(shard))
    listed = file_record(shard, rows=15)  # size and sha256 of the cut file, rows of the whole one
    write_manifest(folder, [listed], config={})
    with pytest.raises(ShardError, match=r"tok/00000\.arrow: 5 rows, manifest\.json says 15"):
        list(iter_batches(shard))


def test_a_document_shard_whose_manifest_rows_differ_is_refused(tmp_path):
    from corpusforge.document import Document
    from tests.helpers import WORDS, write_doc_shards

    docs = [Document(id=f"d{i:05d}", text=" ".join(WORDS[: 3 + i % 5])) for i in range(60)]
    folder = tmp_path / "docs"
    write_doc_shards(folder, docs, per_file=30)
    assert len(list(iter_documents(manifest_paths(folder)))) == 60
    m = json.loads((folder / MANIFEST).read_text())
    m["files"][1]["rows"] = 31
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"docs/00001\.arrow: 30 rows, manifest\.json says 31"):
        list(iter_documents(manifest_paths(folder)))
    assert any("00001.arrow: 30 rows" in p for p in validate_folder(folder))


# --------------------------------------------------------------------------------------------------- 52
@pytest.fixture
def real_logging():
    """corpusforge.console.setup_logging on the root logger; the test's handlers restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def test_secrets_never_reach_a_log_line_or_a_traceback(real_logging, capsys):
    """52: through setup_logging's real handler (RedactingFilter): secret-looking keys from a spider file or a
    recipe value, URL credentials in arguments of any type, and an exception logged with exc_info."""
    import tomllib

    from corpusforge.console import setup_logging

    setup_logging()
    log = logging.getLogger("corpusforge.tests.proofs")
    spider = tomllib.loads(f'name = "s"\napi_key = "{SECRET}a"\n[headers]\nauthorization = "Bearer {SECRET}b"\n')
    log.warning("spider settings: %s", spider)  # a dict argument
    log.warning("recipe value: %s", f"proxy_password={SECRET}c")  # a string argument
    log.warning("seeds %s", [f"https://u:{SECRET}d@127.0.0.1/"])  # a list argument
    log.warning(f"fetching https://u:{SECRET}e@127.0.0.1/ with token: {SECRET}f")  # in the message itself
    log.warning("%(url)s failed", {"url": f"https://u:{SECRET}g@127.0.0.1/"})  # a mapping argument
    try:
        raise ConnectionError(f"cannot reach https://u:{SECRET}h@127.0.0.1/")
    except ConnectionError:
        log.error("fetch failed", exc_info=True)
    err = capsys.readouterr().err
    assert SECRET not in err, err
    assert "spider settings:" in err and "fetch failed" in err and "Traceback" in err
    assert "https://***@127.0.0.1/" in err and "ConnectionError: cannot reach" in err
    assert "https://***@127.0.0.1/ failed" in err  # the mapping still formats


@pytest.mark.slow
def test_the_dataset_card_never_holds_a_secret_planted_in_the_recipe(tmp_path):
    """52: a secret in the recipe (a source URL with credentials, a secret-looking step key's value, the input
    URLs) appears nowhere in the tokens folder's README.md, manifest or stats."""
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "text": f"hello world {i} " * 20, "url": f"https://u:{SECRET}@127.0.0.1/{i}"})
            + "\n"
            for i in range(60)
        )
    )
    raw = {
        "name": "sec",
        "workdir": str(tmp_path / "w"),
        "workers": 1,
        "stages": [
            {"kind": "read_jsonl", "name": "docs", "path": str(src), "source": f"https://u:{SECRET}@127.0.0.1/feed"},
            {"kind": "process", "name": "clean", "steps": [{"type": "test_min_words", "min_words": 2}]},
            {"kind": "tokenizer", "algorithm": "char"},
            {"kind": "tokens", "input": "clean", "val_fraction": 0.1},
        ],
    }
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE, res.message
    tokens = tmp_path / "w" / "tokens"
    card = (tokens / "README.md").read_text()
    assert card.startswith("---") and "## Tokenizer" in card
    for f in [tokens / "README.md", tokens / MANIFEST, *tokens.glob("stats/*.json"), *tokens.glob("*.json")]:
        assert SECRET not in f.read_text(), f

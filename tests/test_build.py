"""`corpusforge build SOURCE`: local inputs all the way to token shards, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("near_dedup", [True, False])
@pytest.mark.slow
def test_build_from_jsonl_writes_validated_token_shards(tmp_path, shared_data, near_dedup):
    text = (shared_data / "tinyshakespeare.txt").read_text()[:120_000]
    speeches = [s.replace("\n", " ") for s in text.split("\n\n") if len(s.split()) > 60]
    chunks = [" ".join(speeches[i : i + 2]) for i in range(0, 80, 2)]
    rows = [{"id": f"d{i}", "text": c, "url": f"https://example.org/{i}"} for i, c in enumerate(chunks)]
    rows.append(dict(rows[3], id="copy-of-d3"))  # an exact duplicate, removed by the dedup stage
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["build", str(src), "--workdir", "w", "--vocab-size", "300"] + ([] if near_dedup else ["--no-near-dedup"])
    out = _cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    w = tmp_path / "w"
    assert (w / "tokenizer" / "tokenizer.json").is_file()
    dedup = json.loads((w / "dedup" / "stats" / "stats.json").read_text())["steps"][0]
    assert dedup["dropped"] == {"exact_duplicate": 1}  # the copy of d3
    last = json.loads((w / ("near_dedup" if near_dedup else "dedup") / "manifest.json").read_text())
    manifest = json.loads((w / "tokens" / "manifest.json").read_text())
    assert manifest["documents"]["train"] + manifest["documents"]["val"] == last["rows"] >= 30
    assert (w / "near_dedup").is_dir() == near_dedup
    clean = json.loads((w / "clean" / "stats" / "stats.json").read_text())
    assert [st["name"] for st in clean["steps"]][0] == "normalize"  # JSONL is text: no HTML extraction
    assert _cli("validate", str(w), cwd=tmp_path).returncode == 0


def test_build_where_every_document_is_filtered_fails_clearly(tmp_path):
    """Text that every quality filter rejects: no useless tokenizer is written, exit 1 with the reason."""
    rows = [{"id": f"d{i}", "text": "buy now " * 80} for i in range(5)]
    src = tmp_path / "spam.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = _cli("build", str(src), "--workdir", "w", "--vocab-size", "300", cwd=tmp_path)
    assert out.returncode == 1
    assert "no text to train the tokenizer on" in out.stderr
    assert not (tmp_path / "w" / "tokenizer" / "tokenizer.json").exists()
    assert not (tmp_path / "w" / "tokens").exists()

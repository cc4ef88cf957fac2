"""The embedded demo end to end at reduced size, through the CLI as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import cli_env

pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # the whole path end to end (~40 s)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    out = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "demo", "--workdir", "run", "--train-iters", "30"],
        cwd=d,
        env=cli_env() | {"CORPUSFORGE_CARD_PLOTS": "1"},  # the demo as a user gets it: the card with its plots
        capture_output=True,
        text=True,
        timeout=600,
    )
    return d, out


def test_demo_runs_every_stage_and_prints_the_summary(demo_run):
    d, out = demo_run
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for row in (
        "pages fetched and stored",
        "clean: documents in → kept",
        "exact_duplicate",
        "near_duplicate",
        "robots_disallowed",
        "optout_robots_ai 1",  # /members/: closed to GPTBot in the site's robots.txt
        "optout_tdm_reservation 1",  # a page sent with tdm-reservation: 1
        "tokens (train / val)",
        "train loss",
        "val loss",
        "sample",
    ):
        assert row in text, row
    assert "\x1b" not in text  # not a TTY: no control characters
    run = d / "run"
    crawl = json.loads((run / "crawl" / "manifest.json").read_text())
    assert crawl["rows"] >= 100
    near = json.loads((run / "near_dedup" / "stats" / "stats.json").read_text())["steps"][0]
    assert near["dropped"]["near_duplicate"] >= 2
    tokens = json.loads((run / "tokens" / "manifest.json").read_text())
    assert tokens["tokens"]["train"] > 10_000 and tokens["dtype"] == "uint16"
    assert (run / "train" / "loss.png").is_file() and (run / "train" / "samples.txt").is_file()
    card = json.loads((run / "card.json").read_text())  # the run's data card, with its plots
    assert [s["name"] for s in card["stages"]][:2] == ["crawl", "clean"] and card["plots"]
    assert all((run / p).stat().st_size > 1000 for p in card["plots"].values())
    assert (run / "README.md").read_text().startswith("---\npretty_name:")
    docs = tokens["documents"]  # the minimum validation split (it was one document): a fifth of a small corpus
    assert docs["val"] >= 5 and docs["val"] <= (docs["train"] + docs["val"]) // 5 + 2, docs


def test_validate_passes_on_the_demo_output_and_fails_on_a_truncated_shard(demo_run, tmp_path):
    d, _ = demo_run
    ok = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "validate", "run"],
        cwd=d,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and "FAIL" not in ok.stdout, ok.stdout
    import shutil

    copy = tmp_path / "tokens"
    shutil.copytree(d / "run" / "tokens", copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    shard = copy / manifest["files"][0]["name"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    bad = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "validate", str(copy)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "truncated or altered" in bad.stdout


def test_rerunning_the_finished_demo_recipe_is_a_noop(demo_run):
    d, _ = demo_run
    before = {p: p.stat().st_mtime_ns for p in (d / "run").rglob("*.arrow")}
    out = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "run", "run/recipe.resolved.toml", "--workdir", "run"],
        cwd=d,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert before and {p: p.stat().st_mtime_ns for p in (d / "run").rglob("*.arrow")} == before
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("skipped") >= 10

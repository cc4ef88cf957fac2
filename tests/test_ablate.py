"""``corpusforge ablate``: shared stages built once, decontamination, verdicts, resume after kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from corpusforge.ablate import ablation_from_dict, load_ablation, run_ablation
from corpusforge.ablate_report import BETTER, SAME, UNJUDGED, WORSE, verdict
from corpusforge.dedup.decontam import HeldoutIndex
from corpusforge.errors import DONE, ConfigError
from tests.conftest import cli_env

torch = pytest.importorskip("torch")

SUBJ = "the cat|a dog|the old man|my sister|the teacher|a small bird|the farmer|our neighbour".split("|")
VERB = "sees|likes|finds|carries|paints|follows|remembers|watches".split("|")
OBJ = "the red ball|a wooden box|the river|an apple|the garden gate|a long letter|the blue car|her hat".split("|")
ADV = "today|slowly|every morning|in the rain|without a word|after dinner".split("|")


def sentences(rng: random.Random, n: int = 12) -> str:
    """A document of a small grammar a tiny model learns in a few hundred steps."""
    return " ".join(
        f"{rng.choice(SUBJ).capitalize()} {rng.choice(VERB)} {rng.choice(OBJ)} {rng.choice(ADV)}." for _ in range(n)
    )


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with path.open("w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"{path.stem}-{i}", "text": t}) + "\n")
    return path


def corpus(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [sentences(rng) for _ in range(n)]


def shuffled(texts: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for t in texts:
        chars = list(t)
        rng.shuffle(chars)
        out.append("".join(chars))
    return out


BASE = """name = "tiny"
[[stages]]
kind = "read_jsonl"
name = "input"
path = "{d}/clean.jsonl"
[[stages]]
kind = "process"
name = "clean"
steps = [{{ type = "normalize" }}]
"""

MODEL = """[model]
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
batch_size = 8
"""


def make_project(d: Path, *, tokens: int = 20_000, variants: str = "") -> Path:
    heldout = corpus(3, 20)
    write_jsonl(d / "clean.jsonl", corpus(1, 300))
    write_jsonl(d / "heldout.jsonl", heldout)
    write_jsonl(d / "junk.jsonl", shuffled(corpus(2, 300), 5))
    # The base corpus plus a copy of held-out document 0, and held-out document 1 inside a longer page.
    planted = corpus(1, 300) + [heldout[0], "Menu. Home. About. " + heldout[1] + " Copyright notice."]
    write_jsonl(d / "planted.jsonl", planted)
    (d / "base.toml").write_text(BASE.format(d=d))
    (d / "ab.toml").write_text(
        f'base = "base.toml"\nheldout = "heldout.jsonl"\ntokens = {tokens}\nseeds = 2\nevals = 3\n'
        f'vocab_size = 300\nworkdir = "{d}/out"\n{MODEL}{variants.format(d=d)}'
    )
    return d / "ab.toml"


VARIANTS = """
[variants.same]
set = []
[variants.filtered]
set = ['clean.steps=[{{type = "normalize"}}, {{type = "length", min_words = 1}}]']
[variants.junk]
set = ["input.path={d}/junk.jsonl"]
[variants.planted]
set = ["input.path={d}/planted.jsonl"]
"""


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    d = tmp_path_factory.mktemp("ablate")
    ab = load_ablation(make_project(d, variants=VARIANTS))
    status, report = run_ablation(ab, quiet=True)
    assert status == DONE
    return d, ab, report


def row(report, name):
    return next(r for r in report["variants"] if r["name"] == name)


def test_identical_variant_runs_nothing_and_gets_no_difference(ablation):
    d, _, report = ablation
    same = row(report, "same")
    assert same["run"] is None and not (d / "out" / "variants" / "same").exists()
    assert same["verdict"] == SAME and same["diff_mean"] == 0.0
    assert set(same["stages_shared"]) >= {"input", "clean", "decontaminate", "tokens", "train-seed1", "train-seed2"}


def test_a_variant_reads_the_shared_stages_from_their_owner(ablation):
    d, _, report = ablation
    filtered = row(report, "filtered")
    assert filtered["stages_shared"] == ["input"] and filtered["shared_with"] == ["base"]
    vdir = d / "out" / "variants" / "filtered"
    assert not (vdir / "input").exists()  # not built twice, not copied
    import tomllib

    stages = tomllib.loads((vdir / "recipe.resolved.toml").read_text())["stages"]
    assert stages[0] == {
        "kind": "shards",
        "name": "input",
        "path": str(d / "out" / "variants" / "base" / "input"),
        "track_config": True,
    }
    # Every stage folder of the whole ablation holds a distinct stage: no config hash is built twice.
    hashes = [json.loads(p.read_text())["config_hash"] for p in (d / "out").rglob("stage.json")]
    assert len(hashes) == len(set(hashes))
    # The variant's data card links back to the ablation's report.
    assert "../../ablation.md" in (vdir / "README.md").read_text()


def test_junk_is_worse(ablation):
    _, _, report = ablation
    junk = row(report, "junk")
    assert junk["verdict"] == WORSE
    assert junk["diff_mean"] > 0.5  # bits per byte: shuffled characters teach nothing about the held-out text


def test_planted_heldout_copies_are_removed_and_counted(ablation):
    d, _, report = ablation
    planted = row(report, "planted")
    assert planted["decontamination"] == {"documents_in": 302, "removed_exact": 1, "removed_near": 1}
    assert row(report, "base")["decontamination"]["removed_exact"] == 0
    manifest = json.loads((d / "out" / "variants" / "planted" / "decontaminate" / "manifest.json").read_text())
    assert sorted((r["reason"], r["heldout_id"]) for r in manifest["removed"]) == [
        ("heldout_exact", "heldout-0"),
        ("heldout_near", "heldout-1"),
    ]
    assert planted["documents"] == 300


def test_report_files_and_curves(ablation):
    d, ab, report = ablation
    out = d / "out"
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["variants"][0]["name"] == "base" and saved["training_tokens"] == ab.max_iters * ab.tokens_per_iter
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| junk |" in (out / "ablation.md").read_text()
    for r in report["variants"]:
        assert r["training_tokens"] == saved["training_tokens"]  # the same budget for every variant
        for s in r["seeds"]:
            tokens = [t for t, _ in s["curve"]]
            assert tokens == sorted(tokens) and tokens[-1] == saved["training_tokens"] and len(tokens) == 3
    # One tokenizer for all: every variant's shards name its sha256.
    for r in report["variants"]:
        if r["run"]:
            m = json.loads((Path(r["run"]) / "tokens" / "manifest.json").read_text())
            assert m["tokenizer_sha256"] == report["tokenizer"]["sha256"]


def test_rerun_changes_nothing(ablation):
    d, ab, report = ablation
    before = {p: p.stat().st_mtime_ns for p in (d / "out" / "variants").rglob("manifest.json")}
    status, again = run_ablation(load_ablation(d / "ab.toml"), quiet=True)
    assert status == DONE
    assert {p: p.stat().st_mtime_ns for p in (d / "out" / "variants").rglob("manifest.json")} == before
    assert [r["bpb_mean"] for r in again["variants"]] == [r["bpb_mean"] for r in report["variants"]]


def test_kill_and_rerun_keeps_finished_work(tmp_path):
    ab = make_project(tmp_path, tokens=40_000, variants='[variants.junk]\nset = ["input.path={d}/junk.jsonl"]\n')
    cmd = [sys.executable, "-m", "corpusforge.cli", "ablate", str(ab)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=cli_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    done = tmp_path / "out" / "variants" / "base" / "train-seed1" / "manifest.json"
    ckpt = tmp_path / "out" / "variants" / "base" / "train-seed2" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (done.is_file() and ckpt.is_dir() and any(ckpt.iterdir())):
        assert proc.poll() is None, "the ablation ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for _ in range(600):  # every process of the killed run gone (a worker's lock dies with it)
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    assert done.is_file(), "seed 1 did not finish in time"
    kept = done.stat().st_mtime_ns, (done.parent / "metrics.jsonl").read_bytes()
    assert not (tmp_path / "out" / "ablation.json").exists()
    out = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (done.stat().st_mtime_ns, (done.parent / "metrics.jsonl").read_bytes()) == kept
    report = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert [r["verdict"] for r in report["variants"]] == [None, WORSE]


def test_verdict_rule():
    assert verdict([-0.05, -0.06], 0.01, 0.01) == BETTER
    assert verdict([0.05, 0.06], 0.01, 0.02) == WORSE
    assert verdict([0.03, 0.05], 0.02, 0.01) == SAME  # 0.04 is not above 2 × 0.02
    assert verdict([0.0, 0.0], 0.0, 0.0) == SAME
    assert verdict([-1.0], 0.0, 0.0) == UNJUDGED


def test_heldout_index_rules():
    rng = random.Random(7)
    held = [sentences(rng, 20) for _ in range(3)]
    index = HeldoutIndex(held, ["h0", "h1", "h2"], ngram=5, min_shingles=20)
    unrelated = " ".join(f"word{i} alpha beta gamma" for i in range(60))
    texts = [
        "Header text. " + held[1] + " Footer text and a bit more.",  # a held-out page inside a longer one
        " ".join(held[2].split()[: len(held[2].split()) // 2]),  # half of one
        unrelated,
        "Coming soon.",
    ]
    got = index.best_overlap(texts)
    assert got[0][0] == 1 and got[0][1] > 0.95
    assert got[1][0] == 2 and got[1][1] == pytest.approx(1.0)
    assert got[2] == (-1, 0.0)
    assert got[3] == (-1, 0.0)  # under min_shingles: never matched on a phrase


def test_heldout_windows_predict_every_token_once(tmp_path):
    from corpusforge.train.heldout import HeldoutSet

    held = HeldoutSet.__new__(HeldoutSet)
    held.stream = torch.arange(103)
    held.tokens, held.block_size = 103, 10
    ys = torch.cat([y.reshape(-1) for _, y in held.windows()])
    assert ys.tolist() == list(range(1, 103))
    for x, y in held.windows():
        assert torch.equal(x + 1, y)


def test_heldout_set_refuses_a_tokenizer_that_changed_since_the_tokens(tmp_path):
    from corpusforge.storage import sha256_file
    from corpusforge.tokens.tokenizer import train_tokenizer
    from corpusforge.train.heldout import HeldoutSet

    tok = tmp_path / "tokenizer.json"
    train_tokenizer(corpus(1, 20), algorithm="char").save(str(tok))
    with pytest.raises(ConfigError, match="changed since the training tokens"):
        HeldoutSet(tmp_path / "held", tok, 16, tokenizer_sha256="0" * 64)
    with pytest.raises(ConfigError, match="is gone"):
        HeldoutSet(tmp_path / "held", tmp_path / "moved.json", 16, tokenizer_sha256=sha256_file(tok))
    with pytest.raises(ConfigError, match="not a finished document folder"):  # past the tokenizer checks
        HeldoutSet(tmp_path / "held", tok, 16, tokenizer_sha256=sha256_file(tok))


def test_config_errors_name_the_field(tmp_path):
    make_project(tmp_path)
    base = {"base": "base.toml", "heldout": "heldout.jsonl"}

    def load(extra):
        return ablation_from_dict(base | extra, base_dir=tmp_path, source="ab.toml")

    with pytest.raises(ConfigError, match="tokns"):
        load({"tokns": 5})
    with pytest.raises(ConfigError, match="set by the ablation"):
        load({"model": {"max_iters": 5}})
    with pytest.raises(ConfigError, match="does not train on"):
        (tmp_path / "full.toml").write_text(
            BASE.format(d=tmp_path) + '[[stages]]\nkind = "tokenizer"\nname = "tok"\ninput = "clean"\n'
        )
        load({"base": "full.toml", "variants": {"v": {"set": ["tok.vocab_size=500"]}}})
    with pytest.raises(ConfigError, match="did you mean 'clean'"):
        load({"corpus": "clena"})
    with pytest.raises(ConfigError, match="held-out set"):
        load({"heldout": "nope.jsonl"})
    with pytest.raises(ConfigError, match="seeds"):
        load({"seeds": [1, 1]})
    (tmp_path / "held.json").write_text(json.dumps([{"text": "a held-out page"}]))
    with pytest.raises(ConfigError, match="expected a .jsonl file"):  # a JSON array is not JSONL: refused by name
        run_ablation(load({"heldout": "held.json"}), quiet=True)


def test_a_heldout_set_without_text_is_refused_before_any_variant_runs(tmp_path):
    make_project(tmp_path)
    (tmp_path / "empty.jsonl").write_text(json.dumps({"id": "h0", "text": ""}) + "\n")
    ab = ablation_from_dict(
        {"base": "base.toml", "heldout": "empty.jsonl", "workdir": str(tmp_path / "out")},
        base_dir=tmp_path,
        source="ab.toml",
    )
    with pytest.raises(ConfigError, match="holds no text"):
        run_ablation(ab, quiet=True)
    assert not (tmp_path / "out" / "variants").exists()


def test_demo_heldout_pages_are_not_served():
    from corpusforge.demo.heldout import HELDOUT_MODULES
    from corpusforge.demo.site import MODULES

    assert HELDOUT_MODULES and not set(HELDOUT_MODULES) & set(MODULES)
    assert len(np.unique(HELDOUT_MODULES)) == len(HELDOUT_MODULES)


def test_tokens_made_with_another_tokenizer_are_refused_or_rebuilt(tmp_path):
    from corpusforge.ablate import stale_tokens

    make_project(tmp_path)
    (tmp_path / "tok.json").write_text("{}")
    spec = {"base": "base.toml", "heldout": "heldout.jsonl", "tokenizer": "tok.json"}
    ab = ablation_from_dict(spec, base_dir=tmp_path, source="ab.toml")
    wd = tmp_path / "v"
    (wd / "tokens").mkdir(parents=True)
    (wd / "train-seed1").mkdir()
    (wd / "tokens" / "manifest.json").write_text(json.dumps({"tokenizer_sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="another tokenizer"):
        stale_tokens(ab, wd, force=False)
    assert (wd / "tokens").is_dir()
    stale_tokens(ab, wd, force=True)
    assert not (wd / "tokens").exists() and not (wd / "train-seed1").exists()

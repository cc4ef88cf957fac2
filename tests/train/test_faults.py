"""Trainer faults through ``corpusforge train`` (RELIABILITY items 35, 36, 38).

- 35: ``kill -9`` inside a checkpoint save: the previous checkpoint loads, the partial one is ignored and
  removed by the next start, and the resume ends where an uninterrupted run ends.
- 36: a model file that is a pickle which would run code is refused with a clear message; the code never runs.
- 38: a NaN or inf loss: exit code 5, the last good checkpoint kept, none at or after the bad step.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from corpusforge.document import Document  # noqa: E402
from corpusforge.errors import DIVERGED, DONE, FAILED  # noqa: E402
from corpusforge.storage import sha256_file  # noqa: E402
from corpusforge.tokens.stage import write_token_shards  # noqa: E402
from corpusforge.tokens.tokenizer import train_tokenizer  # noqa: E402
from corpusforge.train import checkpoint as ckpt  # noqa: E402
from tests.conftest import cli_env  # noqa: E402
from tests.train.test_train import TEXT, TINY  # noqa: E402

KILLED = 137  # the fault hook's os._exit(137): what a SIGKILL leaves behind


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    tok = train_tokenizer([TEXT], algorithm="char")
    n = int(len(TEXT) * 0.9)
    docs = [
        Document(id="train", text=TEXT[:n], metadata={"split": "train"}),
        Document(id="val", text=TEXT[n:], metadata={"split": "val"}),
    ]
    write_token_shards(docs, tok, d / "tokens")
    return d / "tokens"


def _train(tokens: Path, out: Path, *, fault: str | None = None, **params: object) -> subprocess.CompletedProcess:
    sets = [f"--set={k}={v}" for k, v in (TINY | {"device": "cpu"} | params).items()]
    env = cli_env() | ({"CORPUSFORGE_FAULT": fault} if fault else {})
    return subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "train", str(tokens), "--out", str(out), *sets],
        cwd=out.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _names(ck_dir: Path) -> list[str]:
    return sorted(p.name for p in ck_dir.iterdir())


# ------------------------------------------------------------------------------------------ item 35
@pytest.mark.slow
def test_kill_inside_a_checkpoint_save_keeps_the_previous_one_and_the_resume_is_exact(tokens, tmp_path):
    run = {"max_iters": 15, "eval_interval": 5, "dropout": 0.1}
    straight = _train(tokens, tmp_path / "a", **run)
    assert straight.returncode == DONE, straight.stderr
    out = tmp_path / "b"
    ck = out / "checkpoints"
    # Dies inside the save of step 10, once model.safetensors is in the temp folder.
    killed = _train(tokens, out, fault="train_save:10", **run)
    assert killed.returncode == KILLED, killed.stderr
    partial = ck / "step-0000010.tmp"
    assert (partial / "model.safetensors").is_file() and not (partial / "state.json").exists()
    assert _names(ck) == ["step-0000005", "step-0000010.tmp"]  # nothing under the final name
    assert [p.name for p in ckpt.list_checkpoints(ck)] == ["step-0000005"]  # the partial one is ignored
    assert ckpt.load_one(ck / "step-0000005").state["step"] == 5  # the previous one still loads
    # The next start removes the partial save. This run dies at iteration 7, before it saves anything of its
    # own, so what is left shows what its start did.
    again = _train(tokens, out, fault="train:7", **run)
    assert again.returncode == KILLED, again.stderr
    assert _names(ck) == ["step-0000005"]
    resumed = _train(tokens, out, **run)
    assert resumed.returncode == DONE, resumed.stderr
    assert f"resumed from {ck / 'step-0000005'} at step 5" in resumed.stdout
    a, b = _losses(tmp_path / "a"), _losses(out)
    assert sorted(a) == sorted(b) == list(range(1, 16))
    assert a == b, [(k, a[k], b[k]) for k in a if a[k] != b.get(k)]
    for name in ("model.safetensors", "optim.safetensors"):
        assert sha256_file(ck / "step-0000015" / name) == sha256_file(
            tmp_path / "a" / "checkpoints" / "step-0000015" / name
        )
    assert not list(ck.glob("*.tmp"))


# ------------------------------------------------------------------------------------------ item 36
class _Evil:
    """Unpickling this writes ``marker``: the code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.write_text, (self.marker, "code ran"))


def _plant_pickle(checkpoint: Path, marker: Path) -> None:
    """Replace the model file by a pickle, and name its sha256 in state.json, as a crafted checkpoint would:
    only the loader's refusal of pickles stands between the file and its code."""
    payload = pickle.dumps(_Evil(marker))
    (checkpoint / "model.safetensors").write_bytes(payload)
    state = json.loads((checkpoint / "state.json").read_text())
    state["sha256"]["model.safetensors"] = hashlib.sha256(payload).hexdigest()
    (checkpoint / "state.json").write_text(json.dumps(state))


@pytest.mark.slow
def test_a_pickled_model_file_is_refused_with_a_clear_message_and_its_code_never_runs(tokens, tmp_path):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))  # the payload is armed: unpickling it runs its code
    assert control.read_text() == "code ran"
    out = tmp_path / "o"
    ck = out / "checkpoints"
    run = {"max_iters": 10, "eval_interval": 5}
    first = _train(tokens, out, **run)
    assert first.returncode == DONE, first.stderr
    marker = tmp_path / "pwned"
    _plant_pickle(ck / "step-0000010", marker)

    resumed = _train(tokens, out, **run)
    assert resumed.returncode == DONE, resumed.stderr
    refusal = (
        f"{ck / 'step-0000010' / 'model.safetensors'} is a Python pickle, not safetensors: refused without "
        "loading it, because unpickling can run arbitrary code"
    )
    assert refusal in resumed.stderr  # the error log line
    assert "warning: 1 newer checkpoint(s) corrupt" in resumed.stdout and "resuming from step-0000005" in resumed.stdout
    assert not marker.exists()
    assert ckpt.load_one(ck / "step-0000010").state["step"] == 10  # rewritten by the resumed run

    # Every checkpoint a pickle: nothing to resume from, a clear one-line error, and still no code run.
    for name in ("step-0000005", "step-0000010"):
        _plant_pickle(ck / name, marker)
    refused = _train(tokens, out, **run)
    assert refused.returncode == FAILED
    assert f"corpusforge: error: every checkpoint in {ck} is corrupt" in refused.stderr
    assert "is a Python pickle, not safetensors: refused without loading it" in refused.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ item 38
@pytest.mark.slow
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_a_nan_or_inf_loss_exits_5_and_keeps_the_last_good_checkpoint(tokens, tmp_path, bad):
    out = tmp_path / "o"
    # Iteration 8's loss becomes NaN (inf): its backward pass spoils the weights, as a real divergence does.
    # Losses are read back every 20 iterations, so only the check before the checkpoint at 10 can catch it.
    res = _train(tokens, out, fault=f"train_{bad}:8", max_iters=20, eval_interval=5, log_interval=20)
    assert res.returncode == DIVERGED == 5, res.stderr
    assert (
        f"corpusforge: error: training diverged: loss is {bad} at iteration 8; stopped, the last good checkpoint "
        "is kept (step-0000005)" in res.stderr
    )
    ck = out / "checkpoints"
    assert _names(ck) == ["step-0000005"]  # nothing at or after the bad step, not even a temp folder
    good = ckpt.load_one(ck / "step-0000005")
    assert good.state["step"] == 5
    assert all(bool(torch.isfinite(t).all()) for t in good.model.values())
    assert max(_losses(out)) < 8  # no loss of the bad iteration (or later) was recorded as a good one

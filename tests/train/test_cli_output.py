"""What `corpusforge train` and `export` print when piped: iteration lines with an ETA, and no `\\r` anywhere."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from corpusforge.document import Document  # noqa: E402
from corpusforge.tokens.stage import write_token_shards  # noqa: E402
from corpusforge.tokens.tokenizer import train_tokenizer  # noqa: E402
from tests.conftest import cli_env  # noqa: E402

TEXT = "".join(f"A slow river runs under the old stone bridge, day {i}.\n" for i in range(200))
SETS = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=4, max_iters=20, eval_interval=20)
SETS |= dict(eval_iters=2, warmup_iters=2, log_interval=5, sample_tokens=0, threads=1)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run with stdout and stderr piped. Bytes, decoded here: text=True would turn each \r into \n."""
    env = cli_env()
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # the control load must be free to draw its bar
    got = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=300)
    return subprocess.CompletedProcess(cmd, got.returncode, got.stdout.decode(), got.stderr.decode())


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "corpusforge.cli", *args], cwd)


@pytest.mark.slow  # training, then an export through transformers: ~20 s
def test_piped_train_prints_iteration_loss_tokens_per_s_and_eta_and_export_draws_no_bar(tmp_path):
    pytest.importorskip("transformers")
    tok = train_tokenizer([TEXT], algorithm="char")
    n = int(len(TEXT) * 0.9)
    docs = [Document(id="a", text=TEXT[:n], metadata={"split": "train"})]
    docs.append(Document(id="b", text=TEXT[n:], metadata={"split": "val"}))
    write_token_shards(docs, tok, tmp_path / "tokens")
    sets = [x for k, v in SETS.items() for x in ("--set", f"{k}={v}")]
    got = _cli(tmp_path, "train", "tokens", "--out", "o", *sets)
    assert got.returncode == 0, got.stderr
    lines = re.findall(r"^iter +(\d+)/20  loss \d+\.\d{4}  lr \S+  [\d,]+ tok/s  ETA \w+$", got.stdout, re.M)
    assert [int(i) for i in lines] == [5, 10, 15, 20], got.stdout
    assert "\r" not in got.stdout + got.stderr

    out = _cli(tmp_path, "export", "o", "hf")
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stdout + out.stderr
    # transformers draws a tqdm bar (redrawn with \r) when it loads weights, even into a pipe; after the
    # export's quiet_library_bars() it draws none. The same load without it is the control.
    # One process (importing torch and transformers once): the plain load, then a marker, then the quiet one.
    code = (
        "import sys, transformers; transformers.GPT2LMHeadModel.from_pretrained('hf'); "
        "sys.stderr.write('\\n--quiet--\\n'); sys.stderr.flush(); "
        "from corpusforge.train.export import quiet_library_bars; quiet_library_bars(); "
        "transformers.GPT2LMHeadModel.from_pretrained('hf')"
    )
    both = _run([sys.executable, "-c", code], tmp_path)
    assert both.returncode == 0, both.stderr
    plain, quiet = both.stderr.split("\n--quiet--\n")
    assert "\r" in plain, "the control load drew no bar: this check proves nothing any more"
    assert "\r" not in quiet + both.stdout


def test_quiet_library_bars_leaves_the_environment_alone(monkeypatch):
    """It once set HF_HUB_DISABLE_PROGRESS_BARS in os.environ: every later child process inherited it (in the
    suite, the control load above drew no bar after an in-process export)."""
    pytest.importorskip("transformers")
    import io
    import os

    from corpusforge.train.export import quiet_library_bars

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    before = dict(os.environ)
    quiet_library_bars()
    assert dict(os.environ) == before

"""Progress of long stages: the line format, the live bar on a terminal, plain periodic lines when piped."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

import pytest

from corpusforge.progress import Progress, progress_interval_s
from tests.conftest import cli_env


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_a_line_per_interval_with_the_last_interval_rate_a_percentage_and_an_eta():
    clock, lines = Clock(), []
    p = Progress("clean", unit="documents", total=1000, interval_s=2.0, clock=clock, emit=lines.append)
    clock.t += 1.0
    assert p.update(100) is None and lines == []  # not due yet
    clock.t += 1.0
    line = p.update(200, extra="180 kept")
    assert line == lines[0] == "clean: 200/1,000 documents (20%), 100.0 documents/s, 180 kept, ETA 8s"
    clock.t += 4.0
    line = p.update(300)
    # 100 documents in the last 4 s; the ETA from the pace since the start: 700 left at 50/s.
    assert line == "clean: 300/1,000 documents (30%), 25.0 documents/s, ETA 14s"


def test_without_a_total_there_is_no_eta_and_a_resumed_count_starts_from_where_it_was():
    clock, lines = Clock(), []
    p = Progress("train", unit="iterations", interval_s=1.0, clock=clock, emit=lines.append, start=500)
    clock.t += 10.0
    assert p.update(520) == "train: 520 iterations, 2.0 iterations/s"
    p2 = Progress("train", unit="iterations", total=600, interval_s=1.0, clock=clock, emit=lines.append, start=500)
    clock.t += 10.0
    assert p2.update(550).endswith("ETA 10s")  # 50 done in 10 s since the resume: 50 left


def test_on_a_terminal_the_bar_shows_the_latest_line_in_place(monkeypatch, caplog):
    from rich.console import Console

    from corpusforge.console import BarReporter

    monkeypatch.delenv("CORPUSFORGE_PROGRESS_S", raising=False)
    out = io.StringIO()
    caplog.set_level(logging.INFO)
    with BarReporter(Console(file=out, force_terminal=True, width=160)) as rep:
        assert progress_interval_s() == 1.0  # a live bar redraws in place: it may be fed often
        rep.stage_start("train", 1, 0)
        logging.getLogger("corpusforge.progress.train").info("train: 5/30 iterations (17%%), loss %.4f", 2.5)
        task = rep.progress.tasks[rep.tasks["train"]]
        assert task.fields["live"] == "train: 5/30 iterations (17%), loss 2.5000"
        assert not [r for r in caplog.records if r.name.startswith("corpusforge.progress")]  # not printed too
        rep.progress.refresh()
        assert "loss 2.5000" in out.getvalue()
        rep.stage_end("train", "done")
        logging.getLogger("corpusforge.progress.train").info("after the stage")
        assert task.fields["live"] == "" and task.description.strip() == "train              done"
    # Once the bar is gone, progress lines are log lines again.
    logging.getLogger("corpusforge.progress.train").info("plain again")
    assert [r.getMessage() for r in caplog.records if r.name == "corpusforge.progress.train"] == ["plain again"]


RECIPE = """
name = "progress"
[[stages]]
kind = "test_source"
name = "docs"
docs = 300
tasks = 1
[[stages]]
kind = "process"
name = "clean"
tasks = 1
steps = [{ type = "test_min_words", min_words = 5 }]
[[stages]]
kind = "tokenizer"
algorithm = "char"
[[stages]]
kind = "tokens"
input = "clean"
tasks = 1
[[stages]]
kind = "train"
n_layer = 1
n_head = 2
n_embd = 32
block_size = 16
batch_size = 4
max_iters = 30
eval_interval = 30
eval_iters = 2
warmup_iters = 2
log_interval = 5
sample_tokens = 0
threads = 1
"""


def _log_line(stage: str) -> str:
    """A plain, timestamped progress log line of ``stage``, up to its counts."""
    return rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d INFO corpusforge\.progress\.{stage}: {stage}: "


@pytest.mark.slow  # a CLI run through training: ~10 s
def test_piped_run_logs_periodic_clean_and_training_progress_without_carriage_returns(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "r.toml").write_text(RECIPE)
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", "r.toml", "--workdir", "w"]
    env = cli_env() | {"CORPUSFORGE_PROGRESS_S": "0.001"}
    # Bytes: text=True would read each \r as \n.
    raw = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert raw.returncode == 0, raw.stderr.decode()
    assert b"\r" not in raw.stdout + raw.stderr and b"\x1b" not in raw.stdout + raw.stderr
    got = subprocess.CompletedProcess(cmd, raw.returncode, raw.stdout.decode(), raw.stderr.decode())
    clean_line = _log_line("clean") + r"(\d+)/300 documents \(\d+%\), [\d,.]+ documents/s, [\d,]+ kept, ETA \w+$"
    clean = re.findall(clean_line, got.stderr, re.M)
    assert clean, got.stderr  # the clean task reports while it runs, against the 300 rows its input lists
    train = re.findall(
        _log_line("train")
        + r"(\d+)/30 iterations \(\d+%\), [\d,.]+ iterations/s, loss \d+\.\d{4}, [\d,]+ tokens/s, ETA \w+$",
        got.stderr,
        re.M,
    )
    assert [int(i) for i in train] == [5, 10, 15, 20, 25, 30], got.stderr  # one per log interval when due

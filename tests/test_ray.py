"""The Ray executor (issue 14; RELIABILITY 47-49): the same outputs as the local executor, retries of lost
workers, a stop that reaches remote tasks, the shared-folder check, and the hint when Ray is missing.

Ray binds the machine's network address unless it is alone with the loopback: these tests run only where
``lo`` is the one network interface (``unshare --net`` and ``ip link set lo up``, as ``.ci/run`` does).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusforge.errors import DONE, PARTIAL, FatalError
from corpusforge.recipe import validate_recipe
from corpusforge.runner import Runner, run_recipe
from tests.conftest import cli_env

ALONE_WITH_LOOPBACK = [name for _, name in socket.if_nameindex()] == ["lo"]
needs_netns = pytest.mark.skipif(
    not ALONE_WITH_LOOPBACK,
    reason="Ray binds the machine's network address: run inside `unshare --net` with lo up (.ci/run does)",
)


def _docs(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` documents of distinct made-up sentences, some exact and near copies among them."""
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(400)] + ["the", "and", "of", "to", "a", "in", "is", "it"] * 20
    rows = []
    for i in range(n):
        sentences = [" ".join(rng.choice(words) for _ in range(12)).capitalize() + "." for _ in range(12)]
        rows.append({"id": f"d{i}", "text": " ".join(sentences), "url": f"https://example.org/{i}"})
    for i in range(0, n, 10):
        rows.append(dict(rows[i], id=f"copy{i}"))  # exact copies
        near = rows[i + 1]["text"].split()
        near[3] = "changed"
        rows.append(dict(rows[i + 1], id=f"near{i}", text=" ".join(near)))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _recipe(src: Path, workdir: Path, **top) -> dict:
    from corpusforge.defaults import build_recipe

    raw = build_recipe(src, workdir=workdir, vocab_size=300, tokenizer="bpe", near_dedup=True)
    raw["workers"] = 2
    for st in raw["stages"]:
        if st["kind"] == "process":
            st["tasks"] = 4  # several tasks per stage: several Ray tasks at once
    return raw | top


def _shards(workdir: Path) -> dict[str, list[tuple[str, str]]]:
    """Every stage's manifest: (file, sha256) of each listed file."""
    out = {}
    for m in sorted(workdir.glob("*/manifest.json")):
        files = json.loads(m.read_text())["files"]
        out[m.parent.name] = sorted((f["name"], f["sha256"]) for f in files)
    return out


def _site_recipe(first: dict, workdir: Path, **top) -> dict:
    """``first`` (a crawl of a loopback site, or its finished folder as input), then clean, exact and near dedup,
    tokenizer and tokens, with several tasks per parallel stage."""
    from corpusforge.defaults import clean_stages, token_stages

    stages = [first, *clean_stages(near_dedup=True, tasks=4, min_words=20, extractor="lxml")]
    stages += token_stages(corpus="near_dedup", vocab_size=300, algorithm="bpe")
    return {"name": "t", "workdir": str(workdir), "workers": 2, "stages": stages} | top


def _site(n: int, shared_data: Path) -> dict:
    from tests.crawl.faultserver import html

    text = (shared_data / "tinyshakespeare.txt").read_text()[:200_000]
    speeches = [s.replace("\n", " ") for s in text.split("\n\n") if len(s.split()) > 60]
    routes = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nDisallow:\n")}
    routes["/"] = html("".join(f'<a href="/p{i}.html">p{i}</a>' for i in range(n)))
    texts = [" ".join(speeches[2 * i : 2 * i + 2]) for i in range(n)]
    texts[5] = texts[4]  # an exact copy
    words = texts[6].split()
    texts[7] = " ".join(words[:-1] + ["other"])  # a near copy
    for i, t in enumerate(texts):
        routes[f"/p{i}.html"] = html(f"<main><p>{t}</p></main>")
    return routes


@needs_netns
@pytest.mark.slow  # a Ray instance started, and a whole run on each executor
def test_ray_gives_the_same_manifests_as_the_local_executor(tmp_path, shared_data):
    from tests.crawl.faultserver import FaultServer

    server = FaultServer(routes=_site(60, shared_data))
    try:
        spider = tmp_path / "spider.toml"
        spider.write_text(f'name = "t"\nseeds = ["{server.base}/"]\nallowed_domains = ["127.0.0.1"]\n')
        crawl = {"kind": "crawl", "spider": str(spider), "min_delay_s": 0.0, "segment_pages": 16}
        local = run_recipe(validate_recipe(_site_recipe(crawl, tmp_path / "local")))
        assert local.status == DONE, local.message
    finally:
        server.close()
    # A crawl stores when each page was fetched, so two crawls never give the same bytes: the Ray run starts
    # from the local run's finished crawl folder, and everything after it must come out byte for byte the same.
    crawled = {"kind": "shards", "name": "crawl", "path": str(tmp_path / "local" / "crawl")}
    ray_run = run_recipe(validate_recipe(_site_recipe(crawled, tmp_path / "ray", executor="ray")))
    assert ray_run.status == DONE, ray_run.message
    rerun = run_recipe(validate_recipe(_site_recipe(crawled, tmp_path / "ray", executor="ray")))
    a, b = _shards(tmp_path / "local"), _shards(tmp_path / "ray")
    assert set(a) == {"crawl", "clean", "dedup", "near_dedup", "tokenizer", "tokens"}
    del a["crawl"]
    assert a == b and len(a["clean"]) == 4
    rows = {n: json.loads((tmp_path / "ray" / n / "manifest.json").read_text())["rows"] for n in a}
    assert rows["near_dedup"] < rows["dedup"] < rows["clean"]  # the planted copies were removed
    # The driver wrote the markers; no stop file or shared-folder check is left behind.
    assert len(list((tmp_path / "ray" / "clean" / "completions").glob("*.json"))) == 4
    assert not (tmp_path / "ray" / ".stop").exists() and not (tmp_path / "ray" / ".ray-driver").exists()
    assert rerun.status == DONE and all(o.status == "skipped" for o in rerun.stages)


def test_ray_missing_names_the_install_command_and_local_is_unaffected(tmp_path, monkeypatch):
    src = _docs(tmp_path / "docs.jsonl", 20)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(FatalError, match=r"pip install 'corpusforge\[ray\]'"):
        Runner(validate_recipe(_recipe(src, tmp_path / "w", executor="ray"))).run()
    assert not (tmp_path / "w" / "clean").exists()  # nothing ran
    assert run_recipe(validate_recipe(_recipe(src, tmp_path / "w2"))).status == DONE


def test_an_unknown_executor_is_a_config_error_with_its_path(tmp_path):
    from corpusforge.errors import ConfigError

    with pytest.raises(ConfigError, match="executor: unknown executor 'spark'; one of: local, ray"):
        validate_recipe(_recipe(_docs(tmp_path / "d.jsonl", 5), tmp_path / "w", executor="spark"))


@needs_netns
@pytest.mark.slow
def test_a_worker_that_cannot_see_the_work_folder_fails_the_run_clearly(tmp_path, monkeypatch):
    """The shared-folder check: a task that does not find the driver's file where the driver says it is (as on
    a node without the shared disk) fails the run with a message that says what the work folder must be."""
    import corpusforge.executors.ray as ray_exec

    monkeypatch.setattr(ray_exec, "_shared_check", lambda run_dir: (tmp_path / "not-shared" / ".ray-driver", "x"))
    recipe = {"name": "t", "workdir": str(tmp_path / "w"), "executor": "ray", "stages": [SLOW_SOURCE]}
    with pytest.raises(FatalError, match="must be one path every node sees"):
        run_recipe(validate_recipe(recipe))
    assert not (tmp_path / "w" / "test_source" / "manifest.json").exists()


SLOW_SOURCE = {"kind": "test_source", "docs": 400, "tasks": 8, "sleep_s": 0.02}


@needs_netns
@pytest.mark.slow  # a CLI run on Ray, stopped, then rerun
def test_sigterm_reaches_the_ray_tasks_and_the_rerun_finishes_them(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "t"\nworkdir = "w"\nexecutor = "ray"\nworkers = 2\n[[stages]]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in SLOW_SOURCE.items())
    )
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe)]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None and not (tmp_path / "w" / ".ray-driver").exists():
            time.sleep(0.05)
        time.sleep(1.5)  # tasks running on the Ray workers (each takes about 1 s)
        assert p.poll() is None, p.communicate()[1][-2000:]
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == PARTIAL, err[-3000:]
    out = tmp_path / "w" / "test_source"
    finished = len(list((out / "completions").glob("*.json")))
    assert 0 <= finished < 8 and not (out / "manifest.json").exists(), finished
    rerun = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == DONE, rerun.stderr[-3000:]
    local = {"name": "t", "workdir": str(tmp_path / "local"), "stages": [SLOW_SOURCE]}
    assert run_recipe(validate_recipe(local)).status == DONE
    assert _shards(tmp_path / "w") == _shards(tmp_path / "local")


@needs_netns
@pytest.mark.slow  # a two-node Ray cluster on this machine, one node killed mid-stage
def test_a_node_lost_mid_stage_its_tasks_are_retried_and_the_outputs_are_the_same(tmp_path):
    import threading

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    killed = []

    def kill_when_running() -> None:
        deadline = time.monotonic() + 120
        while not (tmp_path / "w" / ".ray-driver").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # tasks running on both nodes
        cluster.remove_node(worker, allow_graceful=False)
        killed.append(time.monotonic())

    stage = SLOW_SOURCE | {"docs": 320}
    recipe = {"name": "t", "workdir": str(tmp_path / "w"), "executor": "ray", "stages": [stage]}
    watcher = threading.Thread(target=kill_when_running, daemon=True)
    watcher.start()
    try:
        res = run_recipe(validate_recipe(recipe), ray_address=cluster.address)
    finally:
        watcher.join(timeout=5)
        cluster.shutdown()
    assert killed, "the node was not killed during the stage"
    assert res.status == DONE, res.message
    local = {"name": "t", "workdir": str(tmp_path / "local"), "stages": [stage]}
    assert run_recipe(validate_recipe(local)).status == DONE
    assert _shards(tmp_path / "w") == _shards(tmp_path / "local")


def test_the_executor_flag_is_checked_before_anything_runs(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "t"\nworkdir = "w"\n[[stages]]\nkind = "test_source"\ndocs = 4\n')
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--executor", "spark"]
    got = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert got.returncode == 2 and "unknown executor 'spark'; one of: local, ray" in got.stderr
    assert not (tmp_path / "w" / "test_source").exists()


@needs_netns
@pytest.mark.slow  # a Ray instance started, a bounded run, then the rerun
def test_max_runtime_stops_the_ray_tasks_and_the_rerun_finishes_them(tmp_path):
    stage = SLOW_SOURCE | {"docs": 1200}  # 8 tasks of about 3 s on 2 CPUs: ~12 s, more than allowed
    recipe = {"name": "t", "workdir": str(tmp_path / "w"), "executor": "ray", "stages": [stage]}
    res = run_recipe(validate_recipe(recipe), max_runtime_s=9)
    assert res.status == PARTIAL, res.message  # tasks that ignored the deadline would all have finished
    out = tmp_path / "w" / "test_source"
    assert len(list((out / "completions").glob("*.json"))) < 8 and not (out / "manifest.json").exists()
    again = run_recipe(validate_recipe(recipe))
    assert again.status == DONE and len(list((out / "completions").glob("*.json"))) == 8

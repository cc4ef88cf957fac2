from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpusforge.errors import BAD_CONFIG, DONE, FAILED, LOCKED, PARTIAL, ConfigError, LockedError
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import validate_folder, workdir_lock
from tests.conftest import cli_env

RECIPE = """
name = "t"
workers = {workers}

[[stages]]
kind = "test_source"
docs = {docs}
tasks = 3
sleep_s = {sleep}

[[stages]]
kind = "process"
name = "clean"
tasks = 2
keep_rejected = true
steps = [{{ type = "test_min_words", min_words = 12 }}]
"""


def _recipe(tmp_path: Path, name="r.toml", workers=2, docs=300, sleep=0.0) -> Path:
    p = tmp_path / name
    p.write_text(RECIPE.format(workers=workers, docs=docs, sleep=sleep))
    return p


def _raw(workdir, workers=2, docs=300):
    return {
        "name": "t",
        "workdir": str(workdir),
        "workers": workers,
        "stages": [
            {"kind": "test_source", "docs": docs, "tasks": 3},
            {
                "kind": "process",
                "name": "clean",
                "tasks": 2,
                "keep_rejected": True,
                "steps": [{"type": "test_min_words", "min_words": 12}],
            },
        ],
    }


def _hashes(workdir: Path, stage: str) -> list[tuple[str, int, str]]:
    m = json.loads((workdir / stage / "manifest.json").read_text())
    return [(f["name"], f["rows"], f["sha256"]) for f in m["files"]]


def _cli(*args, cwd, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_writes_manifests_stats_and_balanced_counts(tmp_path):
    res = run_recipe(validate_recipe(_raw(tmp_path / "w")))
    assert res.status == DONE
    assert [o.status for o in res.stages] == ["done", "done"]
    clean = res.stages[1]
    step = clean.steps[0]
    assert step["input"] == 300 and step["input"] == step["output"] + sum(step["dropped"].values())
    assert set(step["dropped"]) == {"too_short"}
    assert validate_folder(tmp_path / "w" / "clean") == []
    assert (tmp_path / "w" / "recipe.resolved.toml").is_file()
    assert list((tmp_path / "w" / "clean" / "rejected").glob("*.arrow"))
    stats = json.loads((tmp_path / "w" / "clean" / "stats" / "stats.json").read_text())
    assert stats["steps"][0]["dropped"]["too_short"] == step["dropped"]["too_short"]


def test_rerun_of_a_finished_job_is_a_noop(tmp_path):
    r = validate_recipe(_raw(tmp_path / "w"))
    assert run_recipe(r).status == DONE
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file() and p.name != ".lock"}
    res = run_recipe(validate_recipe(_raw(tmp_path / "w")))
    assert res.status == DONE and [o.status for o in res.stages] == ["skipped", "skipped"]
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "w").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == files


def test_one_or_two_workers_give_identical_manifests(tmp_path):
    run_recipe(validate_recipe(_raw(tmp_path / "a", workers=1)))
    run_recipe(validate_recipe(_raw(tmp_path / "b", workers=2)))
    for stage in ("test_source", "clean"):
        assert _hashes(tmp_path / "a", stage) == _hashes(tmp_path / "b", stage)


def test_changed_config_is_refused_unless_forced(tmp_path):
    run_recipe(validate_recipe(_raw(tmp_path / "w", docs=100)))
    changed = validate_recipe(_raw(tmp_path / "w", docs=120))
    with pytest.raises(ConfigError, match="different config"):
        run_recipe(changed)
    res = run_recipe(changed, force=True)
    assert res.status == DONE
    assert json.loads((tmp_path / "w" / "test_source" / "manifest.json").read_text())["rows"] == 120


def test_failed_task_gives_failed_status_and_no_manifest(tmp_path):
    raw = _raw(tmp_path / "w")
    raw["stages"][0]["fail_rank"] = 1
    res = run_recipe(validate_recipe(raw))
    assert res.status == FAILED and "planned failure" in res.message
    assert not (tmp_path / "w" / "test_source" / "manifest.json").exists()
    # The other tasks finished and keep their markers; fixing the recipe... is a config change (refused).
    assert (tmp_path / "w" / "test_source" / "completions" / "00000.json").is_file()


def test_lock_refuses_a_second_run(tmp_path):
    wd = tmp_path / "w"
    wd.mkdir()
    with workdir_lock(wd):
        with pytest.raises(LockedError):
            run_recipe(validate_recipe(_raw(wd)))


@pytest.mark.slow
def test_cli_second_concurrent_run_exits_locked(tmp_path):
    recipe = _recipe(tmp_path, docs=60, sleep=0.05)  # ~2 s per task
    first = subprocess.Popen(
        [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 30
        while not (tmp_path / "w" / ".lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        second = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
        assert second.returncode == LOCKED, second.stderr
        assert "locked" in second.stderr
        t0 = time.time()
        assert first.wait(timeout=120) == DONE
        assert time.time() - t0 >= 0  # the first run was unaffected
    finally:
        if first.poll() is None:
            first.kill()


def test_cli_bad_recipe_exits_bad_config_with_field_path(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(
        'name = "x"\n[[stages]]\nkind = "test_source"\n[[stages]]\nkind = "process"\n'
        'steps = [{ type = "test_min_words", min_words = -3 }]\n'
    )
    out = _cli("run", str(p), cwd=tmp_path)
    assert out.returncode == BAD_CONFIG
    assert "stages[1].steps[0].min_words" in out.stderr and "bad config" in out.stderr
    assert not (tmp_path / "runs").exists()  # nothing started
    out = _cli("run", str(p), "--set", "stages[1].steps[0].min_words=3", "--workdir", "w", cwd=tmp_path)
    assert out.returncode == DONE, out.stderr


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_the_uninterrupted_manifest(tmp_path):
    recipe = _recipe(tmp_path, docs=300)
    straight = _cli("run", str(recipe), "--workdir", "straight", cwd=tmp_path)
    assert straight.returncode == DONE, straight.stderr
    env = cli_env()
    env["CORPUSFORGE_FAULT"] = "clean:40"  # the clean stage's tasks die hard at their 40th document
    killed = _cli("run", str(recipe), "--workdir", "killed", cwd=tmp_path, env=env)
    assert killed.returncode != DONE
    assert not (tmp_path / "killed" / "clean" / "manifest.json").exists()
    # A process killed mid-shard leaves no file under a final name, only *.tmp that the rerun removes.
    rerun = _cli("run", str(recipe), "--workdir", "killed", cwd=tmp_path)
    assert rerun.returncode == DONE, rerun.stderr
    for stage in ("test_source", "clean"):
        assert _hashes(tmp_path / "straight", stage) == _hashes(tmp_path / "killed", stage)
    assert not list((tmp_path / "killed").rglob("*.tmp"))


@pytest.mark.slow
def test_sigkill_of_the_whole_run_then_rerun(tmp_path):
    recipe = _recipe(tmp_path, docs=90, sleep=0.02)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w", "--workers", "1"],
        cwd=tmp_path,
        env=cli_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    marker = tmp_path / "w" / "test_source" / "completions" / "00000.json"
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, 9)
    proc.wait(timeout=30)
    assert not (tmp_path / "w" / "test_source" / "manifest.json").exists()
    rerun = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert rerun.returncode == DONE, rerun.stderr
    ref = _cli("run", str(recipe), "--workdir", "ref", cwd=tmp_path)
    assert ref.returncode == DONE
    for stage in ("test_source", "clean"):
        assert _hashes(tmp_path / "w", stage) == _hashes(tmp_path / "ref", stage)


@pytest.mark.slow
def test_sigterm_stops_with_partial_and_the_next_run_continues(tmp_path):
    recipe = _recipe(tmp_path, docs=150, sleep=0.02)
    proc = subprocess.Popen(
        [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w", "--workers", "1"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (tmp_path / "w" / "test_source" / "completions" / "00000.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == PARTIAL, err
    rerun = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert rerun.returncode == DONE, rerun.stderr


def test_cli_output_has_no_control_characters_without_a_tty(tmp_path):
    recipe = _recipe(tmp_path, docs=30)
    out = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert out.returncode == DONE
    assert "\x1b" not in out.stdout and "\x1b" not in out.stderr
    assert "stage clean: 2 task(s)" in out.stderr  # plain log lines


def test_cli_validate_passes_then_fails_on_truncation(tmp_path):
    recipe = _recipe(tmp_path, docs=60)
    assert _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path).returncode == DONE
    ok = _cli("validate", "w", cwd=tmp_path)
    assert ok.returncode == DONE and ok.stdout.count("ok ") == 2
    shard = tmp_path / "w" / "clean" / "00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])
    bad = _cli("validate", "w", cwd=tmp_path)
    assert bad.returncode == FAILED and "00000.arrow" in bad.stdout


def test_cli_plan_shows_stages(tmp_path):
    recipe = _recipe(tmp_path, docs=30)
    out = _cli("plan", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert out.returncode == DONE, out.stderr
    assert "test_source" in out.stdout and "clean" in out.stdout and "pending" in out.stdout


@pytest.mark.slow
def test_write_error_fails_clearly_without_marker_or_partial_file_and_rerun_succeeds(tmp_path):
    """A file-size limit makes writes fail with EFBIG, the way a full disk fails them."""
    import resource
    import signal

    recipe = _recipe(tmp_path, docs=3000)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    out = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit,
    )
    assert out.returncode == FAILED, out.stderr
    assert "cannot" in out.stderr and "w/test_source" in out.stderr
    src = tmp_path / "w" / "test_source"
    assert not (src / "manifest.json").exists()
    for marker in (src / "completions").glob("*.json"):
        rank = int(marker.stem)
        assert (src / f"{rank:05d}.arrow").is_file()  # a marker only ever follows a complete shard
    assert not list(src.glob("*.tmp"))
    rerun = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert rerun.returncode == DONE, rerun.stderr
    assert validate_folder(src) == []


def test_unusable_workdir_fails_before_anything_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = _cli("run", str(_recipe(tmp_path, docs=10)), "--workdir", str(blocker / "w"), cwd=tmp_path)
    assert out.returncode == FAILED and "cannot create the work folder" in out.stderr


def _flip_a_text_byte(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    at = data.index(b"alpha")
    data[at] = ord("A")  # same size, still valid Arrow: only the sha256 can tell
    shard.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_finished_stage_stops_every_later_reader(tmp_path):
    from corpusforge.errors import ShardError
    from corpusforge.storage import iter_documents, manifest_paths

    raw = _raw(tmp_path / "w", workers=1)
    raw["stages"].append({"kind": "exact_dedup", "name": "dedup"})
    assert run_recipe(validate_recipe(raw)).status == DONE
    clean = tmp_path / "w" / "clean"
    _flip_a_text_byte(clean / "00000.arrow")
    with pytest.raises(ShardError, match=r"clean/00000\.arrow: altered since manifest\.json was written"):
        list(iter_documents(manifest_paths(clean)))
    # dedup rebuilt (changed config, --force): clean is skipped (sizes match) and dedup reads it: refused.
    raw["stages"][2]["max_shard_bytes"] = 1 << 20
    res = run_recipe(validate_recipe(raw), force=True)
    assert res.status == FAILED and "clean/00000.arrow: altered since manifest.json" in res.message, res.message
    assert not (tmp_path / "w" / "dedup" / "manifest.json").exists()


def test_a_truncated_file_in_a_skipped_stage_is_caught_before_later_stages_trust_it(tmp_path):
    from corpusforge.errors import ShardError

    raw = _raw(tmp_path / "w", workers=1)
    assert run_recipe(validate_recipe(raw)).status == DONE
    shard = tmp_path / "w" / "test_source" / "00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"stage test_source is finished but its folder changed since.*00000\.arrow"):
        run_recipe(validate_recipe(raw))


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids: list[int]) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.slow
def test_kill_minus_9_of_only_the_main_process_leaves_no_worker_and_the_rerun_matches(tmp_path):
    """RELIABILITY 55: the workers die with the main process and hold the folder until then; an immediate
    rerun gives the uninterrupted run's manifests."""
    recipe = _recipe(tmp_path, docs=240, sleep=0.01)
    straight = _cli("run", str(recipe), "--workdir", "straight", cwd=tmp_path)
    assert straight.returncode == DONE, straight.stderr
    main = subprocess.Popen(
        [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir", "w"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    workers: list[int] = []
    # Until the pool is busy: its workers are writing the source stage's shards. Both are checked in one
    # loop: a temp file of the runner's own (a JSON written atomically) may show before the pool exists.
    while time.time() < deadline and main.poll() is None:
        if list((tmp_path / "w" / "test_source").glob("0*.tmp")) and len(workers := _descendants(main.pid)) >= 2:
            break
        time.sleep(0.01)
    assert len(workers) >= 2, ("the pool never started", sorted((tmp_path / "w").rglob("*")), main.poll())
    os.kill(main.pid, 9)  # only the main process: no process group kill
    main.wait(timeout=30)
    rerun = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)  # at once
    assert rerun.returncode == DONE, rerun.stderr
    for _ in range(100):  # the old run's workers (and multiprocessing's resource tracker) are gone
        if not _alive(workers):
            break
        time.sleep(0.1)
    assert _alive(workers) == []
    for stage in ("test_source", "clean"):
        assert _hashes(tmp_path / "straight", stage) == _hashes(tmp_path / "w", stage)
    assert validate_folder(tmp_path / "w" / "clean") == []

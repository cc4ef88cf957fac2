"""Faults a batch job must survive, through the CLI (RELIABILITY items 25, 26, 32, 53).

- 25: ``kill -9`` inside every later stage (exact and MinHash dedup and each MinHash sub-stage, tokenizer,
  tokens, train), then a rerun: the final manifests equal an uninterrupted run's.
- 26: between a kill and the rerun no file under a final name is partial; the rerun's start removes leftovers.
- 32: a work folder that cannot be written fails before any network request.
- 53: without a TTY: no control characters, a periodic heartbeat line.

The kills use the fault hook (``CORPUSFORGE_FAULT="<stage>:<n>"``: the stage's task calls ``os._exit(137)`` at
its n-th record, which is what ``kill -9`` leaves behind: no flush, no cleanup, no completion marker).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corpusforge.errors import BAD_CONFIG, DONE, FAILED
from corpusforge.storage import sha256_file
from tests.conftest import cli_env
from tests.crawl.faultserver import FaultServer, html

KILLED = 137  # os._exit(137) in the fault hook, the exit status of a process killed by SIGKILL


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI with both streams piped, decoded here: ``text=True`` would turn a ``\r`` into a newline."""
    got = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", *args],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(got.args, got.returncode, got.stdout.decode(), got.stderr.decode())


def _faulty(fault: str) -> dict[str, str]:
    return cli_env() | {"CORPUSFORGE_FAULT": fault}


# ------------------------------------------------------------------------------------------- the corpus
def _corpus(folder: Path, docs: int = 240) -> Path:
    """Two JSON Lines files of made-up prose with exact copies and near copies (one word changed) in it."""
    rng = random.Random(25)
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "or", "ni", "pa", "que", "dor", "li", "ab", "ez"]
    vocab = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(400)})
    texts: list[str] = []
    for i in range(docs):
        if i % 9 == 8:
            texts.append(texts[rng.randrange(i)])  # an exact copy
        elif i % 7 == 6:
            words = texts[rng.randrange(i)].split()
            words[rng.randrange(len(words))] = rng.choice(vocab)
            texts.append(" ".join(words))  # a near copy
        else:
            sentences = (" ".join(rng.choice(vocab) for _ in range(rng.randint(6, 14))) + "." for _ in range(6))
            texts.append(" ".join(sentences).capitalize())
    folder.mkdir(parents=True)
    for k in range(2):
        lines = (json.dumps({"id": f"doc{i:04d}", "text": t}) for i, t in enumerate(texts) if i % 2 == k)
        (folder / f"part{k}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


PIPELINE = """
name = "faults"
workers = 1

[[stages]]
kind = "read_jsonl"
name = "input"
path = "{corpus}"
tasks = 2

[[stages]]
kind = "exact_dedup"
name = "exact"

[[stages]]
kind = "minhash_dedup"
name = "near"
tasks = 2
threshold = 0.5

[[stages]]
kind = "tokenizer"
vocab_size = 400

[[stages]]
kind = "tokens"
input = "near"
tasks = 2
val_fraction = 0.1
max_shard_tokens = 2000  # several shards per task: a kill falls between committed shards
batch_docs = 8

[[stages]]
kind = "train"
input = "tokens"
n_layer = 1
n_head = 2
n_embd = 32
block_size = 32
batch_size = 4
max_iters = 12
eval_interval = 4
eval_iters = 2
log_interval = 4
warmup_iters = 2
sample_tokens = 0
device = "cpu"
threads = 1
dropout = 0.1
"""

# Stage folders in plan order, with the fault that kills each mid-stage (its task's n-th record; for train,
# after iteration n, between the checkpoints at 4 and 8).
KILLS = [
    ("input", "input:40"),
    ("exact", "exact:60"),
    ("near/signatures", "near.signatures:50"),
    ("near/buckets", "near.buckets:2"),
    ("near/clusters", "near.clusters:3"),
    ("near", "near:30"),
    ("tokenizer", "tokenizer:50"),
    ("tokens", "tokens:40"),
    ("train", "train:6"),
]
STAGE_DIRS = [d for d, _ in KILLS]


def _files(stage_dir: Path) -> list[tuple[str, int, str]]:
    m = json.loads((stage_dir / "manifest.json").read_text())
    return [(f["name"], f["rows"], f["sha256"]) for f in m["files"]]


def _stage_dir_of(path: Path, workdir: Path) -> Path:
    """The stage folder a file belongs to: its nearest parent holding a ``stage.json``."""
    return next(p for p in path.parents if (p / "stage.json").is_file() or p == workdir)


def _listed(stage_dir: Path) -> dict[str, str]:
    """name → sha256 of every file that a completion marker (or the manifest) of ``stage_dir`` lists."""
    records = [json.loads(m.read_text()) for m in sorted((stage_dir / "completions").glob("*.json"))]
    if (stage_dir / "manifest.json").is_file():
        records.append(json.loads((stage_dir / "manifest.json").read_text()))
    return {f["name"]: f["sha256"] for r in records for f in r["files"]}


def assert_no_partial_final_file(workdir: Path, reference: Path) -> int:
    """Item 26 after a kill: every ``*.arrow`` under a final name is whole; returns how many ``*.tmp`` there are.

    Whole means: listed by a completion marker of its stage with that sha256, or, for a shard committed by a
    task that did not finish (a stage rotates to a new shard as one fills up), byte-identical to the
    uninterrupted run's shard of that name. A file cut by the kill is neither.
    """
    for f in sorted(workdir.rglob("*.arrow")):
        stage_dir = _stage_dir_of(f, workdir)
        name = f.relative_to(stage_dir).as_posix()
        listed = _listed(stage_dir)
        if name in listed:
            assert sha256_file(f) == listed[name], f"{f}: differs from its completion marker"
        else:
            twin = reference / f.relative_to(workdir)
            assert twin.is_file() and sha256_file(f) == sha256_file(twin), f"{f}: a partial file under a final name"
    return len(list(workdir.rglob("*.tmp")))


def _pipeline(tmp_path: Path) -> Path:
    recipe = tmp_path / "pipeline.toml"
    recipe.write_text(PIPELINE.format(corpus=_corpus(tmp_path / "corpus")))
    return recipe


@pytest.mark.slow
def test_kill_minus_9_inside_every_later_stage_then_rerun_gives_the_uninterrupted_manifests(tmp_path):
    recipe = _pipeline(tmp_path)
    # The uninterrupted run, in the folder the killed one will use (the train stage's state.json records the
    # absolute path of its tokens), then moved aside.
    straight = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert straight.returncode == DONE, straight.stderr
    work, ref = tmp_path / "w", tmp_path / "straight"
    work.rename(ref)
    stats = {d: json.loads((ref / d / "stats" / "stats.json").read_text()) for d in STAGE_DIRS}
    assert stats["exact"]["steps"][0]["dropped"].get("exact_duplicate", 0) > 0  # the corpus has copies
    assert stats["near"]["steps"][0]["dropped"].get("near_duplicate", 0) > 0  # and near copies

    # Each run dies inside the next stage; the stages before it finish in that same run.
    for i, (stage, fault) in enumerate(KILLS):
        killed = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path, env=_faulty(fault))
        assert killed.returncode == KILLED, f"{fault}: {killed.returncode}\n{killed.stderr[-3000:]}"
        assert not (work / stage / "manifest.json").exists(), fault
        for earlier in STAGE_DIRS[:i]:
            assert _files(work / earlier) == _files(ref / earlier), f"{earlier}, after the kill at {fault}"
        assert_no_partial_final_file(work, ref)

    rerun = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert rerun.returncode == DONE, rerun.stderr
    for stage in STAGE_DIRS:
        assert _files(work / stage) == _files(ref / stage), stage
    assert not list(work.rglob("*.tmp"))
    # Nothing of the interrupted attempts is left beside the outputs: every shard is in its stage's manifest.
    for f in work.rglob("*.arrow"):
        stage_dir = _stage_dir_of(f, work)
        assert f.relative_to(stage_dir).as_posix() in _listed(stage_dir), f


SMALL = """
name = "t"
workers = 1

[[stages]]
kind = "test_source"
docs = {docs}
tasks = 3
sleep_s = {sleep}

[[stages]]
kind = "process"
name = "clean"
tasks = 2
steps = [{{ type = "test_min_words", min_words = 12 }}]
"""


def _small(tmp_path: Path, docs: int = 150, sleep: float = 0.0) -> Path:
    p = tmp_path / "small.toml"
    p.write_text(SMALL.format(docs=docs, sleep=sleep))
    return p


@pytest.mark.slow
def test_kill_during_a_shard_write_leaves_no_partial_final_file_and_the_next_start_removes_leftovers(tmp_path):
    recipe = _small(tmp_path)
    ref = _cli("run", str(recipe), "--workdir", "ref", cwd=tmp_path)
    assert ref.returncode == DONE, ref.stderr
    work, src = tmp_path / "w", tmp_path / "w" / "test_source"
    # test_source writes batches of 7 rows: at its 20th document, task 0 has 14 rows in its temp file.
    first = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path, env=_faulty("test_source:20"))
    assert first.returncode == KILLED, first.stderr
    leftovers = [p.name for p in src.iterdir() if p.suffix in (".arrow", ".tmp")]
    assert len(leftovers) == 1 and re.fullmatch(r"00000\.arrow(\.[\w-]+)?\.tmp", leftovers[0]), leftovers
    assert not (src / "completions").exists()
    assert assert_no_partial_final_file(work, tmp_path / "ref") == 1
    # The next run dies at the first document, before it writes a byte: what is left is what its start did.
    second = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path, env=_faulty("test_source:1"))
    assert second.returncode == KILLED, second.stderr
    assert not list(work.rglob("*.tmp")) and not list(work.rglob("*.arrow"))
    rerun = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path)
    assert rerun.returncode == DONE, rerun.stderr
    for stage in ("test_source", "clean"):
        assert _files(work / stage) == _files(tmp_path / "ref" / stage)
    assert not list(work.rglob("*.tmp"))


# ------------------------------------------------------------------------------------------ item 32
def _crawl_recipe(tmp_path: Path, server: FaultServer) -> Path:
    spider = tmp_path / "spider.toml"
    spider.write_text(f'name = "t"\nseeds = ["{server.base}/"]\nallowed_domains = ["127.0.0.1"]\n')
    recipe = tmp_path / "crawl.toml"
    recipe.write_text(f'name = "t"\n[[stages]]\nkind = "crawl"\nspider = "{spider}"\nmin_delay_s = 0.0\n')
    return recipe


SITE = {
    "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"),
    "/": html('<p>home</p><a href="/a.html">a</a>'),
    "/a.html": html("<p>page a</p>"),
}


@pytest.fixture
def server():
    s = FaultServer(routes=dict(SITE))
    yield s
    s.close()


def test_a_work_folder_that_cannot_be_made_fails_before_any_network_request(tmp_path, server):
    recipe = _crawl_recipe(tmp_path, server)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for workdir in (a_file, a_file / "w"):  # the work folder is a file; its parent is a file
        out = _cli("run", str(recipe), "--workdir", str(workdir), cwd=tmp_path)
        assert out.returncode == FAILED, out.stderr
        assert f"cannot create the work folder {workdir}" in out.stderr
        assert server.log == [], server.paths()
    assert a_file.read_text() == "not a folder"
    # The control: the same recipe with a usable folder does reach the server.
    ok = _cli("run", str(recipe), "--workdir", "ok", cwd=tmp_path)
    assert ok.returncode == DONE, ok.stderr
    assert "/robots.txt" in server.paths() and "/a.html" in server.paths()


# Runs a command with ``$1`` bind-mounted read-only, in a mount namespace of its own (nothing outside sees it).
# Root ignores permission bits, but not a read-only mount: writes there fail with EROFS, as on a ro volume.
_READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _read_only_cmd(folder: Path, *cmd: str) -> list[str]:
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _READ_ONLY, "sh", str(folder), *cmd]


def _read_only_unavailable(folder: Path) -> str:
    """Why a read-only bind mount cannot be made here ("" when it can, and it does stop a write by root)."""
    if shutil.which("unshare") is None:
        return "no unshare(1) to make a read-only bind mount"
    probe = subprocess.run(
        _read_only_cmd(folder, "sh", "-c", 'touch "$0/probe"', str(folder)), capture_output=True, text=True
    )
    if probe.returncode == 0:
        return "the read-only bind mount did not stop a write"
    if "Read-only file system" not in probe.stderr:
        return f"cannot make a read-only bind mount here: {probe.stderr.strip()}"
    return ""


def test_a_read_only_work_folder_fails_before_any_network_request(tmp_path, server):
    ro = tmp_path / "ro"
    ro.mkdir()
    why = _read_only_unavailable(ro)
    if why:
        pytest.skip(why)
    recipe = _crawl_recipe(tmp_path, server)
    cli = [sys.executable, "-m", "corpusforge.cli", "run", str(recipe), "--workdir"]
    cases = [(ro, f"the work folder {ro} is not writable"), (ro / "w", f"cannot create the work folder {ro / 'w'}")]
    for workdir, message in cases:  # an existing read-only folder; a new one under a read-only parent
        out = subprocess.run(
            _read_only_cmd(ro, *cli, str(workdir)), cwd=tmp_path, env=cli_env(), capture_output=True, text=True
        )
        assert out.returncode == FAILED, out.stderr
        assert message in out.stderr
        assert server.log == [], server.paths()
    assert list(ro.iterdir()) == []


# ------------------------------------------------------------------------------------------ item 53
HEARTBEAT = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO corpusforge: stage test_source running: 0/1 tasks done, \d+ s elapsed$",
    re.M,
)


@pytest.mark.slow
def test_without_a_tty_output_is_plain_and_a_long_stage_sends_heartbeats(tmp_path):
    recipe = tmp_path / "slow.toml"
    recipe.write_text('name = "t"\n[[stages]]\nkind = "test_source"\ndocs = 40\ntasks = 1\nsleep_s = 0.05\n')
    env = cli_env() | {"CORPUSFORGE_HEARTBEAT_S": "0.5"}
    out = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path, env=env)  # pipes: stdout is not a TTY
    assert out.returncode == DONE, out.stderr
    assert "\x1b" not in out.stdout and "\x1b" not in out.stderr
    assert "test_source" in out.stdout  # the summary table, in plain text
    beats = HEARTBEAT.findall(out.stderr)
    assert len(beats) >= 2, out.stderr  # a 2 s stage, a beat every 0.5 s
    # Every stderr line is a plain timestamped log line (no bar redrawn with \r either).
    assert "\r" not in out.stderr
    for line in out.stderr.splitlines():
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (INFO|WARNING|ERROR) ", line), line
    # The default interval is 30 s: the same 2 s run sends no heartbeat.
    quiet = _cli("run", str(recipe), "--workdir", "w2", cwd=tmp_path)
    assert quiet.returncode == DONE and not HEARTBEAT.findall(quiet.stderr)


def test_a_bad_heartbeat_interval_is_a_config_error(tmp_path):
    recipe = _small(tmp_path, docs=10)
    out = _cli("run", str(recipe), "--workdir", "w", cwd=tmp_path, env=cli_env() | {"CORPUSFORGE_HEARTBEAT_S": "0"})
    assert out.returncode == BAD_CONFIG
    assert "CORPUSFORGE_HEARTBEAT_S: expected a positive number of seconds, got '0'" in out.stderr
    assert not (tmp_path / "w").exists()

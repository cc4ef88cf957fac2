"""The local executor against Ray on one machine: the same build, wall time and manifests.

The build: a JSONL corpus made here from the shared Shakespeare text (each document three speeches drawn at
random, ~50 MB in all; ``--mb``), through clean, exact dedup, MinHash near dedup, tokenizer training and
tokens. The same recipe runs with ``executor = "local"`` (worker processes) and ``executor = "ray"`` (a Ray
instance started by the run on 127.0.0.1, its start-up included in the wall time), alternating, ``--repeat``
times; the best wall time of each is kept. ``same_manifests`` compares the sha256 of every file of every stage's
manifest between the two.

Ray binds the machine's address unless loopback is the only interface: the script re-runs itself inside
``unshare --net`` (with ``lo`` up) when it can, as the test suite does. Run:
``python benchmarks/executor.py [--quick] [--mb 50] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The repository root, not benchmarks/ (whose tokenize.py would shadow the standard library's).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks._harness import parser, print_keyvals, print_table, shared_file  # noqa: E402


def make_corpus(path: Path, mb: float, seed: int = 0) -> int:
    text = shared_file("tinyshakespeare.txt").read_text()
    speeches = [s.replace("\n", " ") for s in text.split("\n\n") if len(s.split()) > 25]
    rng = random.Random(seed)
    n, size = 0, 0
    with open(path, "w") as fh:
        while size < mb * 1e6:
            doc = " ".join(rng.sample(speeches, 3))
            line = json.dumps({"id": f"d{n}", "text": doc}) + "\n"
            fh.write(line)
            size += len(line)
            n += 1
    return n


def recipe(src: Path, workdir: Path, executor: str, workers: int) -> dict:
    from corpusforge.defaults import build_recipe

    raw = build_recipe(src, workdir=workdir, vocab_size=4096, tokenizer="bpe", near_dedup=True)
    raw["workers"] = workers
    raw["executor"] = executor
    raw["stages"][0]["tasks"] = workers * 2  # the reader: several tasks
    return raw


def manifests(workdir: Path) -> dict[str, list[tuple[str, str]]]:
    out = {}
    for m in sorted(workdir.glob("*/manifest.json")):
        out[m.parent.name] = sorted((f["name"], f["sha256"]) for f in json.loads(m.read_text())["files"])
    return out


def run_once(src: Path, workdir: Path, executor: str, workers: int) -> float:
    from corpusforge.errors import DONE
    from corpusforge.recipe import validate_recipe
    from corpusforge.runner import run_recipe

    shutil.rmtree(workdir, ignore_errors=True)
    r = validate_recipe(recipe(src, workdir, executor, workers))
    t0 = time.perf_counter()
    res = run_recipe(r)
    dt = time.perf_counter() - t0
    if res.status != DONE:
        raise SystemExit(f"{executor} run failed: {res.message}")
    return dt


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=None, help="corpus size in MB (50; 5 with --quick)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="alternating runs of each executor; the best is kept")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    alone = [name for _, name in socket.if_nameindex()] == ["lo"]
    if not alone:
        if (
            not args.in_netns
            and shutil.which("unshare")
            and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0
        ):
            cmd = " ".join([sys.executable, *map(shlex.quote, sys.argv), "--in-netns"])
            raise SystemExit(
                subprocess.run(["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {cmd}"]).returncode
            )
        raise SystemExit(
            "Ray would bind this machine's network address: run as root (for unshare --net) or alone with lo"
        )
    mb = args.mb or (5.0 if args.quick else 50.0)
    repeat = 1 if args.quick else args.repeat
    import ray  # noqa: F401

    import corpusforge.executors.ray  # noqa: F401  (imports before the clock, on both sides)

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "corpus.jsonl"
        docs = make_corpus(src, mb)
        best = {"local": float("inf"), "ray": float("inf")}
        for _ in range(repeat):
            for executor in ("local", "ray"):
                best[executor] = min(best[executor], run_once(src, Path(tmp) / executor, executor, args.workers))
        same = manifests(Path(tmp) / "local") == manifests(Path(tmp) / "ray")
        stages = len(manifests(Path(tmp) / "local"))
    rows = [
        {"executor": e, "wall s": f"{best[e]:.1f}", "MB/s": f"{mb / best[e]:.2f}", "docs": docs, "stages": stages}
        for e in ("local", "ray")
    ]
    print_table(rows, title=f"build of {mb:g} MB of JSONL ({docs} docs), {args.workers} workers, best of {repeat}")
    print_keyvals(ray_over_local=f"{best['ray'] / best['local']:.2f}", same_manifests=str(same).lower())


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

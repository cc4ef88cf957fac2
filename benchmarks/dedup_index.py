"""The near-duplicate index across batches: the folder index (``BandIndex``), our shared Redis index
(``RedisBandIndex``: band hashes in small intsets, linear hashing, two Lua scripts) and datasketch's
``MinHashLSH`` with its Redis storage (the peer), on the same documents, in the same run.

Data: batch A of random 200-word texts (a 3,000-word vocabulary), batch B of as many documents, a tenth of them
near copies of A's (2 words changed), the rest new. Signatures and band hashes: ours (5-grams, 14 bands × 8
rows, seed 1), computed once before timing. A ``redis-server`` is started on a unix socket in a temporary folder
(no TCP, no persistence: the server's own work, not the disk's, is measured) and stopped at the end.

Timed, each index fresh: insert A, then query B against it. Folder: ``BandIndex.add``, then load +
``matches``. Ours: ``RedisBandIndex.add`` / ``.matches`` (one script call per 1,024 documents). datasketch, as
shipped (its default band keys; ``prepickle=False``, our keys being bytes): ``LeanMinHash(seed, hashvalues=sig,
scheme="affine32")`` per document through ``MinHashLSH.insertion_session``, then ``MinHashLSH.query`` per
document. All three must find the same documents. Redis memory per document = the growth of ``used_memory``
(less the clients' buffers) over A's inserts, for ours and for datasketch's (their own keys, the same server).

Usage: .venv/bin/python benchmarks/dedup_index.py [--quick] [--docs N]
"""

from __future__ import annotations

# ruff: noqa: E402
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import random
import shutil
import subprocess
import tempfile
import time

import numpy as np

from benchmarks._harness import parser, print_keyvals, print_table
from corpusforge.dedup.index import BandIndex, matches
from corpusforge.dedup.redis_index import RedisBandIndex, connection_kwargs
from corpusforge.dedup.shingles import band_hashes, permutations, signatures

NGRAM, BANDS, ROWS, SEED = 5, 14, 8, 1
PARAMS = {"ngram": NGRAM, "bands": BANDS, "rows": ROWS, "seed": SEED}
VOCAB = [f"w{i}" for i in range(3000)]


def corpus(n: int, seed: int = 0) -> tuple[list[str], list[str], set[int]]:
    rng = random.Random(seed)
    a = [" ".join(rng.choice(VOCAB) for _ in range(200)) for _ in range(n)]
    b, planted = [], set()
    for i in range(n):
        if i % 10 == 0:
            ws = a[rng.randrange(n)].split()
            for j in rng.sample(range(len(ws)), 2):
                ws[j] = rng.choice(VOCAB)
            b.append(" ".join(ws))
            planted.add(i)
        else:
            b.append(" ".join(rng.choice(VOCAB) for _ in range(200)))
    return a, b, planted


def sigs(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    perms = permutations(BANDS * ROWS, SEED)
    parts = [signatures(texts[k : k + 2048], ngram=NGRAM, perms=perms) for k in range(0, len(texts), 2048)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        print("SKIP: redis-server not found (apt-get install redis-server)")
        sys.exit(0)
    sock = folder / "redis.sock"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", str(sock), "--dir", str(folder), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    for _ in range(400):
        try:
            if sock.exists() and redis.Redis(unix_socket_path=str(sock)).ping():
                return proc, f"unix://{sock}"
        except redis.exceptions.RedisError:
            pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not answer within 20 s")


def used_memory(url: str) -> int:
    """Redis ``used_memory`` less the clients' buffers (a script call's argument stays in its query buffer)."""
    import redis

    info = redis.Redis(**connection_kwargs(url)).info("memory")
    return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))


def run_ours(url: str, bands_a: np.ndarray, bands_b: np.ndarray, has_b: np.ndarray) -> dict:
    idx = RedisBandIndex(url, PARAMS)
    mem0 = used_memory(url)
    t0 = time.perf_counter()
    idx.add("batch-a", bands_a, np.zeros(bands_a.shape[0], dtype=bool))
    t_add = time.perf_counter() - t0
    mem = used_memory(url) - mem0
    t0 = time.perf_counter()
    hit = idx.matches(bands_b, has_b, exclude="batch-b")
    return {"add_s": t_add, "query_s": time.perf_counter() - t0, "bytes": mem, "hit": hit}


def run_datasketch(url: str, sig_a: np.ndarray, sig_b: np.ndarray, has_b: np.ndarray) -> dict:
    try:
        from datasketch import LeanMinHash, MinHashLSH
    except ImportError:
        sys.exit("the peer needs datasketch >= 2.0: pip install 'corpusforge[bench]'")

    def lean(sig: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=SEED, hashvalues=sig, scheme="affine32")  # our values: 32-bit a·x + b

    lsh = MinHashLSH(
        num_perm=BANDS * ROWS,
        params=(BANDS, ROWS),
        storage_config={"type": "redis", "basename": b"dsbench", "redis": connection_kwargs(url)},
        prepickle=False,
    )
    mem0 = used_memory(url)
    t0 = time.perf_counter()
    with lsh.insertion_session(buffer_size=50_000) as session:
        for i, row in enumerate(sig_a):
            session.insert(f"a{i:06d}".encode(), lean(row), check_duplication=False)
    t_add = time.perf_counter() - t0
    mem = used_memory(url) - mem0
    t0 = time.perf_counter()
    hit = np.zeros(sig_b.shape[0], dtype=bool)
    for i in np.flatnonzero(has_b).tolist():
        hit[i] = bool(lsh.query(lean(sig_b[i])))
    return {"add_s": t_add, "query_s": time.perf_counter() - t0, "bytes": mem, "hit": hit}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=10_000, help="documents per batch (default 10,000)")
    args = p.parse_args()
    n = 2_000 if args.quick else args.docs
    a, b, planted = corpus(n)
    sig_a, _ = sigs(a)
    sig_b, has_b = sigs(b)
    bands_a, bands_b = band_hashes(sig_a, BANDS, ROWS), band_hashes(sig_b, BANDS, ROWS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = BandIndex(Path(tmp) / "index", PARAMS)
        t0 = time.perf_counter()
        folder.add("batch-a", bands_a)
        t_folder_add = time.perf_counter() - t0
        t0 = time.perf_counter()
        hit_folder = matches(folder.load(exclude="batch-b"), bands_b) & has_b
        t_folder_query = time.perf_counter() - t0

        proc, url = start_redis(Path(tmp))
        try:
            ours = run_ours(url, bands_a, bands_b, has_b)
            ds = run_datasketch(url, sig_a, sig_b, has_b)
        finally:
            proc.terminate()
            proc.wait()
    same = bool((hit_folder == ours["hit"]).all() and (ds["hit"] == ours["hit"]).all())
    found = set(np.flatnonzero(ours["hit"]).tolist())
    rate = lambda s: n / s if s else float("inf")  # noqa: E731
    per_doc = {"ours": ours["bytes"] / n, "ds": ds["bytes"] / n}
    print_table(
        [
            {
                "what": "insert batch A, docs/s",
                "folder": rate(t_folder_add),
                "redis (ours)": rate(ours["add_s"]),
                "datasketch": rate(ds["add_s"]),
                "ours/datasketch": f"{ds['add_s'] / ours['add_s']:.1f}x",
            },
            {
                "what": "query batch B, docs/s",
                "folder": rate(t_folder_query),
                "redis (ours)": rate(ours["query_s"]),
                "datasketch": rate(ds["query_s"]),
                "ours/datasketch": f"{ds['query_s'] / ours['query_s']:.1f}x",
            },
            {
                "what": "bytes per indexed doc",
                "folder": BANDS * 8,
                "redis (ours)": round(per_doc["ours"]),
                "datasketch": round(per_doc["ds"]),
                "ours/datasketch": f"{per_doc['ours'] / per_doc['ds']:.3f}x",
            },
            {
                "what": "B docs matched",
                "folder": int(hit_folder.sum()),
                "redis (ours)": len(found),
                "datasketch": int(ds["hit"].sum()),
                "ours/datasketch": f"planted {len(planted)}",
            },
        ],
        title=f"near-duplicate index, {n:,} docs per batch, 14 bands x 8 rows (Redis memory: used_memory growth)",
    )
    print_keyvals(
        redis_insert_over_datasketch=ds["add_s"] / ours["add_s"],
        redis_query_over_datasketch=ds["query_s"] / ours["query_s"],
        bytes_per_doc=round(per_doc["ours"]),
        datasketch_bytes_per_doc=round(per_doc["ds"]),
        docs=n,
        folder_insert_docs_s=rate(t_folder_add),
        folder_query_docs_s=rate(t_folder_query),
        redis_insert_docs_s=rate(ours["add_s"]),
        redis_query_docs_s=rate(ours["query_s"]),
        datasketch_insert_docs_s=rate(ds["add_s"]),
        datasketch_query_docs_s=rate(ds["query_s"]),
        folder_bytes_per_doc=BANDS * 8,
        same_matches=same,
        planted_found=len(found & planted),
        planted=len(planted),
    )


if __name__ == "__main__":
    main()

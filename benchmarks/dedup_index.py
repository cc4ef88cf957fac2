"""The near-duplicate index across batches: the folder index (``BandIndex``) vs the shared Redis index
(datasketch ``MinHashLSH`` with its Redis storage, fed with our signatures), on the same documents.

Data: batch A of random 200-word texts (a 3,000-word vocabulary), batch B of as many documents, a tenth of them
near copies of A's (2 words changed), the rest new. Signatures: ours (5-grams, 14 bands × 8 rows, seed 1),
computed once before timing. A ``redis-server`` is started on a unix socket in a temporary folder (no TCP, no
persistence: the server's own work, not the disk's, is measured) and stopped at the end.

Timed, each on a fresh index: insert A (folder: ``BandIndex.add``; Redis: ``RedisBandIndex.add``, i.e.
``MinHashLSH.insertion_session``), then query B against it three ways: the folder index (load + ``matches``),
datasketch's ``MinHashLSH.query`` per document (one round trip per band per document), and
``RedisBandIndex.matches`` (datasketch's band tables, one pipelined ``getmany`` per band and chunk). All three
must find the same documents. Redis memory per document = the growth of ``used_memory`` over A's documents.

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
from corpusforge.dedup.redis_index import RedisBandIndex
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


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=10_000, help="documents per batch (default 10,000)")
    args = p.parse_args()
    n = 2_000 if args.quick else args.docs
    a, b, planted = corpus(n)
    sig_a, has_a = sigs(a)
    sig_b, has_b = sigs(b)
    bands_a, bands_b = band_hashes(sig_a, BANDS, ROWS), band_hashes(sig_b, BANDS, ROWS)
    ids_a = [f"a{i:06d}" for i in range(n)]
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
            idx = RedisBandIndex(url, PARAMS)
            mem0 = idx._client.info("memory")["used_memory"]
            t0 = time.perf_counter()
            idx.add("batch-a", ids_a, sig_a)
            t_redis_add = time.perf_counter() - t0
            mem_per_doc = (idx._client.info("memory")["used_memory"] - mem0) / n
            t0 = time.perf_counter()
            hit_redis = idx.matches(sig_b, has_b, exclude="batch-b")
            t_redis_query = time.perf_counter() - t0
            t0 = time.perf_counter()
            hit_ds = np.zeros(n, dtype=bool)
            for i in np.flatnonzero(has_b).tolist():
                hit_ds[i] = bool(idx.lsh.query(idx._minhash(sig_b[i])))
            t_ds_query = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait()
    same = bool((hit_folder == hit_redis).all() and (hit_ds == hit_redis).all())
    found = set(np.flatnonzero(hit_redis).tolist())
    rate = lambda s: n / s if s else float("inf")  # noqa: E731
    print_table(
        [
            {"what": "insert batch A, docs/s", "folder": rate(t_folder_add), "redis": rate(t_redis_add), "": ""},
            {
                "what": "query batch B, docs/s",
                "folder": rate(t_folder_query),
                "redis": rate(t_redis_query),
                "": f"MinHashLSH.query per doc: {rate(t_ds_query):,.0f}",
            },
            {"what": "bytes per indexed doc", "folder": BANDS * 8, "redis": round(mem_per_doc), "": "used_memory"},
            {
                "what": "B docs matched",
                "folder": int(hit_folder.sum()),
                "redis": len(found),
                "": f"planted {len(planted)}",
            },
        ],
        title=f"near-duplicate index, {n:,} docs per batch, 14 bands x 8 rows",
    )
    print_keyvals(
        docs=n,
        folder_insert_docs_s=rate(t_folder_add),
        folder_query_docs_s=rate(t_folder_query),
        redis_insert_docs_s=rate(t_redis_add),
        redis_query_docs_s=rate(t_redis_query),
        datasketch_query_docs_s=rate(t_ds_query),
        redis_bytes_per_doc=round(mem_per_doc),
        same_matches=same,
        planted_found=len(found & planted),
        planted=len(planted),
    )


if __name__ == "__main__":
    main()

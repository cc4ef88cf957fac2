"""MinHash near-dedup: ours (vectorized numpy, corpusforge.steps.dedup) vs datasketch MinHash + MinHashLSH.

Data: documents of real text built from ../shared/data/tinyshakespeare.txt (each base document = 25 random
non-empty lines), plus planted near-duplicates of random base documents at known word-edit rates
(substitutions, deletions, insertions). Both methods see the same words (``shingles.words``), the same word
5-grams and the same 14 bands × 8 rows = 112 permutations.

Ground truth: the exact Jaccard of the 5-gram sets. All pairs at Jaccard ≥ 0.8 are found without testing all
n² pairs by prefix filtering (Chaudhuri et al. 2006; Bayardo et al. 2007): with the shingles of every set in
one global order, two sets with Jaccard ≥ t share at least one of the first |A| − ⌈t·|A|⌉ + 1 shingles of
each; only pairs sharing a prefix shingle are compared exactly (no pair is missed, none is sampled). Predicted pairs =
pairs of documents that share a bucket in at least one band (for datasketch: ``MinHashLSH.query``); each
is checked against its exact Jaccard. "Ours + exact verify" (the stage's ``threshold=0.8, exact_verify=true``)
re-reads the documents of candidate pairs and keeps a pair only at exact Jaccard ≥ 0.8; its figures are the
key=value line. Speed = documents per second for text → signatures → LSH → candidate
pairs, one core, best of the timed repeats (the same number for both); peak memory = tracemalloc peak of a
separate run. Ours runs numba-compiled kernels (``shingles.py``/``_jit.py``): their first call (compiling,
or loading numba's cache) is made once before timing and reported separately as ``first_call_s``.

Usage: .venv/bin/python benchmarks/dedup.py [--quick] [--docs N]
"""

from __future__ import annotations

# ruff: noqa: E402
import sys
from pathlib import Path

# Running ``python benchmarks/x.py`` puts benchmarks/ first on sys.path, where tokenize.py (the tokenizer
# benchmark) would shadow the standard library's tokenize module; put the project root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import math
import random
import tempfile
import time
import tracemalloc
import warnings
from collections import defaultdict

import numpy as np

from benchmarks._harness import SHARED_DATA, parser, print_keyvals, print_table  # noqa: E402
from corpusforge.dedup.index import BandIndex  # noqa: E402
from corpusforge.dedup.shingles import band_hashes, jit, packed_shingles, pair_jaccards, permutations, signatures, words

NGRAM, BANDS, ROWS, SEED, THRESHOLD = 5, 14, 8, 1, 0.8
EDIT_RATES = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)


def build_corpus(n_docs: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int, float]]]:
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.is_file():
        print(f"SKIP: {path} not found (the benchmark needs ../shared/data/tinyshakespeare.txt)")
        sys.exit(0)
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    vocab = sorted({w for ln in lines for w in ln.split()})
    rng = random.Random(seed)
    n_planted = n_docs // 5
    docs = ["\n".join(rng.choice(lines) for _ in range(25)) for _ in range(n_docs - n_planted)]
    planted = []
    for _ in range(n_planted):
        src = rng.randrange(len(docs))
        rate = rng.choice(EDIT_RATES)
        out = []
        for w in docs[src].split(" "):
            r = rng.random()
            if r < rate / 3:
                continue  # deletion
            if r < 2 * rate / 3:
                out.append(rng.choice(vocab))  # substitution
            elif r < rate:
                out += [w, rng.choice(vocab)]  # insertion
            else:
                out.append(w)
        planted.append((src, len(docs), rate))
        docs.append(" ".join(out))
    order = list(range(len(docs)))
    rng.shuffle(order)  # near-duplicates are not next to their sources
    pos = {old: new for new, old in enumerate(order)}
    return [docs[i] for i in order], [(pos[a], pos[b], r) for a, b, r in planted]


def shingle_sets(docs: list[str]) -> list[frozenset[int]]:
    out = []
    for d in docs:
        ws = words(d)
        grams = [b" ".join(ws[i : i + NGRAM]) for i in range(len(ws) - NGRAM + 1)] or [b" ".join(ws)]
        out.append(frozenset(hash(g) for g in grams))
    return out


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def true_pairs(sets: list[frozenset[int]], t: float) -> set[tuple[int, int]]:
    """All pairs with Jaccard ≥ t, exactly, by prefix filtering (see the module docstring)."""
    index: dict[int, list[int]] = defaultdict(list)
    cand: set[tuple[int, int]] = set()
    for i, s in enumerate(sets):
        prefix = sorted(s)[: len(s) - math.ceil(t * len(s)) + 1]
        for tok in prefix:
            for j in index[tok]:
                cand.add((j, i))
            index[tok].append(i)
    return {(i, j) for i, j in cand if jaccard(sets[i], sets[j]) >= t}


def bucket_pairs(bands: np.ndarray) -> set[tuple[int, int]]:
    """Every pair of documents sharing a bucket in at least one band (as ``MinHashLSH.query`` finds them),
    vectorized: per band one sort, then all pairs inside each bucket of two or more."""
    n = bands.shape[0]
    keys = []
    for j in range(bands.shape[1]):
        order = np.argsort(bands[:, j], kind="stable")
        col = bands[order, j]
        starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
        sizes = np.diff(np.r_[starts, n])
        # element at position x of a bucket pairs with the (size - 1 - x) elements after it
        rank = np.arange(n) - np.repeat(starts, sizes)
        later = np.repeat(sizes, sizes) - 1 - rank
        first = np.repeat(np.arange(n), later)
        if first.size == 0:
            continue
        step = np.arange(first.size) - np.repeat(np.cumsum(later) - later, later) + 1
        a, b = order[first], order[first + step]
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    if not keys:
        return set()
    u = np.unique(np.concatenate(keys))
    return set(zip((u // n).tolist(), (u % n).tolist(), strict=True))


def ours(docs: list[str]) -> tuple[set[tuple[int, int]], np.ndarray]:
    perms = permutations(BANDS * ROWS, SEED)
    all_bands, all_has = [], []
    for k in range(0, len(docs), 2048):  # the batch size the signatures stage uses
        sig, has = signatures(docs[k : k + 2048], ngram=NGRAM, perms=perms)
        all_bands.append(band_hashes(sig, BANDS, ROWS))
        all_has.append(has)
    bands = np.concatenate(all_bands)
    return bucket_pairs(bands), bands


def ours_verified(docs: list[str]) -> tuple[set[tuple[int, int]], np.ndarray]:
    """Ours with ``exact_verify``: candidate pairs kept only if their exact 5-gram Jaccard is ≥ 0.8."""
    pairs, bands = ours(docs)
    if not pairs:
        return pairs, bands
    cand = np.array(sorted(pairs), dtype=np.int64)
    involved = np.unique(cand)
    values, bounds = packed_shingles([docs[i] for i in involved.tolist()], NGRAM)
    keep = pair_jaccards(values, bounds, np.searchsorted(involved, cand)) >= THRESHOLD
    return set(map(tuple, cand[keep].tolist())), bands


def warm_up() -> float:
    """Seconds of the first calls (numba compiles the kernels, or loads them from its cache): not timed below."""
    t0 = time.perf_counter()
    ours_verified(["a b c d e f", "a b c d e f", "x"])
    return time.perf_counter() - t0


def peer(docs: list[str]) -> set[tuple[int, int]]:
    from datasketch import MinHash, MinHashLSH

    template = MinHash(num_perm=BANDS * ROWS, seed=SEED)  # permutations made once, shared (the fast way)
    lsh = MinHashLSH(num_perm=BANDS * ROWS, params=(BANDS, ROWS))
    hashes = []
    for i, d in enumerate(docs):
        ws = words(d)
        grams = [b" ".join(ws[k : k + NGRAM]) for k in range(len(ws) - NGRAM + 1)] or [b" ".join(ws)]
        m = MinHash(num_perm=BANDS * ROWS, permutations=template.permutations, scheme=template.scheme)
        m.update_batch(grams)
        lsh.insert(i, m)
        hashes.append(m)
    pairs: set[tuple[int, int]] = set()
    for i, m in enumerate(hashes):
        pairs.update((min(i, j), max(i, j)) for j in lsh.query(m) if j != i)
    return pairs


def score(pred: set[tuple[int, int]], truth: set[tuple[int, int]], sets: list[frozenset[int]]) -> tuple[float, float]:
    tp = sum(1 for i, j in pred if jaccard(sets[i], sets[j]) >= THRESHOLD)
    precision = tp / len(pred) if pred else 1.0
    recall = len(pred & truth) / len(truth) if truth else 1.0
    return precision, recall


def timed(fn, docs, repeat):  # type: ignore[no-untyped-def]
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn(docs)
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_mb(fn, docs) -> float:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    fn(docs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    n = args.docs or (3000 if args.quick else 10_000)
    docs, planted = build_corpus(n)
    t0 = time.perf_counter()
    sets = shingle_sets(docs)
    truth = true_pairs(sets, THRESHOLD)
    truth_s = time.perf_counter() - t0
    repeat = 1 if args.quick else 2
    warm_s = warm_up()
    lsh_s, (lsh_pairs, _) = timed(ours, docs, repeat)
    ours_s, (our_pairs, bands) = timed(ours_verified, docs, repeat)
    peer_s, peer_pairs = timed(peer, docs, repeat)
    ours_mb, peer_mb = peak_mb(ours_verified, docs), peak_mb(peer, docs)
    lp, lrc = score(lsh_pairs, truth, sets)
    op, orc = score(our_pairs, truth, sets)
    pp, prc = score(peer_pairs, truth, sets)
    with tempfile.TemporaryDirectory() as tmp:
        idx = BandIndex(Path(tmp), {"ngram": NGRAM, "bands": BANDS, "rows": ROWS, "seed": SEED})
        index_bpd = idx.add("bench", bands)["index_bytes_per_doc"]
    backend = "numba" if jit() is not None else "numpy"
    ours_dps, peer_dps, lsh_dps = len(docs) / ours_s, len(docs) / peer_s, len(docs) / lsh_s
    print(
        f"{len(docs)} documents ({len(planted)} planted near-duplicates, edit rates {EDIT_RATES}); "
        f"{len(truth)} true pairs at Jaccard >= {THRESHOLD} (prefix filtering, {truth_s:.1f} s)"
    )
    print_table(
        [
            {
                "what": "docs/s, LSH only (same as peer)",
                "ours": lsh_dps,
                "peer": peer_dps,
                "ratio": f"{lsh_dps / peer_dps:.1f}x",
            },
            {"what": "precision @J>=0.8, LSH only", "ours": lp, "peer": pp, "ratio": f"{lp / pp:.3f}" if pp else "-"},
            {"what": "recall @J>=0.8, LSH only", "ours": lrc, "peer": prc, "ratio": f"{lrc / prc:.3f}" if prc else "-"},
            {
                "what": "docs/s, ours + exact verify",
                "ours": ours_dps,
                "peer": peer_dps,
                "ratio": f"{ours_dps / peer_dps:.1f}x",
            },
            {
                "what": "precision, ours + exact verify",
                "ours": op,
                "peer": pp,
                "ratio": f"{op / pp:.3f}" if pp else "-",
            },
            {
                "what": "recall, ours + exact verify",
                "ours": orc,
                "peer": prc,
                "ratio": f"{orc / prc:.3f}" if prc else "-",
            },
            {
                "what": "predicted pairs (verified / peer)",
                "ours": len(our_pairs),
                "peer": len(peer_pairs),
                "ratio": "-",
            },
            {"what": "peak traced memory MiB", "ours": ours_mb, "peer": peer_mb, "ratio": f"{ours_mb / peer_mb:.2f}x"},
            {"what": "index bytes/doc", "ours": index_bpd, "peer": "-", "ratio": "-"},
            {"what": f"first call s ({backend}, not timed above)", "ours": warm_s, "peer": "-", "ratio": "-"},
        ],
        title="MinHash LSH, 5-grams, 14 bands x 8 rows (peer = datasketch MinHash + MinHashLSH)",
    )
    print_keyvals(
        speedup=round(ours_dps / peer_dps, 2),
        precision=round(op, 4),
        recall=round(orc, 4),
        index_bytes_per_doc=index_bpd,
        docs=len(docs),
        first_call_s=round(warm_s, 2),
    )


if __name__ == "__main__":
    main()

"""Vectorized MinHash over word n-grams: a batch of texts → signatures → band hashes, in numpy.

Words are runs of ``[0-9A-Za-z_]`` and non-ASCII bytes of the UTF-8 text, ASCII-lower-cased (the same as
``re.findall(rb"[0-9a-z_\\x80-\\xff]+", text.encode().lower())``, which ``words`` implements for reference
and tests). Every step works on whole batches, so Python code runs per batch, not per word:

1. word hashes: a polynomial hash of each word's bytes computed for all words at once from prefix sums
   (mod 2^64, the base is odd and so invertible), then mixed (splitmix64's finalizer);
2. shingle hashes: the n consecutive word hashes of each n-gram combined (documents with fewer than n
   words get one shingle of all their words);
3. MinHash: permutation i is ``x ↦ (a_i·x + b_i) mod 2^32`` on the top 32 bits of the (well mixed)
   shingle hash, with odd random ``a_i``; the signature is the minimum over the document's shingles,
   computed for a block of shingles × all permutations at once;
4. band hashes: the ``rows`` values of each band folded into one 64-bit hash.

When numba is installed (a dependency; imported lazily), ``signatures``, ``band_hashes``, ``packed_shingles``
and ``pair_jaccards`` run compiled kernels (``_jit.py``) that do steps 1–3 in one pass per document and
compute exactly the same values; the numpy code here is the reference and the fallback without numba.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np

_U64 = np.uint64
_WORD_RE = re.compile(rb"[0-9a-z_\x80-\xff]+")
_BASE = 0x100000001B3  # odd, so it has an inverse mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_SHINGLE_MUL = 0x9E3779B97F4A7C15
MAX32 = np.uint32(0xFFFFFFFF)


@lru_cache(maxsize=1)
def _tables() -> tuple[np.ndarray, np.ndarray]:
    is_word = np.zeros(256, dtype=bool)
    for c in b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_":
        is_word[c] = True
    is_word[0x80:] = True
    lower = np.arange(256, dtype=np.uint64)
    lower[ord("A") : ord("Z") + 1] += 32
    return is_word, lower + _U64(1)  # +1: no byte hashes to zero


@lru_cache(maxsize=1)
def _codes() -> np.ndarray:
    """uint64[256] for the kernels: 0 for a byte outside words, else the lower-cased byte + 1."""
    is_word, lower = _tables()
    return np.where(is_word, lower, _U64(0))


_JIT: Any = None  # the ``_jit`` module once imported; False when numba is unavailable


def jit() -> ModuleType | None:
    """The compiled kernels (``_jit.py``), or None without numba (then the numpy code runs)."""
    global _JIT
    if _JIT is None:
        try:
            from corpusforge.dedup import _jit
        except ImportError:
            _JIT = False
        else:
            _JIT = _jit
    return _JIT or None


def _encode(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(bytes uint8[N], offsets int64[D + 1]): the UTF-8 texts concatenated, document d at offsets[d:d+2]."""
    encoded = [t.encode("utf-8", "replace") for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def words(text: str) -> list[bytes]:
    """The words of ``text`` as the vectorized code sees them (reference implementation)."""
    return _WORD_RE.findall(text.encode("utf-8", "replace").lower())


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit mixer (every input bit affects every output bit)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def _powers(base: int, n: int) -> np.ndarray:
    """uint64[n]: base^0 … base^(n-1) mod 2^64 (numpy's integer products wrap)."""
    p = np.full(n, base, dtype=np.uint64)
    p[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(p, dtype=np.uint64)


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64[W], document index int64[W]) for every word of every text, in order."""
    is_word, lower = _tables()
    encoded = [t.encode("utf-8", "replace") for t in texts]
    data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)  # "\n" is not a word byte: no word spans docs
    if data.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    w = is_word[data].astype(np.int8)
    edges = np.diff(w, prepend=np.int8(0), append=np.int8(0))
    nz = np.flatnonzero(edges)
    starts = nz[edges[nz] == 1]
    ends = nz[edges[nz] == -1]  # exclusive
    if starts.size == 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    n = data.size
    with np.errstate(over="ignore"):
        # prefix[k] = Σ_{j<k} c_j·B^-j, so Σ_{s≤j<e} c_j·B^(e-1-j) = (prefix[e] - prefix[s])·B^(e-1)
        terms = lower[data] * _powers(_BASE_INV, n)
        prefix = np.concatenate(([_U64(0)], np.cumsum(terms, dtype=np.uint64)))
        h = (prefix[ends] - prefix[starts]) * _powers(_BASE, n)[ends - 1]
    h = mix64(h ^ (ends - starts).astype(np.uint64))
    doc_starts = np.cumsum([0] + [len(e) + 1 for e in encoded[:-1]])
    doc = np.searchsorted(doc_starts, starts, side="right") - 1
    return h, doc.astype(np.int64)


def shingle_hashes(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64[S], document index int64[S], sorted) of every word n-gram of every text."""
    wh, wd = word_hashes(texts)
    nw = np.bincount(wd, minlength=len(texts)) if wd.size else np.zeros(len(texts), np.int64)
    parts_h, parts_d = [], []
    if wh.size >= n:
        m = wh.size - n + 1
        valid = wd[:m] == wd[n - 1 :]
        with np.errstate(over="ignore"):
            h = wh[:m].copy()
            for k in range(1, n):
                h = h * _U64(_SHINGLE_MUL) + wh[k : k + m]
        parts_h.append(mix64(h[valid]))
        parts_d.append(wd[:m][valid])
    short = np.flatnonzero((nw > 0) & (nw < n))
    if short.size:  # documents shorter than n words: one shingle of all their words (rare: a Python loop)
        first = np.concatenate(([0], np.cumsum(nw)))
        hs = []
        for d in short:
            with np.errstate(over="ignore"):
                h1 = _U64(0)
                for x in wh[first[d] : first[d + 1]]:
                    h1 = h1 * _U64(_SHINGLE_MUL) + x
            hs.append(h1)
        parts_h.append(mix64(np.array(hs, dtype=np.uint64)))
        parts_d.append(short.astype(np.int64))
    if not parts_h:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    all_h, all_d = np.concatenate(parts_h), np.concatenate(parts_d)
    order = np.argsort(all_d, kind="stable")
    return all_h[order], all_d[order]


def permutations(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint32 arrays of ``num`` permutations; ``a`` odd so that each is a bijection of 32-bit values."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 1 << 32, size=num, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 1 << 32, size=num, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures(
    texts: Sequence[str], *, ngram: int, perms: tuple[np.ndarray, np.ndarray], block_cells: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """(signatures uint32[D, P], has_shingles bool[D]). Documents without words keep all-max signatures."""
    k = jit()
    if k is not None:
        a, b = perms
        data, offsets = _encode(texts)
        sig = np.empty((len(texts), a.size), dtype=np.uint32)
        has = np.empty(len(texts), dtype=bool)
        k.signatures_kernel(data, offsets, _codes(), a, b, ngram, sig, has)
        return sig, has
    return signatures_numpy(texts, ngram=ngram, perms=perms, block_cells=block_cells)


def signatures_numpy(
    texts: Sequence[str], *, ngram: int, perms: tuple[np.ndarray, np.ndarray], block_cells: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """``signatures`` in numpy only (the reference for the compiled kernel, and the fallback)."""
    a, b = perms
    sig = np.full((len(texts), a.size), MAX32, dtype=np.uint32)
    sh, sd = shingle_hashes(texts, ngram)
    x = (sh >> _U64(32)).astype(np.uint32)
    has = np.zeros(len(texts), dtype=bool)
    has[sd] = True
    step = max(1, block_cells // max(1, a.size))  # shingles per block: block × P uint32 values, ≈4 MiB
    with np.errstate(over="ignore"):
        for s in range(0, x.size, step):
            xs, ds = x[s : s + step], sd[s : s + step]
            v = np.multiply.outer(xs, a)  # (block, P) uint32, wrapping mod 2^32
            v += b
            seg = np.flatnonzero(np.r_[True, ds[1:] != ds[:-1]])
            mins = np.minimum.reduceat(v, seg, axis=0)
            rows = ds[seg]
            sig[rows] = np.minimum(sig[rows], mins)
    return sig, has


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64[D, bands]: each band's ``rows`` signature values folded into one 64-bit hash."""
    k = jit()
    if k is not None:
        return k.band_hashes_kernel(np.ascontiguousarray(sig, dtype=np.uint32), bands, rows)
    m = sig[:, : bands * rows].reshape(sig.shape[0], bands, rows).astype(np.uint64)
    h = np.zeros(m.shape[:2], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            h = mix64(h * _U64(_SHINGLE_MUL) + m[:, :, r])
    return h


def shingle_sets(texts: Sequence[str], n: int) -> list[np.ndarray]:
    """Per text: its sorted, distinct shingle hashes (for exact Jaccard verification of candidate pairs)."""
    values, bounds = packed_shingles(texts, n)
    return [np.unique(values[bounds[i] : bounds[i + 1]]) for i in range(len(texts))]


def packed_shingles(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(values uint64[S], bounds int64[D + 1]): text d's shingle hashes, in text order with repeats, are
    ``values[bounds[d]:bounds[d + 1]]`` (the input of ``pair_jaccards``)."""
    k = jit()
    if k is not None:
        data, offsets = _encode(texts)
        return k.shingles_kernel(data, offsets, _codes(), n)
    h, d = shingle_hashes(texts, n)
    return h, np.searchsorted(d, np.arange(len(texts) + 1)).astype(np.int64)


def pair_jaccards(values: np.ndarray, bounds: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """float64[K]: exact Jaccard of the shingle sets of texts ``pairs[k, 0]`` and ``pairs[k, 1]`` of
    ``packed_shingles`` (repeated shingles count once)."""
    pairs = np.ascontiguousarray(pairs, dtype=np.int64).reshape(-1, 2)
    bounds = np.ascontiguousarray(bounds, dtype=np.int64)
    k = jit()
    if k is not None:
        return k.pair_jaccards_kernel(np.ascontiguousarray(values, dtype=np.uint64), bounds, pairs)
    sets: dict[int, np.ndarray] = {}
    for r in np.unique(pairs).tolist():
        sets[r] = np.unique(values[bounds[r] : bounds[r + 1]])
    return np.array([jaccard(sets[i], sets[j]) for i, j in pairs.tolist()], dtype=np.float64)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted distinct hash arrays (two empty sets: 1.0)."""
    if a.size == 0 and b.size == 0:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)

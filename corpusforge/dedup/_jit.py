"""Compiled (numba) kernels of ``shingles.py``: one pass per document from bytes to MinHash minima.

Imported lazily by ``shingles.py`` (numba is only loaded when MinHash actually runs). Every kernel computes
exactly the values of the numpy reference code in ``shingles.py`` (same word bytes, same word and shingle
hashes, same permutations), so signatures, band hashes and the band index do not depend on which path ran.
Kernels work per document, so results never depend on batch size, worker count or document order.
``cache=True``: the machine code is cached in ``__pycache__`` (or ``NUMBA_CACHE_DIR``); only the first
call in a fresh environment pays the compile time.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_U = np.uint64
_BASE = _U(0x100000001B3)
_SHINGLE_MUL = _U(0x9E3779B97F4A7C15)
_M1 = _U(0xBF58476D1CE4E5B9)
_M2 = _U(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = _U(30), _U(27), _U(31), _U(32)
_MAX32 = np.uint32(0xFFFFFFFF)


@nb.njit(cache=True, inline="always")
def _mix64(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@nb.njit(cache=True, inline="always")
def _fold(ring: np.ndarray, top: int, k: int) -> np.uint64:
    """Horner fold (× _SHINGLE_MUL) of the last ``k`` word hashes in the ring buffer, oldest first."""
    n = ring.size
    h = ring[(top - k) % n]
    for j in range(top - k + 1, top):
        h = h * _SHINGLE_MUL + ring[j % n]
    return h


@nb.njit(cache=True, nogil=True)
def _doc_shingles(data, lo, hi, code, ngram, ring, out):  # type: ignore[no-untyped-def]
    """Writes the mixed shingle hashes of ``data[lo:hi]`` into ``out``; returns their number.

    ``code[byte]``: 0 for a byte that is not part of a word, else the byte's (lower-cased) value + 1."""
    top = 0  # words seen so far (the ring buffer holds the last ``ngram``)
    ns = 0
    i = lo
    while i < hi:
        c = code[data[i]]
        i += 1
        if c == 0:
            continue
        start = i - 1
        h = c
        while i < hi:
            c = code[data[i]]
            if c == 0:
                break
            h = h * _BASE + c
            i += 1
        ring[top % ngram] = _mix64(h ^ _U(i - start))
        top += 1
        if top >= ngram:
            out[ns] = _mix64(_fold(ring, top, ngram))
            ns += 1
    if 0 < top < ngram:  # fewer than n words: one shingle of all of them
        out[0] = _mix64(_fold(ring, top, top))
        ns = 1
    return ns


@nb.njit(cache=True, nogil=True)
def signatures_kernel(data, offsets, code, a, b, ngram, sig, has):  # type: ignore[no-untyped-def]
    """sig[d, p] = min over document d's shingles x of (a[p]·(x >> 32) + b[p]) mod 2^32; has[d]: any shingle."""
    n_docs = offsets.size - 1
    n_perm = a.size
    ring = np.zeros(ngram, np.uint64)
    longest = 0
    for d in range(n_docs):
        longest = max(longest, offsets[d + 1] - offsets[d])
    buf = np.empty(longest // 2 + 2, np.uint64)  # a word is ≥ 1 byte plus ≥ 1 separator
    xs = np.empty(longest // 2 + 2, np.uint32)
    mins = np.empty(n_perm, np.uint32)
    for d in range(n_docs):
        ns = _doc_shingles(data, offsets[d], offsets[d + 1], code, ngram, ring, buf)
        for s in range(ns):
            xs[s] = np.uint32(buf[s] >> _S32)
        mins[:] = _MAX32
        for s in range(ns):
            x = xs[s]
            for p in range(n_perm):
                mins[p] = min(mins[p], np.uint32(a[p] * x + b[p]))  # branch-free: vectorizes
        sig[d, :] = mins
        has[d] = ns > 0


@nb.njit(cache=True, nogil=True)
def shingles_kernel(data, offsets, code, ngram):  # type: ignore[no-untyped-def]
    """(values uint64[S], bounds int64[D + 1]): each document's shingle hashes in text order (repeats kept)."""
    n_docs = offsets.size - 1
    ring = np.zeros(ngram, np.uint64)
    out = np.empty(data.size // 2 + n_docs + 1, np.uint64)
    bounds = np.zeros(n_docs + 1, np.int64)
    pos = 0
    for d in range(n_docs):
        pos += _doc_shingles(data, offsets[d], offsets[d + 1], code, ngram, ring, out[pos:])
        bounds[d + 1] = pos
    return out[:pos].copy(), bounds


@nb.njit(cache=True, nogil=True)
def pair_jaccards_kernel(values, bounds, pairs):  # type: ignore[no-untyped-def]
    """float64[K]: exact Jaccard of the distinct values of sets ``pairs[k, 0]`` and ``pairs[k, 1]`` (rows of
    ``bounds``; repeats allowed, two empty sets: 1.0), with an open-addressing table per pair (no sorting)."""
    out = np.empty(pairs.shape[0], np.float64)
    cap = 64
    keys = np.empty(cap, np.uint64)
    flags = np.zeros(cap, np.uint8)  # 0 empty, bit 0: in the first set, bit 1: in the second
    for k in range(pairs.shape[0]):
        i, j = pairs[k, 0], pairs[k, 1]
        total = (bounds[i + 1] - bounds[i]) + (bounds[j + 1] - bounds[j])
        if total == 0:
            out[k] = 1.0
            continue
        size = 64
        while size < 2 * total:
            size *= 2
        if size > cap:
            cap = size
            keys = np.empty(cap, np.uint64)
            flags = np.zeros(cap, np.uint8)
        flags[:size] = 0
        mask = size - 1
        for side in range(2):
            row = i if side == 0 else j
            bit = np.uint8(1 + side)
            for t in range(bounds[row], bounds[row + 1]):
                x = values[t]
                slot = np.int64(x & np.uint64(mask))  # the values are well-mixed hashes
                while flags[slot] != 0 and keys[slot] != x:
                    slot = (slot + 1) & mask
                keys[slot] = x
                flags[slot] |= bit
        na = nb_ = inter = 0
        for slot in range(size):
            f = flags[slot]
            na += f & 1
            nb_ += f >> 1
            inter += f == 3
        out[k] = inter / (na + nb_ - inter)
    return out


@nb.njit(cache=True, nogil=True)
def band_hashes_kernel(sig, bands, rows):  # type: ignore[no-untyped-def]
    """uint64[D, bands]: each band's ``rows`` signature values folded into one 64-bit hash."""
    out = np.empty((sig.shape[0], bands), np.uint64)
    for d in range(sig.shape[0]):
        for j in range(bands):
            h = _U(0)
            for r in range(rows):
                h = _mix64(h * _SHINGLE_MUL + _U(sig[d, j * rows + r]))
            out[d, j] = h
    return out

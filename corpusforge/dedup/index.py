"""A persistent MinHash band index, so a later batch is deduplicated against everything already kept.

Layout of an index folder (outside any run folder)::

    index.json        format, the MinHash parameters, and the parts: name, docs, bytes, sha256
    <batch key>.npy   uint64[docs, bands]: the band hashes of one batch's kept documents

Only band hashes are stored: ``bands × 8`` bytes per document (112 with the default 14 bands), in memory too
when the index is queried. A batch's key is derived from its signatures, so rerunning the same batch
replaces its own part instead of matching itself. Updates take a lock, write the part and then
``index.json`` atomically (temp + rename): a crash leaves the previous index intact. ``.npy`` files are
read with ``allow_pickle=False``.
"""

from __future__ import annotations

import fcntl
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from corpusforge.errors import ConfigError, ShardError
from corpusforge.storage import atomic_write_bytes, atomic_write_json, sha256_file

FORMAT = "corpusforge-minhash-index/1"
INDEX_FILE = "index.json"


class BandIndex:
    def __init__(self, folder: Path, params: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.params = params  # ngram, bands, rows, seed: a part made with other values cannot be compared

    def _meta(self) -> dict[str, Any]:
        path = self.folder / INDEX_FILE
        if not path.is_file():
            return {"format": FORMAT, "params": self.params, "parts": []}
        try:
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ShardError(f"{path}: not valid JSON ({exc})") from exc
        if meta.get("params") != self.params:
            raise ConfigError(
                f"the MinHash index {self.folder} was built with {meta.get('params')}, this stage uses "
                f"{self.params}; use another index folder or the same parameters",
                path="index",
            )
        return meta

    def load(self, *, exclude: str | None = None) -> np.ndarray:
        """uint64[docs, bands] of every part except ``exclude`` (the current batch's own key)."""
        arrays = []
        for part in self._meta()["parts"]:
            if part["key"] == exclude:
                continue
            path = self.folder / part["name"]
            if not path.is_file() or path.stat().st_size != part["bytes"]:
                raise ShardError(f"{path}: missing or truncated (listed in {INDEX_FILE}); rebuild the index")
            arrays.append(np.load(path, allow_pickle=False))
        if not arrays:
            return np.zeros((0, self.params["bands"]), dtype=np.uint64)
        return np.concatenate(arrays)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def add(self, key: str, bands: np.ndarray) -> dict[str, Any]:
        """Write (or replace) the part ``key`` with ``bands``; returns the index summary."""
        with self._locked():
            meta = self._meta()
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(bands, dtype=np.uint64), allow_pickle=False)
            name = f"{key}.npy"
            atomic_write_bytes(self.folder / name, buf.getvalue())
            part = {"key": key, "name": name, "docs": int(bands.shape[0]), "bytes": len(buf.getvalue())}
            part["sha256"] = sha256_file(self.folder / name)
            meta["parts"] = [p for p in meta["parts"] if p["key"] != key] + [part]
            meta["docs"] = sum(p["docs"] for p in meta["parts"])
            meta["bytes"] = sum(p["bytes"] for p in meta["parts"])
            atomic_write_json(self.folder / INDEX_FILE, meta)
            return self.summary(meta)

    def summary(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        meta = meta or self._meta()
        docs = sum(p["docs"] for p in meta["parts"])
        nbytes = sum(p["bytes"] for p in meta["parts"])
        # In memory and in the .npy payload: bands × 8 bytes per document (+ a 128-byte header per part).
        return {
            "index_docs": docs,
            "index_parts": len(meta["parts"]),
            "index_bytes": nbytes,
            "index_bytes_per_doc": round(nbytes / docs, 1) if docs else 0.0,
        }


def matches(index: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """bool[D]: which rows of ``bands`` share a band hash (in the same band) with the index."""
    hit = np.zeros(bands.shape[0], dtype=bool)
    if index.shape[0] == 0 or bands.shape[0] == 0:
        return hit
    for j in range(bands.shape[1]):
        hit |= np.isin(bands[:, j], index[:, j])
    return hit

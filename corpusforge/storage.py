"""Arrow document shards: atomic writes, size rotation, manifests and validation.

Document shards are Arrow IPC *files* (``00003.arrow``, ``00003-001.arrow`` after rotation) with the columns
of ``DOC_SCHEMA``. A shard is written under ``<name>.tmp`` and renamed when complete, so no partial file ever
carries a final name. ``manifest.json`` lists every file with rows, bytes and sha256 plus the config and the
versions that made the folder; it is written last, atomically. Readers and ``validate`` check files against
it, because an Arrow stream cut at a batch boundary reads without any error.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import platform
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import xxhash

from corpusforge.document import Document
from corpusforge.errors import FatalError, LockedError, ShardError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SNAPSHOTS = "snapshots"  # a re-crawled folder's later snapshots
TMP_SUFFIX = ".tmp"

DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("url", pa.string()),
        ("source", pa.string()),
        ("fetched_at", pa.string()),
        ("final_url", pa.string()),
        ("status", pa.int32()),
        ("backend", pa.string()),
        ("robots", pa.string()),
        ("consent", pa.string()),
        ("html", pa.large_string()),
        ("metadata", pa.large_string()),
    ]
)


# --------------------------------------------------------------------------------------------------- files
def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_temp(tmp: Path, final: Path) -> None:
    """Make a finished temp file durable and give it its final name: fsync, rename, fsync the folder.

    Every writer of the package ends a file this way (shards, token shards, JSON, exports), so a crash leaves
    the old file or none under the final name, never a partial one; ``OSError`` becomes a ``FatalError``.
    """
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FatalError(f"cannot write {final}: {exc.strerror or exc}. Check free space and permissions.") from exc


def commit_temp_dir(tmp: Path, final: Path) -> None:
    """``commit_temp`` for a folder (a checkpoint, an export): fsync every file in it, replace ``final`` (an
    older folder of that name is removed first), fsync the parent. A crash leaves the old folder or none."""
    try:
        for path in sorted(Path(tmp).rglob("*")):
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        raise FatalError(f"cannot write {final}: {exc.strerror or exc}. Check free space and permissions.") from exc


def temp_path(final: Path) -> Path:
    """Where ``final`` is written until it is complete: a name of this attempt alone (process id and a random
    part), so an attempt never renames another attempt's temp file. ``clean_temp_files`` removes leftovers."""
    return final.with_name(f"{final.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename; a crash leaves the old file or none."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.write_bytes(data)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FatalError(f"cannot write {path}: {exc.strerror or exc}. Check free space and permissions.") from exc
    commit_temp(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path, *, name: str | None = None, rows: int = 0, **extra: Any) -> dict[str, Any]:
    """A manifest entry for a finished file: name (default: the file's), rows, bytes, sha256, xxh3_128, extras.

    sha256 is the published digest (``validate``, lineage, data cards); xxh3_128 is what readers check as they
    read: it catches the same accidents (flipped bits, swapped or cut files) at memory speed (~20 GB/s against
    sha256's ~1), so checking every read costs little next to parsing.
    """
    path = Path(path)
    digests = {"sha256": sha256_file(path), "xxh3_128": _mapped_digest(path, "xxh3_128")}
    return {"name": name or path.name, "rows": rows, "bytes": path.stat().st_size} | digests | extra


def clean_temp_files(folder: Path) -> int:
    """Remove leftovers of an interrupted write (``*.tmp``); returns how many were removed."""
    n = 0
    if folder.is_dir():
        for p in folder.rglob(f"*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def versions() -> dict[str, str]:
    """Versions of what made an output, recorded in manifests."""
    import corpusforge

    out = {"corpusforge": corpusforge.__version__, "python": platform.python_version(), "pyarrow": pa.__version__}
    for mod in ("tokenizers", "torch", "trafilatura"):
        m = __import__("sys").modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = str(m.__version__)
    return out


# --------------------------------------------------------------------------------------------------- lock
@contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<workdir>/.lock``; released by the kernel even after ``kill -9``.

    A run folder (the runner) and a training folder (``corpusforge train``) are each locked this way: a second
    run on the same folder raises ``LockedError`` at once (exit 3). Worker processes hold the folder too
    (``hold_workers_lock``): after a ``kill -9`` of a run, the next one waits (bounded) until the old run's
    workers are gone, so nothing of the old run still writes while it runs.
    """
    path = workdir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise LockedError(
                f"{workdir} is locked by another corpusforge run (pid {holder or '?'}); "
                "wait for it to finish, or check for a stuck process"
            ) from None
        alive = wait_for_old_workers(workdir)
        if alive:
            raise LockedError(
                f"worker processes of an earlier run on {workdir} are still alive (pids {alive or '?'}); "
                "they end with the run that started them: wait, or kill them"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


WORKERS_LOCK = ".workers.lock"
_HELD: list[int] = []  # a worker's lock descriptor, open for the life of the process


def hold_workers_lock(workdir: Path) -> None:
    """Take a shared lock on the work folder's worker lock for the life of this process."""
    fd = os.open(Path(workdir) / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _HELD.append(fd)


def wait_for_old_workers(workdir: Path, timeout_s: float = 10.0) -> list[int]:
    """Wait until no worker of an earlier run holds ``workdir``; [] then, else the pids still holding it."""
    fd = os.open(Path(workdir) / WORKERS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return []
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return _holders(Path(workdir) / WORKERS_LOCK)
                time.sleep(0.05)
    finally:
        os.close(fd)


def _holders(path: Path) -> list[int]:
    """Pids with ``path`` open (for the error message; best effort)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return []
    pids = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if any(f.path == str(path.resolve()) for f in proc.open_files()):
                pids.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return pids


# --------------------------------------------------------------------------------------------------- writing
class ShardWriter:
    """Writes documents to ``<folder>/<prefix>.arrow``, rotating to ``<prefix>-001.arrow`` … past ``max_bytes``.

    Use as a context manager. ``close()`` finishes every file (fsync + rename) and returns their records
    (name, rows, bytes, sha256) for the task's completion marker. ``abort()`` removes what was written.
    """

    def __init__(
        self,
        folder: Path,
        prefix: str,
        *,
        max_bytes: int = 512 << 20,
        batch_rows: int = 512,
        schema: pa.Schema = DOC_SCHEMA,
    ) -> None:
        self.folder = Path(folder)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.batch_rows = batch_rows
        self.schema = schema
        self.files: list[dict[str, Any]] = []
        self._rows: list[dict[str, Any]] = []
        self._writer: ipc.RecordBatchFileWriter | None = None
        self._sink: pa.OSFile | None = None
        self._tmp: Path | None = None
        self._final: Path | None = None
        self._file_rows = 0
        self._file_bytes = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def _name(self) -> str:
        k = len(self.files)
        return f"{self.prefix}.arrow" if k == 0 else f"{self.prefix}-{k:03d}.arrow"

    def _open(self) -> None:
        self._final = self.folder / self._name()
        self._tmp = temp_path(self._final)
        self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = ipc.new_file(self._sink, self.schema)
        self._file_rows = 0
        self._file_bytes = 0

    def write(self, doc: Document) -> None:
        self.write_row(doc.to_row())

    def write_row(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.batch_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self._open()
        batch = pa.RecordBatch.from_pylist(self._rows, schema=self.schema)
        self._rows = []
        try:
            assert self._writer is not None
            self._writer.write_batch(batch)
        except OSError as exc:
            self.abort()
            raise FatalError(f"cannot write shard in {self.folder}: {exc}. Check free space.") from exc
        self._file_rows += batch.num_rows
        self._file_bytes += batch.nbytes
        if self._file_bytes >= self.max_bytes:
            self._finish_file()

    def _finish_file(self) -> None:
        if self._writer is None:
            return
        assert self._sink is not None and self._tmp is not None and self._final is not None
        try:
            self._writer.close()
            self._sink.close()
        except OSError as exc:
            self.abort()
            raise FatalError(f"cannot finish shard {self._final}: {exc}. Check free space.") from exc
        commit_temp(self._tmp, self._final)
        self.files.append(file_record(self._final, rows=self._file_rows))
        self._writer = None
        self._sink = None

    def close(self) -> list[dict[str, Any]]:
        self._flush()
        self._finish_file()
        return self.files

    def abort(self) -> None:
        """Drop everything this writer made (used when a task fails)."""
        if self._writer is not None:
            try:
                self._writer.close()
                assert self._sink is not None
                self._sink.close()
            except Exception:  # noqa: BLE001 - best effort on an already failing path
                pass
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        for f in self.files:
            (self.folder / f["name"]).unlink(missing_ok=True)
        self._writer = None
        self.files = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------------- reading
def _raw_batches(path: Path) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC file or stream, memory-mapped, with no check against a manifest.

    Document shards are IPC files; token shards are IPC streams (what HF datasets writes). The map is not
    closed here: zero-copy views of a batch (the trainer's token arrays) keep it alive. An unreadable file
    raises ``ShardError`` naming it.
    """
    try:
        src = pa.memory_map(str(path), "r")
        try:
            reader = ipc.open_file(src)
            batches: Iterable[pa.RecordBatch] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            src.seek(0)
            batches = ipc.open_stream(src)
        yield from batches
    except (pa.ArrowInvalid, OSError) as exc:
        raise ShardError(f"{path}: unreadable Arrow file ({exc}); rerun the stage that wrote it") from exc


def _mapped_digest(path: Path, kind: str) -> str:
    """The ``kind`` digest ("sha256" or "xxh3_128") of a file, read through a memory map."""
    h: Any = hashlib.sha256() if kind == "sha256" else xxhash.xxh3_128()
    with pa.memory_map(str(path), "r") as src:
        if src.size():
            h.update(memoryview(src.read_buffer()))
    return str(h.hexdigest())


def read_listed(folder: Path, entry: dict[str, Any], *, verify: bool = True) -> Iterator[pa.RecordBatch]:
    """The batches of one file a manifest lists (``entry``: name, bytes, rows, sha256), checked as it is read.

    Before the first batch: present, the listed size, and (``verify``) the listed sha256. After the last
    batch: the listed row count (a stream cut at a batch boundary reads without error, with fewer rows). Any
    mismatch raises ``ShardError`` naming the file; nothing of an altered file reaches the caller.
    """
    path = Path(folder) / entry["name"]
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        raise ShardError(f"{path}: missing or size differs from {MANIFEST}; run corpusforge validate")
    # The fast digest where the manifest has one (every manifest written since it was added), else sha256.
    kind = "xxh3_128" if "xxh3_128" in entry else "sha256"
    if verify and _mapped_digest(path, kind) != entry[kind]:
        raise ShardError(
            f"{path}: altered since {MANIFEST} was written (its {kind} checksum differs, so its sha256 does too); "
            "run corpusforge validate"
        )
    rows = 0
    for batch in _raw_batches(path):
        rows += batch.num_rows
        yield batch
    if rows != entry["rows"]:
        raise ShardError(f"{path}: {rows} rows, {MANIFEST} says {entry['rows']}; run corpusforge validate")


def listed_entry(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The manifest entry of ``path`` (its folder's manifest, or its parent's for ``train/…`` token shards)."""
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        manifest = folder / MANIFEST
        if manifest.is_file():
            st = manifest.stat()
            entries = _entries(str(folder), st.st_mtime_ns, st.st_size)
            entry = entries.get(path.relative_to(folder).as_posix())
            if entry is not None:
                return folder, entry
    return None


@functools.lru_cache(maxsize=64)
def _entries(folder: str, _mtime_ns: int, _size: int) -> dict[str, dict[str, Any]]:
    # Keyed by the manifest's mtime and size too: a rewritten manifest is read again.
    return {f["name"]: f for f in load_manifest(Path(folder)).get("files", [])}


def iter_batches(path: Path, *, verify: bool = True) -> Iterator[pa.RecordBatch]:
    """The record batches of a shard: the one reader of every shard in the package. A file that a manifest
    lists is checked against its entry as it is read (``read_listed``); readers trust nothing."""
    listed = listed_entry(path)
    if listed is None:
        yield from _raw_batches(path)
    elif "carried_from" in listed[1]:
        yield from _carried_batches(listed[0], listed[1], verify=verify)
    else:
        yield from read_listed(listed[0], listed[1], verify=verify)


def _carried_batches(folder: Path, entry: dict[str, Any], *, verify: bool) -> Iterator[pa.RecordBatch]:
    """The rows a snapshot carries forward by reference (``crawl/snapshot.py``): ``entry`` is a references file
    (url, id, row) into one file of an earlier snapshot, ``carried_from``, which must still be the file it
    referenced (its sha256) and is checked against its own manifest as it is read."""
    import numpy as np

    refs = [b.column("row").to_numpy() for b in read_listed(folder, entry, verify=verify)]
    rows = np.sort(np.concatenate(refs)) if refs else np.zeros(0, dtype=np.int64)
    target = Path(os.path.normpath(Path(folder) / entry["carried_from"]))
    listed = listed_entry(target)
    if listed is None or listed[1]["sha256"] != entry["carried_sha256"]:
        raise ShardError(
            f"{folder / entry['name']}: carries rows of {target}, which is missing or no longer the file it "
            "referenced (sha256 differs); restore the earlier snapshot or re-crawl into a fresh folder"
        )
    offset = 0
    for batch in read_listed(listed[0], listed[1], verify=verify):
        lo, hi = np.searchsorted(rows, [offset, offset + batch.num_rows])
        if hi > lo:
            yield batch.take(pa.array(rows[lo:hi] - offset))
        offset += batch.num_rows
    if rows.size and rows[-1] >= offset:
        raise ShardError(f"{folder / entry['name']}: references row {rows[-1]} of {target}, which has {offset}")


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole shard as one table (small shards: signatures, clusters); checked like ``iter_batches``."""
    batches = list(iter_batches(path))
    if not batches:
        with pa.memory_map(str(path), "r") as src:  # an empty file or stream still has a schema
            try:
                schema = ipc.open_file(src).schema
            except pa.ArrowInvalid:
                src.seek(0)
                schema = ipc.open_stream(src).schema
        table = pa.Table.from_batches([], schema=schema)
    else:
        table = pa.Table.from_batches(batches)
    return table.select(columns) if columns else table


def iter_documents(paths: Iterable[Path], *, columns: list[str] | None = None) -> Iterator[Document]:
    """Stream documents from shards batch by batch (never the whole stream in memory), each file checked
    against its manifest (size, sha256, rows) as it is read."""
    for path in paths:
        for batch in iter_batches(path):
            if columns:
                batch = batch.select([c for c in columns if c in batch.schema.names])
            for row in batch.to_pylist():
                yield Document.from_row(row)


# --------------------------------------------------------------------------------------------------- manifests
def write_manifest(
    folder: Path, files: list[dict[str, Any]], *, config: Any, extra: dict[str, Any] | None = None
) -> dict:
    manifest = {
        "format": "corpusforge/1",
        "files": sorted(files, key=lambda f: f["name"]),
        "rows": sum(f["rows"] for f in files),
        "bytes": sum(f["bytes"] for f in files),
        "config": config,
        "versions": versions(),
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def load_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(f"{folder}: no {MANIFEST}; the stage did not finish (rerun it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ShardError(f"{path}: not valid JSON ({exc})") from exc


def current_snapshot(folder: Path) -> Path:
    """The newest finished snapshot of ``folder``: a re-crawled folder holds its later snapshots as finished
    folders of their own, ``snapshots/00001/`` … (``crawl/snapshot.py``); the folder itself is the first."""
    done = [p for p in sorted((Path(folder) / SNAPSHOTS).glob("[0-9]" * 5)) if (p / MANIFEST).is_file()]
    return done[-1] if done else Path(folder)


def manifest_paths(folder: Path) -> list[Path]:
    """The shard paths a finished folder lists, in manifest order (a re-crawled folder's: its current
    snapshot's, whose references files read as the rows they carry)."""
    folder = current_snapshot(folder)
    return [folder / f["name"] for f in load_manifest(folder)["files"]]


def count_rows(path: Path) -> int:
    return sum(b.num_rows for b in _raw_batches(path))


def validate_folder(folder: Path, *, deep: bool = True) -> list[str]:
    """Check every file a manifest lists: present, same size, same sha256, same row count, readable.

    Returns a list of problems (empty when the folder is valid). ``deep=False`` skips sha256 and row counts.
    """
    folder = Path(folder)
    problems: list[str] = []
    try:
        manifest = load_manifest(folder)
    except ShardError as exc:
        return [str(exc)]
    for f in manifest.get("files", []):
        path = folder / f["name"]
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {MANIFEST})")
            continue
        size = path.stat().st_size
        if size != f["bytes"]:
            problems.append(f"{path}: {size} bytes, manifest says {f['bytes']} (truncated or altered)")
            continue
        if not deep:
            continue
        digest = sha256_file(path)
        if digest != f["sha256"]:
            problems.append(f"{path}: sha256 {digest[:12]}… differs from manifest {f['sha256'][:12]}… (altered)")
            continue
        if not f["name"].endswith(".arrow"):
            continue  # tokenizer files, checkpoints: size and sha256 are the check
        if "carried_from" in f:  # a snapshot's references: the file they point into must be the same file
            target = listed_entry(Path(os.path.normpath(folder / f["carried_from"])))
            if target is None or target[1]["sha256"] != f["carried_sha256"]:
                problems.append(f"{path}: carries rows of {f['carried_from']}, which is missing or altered")
                continue
        try:
            rows = count_rows(path)
        except ShardError as exc:
            problems.append(f"{path}: unreadable ({exc.__cause__ or exc})")
            continue
        if rows != f["rows"]:
            problems.append(f"{path}: {rows} rows, manifest says {f['rows']}")
    return problems

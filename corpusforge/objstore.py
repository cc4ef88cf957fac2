"""Object storage (S3 and S3-compatible servers) through ``pyarrow.fs``: inputs read from ``s3://bucket/prefix``,
finished stage folders published there, and published folders fetched back.

Where it connects: ``endpoint_url`` (a stage parameter or ``--endpoint-url``), else ``$AWS_ENDPOINT_URL_S3`` or
``$AWS_ENDPOINT_URL``, else AWS itself; the region from ``$AWS_REGION`` / ``$AWS_DEFAULT_REGION``; credentials
from the usual AWS variables or profile, read by the AWS SDK inside pyarrow. Credentials are never passed
through corpusforge's own parameters, so they are never written into a recipe, a stage file or a log.

Publishing a stage folder (``publish``): every file but ``manifest.json`` is uploaded, read back and checked
against its sha256; a small ``.corpusforge-publish/<file>.sha256`` object then records it, so a rerun after a
kill skips what was verified already; ``manifest.json`` goes last, so a reader that finds it finds every
file. Publishing again what is there already changes nothing. Fetching (``fetch``) reads the manifest first,
downloads every file under temp names, checks each listed file's sha256, renames it into place, and writes
the manifest last; a rerun skips the files that already match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from corpusforge.errors import ConfigError, FatalError

log = logging.getLogger(__name__)

MARKERS = ".corpusforge-publish"  # under a published prefix: one object per verified file
CHUNK = 8 << 20


def is_remote(path: str | os.PathLike[str]) -> bool:
    return str(path).startswith("s3://")


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ("bucket", "some/prefix"); a clear error for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"{uri!r} is not an s3://bucket/prefix address")
    return parts.netloc, parts.path.strip("/")


def endpoint(endpoint_url: str | None = None) -> str | None:
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(endpoint_url: str | None = None) -> Any:
    """A ``pyarrow.fs.S3FileSystem`` for the configured endpoint and region (credentials from the AWS SDK)."""
    from pyarrow import fs as pafs

    url = endpoint(endpoint_url)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, Any] = {"region": region}
    if url:
        parts = urlsplit(url if "://" in url else f"https://{url}")
        kwargs |= {"endpoint_override": parts.netloc, "scheme": parts.scheme or "https"}
    return pafs.S3FileSystem(**kwargs)


def _where(uri: str, exc: BaseException) -> FatalError:
    """An object-store failure, named with the address and what to check (never with credentials)."""
    return FatalError(
        f"{uri}: {exc}. Check the bucket and prefix, the endpoint (endpoint_url, $AWS_ENDPOINT_URL) and the AWS "
        "credentials in the environment"
    )


@dataclass
class InputFile:
    """One input file, on local disk or in object storage, as the input stages read it."""

    name: str  # the base name
    rel: str  # relative to the input root (the base name when the input is one file)
    size: int
    mtime_ns: int
    display: str  # for messages: the local path or the s3:// address
    local: Path | None = None
    _fs: Any = field(default=None, repr=False)
    _key: str | None = None

    @contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        if self.local is not None:
            with open(self.local, "rb") as fh:
                yield fh
            return
        try:
            stream = self._fs.open_input_stream(self._key)
        except OSError as exc:
            raise _where(self.display, exc) from exc
        with stream:
            yield stream  # type: ignore[misc]

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()

    def __str__(self) -> str:
        return self.display


def local_inputs(root: Path, patterns: tuple[str, ...]) -> list[InputFile]:
    files = [root] if root.is_file() else sorted(f for pat in patterns for f in root.rglob(pat) if f.is_file())
    out = []
    for f in files:
        st = f.stat()
        rel = f.name if root.is_file() else f.relative_to(root).as_posix()
        out.append(InputFile(f.name, rel, st.st_size, st.st_mtime_ns, str(f), local=f))
    return out


def remote_inputs(uri: str, patterns: tuple[str, ...], endpoint_url: str | None = None) -> list[InputFile]:
    """The objects under ``uri`` (a prefix, or one object) whose names match ``patterns``, sorted by key."""
    from fnmatch import fnmatch

    from pyarrow import fs as pafs

    bucket, prefix = split_uri(uri)
    fs = filesystem(endpoint_url)
    base = f"{bucket}/{prefix}".rstrip("/")
    try:
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            infos = [info]
            root = base.rsplit("/", 1)[0]
        else:
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            root = base
    except OSError as exc:
        raise _where(uri, exc) from exc
    out = []
    for i in sorted(infos, key=lambda i: i.path):
        if i.type != pafs.FileType.File or not any(fnmatch(i.base_name, p) for p in patterns):
            continue
        rel = i.path[len(root) + 1 :]
        mtime = int(i.mtime.timestamp() * 1e9) if i.mtime is not None else 0
        out.append(InputFile(i.base_name, rel, i.size, mtime, f"s3://{i.path}", _fs=fs, _key=i.path))
    return out


# ------------------------------------------------------------------ publish / fetch
def _sha256_stream(stream: Any) -> str:
    h = hashlib.sha256()
    while chunk := stream.read(CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _sha256_local(path: Path) -> str:
    with open(path, "rb") as fh:
        return _sha256_stream(fh)


def _remote_text(fs: Any, key: str) -> str | None:
    from pyarrow import fs as pafs

    if fs.get_file_info(key).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(key) as s:
        return bytes(s.read()).decode("utf-8", errors="replace")


def _upload(fs: Any, src: Path, key: str) -> None:
    with open(src, "rb") as fh, fs.open_output_stream(key) as out:
        while chunk := fh.read(CHUNK):
            out.write(chunk)


def _fault_at(name: str, n: int) -> None:
    """Exit hard after the ``n``-th file when ``$CORPUSFORGE_FAULT`` is ``name:n`` (tests of a killed transfer)."""
    fault = os.environ.get("CORPUSFORGE_FAULT", "")
    if fault == f"{name}:{n}":
        os._exit(137)


@dataclass
class TransferReport:
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unchanged: bool = False  # publish: the same manifest was there already


def _stage_files(folder: Path) -> list[Path]:
    """What a published stage folder holds: every file but temp files, the lock and the manifest."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or p.name.startswith(".") or "/." in f"/{rel}" or rel == "manifest.json":
            continue
        out.append(p)
    return out


def publish(stage_dir: Path, uri: str, *, endpoint_url: str | None = None) -> TransferReport:
    """Upload the finished stage folder ``stage_dir`` to ``uri`` (see the module docstring)."""
    from corpusforge.storage import MANIFEST, validate_folder

    manifest = stage_dir / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"{stage_dir} is not a finished stage folder (no {MANIFEST}): finish its run first")
    problems = validate_folder(stage_dir)
    if problems:
        raise FatalError(f"{stage_dir} does not match its {MANIFEST}, so it is not published: {problems[0]}")
    listed = {f["name"]: f["sha256"] for f in json.loads(manifest.read_text())["files"]}
    bucket, prefix = split_uri(uri)
    base = f"{bucket}/{prefix}".rstrip("/")
    fs = filesystem(endpoint_url)
    report = TransferReport()
    try:
        if _remote_text(fs, f"{base}/{MANIFEST}") == manifest.read_text():
            report.unchanged = True
            return report
        for src in _stage_files(stage_dir):
            rel = src.relative_to(stage_dir).as_posix()
            digest = listed.get(rel) or _sha256_local(src)
            key, mark = f"{base}/{rel}", f"{base}/{MARKERS}/{rel}.sha256"
            info = fs.get_file_info(key)
            if _remote_text(fs, mark) == digest and info.size == src.stat().st_size:
                report.skipped.append(rel)
                continue
            _upload(fs, src, key)
            with fs.open_input_stream(key) as s:
                got = _sha256_stream(s)
            if got != digest:
                raise FatalError(f"{uri}/{rel}: the uploaded object's sha256 is {got}, not {digest}; publish again")
            with fs.open_output_stream(mark) as out:
                out.write(digest.encode())
            report.copied.append(rel)
            _fault_at("publish", len(report.copied))
        _upload(fs, manifest, f"{base}/{MANIFEST}")  # last: a reader that sees it sees every file
    except OSError as exc:
        raise _where(uri, exc) from exc
    return report


def fetch(uri: str, dest: Path, *, endpoint_url: str | None = None) -> TransferReport:
    """Download a published stage folder from ``uri`` into ``dest`` (see the module docstring)."""
    from pyarrow import fs as pafs

    from corpusforge.storage import MANIFEST, atomic_write_bytes

    bucket, prefix = split_uri(uri)
    base = f"{bucket}/{prefix}".rstrip("/")
    fs = filesystem(endpoint_url)
    report = TransferReport()
    try:
        text = _remote_text(fs, f"{base}/{MANIFEST}")
        if text is None:
            raise FatalError(f"{uri} holds no {MANIFEST}: not a published stage folder, or its publish did not finish")
        listed = {f["name"]: f["sha256"] for f in json.loads(text)["files"]}
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        dest.mkdir(parents=True, exist_ok=True)
        for i in sorted(infos, key=lambda i: i.path):
            rel = i.path[len(base) + 1 :]
            if i.type != pafs.FileType.File or rel == MANIFEST or rel.startswith(MARKERS + "/"):
                continue
            target = dest / rel
            want = listed.get(rel)
            if target.is_file() and target.stat().st_size == i.size and (want is None or _sha256_local(target) == want):
                report.skipped.append(rel)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.fetch-tmp")
            with fs.open_input_stream(i.path) as s, open(tmp, "wb") as out:
                h = hashlib.sha256()
                while chunk := s.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if want is not None and h.hexdigest() != want:
                tmp.unlink()
                raise FatalError(f"{uri}/{rel}: its sha256 is {h.hexdigest()}, the manifest says {want}")
            os.replace(tmp, target)
            report.copied.append(rel)
        missing = [n for n in listed if not (dest / n).is_file()]
        if missing:
            raise FatalError(f"{uri}: {len(missing)} file(s) its manifest lists are missing, e.g. {missing[0]}")
        atomic_write_bytes(dest / MANIFEST, text.encode())  # last, as when the folder was made
    except OSError as exc:
        raise _where(uri, exc) from exc
    return report

"""Inputs: every way documents enter a run besides the crawler. Same document-shard output as a crawl.

``read_html`` (a folder of HTML files), ``read_jsonl`` and ``read_warc`` are stages with no input stage;
files are split over ``tasks`` by sorted position, so the output is deterministic. Ids are stable:
``sha1(source:relative path)`` for HTML files, the record's own id field for JSONL when present (else
``sha1(path:line)``), ``sha1(target URI)`` for WARC responses. ``shards`` uses an existing document-shard
folder (e.g. another run's crawl) as input: it reads nothing and writes nothing, and its folder must hold a
valid ``manifest.json``; ``corpusforge build`` uses it to start from a finished crawl.

A file cut short (a copy that stopped, a full disk) is never read as complete: the cut record is counted as
``truncated_record`` and not stored, the records before the cut are kept, and the file is named in a warning
and in the task's stats (``truncated_files``). A cut is a gzip stream without its end, a WARC record shorter
than its ``Content-Length``, or a last JSONL line without its newline that is not valid JSON.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

from corpusforge.document import Document, stable_id
from corpusforge.errors import ConfigError, FatalError
from corpusforge.objstore import InputFile, is_remote, local_inputs, remote_inputs
from corpusforge.params import Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import MANIFEST, ShardWriter, current_snapshot

log = logging.getLogger(__name__)


def gzip_complete(path: Path | InputFile, chunk: int = 1 << 20) -> bool:
    """Whether every gzip member of ``path`` ends properly (the file was not cut). Streams the file once,
    decompressing at most ``chunk`` bytes at a time, so a bomb costs time, not memory."""
    d = zlib.decompressobj(wbits=31)
    fed = False  # bytes given to the current member's decompressor
    opened = path.open() if isinstance(path, InputFile) else open(path, "rb")
    with opened as fh:
        while data := fh.read(chunk):
            while data:
                fed = True
                d.decompress(data, chunk)
                data = d.unconsumed_tail
                if d.eof:  # a member ended: the rest is the next member (or trailing nothing)
                    data = d.unused_data + data
                    d, fed = zlib.decompressobj(wbits=31), False
    return not fed or d.eof


class _LocalStage(Stage):
    patterns: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        path: str,
        tasks: Annotated[int, Min(1)] = 1,
        source: str | None = None,
        max_bytes: Annotated[int, Min(1)] = 20 << 20,
        endpoint_url: str | None = None,
    ) -> None:
        self.path = path  # a local file or folder, or s3://bucket/prefix
        self.tasks = tasks
        self.source = source
        self.max_bytes = max_bytes
        self.endpoint_url = endpoint_url  # for s3:// inputs: an S3-compatible server (credentials: the AWS env)
        self._files: list[InputFile] | None = None

    def validate(self, path: str) -> None:
        if not is_remote(self.path) and not Path(self.path).exists():
            raise ConfigError(f"{self.path!r} does not exist", path=f"{path}.path")
        try:
            found = self.files()
        except FatalError as exc:
            raise ConfigError(str(exc), path=f"{path}.path") from None
        if not found:
            raise ConfigError(
                f"no input files matching {', '.join(self.patterns)} under {self.path!r}", path=f"{path}.path"
            )

    def config(self) -> dict[str, Any]:
        """The parameters, and a digest of the input files' names, sizes and modification times: a file
        changed under the same path makes the stage's config differ, refused like any change unless forced."""
        listing = [(f.rel, f.size, f.mtime_ns) for f in self.files()]
        digest = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
        params = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "truncated"}
        if params.get("endpoint_url") is None:
            params.pop("endpoint_url", None)  # absent, as in folders made before it existed
        return params | {"inputs": digest, "input_files": len(listing)}

    def files(self) -> list[InputFile]:
        """The input files in a fixed order (sorted paths or keys); listed once per stage object."""
        if self._files is None:
            if is_remote(self.path):
                self._files = remote_inputs(self.path, self.patterns, self.endpoint_url)
            else:
                self._files = local_inputs(Path(self.path), self.patterns)
        return self._files

    def num_tasks(self, ctx: StageContext) -> int:
        return self.tasks

    def records(self, file: InputFile, stats: StepStats) -> Iterator[Document]:  # pragma: no cover - abstract
        raise NotImplementedError

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        stats = StepStats(self.kind)
        self.truncated: list[str] = []
        with ShardWriter(ctx.out_dir, f"{rank:05d}") as w:
            for i, f in enumerate(self.files()):
                if i % self.tasks != rank:
                    continue
                for doc in self.records(f, stats):
                    w.write(doc)
                    stats.output += 1
                    ctx.fault_at(stats.output)
        extra = {"truncated_files": self.truncated} if self.truncated else {}
        return TaskResult(files=w.files, steps=[stats.to_dict()], extra=extra)

    def _cut(self, file: InputFile, stats: StepStats, what: str, *, counted: bool = False) -> None:
        """One record cut short: counted and not stored; the file named in a warning and in the stats."""
        if not counted:
            stats.input += 1
        stats.drop("truncated_record")
        if str(file) not in self.truncated:
            self.truncated.append(str(file))
        log.warning("%s is cut short (%s): the records before the cut are kept, the cut one is not", file, what)

    def _source(self) -> str:
        return self.source or Path(self.path.rstrip("/")).name


class ReadHtmlStage(_LocalStage):
    """A folder of ``.html`` / ``.htm`` files (recursively)."""

    kind: ClassVar[str] = "read_html"
    patterns = ("*.html", "*.htm")

    def records(self, file: InputFile, stats: StepStats) -> Iterator[Document]:
        from corpusforge.crawl.html import decode_html

        stats.input += 1
        if file.size > self.max_bytes:
            stats.drop("too_large")
            return
        rel = file.rel
        html = decode_html(file.read_bytes(), "")
        yield Document(
            id=stable_id(f"{self._source()}:{rel}"), url=None, source=self._source(), html=html, metadata={"path": rel}
        )


class ReadJsonlStage(_LocalStage):
    """JSON Lines (optionally gzipped): ``text_field`` (or ``html_field``) per line, optional id/url fields."""

    kind: ClassVar[str] = "read_jsonl"
    patterns = ("*.jsonl", "*.jsonl.gz")

    def __init__(
        self,
        *,
        path: str,
        tasks: Annotated[int, Min(1)] = 1,
        source: str | None = None,
        max_bytes: Annotated[int, Min(1)] = 20 << 20,
        endpoint_url: str | None = None,
        text_field: str = "text",
        html_field: str | None = None,
        id_field: str = "id",
        url_field: str = "url",
    ) -> None:
        super().__init__(path=path, tasks=tasks, source=source, max_bytes=max_bytes, endpoint_url=endpoint_url)
        self.text_field = text_field
        self.html_field = html_field
        self.id_field = id_field
        self.url_field = url_field

    def records(self, file: InputFile, stats: StepStats) -> Iterator[Document]:
        with file.open() as raw:
            binary: Any = gzip.GzipFile(fileobj=raw, mode="rb") if file.name.endswith(".gz") else raw
            fh = io.TextIOWrapper(binary, encoding="utf-8", errors="replace")
            yield from self._lines(file, fh, stats)

    def _lines(self, file: InputFile, fh: Any, stats: StepStats) -> Iterator[Document]:
        lines = enumerate(fh, start=1)
        while True:
            try:
                line_no, line = next(lines)
            except StopIteration:
                return
            except EOFError:  # gzip without its end: the lines before the cut were read
                self._cut(file, stats, "the gzip stream ends early")
                return
            if not line.strip():
                continue
            if len(line) > self.max_bytes:
                stats.input += 1
                stats.drop("too_large")
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if not line.endswith("\n"):  # the last line, cut: not a record with bad JSON
                    self._cut(file, stats, f"line {line_no} ends without a newline")
                    continue
                stats.input += 1
                stats.drop("bad_json")
                continue
            stats.input += 1
            if not isinstance(rec, dict):
                stats.drop("not_an_object")
                continue
            field = self.html_field or self.text_field
            value = rec.get(field)
            if not isinstance(value, str):
                stats.drop("missing_text" if value is None else "wrong_type")
                continue
            rid = rec.get(self.id_field)
            url = rec.get(self.url_field)
            meta = {k: v for k, v in rec.items() if k not in (field, self.id_field, self.url_field)}
            if url is not None and not isinstance(url, str):
                # Kept, not guessed at: the raw value stays in the metadata and the case is counted.
                stats.counters["url_not_a_string"] += 1
                meta["url_raw"] = url
                url = None
            doc = Document(
                id=str(rid) if rid is not None else stable_id(f"{file.name}:{line_no}"),
                url=url,
                source=self._source(),
                metadata=meta,
            )
            if self.html_field:
                doc.html = value
            else:
                doc.text = value
            yield doc


class ReadWarcStage(_LocalStage):
    """WARC files (``.warc``, ``.warc.gz``): ``response`` records with an HTML payload (needs warcio)."""

    kind: ClassVar[str] = "read_warc"
    patterns = ("*.warc", "*.warc.gz")

    def records(self, file: InputFile, stats: StepStats) -> Iterator[Document]:
        from corpusforge.crawl.html import decode_html
        from corpusforge.errors import require

        archive = require("warcio.archiveiterator", "warc")
        cut = False
        with file.open() as fh:
            for rec in archive.ArchiveIterator(fh):
                if rec.rec_type != "response":
                    continue
                stats.input += 1
                url = rec.rec_headers.get_header("WARC-Target-URI")
                ctype = rec.http_headers.get_header("Content-Type") if rec.http_headers else ""
                if ctype and "html" not in ctype.lower():
                    stats.drop("content_type")
                    continue
                body = rec.content_stream().read(self.max_bytes + 1)
                if len(body) <= self.max_bytes and getattr(rec.raw_stream, "limit", 0) > 0:
                    # The whole payload was read, yet the record promised more bytes: the file ends here.
                    cut = True
                    self._cut(file, stats, f"the record of {url} is shorter than its Content-Length", counted=True)
                    continue
                if len(body) > self.max_bytes:
                    stats.drop("too_large")
                    continue
                status = int(rec.http_headers.get_statuscode()) if rec.http_headers else None
                yield Document(
                    id=stable_id(url or f"{file.name}:{stats.input}"),
                    url=url,
                    final_url=url,
                    status=status,
                    fetched_at=rec.rec_headers.get_header("WARC-Date"),
                    source=self._source(),
                    html=decode_html(body, ctype or ""),
                    backend="warc",
                )
        # warcio ends quietly at a gzip member cut short, and the record in it vanishes: count it.
        if not cut and file.name.endswith(".gz") and not gzip_complete(file):
            self._cut(file, stats, "the gzip stream ends early")


class ShardsInputStage(Stage):
    """``path``: a folder of document shards with its manifest (the output of a crawl or process stage)."""

    kind: ClassVar[str] = "shards"

    def __init__(self, *, path: str, track_config: bool = False) -> None:
        self.path = path
        self.track_config = track_config  # the folder's own config hash is part of this stage's (ablate sets it)

    def external_dir(self) -> Path:
        """The folder, or for a re-crawled crawl folder its current snapshot (``storage.current_snapshot``)."""
        return current_snapshot(Path(self.path)).resolve()

    def config(self) -> dict[str, Any]:
        # A snapshot's identity is the set of pages it reads: a newer snapshot that reads other pages is a new
        # input (the later stages are rebuilt), one that changed nothing is the same (they are skipped).
        # Any other folder: the config hash it was made with, so a folder rebuilt with another config (a variant
        # of an ablation reading another's stage) is a new input too.
        manifest = self.external_dir() / MANIFEST
        m = json.loads(manifest.read_text()) if manifest.is_file() else {}
        view = m.get("snapshot", {}).get("view")
        if view:
            return {"snapshot": view}
        made_by = (m.get("config") or {}).get("config_hash") if self.track_config else None
        return {"made_by": made_by} if made_by else {}

    def validate(self, path: str) -> None:
        if not (Path(self.path) / MANIFEST).is_file():
            raise ConfigError(
                f"{self.path!r} has no {MANIFEST}: point it at a finished stage folder (e.g. runs/x/crawl)",
                path=f"{path}.path",
            )

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:  # pragma: no cover - never scheduled
        return TaskResult()

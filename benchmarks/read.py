"""Reading document shards: ours (every file checked against its manifest as it is read: size, checksum over
the memory map, row count) vs bare pyarrow reading the same files (no check), and ours with the checksum off.

Data: Arrow document shards written by ``ShardWriter`` from tiny Shakespeare lines (../shared/data), repeated to
``--mb`` MiB of text over 8 shards with their manifest. Each reader streams every batch and turns rows into
Python objects (``to_pylist``, what ``iter_documents`` hands to steps), so the figure includes the parsing a
real stage does after reading. Best of ``--repeat`` runs each, alternating; the files are read once before
timing so all three read from the page cache.

Usage: .venv/bin/python benchmarks/read.py [--quick] [--mb N]
"""

from __future__ import annotations

# ruff: noqa: E402
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import tempfile
import time

import pyarrow as pa
import pyarrow.ipc as ipc

from benchmarks import _harness as h
from corpusforge.document import Document
from corpusforge.storage import ShardWriter, iter_batches, manifest_paths, write_manifest


def make_shards(folder: Path, mb: int) -> int:
    lines = [ln for ln in h.shared_file("tinyshakespeare.txt").read_text().splitlines() if ln.strip()]
    files, rows, chars, i = [], 0, 0, 0
    per_shard = (mb << 20) // 8
    for k in range(8):
        with ShardWriter(folder, f"{k:05d}") as w:
            written = 0
            while written < per_shard:
                text = "\n".join(lines[(i + j) % len(lines)] for j in range(40))
                w.write(Document(id=f"d{i:08d}", text=text, url=f"http://127.0.0.1/{i}", source="bench"))
                written += len(text)
                rows += 1
                i += 1
            chars += written
        files += w.files
    write_manifest(folder, files, config={})
    return rows


def read_ours(paths: list[Path], verify: bool) -> int:
    n = 0
    for p in paths:
        for batch in iter_batches(p, verify=verify):
            n += len(batch.to_pylist())
    return n


def read_bare(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with pa.memory_map(str(p), "r") as src:
            reader = ipc.open_file(src)
            for i in range(reader.num_record_batches):
                n += len(reader.get_batch(i).to_pylist())
    return n


def main() -> None:
    ap = h.parser(__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=None, help="MiB of text (default 400, --quick 60)")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args()
    mb = args.mb or (60 if args.quick else 400)
    repeat = args.repeat or (2 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "docs"
        rows = make_shards(folder, mb)
        paths = manifest_paths(folder)
        size_mb = sum(p.stat().st_size for p in paths) / 2**20
        read_bare(paths)  # into the page cache
        best = {"checked": float("inf"), "no_sha": float("inf"), "bare": float("inf")}
        for _ in range(repeat):
            for name, fn in (
                ("checked", lambda: read_ours(paths, True)),
                ("no_sha", lambda: read_ours(paths, False)),
                ("bare", lambda: read_bare(paths)),
            ):
                t0 = time.perf_counter()
                assert fn() == rows
                best[name] = min(best[name], time.perf_counter() - t0)
    mbs = {k: size_mb / v for k, v in best.items()}
    h.print_table(
        [
            {"what": "MiB/s, checked (size + xxh3_128 checksum + rows)", "ours": mbs["checked"], "peer": mbs["bare"],
             "ratio": h.ratio(mbs["checked"], mbs["bare"])},
            {"what": "MiB/s, checksum off (size + rows)", "ours": mbs["no_sha"], "peer": mbs["bare"],
             "ratio": h.ratio(mbs["no_sha"], mbs["bare"])},
        ],
        title=f"{rows:,} documents, {size_mb:,.0f} MiB of shards; peer = bare pyarrow (no check)",
    )  # fmt: skip
    h.print_keyvals(
        checked_mb_s=mbs["checked"], bare_mb_s=mbs["bare"], overhead=best["checked"] / best["bare"] - 1, rows=rows
    )


if __name__ == "__main__":
    main()

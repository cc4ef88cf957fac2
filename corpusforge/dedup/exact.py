"""Exact deduplication on a hash of the normalized text.

Normalization for the hash: Unicode NFKC, case-folded, whitespace runs collapsed. Representative rule:
of the documents sharing a hash, the one with the smallest id is kept (ties between equal ids: the first
in input-file order), so the kept set does not depend on worker counts or input order.

Two passes over the input (hashes, then writing), one task; memory is 16 bytes of hash plus the id of the
current representative per distinct text.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, ClassVar

import xxhash

from corpusforge.params import Min
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.storage import ShardWriter, iter_documents

_WS = re.compile(r"\s+")


def text_key(text: str) -> bytes:
    norm = _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return xxhash.xxh3_128_digest(norm.encode("utf-8"))


class ExactDedupStage(Stage):
    kind: ClassVar[str] = "exact_dedup"

    def __init__(self, *, max_shard_bytes: Annotated[int, Min(1 << 16)] = 512 << 20) -> None:
        self.max_shard_bytes = max_shard_bytes

    def parallel(self) -> bool:
        return False

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        files = ctx.input_files()
        best: dict[bytes, tuple[str, int]] = {}  # hash → (id, position) of the representative
        # 64-bit hash of an id → 64-bit prefix of its text's hash: an id seen again with another text is
        # counted (both documents are kept: they are different texts), not silently merged or dropped.
        text_of_id: dict[int, bytes] = {}
        duplicate_ids = 0
        for pos, doc in enumerate(iter_documents(files, columns=["id", "text"])):
            k = text_key(doc.text)
            id_key = xxhash.xxh3_64_intdigest(doc.id.encode("utf-8"))
            if text_of_id.setdefault(id_key, k[:8]) != k[:8]:
                duplicate_ids += 1
            cur = best.get(k)
            if cur is None or doc.id < cur[0]:
                best[k] = (doc.id, pos)
        keep = {pos for _, pos in best.values()}
        stats = StepStats("exact_dedup")
        stats.counters["duplicate_id_different_text"] = duplicate_ids
        with ShardWriter(ctx.out_dir, f"{rank:05d}", max_bytes=self.max_shard_bytes) as w:
            for pos, doc in enumerate(iter_documents(files)):
                stats.input += 1
                ctx.fault_at(stats.input)
                if pos in keep:
                    w.write(doc)
                    stats.output += 1
                else:
                    stats.drop("exact_duplicate")
        return TaskResult(files=w.files, steps=[stats.to_dict()], extra={"distinct_texts": len(best)})

"""The ``process`` stage: a list of steps applied to an earlier stage's document shards.

Input files are assigned to tasks by position (file ``i`` → task ``i % tasks``), so the output depends on
``tasks`` and never on how many worker processes run them: 1 or 2 workers give identical shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar

from corpusforge.document import Document
from corpusforge.errors import Interrupted
from corpusforge.params import Min
from corpusforge.progress import Progress
from corpusforge.recipe import build_step
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.step import Step, chain
from corpusforge.storage import ShardWriter, iter_documents, load_manifest


def _listed_rows(ctx: StageContext, files: list[Path]) -> int | None:
    """The documents ``files`` hold, from the input's manifest (None when it lists no row counts)."""
    if ctx.in_dir is None:
        return None
    rows = {(ctx.in_dir / f["name"]).as_posix(): f.get("rows") for f in load_manifest(ctx.in_dir)["files"]}
    counts = [rows.get(p.as_posix()) for p in files]
    known = [c for c in counts if isinstance(c, int)]
    return sum(known) if known and len(known) == len(counts) else None


class ProcessStage(Stage):
    """Run ``steps`` (registry names + arguments) over the input stage's documents.

    ``keep_rejected`` writes dropped documents with their reason to ``<stage>/rejected/``.
    ``drop_html`` removes the raw HTML column once text has been extracted (saves space downstream).
    """

    kind: ClassVar[str] = "process"

    def __init__(
        self,
        *,
        steps: list[dict[str, Any]],
        tasks: Annotated[int, Min(1)] = 2,
        keep_rejected: bool = False,
        drop_html: bool = True,
        max_shard_bytes: Annotated[int, Min(1 << 16)] = 512 << 20,
    ) -> None:
        self.steps = steps
        self.tasks = tasks
        self.keep_rejected = keep_rejected
        self.drop_html = drop_html
        self.max_shard_bytes = max_shard_bytes

    def num_tasks(self, ctx: StageContext) -> int:
        return self.tasks

    def build_steps(self, path: str = "") -> list[Step]:
        prefix = f"{path}." if path else ""
        return [build_step(spec, path=f"{prefix}steps[{i}]") for i, spec in enumerate(self.steps)]

    def validate(self, path: str) -> None:
        """Build every step once so a bad step fails before anything runs, with its field path."""
        self.build_steps(path)

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        files = [f for i, f in enumerate(ctx.input_files()) if i % self.tasks == rank]
        steps = self.build_steps()
        rejected: ShardWriter | None = None
        if self.keep_rejected:
            rejected = ShardWriter(ctx.out_dir / "rejected", f"{rank:05d}", max_bytes=self.max_shard_bytes)

            def on_reject(doc: Document, reason: str) -> None:
                doc.metadata["rejected_by"] = reason
                assert rejected is not None
                rejected.write(doc)

            for s in steps:
                s.on_reject = on_reject
        writer = ShardWriter(ctx.out_dir, f"{rank:05d}", max_bytes=self.max_shard_bytes)
        # Documents read so far, for the progress line (its total: the rows the input manifest lists).
        read = [0]

        def counted(docs: Iterator[Document]) -> Iterator[Document]:
            for d in docs:
                read[0] += 1
                yield d

        what = ctx.stage_name if self.tasks == 1 else f"{ctx.stage_name} task {rank}"
        progress = Progress(what, unit="documents", total=_listed_rows(ctx, files))
        try:
            for n, doc in enumerate(chain(steps, counted(iter_documents(files)), rank, self.tasks), start=1):
                ctx.fault_at(n)
                if n % 256 == 0 and ctx.stop_requested():
                    raise Interrupted(f"stage {ctx.stage_name} task {rank} stopped; rerun to continue")
                if self.drop_html:
                    doc.html = None
                writer.write(doc)
                progress.update(read[0], extra=f"{n:,} kept")
            out = writer.close()
            rej = rejected.close() if rejected else []
        except BaseException:
            writer.abort()
            if rejected:
                rejected.abort()
            raise
        result = TaskResult(files=out, steps=[s.stats.to_dict() for s in steps])
        result.extra["rejected_files"] = [f"rejected/{f['name']}" for f in rej]
        return result

"""Small stages and steps for testing the core without the network or the heavier stages."""

from __future__ import annotations

import logging
import os
import time
from typing import Annotated, ClassVar

from corpusforge.document import Document
from corpusforge.errors import Interrupted, TaskError
from corpusforge.params import Min
from corpusforge.registry import STAGES, STEPS
from corpusforge.stage import Stage, StageContext, TaskResult
from corpusforge.stats import StepStats
from corpusforge.step import Filter
from corpusforge.storage import ShardWriter, write_manifest

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()


class SourceStage(Stage):
    """Generates ``docs`` deterministic documents spread over ``tasks`` tasks."""

    kind: ClassVar[str] = "test_source"

    def __init__(
        self,
        *,
        docs: Annotated[int, Min(0)] = 100,
        tasks: Annotated[int, Min(1)] = 2,
        fail_rank: int | None = None,
        sleep_s: float = 0.0,
    ) -> None:
        self.docs = docs
        self.tasks = tasks
        self.fail_rank = fail_rank
        self.sleep_s = sleep_s

    def num_tasks(self, ctx: StageContext) -> int:
        return self.tasks

    def run_task(self, ctx: StageContext, rank: int) -> TaskResult:
        if rank == self.fail_rank:
            raise TaskError(f"planned failure of task {rank}")
        stats = StepStats("source")
        with ShardWriter(ctx.out_dir, f"{rank:05d}", batch_rows=7) as w:
            for i in range(rank, self.docs, self.tasks):
                n = 3 + (i * 7) % 40
                text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(n))
                w.write(Document(id=f"d{i:05d}", text=text, url=f"http://127.0.0.1/{i}", source="test"))
                stats.input += 1
                stats.output += 1
                ctx.fault_at(stats.output)
                if self.sleep_s:
                    time.sleep(self.sleep_s)
                    if ctx.stop_requested():  # a slow source stops when asked, as the real stages do
                        w.abort()
                        raise Interrupted(f"stage {ctx.stage_name} task {rank} stopped")
        return TaskResult(files=w.files, steps=[stats.to_dict()])


class MinWords(Filter):
    name: ClassVar[str] = "test_min_words"

    def __init__(self, *, min_words: Annotated[int, Min(1)] = 10) -> None:
        super().__init__()
        self.min_words = min_words

    def reject(self, doc: Document) -> str | None:
        return "too_short" if len(doc.text.split()) < self.min_words else None


def every_nth(docs, rank, world_size, *, n: Annotated[int, Min(1)] = 2):
    """A plain function step: keeps documents whose numeric id is a multiple of ``n``."""
    for d in docs:
        if int(d.id.lstrip("d")) % n == 0:
            yield d


class WarnOnce(Filter):
    """Keeps everything; logs one warning per task (to see that worker warnings reach the console)."""

    name: ClassVar[str] = "test_warn_once"

    def __init__(self) -> None:
        super().__init__()
        self.warned = False

    def reject(self, doc: Document) -> str | None:
        if not self.warned:
            self.warned = True
            logging.getLogger("corpusforge.tests").warning("test warning from worker pid %d", os.getpid())
        return None


class _BlockImports:
    """A meta-path finder that makes the named modules fail to import, like a broken install."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - the importlib protocol
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


# CORPUSFORGE_TEST_BLOCK_IMPORT=a,b: those modules cannot be imported in any process that loads this plugin.
if os.environ.get("CORPUSFORGE_TEST_BLOCK_IMPORT"):
    import sys

    _blocked = set(os.environ["CORPUSFORGE_TEST_BLOCK_IMPORT"].split(","))
    for _name in [m for m in sys.modules if m.split(".")[0] in _blocked]:
        del sys.modules[_name]
    sys.meta_path.insert(0, _BlockImports(_blocked))

STAGES.add("test_source", SourceStage)
STEPS.add("test_every_nth", every_nth)
STEPS.add("test_warn_once", WarnOnce)
STEPS.add("test_min_words", MinWords)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_doc_shards(folder, docs, per_file=50):
    """A finished document-shard folder (shards + manifest) holding ``docs``, ``per_file`` to a shard."""
    folder.mkdir(parents=True)
    files = []
    for k in range(0, len(docs), per_file):
        with ShardWriter(folder, f"{k // per_file:05d}") as w:
            for d in docs[k : k + per_file]:
                w.write(d)
        files += w.files
    write_manifest(folder, files, config={})


from corpusforge.step import Mapper  # noqa: E402  (added with the step below)


class FailMost(Mapper):
    """Fails (``_error``) on every document whose numeric id is not a multiple of 10, while ``fail`` is on:
    a step that cannot work here, to see the error bound stop the task."""

    name: ClassVar[str] = "test_fail_most"

    def __init__(self, *, fail: bool = True) -> None:
        super().__init__()
        self.fail = fail

    def map(self, doc: Document) -> Document | None:
        if self.fail and int(doc.id.lstrip("d")) % 10:
            self._error(doc, "parse_error", ValueError(f"cannot parse {doc.id}"))
            return None
        return doc


STEPS.add("test_fail_most", FailMost)

"""Steps over document streams.

``Step.run(docs, rank, world_size)`` is a generator. ``Filter.reject(doc)`` returns a named drop reason or
None; ``Mapper.map(doc)`` returns the new document or None (dropped with ``map_failed`` unless the mapper
calls ``self._reject(doc, reason)`` with its own reason first). The base classes do the counting, so every step reports
input, output and dropped-by-reason, and a filter can keep its rejects in ``rejected/`` with the reason.

A step that cannot work must not look like one that filtered everything: ``_error(doc, reason, exc)`` drops a
document the step *failed* on (an exception, not a judgement), and when more than half of the first
``ERROR_BOUND_DOCS`` documents fail (or of all of them, in a shorter stream) the task stops with a
``TaskError`` naming the step, the count and the last error, instead of sealing an empty output.

A plain function ``f(docs, rank, world_size) -> docs`` can be a step too: ``FunctionStep`` wraps it and
counts what went in and out (drops counted as ``dropped``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Protocol, runtime_checkable

from corpusforge.document import Document
from corpusforge.errors import TaskError
from corpusforge.stats import StepStats

ERROR_BOUND_DOCS = 50


@runtime_checkable
class StepLike(Protocol):
    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]: ...


class Step:
    """Base step. Subclasses override ``run`` (or use ``Filter`` / ``Mapper``)."""

    name: ClassVar[str] = "step"

    def __init__(self) -> None:
        self.stats = StepStats(self.name)
        # A callable(doc, reason) set by the runner when rejected documents are kept on disk.
        self.on_reject: Callable[[Document, str], None] | None = None
        self._errors = 0  # documents the step failed on among the first ERROR_BOUND_DOCS
        self._last_error: tuple[str, BaseException] | None = None

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in docs:
            self.stats.input += 1
            self.stats.output += 1
            yield doc

    def _reject(self, doc: Document, reason: str) -> None:
        self.stats.drop(reason)
        if self.on_reject is not None:
            self.on_reject(doc, f"{self.name}:{reason}")

    def _error(self, doc: Document, reason: str, exc: BaseException) -> None:
        """Drop a document the step failed on, and count it towards the error bound."""
        if self.stats.input <= ERROR_BOUND_DOCS:
            self._errors += 1
        self._last_error = (reason, exc)
        self._reject(doc, reason)

    def _check_errors(self, *, end: bool = False) -> None:
        """After the ``ERROR_BOUND_DOCS``-th document (or at the end of a shorter stream): more than half of
        them failed → ``TaskError``. Called by the base classes' ``run``."""
        seen = min(self.stats.input, ERROR_BOUND_DOCS)
        if not (seen == ERROR_BOUND_DOCS or end) or self._errors * 2 <= seen or self._last_error is None:
            return
        reason, exc = self._last_error
        raise TaskError(
            f"step {self.name!r} failed on {self._errors} of the first {seen} documents ({reason}); last error: "
            f"{type(exc).__name__}: {exc}. This step cannot work here: fix the cause and rerun"
        )


class Filter(Step):
    """Keeps a document unless ``reject`` names a reason."""

    name: ClassVar[str] = "filter"

    def reject(self, doc: Document) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in docs:
            self.stats.input += 1
            reason = self.reject(doc)
            if reason is None:
                self.stats.output += 1
                yield doc
            else:
                self._reject(doc, reason)


class Mapper(Step):
    """Transforms each document; returning None drops it."""

    name: ClassVar[str] = "mapper"

    def map(self, doc: Document) -> Document | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        for doc in docs:
            self.stats.input += 1
            before = sum(self.stats.dropped.values())
            out = self.map(doc)
            if self.stats.input == ERROR_BOUND_DOCS:
                self._check_errors()
            if out is None:
                if sum(self.stats.dropped.values()) == before:  # the mapper gave no reason of its own
                    self._reject(doc, "map_failed")
                continue
            self.stats.output += 1
            yield out
        if self.stats.input < ERROR_BOUND_DOCS:
            self._check_errors(end=True)


class FunctionStep(Step):
    """Wraps ``f(docs, rank, world_size) -> docs`` and counts in/out; the difference is ``dropped``."""

    def __init__(self, fn: Callable[..., Iterable[Document]], name: str | None = None) -> None:
        self.name = str(name or getattr(fn, "__name__", "function"))  # type: ignore[misc]
        super().__init__()
        self.fn = fn

    def run(self, docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        def counted() -> Iterator[Document]:
            for d in docs:
                self.stats.input += 1
                yield d

        for out in self.fn(counted(), rank, world_size):
            self.stats.output += 1
            yield out
        gap = self.stats.input - self.stats.output
        if gap > 0:
            self.stats.drop("dropped", gap)


def as_step(obj: Any) -> Step:
    if isinstance(obj, Step):
        return obj
    if callable(obj):
        return FunctionStep(obj)
    raise TypeError(f"{obj!r} is neither a Step nor a callable")


def chain(steps: list[Step], docs: Iterable[Document], rank: int = 0, world_size: int = 1) -> Iterator[Document]:
    """Pipe ``docs`` through ``steps`` lazily."""
    stream: Iterable[Document] = docs
    for step in steps:
        stream = step.run(stream, rank, world_size)
    yield from stream

"""The local executor: runs a plan's stages in order, spreading each stage's tasks over worker processes.

``run_recipe(recipe, force=False, max_pages=None, max_runtime_s=None, workers=None, reporter=None)``
returns a ``RunResult`` whose ``status`` is one of the exit codes below.

Batch-job guarantees:
- a lock on ``<workdir>/.lock`` (``flock``): a second concurrent run raises ``LockedError`` at once;
- a completion marker ``<stage>/completions/<rank>.json`` per finished task, written after its outputs are
  durable: a rerun skips finished tasks, and a finished stage (its ``manifest.json`` exists and its config
  hash matches) is skipped whole — rerunning a completed job changes no file;
- an existing stage folder made with a different config is refused (``ConfigError``) unless ``force``,
  which rebuilds that stage and every later one;
- the stage manifest is written last, from the completion markers.

Errors decide what happens (``corpusforge.errors``): ``RetryableError`` and a killed worker → the task is
retried (``RETRIES`` times); any other error fails that task, the stage's other tasks go on, and the run
stops after the stage with FAILED; ``FatalError`` stops at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import tomli_w

from corpusforge.errors import (
    ConfigError,
    CorpusforgeError,
    DivergedError,
    FatalError,
    Interrupted,
    LockedError,
    RetryableError,
)
from corpusforge.plan import PlanEntry, make_plan, stage_dirs
from corpusforge.recipe import Recipe
from corpusforge.stage import STOP, Stage, StageContext, TaskResult
from corpusforge.stats import merge_step_lists
from corpusforge.storage import MANIFEST, atomic_write_bytes, atomic_write_json, clean_temp_files, write_manifest

log = logging.getLogger(__name__)

# Exit codes, documented in the README.
DONE, FAILED, BAD_CONFIG, LOCKED, PARTIAL, DIVERGED = 0, 1, 2, 3, 4, 5
RETRIES = 2
STAGE_FILE = "stage.json"
COMPLETIONS = "completions"


class Reporter(Protocol):
    def stage_start(self, name: str, tasks: int, done: int) -> None: ...
    def task_done(self, name: str, rank: int) -> None: ...
    def stage_end(self, name: str, status: str) -> None: ...


class LogReporter:
    """Plain log lines (cron, systemd, tests)."""

    def stage_start(self, name: str, tasks: int, done: int) -> None:
        log.info("stage %s: %d task(s), %d already done", name, tasks, done)

    def task_done(self, name: str, rank: int) -> None:
        log.info("stage %s: task %d done", name, rank)

    def stage_end(self, name: str, status: str) -> None:
        log.info("stage %s: %s", name, status)


@dataclass
class StageOutcome:
    name: str
    kind: str
    status: str  # "done", "skipped" (already complete), "partial", "failed", "not run"
    out_dir: Path
    tasks: int = 0
    failed_tasks: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None


@dataclass
class RunResult:
    status: int
    workdir: Path
    stages: list[StageOutcome]
    message: str = ""


# ------------------------------------------------------------------------------------------------ lock
@contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<workdir>/.lock``; released by the kernel even after ``kill -9``."""
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------ tasks
def _marker(out_dir: Path, rank: int) -> Path:
    return out_dir / COMPLETIONS / f"{rank:05d}.json"


def _worker_init() -> None:
    # Workers ignore SIGINT (the parent decides) and turn SIGTERM into a cooperative stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def execute_task(stage: Stage, ctx: StageContext, rank: int) -> dict[str, Any]:
    """Run one task and, unless it stopped early, write its completion marker. Runs in a worker process."""
    stage.prepare_task(ctx, rank)
    t0 = time.time()
    result: TaskResult = stage.run_task(ctx, rank)
    record = result.to_dict() | {"rank": rank, "seconds": round(time.time() - t0, 3)}
    if not result.partial:
        marker = _marker(ctx.out_dir, rank)
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, record)
    return record | {"partial": result.partial}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, CorpusforgeError) else str(exc)


# ------------------------------------------------------------------------------------------------ runner
class Runner:
    def __init__(
        self,
        recipe: Recipe,
        *,
        force: bool = False,
        max_pages: int | None = None,
        max_runtime_s: float | None = None,
        workers: int | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.recipe = recipe
        self.force = force
        self.max_pages = max_pages
        self.deadline = time.time() + max_runtime_s if max_runtime_s else None
        self.workers = workers or recipe.workers
        self.reporter = reporter or LogReporter()
        self.plan = make_plan(recipe)
        self.dirs = stage_dirs(recipe, self.plan)
        self.fault = os.environ.get("CORPUSFORGE_FAULT") or None

    # -- checks before anything runs
    def prepare_workdir(self) -> None:
        wd = self.recipe.workdir
        try:
            wd.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FatalError(f"cannot create the work folder {wd}: {exc.strerror}") from exc
        if not os.access(wd, os.W_OK):
            raise FatalError(f"the work folder {wd} is not writable; fix its permissions or choose --workdir")

    def check_configs(self) -> None:
        """Refuse stage folders made with a different config, unless forced (then rebuild from there on)."""
        first_changed: int | None = None
        for i, e in enumerate(self.plan):
            if e.external:
                continue
            f = e.out_dir / STAGE_FILE
            if not f.is_file():
                continue
            old = json.loads(f.read_text()).get("config_hash")
            if old != e.config_hash:
                first_changed = i
                break
        if first_changed is None:
            return
        e = self.plan[first_changed]
        if not self.force:
            raise ConfigError(
                f"the folder {e.out_dir} was made with a different config for stage {e.name!r}. "
                "Use another --workdir, or rerun with --force to rebuild this stage and every later one",
                path=e.spec.path,
            )
        for later in self.plan[first_changed:]:
            if not later.external and later.out_dir.exists():
                log.warning("--force: removing %s", later.out_dir)
                shutil.rmtree(later.out_dir)

    def write_resolved_recipe(self) -> None:
        import corpusforge

        doc = dict(self.recipe.raw)
        doc["corpusforge_version"] = corpusforge.__version__
        doc["fingerprint"] = self.recipe.fingerprint()
        data = tomli_w.dumps(_toml_safe(doc)).encode()
        path = self.recipe.workdir / "recipe.resolved.toml"
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    # -- one stage
    def run_entry(self, e: PlanEntry) -> StageOutcome:
        out = StageOutcome(name=e.name, kind=e.spec.kind, status="done", out_dir=e.out_dir)
        if e.external:
            out.status = "skipped"
            out.manifest = json.loads((e.out_dir / MANIFEST).read_text())
            return out
        manifest_path = e.out_dir / MANIFEST
        stage_file = e.out_dir / STAGE_FILE
        if manifest_path.is_file() and stage_file.is_file():
            out.status = "skipped"
            out.manifest = json.loads(manifest_path.read_text())
            self._load_stats(e, out)
            return out
        e.out_dir.mkdir(parents=True, exist_ok=True)
        clean_temp_files(e.out_dir)
        if not stage_file.is_file():
            atomic_write_json(
                stage_file,
                {
                    "config_hash": e.config_hash,
                    "kind": e.spec.kind,
                    "name": e.name,
                    "config": e.stage.config() or e.spec.params,
                },
            )
        ctx = e.context(self.recipe, self.dirs, max_pages=self.max_pages, deadline=self.deadline, fault=self.fault)
        n = e.stage.num_tasks(ctx)
        out.tasks = n
        pending = [r for r in range(n) if not _marker(e.out_dir, r).is_file()]
        self.reporter.stage_start(e.name, n, n - len(pending))
        partial = self._run_tasks(e, ctx, pending, out)
        if out.failed_tasks:
            out.status = "failed"
        elif partial:
            out.status = "partial"
        if out.status != "done":
            self.reporter.stage_end(e.name, out.status)
            return out
        results = [json.loads(_marker(e.out_dir, r).read_text()) for r in range(n)]
        files = [f for r in results for f in r["files"]]
        steps = merge_step_lists([r["steps"] for r in results])
        for s in steps:
            if s["input"] != s["output"] + sum(s["dropped"].values()):
                log.warning(
                    "stage %s step %s: input %d != output %d + dropped %d",
                    e.name,
                    s["name"],
                    s["input"],
                    s["output"],
                    sum(s["dropped"].values()),
                )
        extra_tasks = [r.get("extra", {}) for r in results]
        stats = {"stage": e.name, "kind": e.spec.kind, "tasks": n, "steps": steps, "task_extra": extra_tasks}
        (e.out_dir / "stats").mkdir(exist_ok=True)
        atomic_write_json(e.out_dir / "stats" / "stats.json", stats)
        task_results = [TaskResult(files=r["files"], steps=r["steps"], extra=r.get("extra", {})) for r in results]
        extra = e.stage.finalize(ctx, task_results) or {}
        config = {"stage": e.name, "kind": e.spec.kind, "params": e.spec.params, "config_hash": e.config_hash}
        out.manifest = write_manifest(e.out_dir, files, config=config, extra=extra)
        out.steps, out.extra = steps, _sum_extra(extra_tasks) | extra
        self.reporter.stage_end(e.name, "done")
        return out

    def _load_stats(self, e: PlanEntry, out: StageOutcome) -> None:
        f = e.out_dir / "stats" / "stats.json"
        if f.is_file():
            st = json.loads(f.read_text())
            out.steps = st.get("steps", [])
            out.extra = _sum_extra(st.get("task_extra", []))
        if out.manifest:
            out.extra |= {k: v for k, v in out.manifest.items() if k not in ("files", "config", "versions", "format")}

    def _run_tasks(self, e: PlanEntry, ctx: StageContext, pending: list[int], out: StageOutcome) -> bool:
        """Run pending tasks; returns True if any task stopped early (partial)."""
        partial = False
        attempts = {r: 0 for r in pending}
        workers = min(self.workers, len(pending))
        if workers <= 1 or not e.stage.parallel():
            for r in pending:
                while True:
                    if STOP.is_set():
                        return True
                    try:
                        rec = execute_task(e.stage, ctx, r)
                        partial |= rec["partial"]
                        if not rec["partial"]:
                            self.reporter.task_done(e.name, r)
                        break
                    except (FatalError, DivergedError, Interrupted, KeyboardInterrupt):
                        raise
                    except RetryableError as exc:
                        attempts[r] += 1
                        if attempts[r] > RETRIES:
                            out.failed_tasks.append(r)
                            out.errors.append(f"task {r}: {_describe(exc)}")
                            break
                        log.warning("stage %s task %d: %s; retrying", e.name, r, exc)
                    except Exception as exc:  # noqa: BLE001 - the task fails, the others go on
                        log.error(
                            "stage %s task %d failed: %s",
                            e.name,
                            r,
                            _describe(exc),
                            exc_info=not isinstance(exc, CorpusforgeError),
                        )
                        out.failed_tasks.append(r)
                        out.errors.append(f"task {r}: {_describe(exc)}")
                        break
            return partial
        queue = list(pending)
        while queue:
            try:
                partial |= self._pool_round(e, ctx, queue, attempts, out, workers)
                queue = []
            except BrokenProcessPool:
                # A worker died (killed, out of memory): retry what did not finish.
                queue = [r for r in queue if not _marker(e.out_dir, r).is_file() and r not in out.failed_tasks]
                for r in queue:
                    attempts[r] += 1
                queue_ok = [r for r in queue if attempts[r] <= RETRIES]
                for r in set(queue) - set(queue_ok):
                    out.failed_tasks.append(r)
                    out.errors.append(f"task {r}: worker process died {attempts[r]} times")
                log.warning("stage %s: a worker process died; retrying tasks %s", e.name, queue_ok)
                queue = queue_ok
            if STOP.is_set():
                return True
        return partial

    def _pool_round(
        self,
        e: PlanEntry,
        ctx: StageContext,
        queue: list[int],
        attempts: dict[int, int],
        out: StageOutcome,
        workers: int,
    ) -> bool:
        partial = False
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
        ) as ex:
            futures: dict[Future[dict[str, Any]], int] = {ex.submit(execute_task, e.stage, ctx, r): r for r in queue}
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    r = futures.pop(fut)
                    try:
                        rec = fut.result()
                        partial |= rec["partial"]
                        if not rec["partial"]:
                            self.reporter.task_done(e.name, r)
                    except BrokenProcessPool:
                        raise
                    except (FatalError, DivergedError):
                        for f in futures:
                            f.cancel()
                        raise
                    except RetryableError as exc:
                        attempts[r] += 1
                        if attempts[r] > RETRIES:
                            out.failed_tasks.append(r)
                            out.errors.append(f"task {r}: {_describe(exc)}")
                        else:
                            futures[ex.submit(execute_task, e.stage, ctx, r)] = r
                    except Interrupted:
                        partial = True
                    except Exception as exc:  # noqa: BLE001
                        log.error("stage %s task %d failed: %s", e.name, r, _describe(exc))
                        out.failed_tasks.append(r)
                        out.errors.append(f"task {r}: {_describe(exc)}")
        return partial

    # -- the whole run
    def run(self, only: list[str] | None = None) -> RunResult:
        self.prepare_workdir()
        with workdir_lock(self.recipe.workdir):
            self.check_configs()
            self.write_resolved_recipe()
            outcomes: list[StageOutcome] = []
            status = DONE
            message = ""
            for e in self.plan:
                if STOP.is_set():
                    status, message = PARTIAL, "stopped by a signal; rerun to continue"
                    break
                try:
                    o = self.run_entry(e)
                except Interrupted as exc:
                    status, message = PARTIAL, str(exc)
                    break
                outcomes.append(o)
                if o.status == "failed":
                    status = FAILED
                    message = f"stage {o.name}: {len(o.failed_tasks)} task(s) failed: " + "; ".join(o.errors[:3])
                    break
                if o.status == "partial":
                    status = PARTIAL
                    message = f"stage {o.name} stopped early (bound or signal); rerun the same command to continue"
                    break
            done_names = {o.name for o in outcomes}
            for e in self.plan:
                if e.name not in done_names:
                    outcomes.append(StageOutcome(name=e.name, kind=e.spec.kind, status="not run", out_dir=e.out_dir))
            return RunResult(status=status, workdir=self.recipe.workdir, stages=outcomes, message=message)


def _sum_extra(extras: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum numeric task extras; keep the last value of anything else."""
    out: dict[str, Any] = {}
    for ex in extras:
        for k, v in ex.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and isinstance(out.get(k, 0), int | float):
                out[k] = out.get(k, 0) + v
            else:
                out[k] = v
    return out


def _toml_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _toml_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_toml_safe(v) for v in obj if v is not None]
    if isinstance(obj, Path):
        return str(obj)
    return obj


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM (systemctl stop) and SIGINT set the cooperative stop flag; tasks flush state and return."""
    STOP.clear()

    def handler(signum: int, _frame: Any) -> None:
        if STOP.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("received %s: finishing in-flight work and saving state", signal.Signals(signum).name)
        STOP.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_recipe(recipe: Recipe, **kw: Any) -> RunResult:
    """Run a validated recipe; see ``Runner`` for the keyword arguments."""
    only = kw.pop("only", None)
    with stop_on_signals():
        return Runner(recipe, **kw).run(only)

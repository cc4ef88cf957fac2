"""The local executor: a stage's pending tasks in this process (one worker, or a stage that must stay here)
or in a pool of spawned worker processes.

Workers ignore SIGINT (the parent decides), turn SIGTERM into the cooperative stop flag, die with the main
process (``lifetime.die_with_parent``) and hold the work folder while they live (``storage.hold_workers_lock``). A worker that
dies takes the pool with it (``BrokenProcessPool``): the tasks without a completion marker are counted as
one more attempt each (``WorkerDied``) and run again in a fresh pool.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corpusforge.errors import CorpusforgeError
from corpusforge.executors.lifetime import die_with_parent
from corpusforge.executors.policy import Action, WorkerDied, decide, describe
from corpusforge.redact import RedactingFilter
from corpusforge.stage import STOP, Stage, StageContext, execute_task, marker_path
from corpusforge.storage import hold_workers_lock

log = logging.getLogger(__name__)


@dataclass
class TasksOutcome:
    """What became of a stage's pending tasks: finished ones have markers; these are the others."""

    partial: bool = False
    failed: dict[int, str] = field(default_factory=dict)  # rank → why


class _Settler:
    """Applies the failure policy to one stage's tasks and keeps the attempt counts."""

    def __init__(self, stage_name: str, outcome: TasksOutcome) -> None:
        self.name, self.outcome = stage_name, outcome
        self.attempts: dict[int, int] = {}

    def failed(self, rank: int, exc: BaseException) -> bool:
        """Settle ``rank``'s failure; True when the task should run again. Re-raises what stops the run."""
        self.attempts[rank] = self.attempts.get(rank, 0) + 1
        action = decide(exc, self.attempts[rank])
        if action is Action.STOP:
            raise exc
        if action is Action.PARTIAL:
            self.outcome.partial = True
        elif action is Action.RETRY:
            log.warning("stage %s task %d: %s; retrying", self.name, rank, describe(exc))
            return True
        else:
            log.error(
                "stage %s task %d failed: %s",
                self.name,
                rank,
                describe(exc),
                exc_info=not isinstance(exc, CorpusforgeError),
            )
            self.outcome.failed[rank] = describe(exc)
        return False


def _worker_init(
    run_dir: str, log_level: int, parent: int | None = None, ancestor: int | None = None, progress: bool = False
) -> None:
    # The parent first: one killed while this worker was still starting must not leave it waiting forever.
    die_with_parent(parent=parent, ancestor=ancestor)  # a kill -9 of the main process ends its workers too
    _log_to_stderr(log_level, progress)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hold_workers_lock(Path(run_dir))  # and a rerun waits for them to be gone


def _log_to_stderr(level: int, progress: bool = False) -> None:
    """Worker warnings and errors to stderr (the console the run was started from), tagged with the worker;
    with ``progress``, the tasks' progress lines too (``corpusforge.progress``, off a terminal only)."""
    handler = logging.StreamHandler()
    fmt = "%(asctime)s %(levelname)s %(name)s [worker %(process)d]: %(message)s"
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("corpusforge")
    logger.addHandler(handler)
    logger.setLevel(level)
    if progress:
        logging.getLogger("corpusforge.progress").setLevel(logging.INFO)


def _progress_in_workers() -> bool:
    """Whether workers log progress lines: when this process shows them as lines (INFO, not a terminal; on a
    terminal the bar shows the tasks done, and lines from other processes would break its redraw)."""
    return logging.getLogger("corpusforge.progress").isEnabledFor(logging.INFO) and not sys.stderr.isatty()


def run_tasks(
    stage: Stage, ctx: StageContext, pending: list[int], *, workers: int, on_done: Callable[[int], None]
) -> TasksOutcome:
    """Run ``pending`` task ranks of ``stage``; ``on_done(rank)`` after each task that finished whole."""
    outcome = TasksOutcome()
    settler = _Settler(ctx.stage_name, outcome)
    if min(workers, len(pending)) <= 1 and not getattr(stage, "independent_tasks", False) or not stage.parallel():
        _run_here(stage, ctx, pending, settler, on_done)
        return outcome
    if getattr(stage, "independent_tasks", False):
        _run_processes(stage, ctx, pending, settler, on_done)
        if STOP.is_set():
            outcome.partial = True
        return outcome
    queue = list(pending)
    while queue and not STOP.is_set():
        try:
            _run_pool(stage, ctx, queue, min(workers, len(queue)), settler, on_done)
            break
        except BrokenProcessPool:
            unfinished = [r for r in queue if not marker_path(ctx.out_dir, r).is_file() and r not in outcome.failed]
            queue = [r for r in unfinished if settler.failed(r, WorkerDied(f"task {r}: its worker process died"))]
            log.warning("stage %s: a worker process died; running tasks %s again", ctx.stage_name, queue)
    if STOP.is_set():
        outcome.partial = True
    return outcome


def _run_here(
    stage: Stage, ctx: StageContext, pending: list[int], settler: _Settler, on_done: Callable[[int], None]
) -> None:
    for rank in pending:
        again = True
        while again:
            if STOP.is_set() or settler.outcome.partial:
                settler.outcome.partial = True
                return
            try:
                record = execute_task(stage, ctx, rank)
            except Exception as exc:  # noqa: BLE001 - settled by the policy (which re-raises what stops the run)
                again = settler.failed(rank, exc)
                continue
            again = False
            settler.outcome.partial |= record["partial"]
            if not record["partial"]:
                on_done(rank)


def _run_pool(
    stage: Stage,
    ctx: StageContext,
    queue: list[int],
    workers: int,
    settler: _Settler,
    on_done: Callable[[int], None],
) -> None:
    spawn = mp.get_context("spawn")
    # A spawned worker starts with no logging set up: its warnings and errors would vanish.
    level = max(logging.getLogger("corpusforge").getEffectiveLevel(), logging.WARNING)
    init = (str(ctx.run_dir), level, os.getpid(), None, _progress_in_workers())
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn, initializer=_worker_init, initargs=init) as ex:
        futures: dict[Future[dict[str, Any]], int] = {ex.submit(execute_task, stage, ctx, r): r for r in queue}
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for fut in done:
                rank = futures.pop(fut)
                try:
                    record = fut.result()
                except BrokenProcessPool:
                    raise
                except Exception as exc:  # noqa: BLE001 - settled by the policy
                    try:
                        again = settler.failed(rank, exc)
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
                    if again:
                        futures[ex.submit(execute_task, stage, ctx, rank)] = rank
                    continue
                settler.outcome.partial |= record["partial"]
                if not record["partial"]:
                    on_done(rank)


def _task_main(stage: Stage, ctx: StageContext, rank: int, conn: Any, init: tuple[Any, ...]) -> None:
    """One task in a process of its own: its record, or the exception it raised, goes back through ``conn``."""
    _worker_init(*init)
    try:
        msg: tuple[str, Any] = ("ok", execute_task(stage, ctx, rank))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent's failure policy
        msg = ("error", exc)
    try:
        conn.send(msg)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: send its text
        conn.send(("error", RuntimeError(describe(msg[1]) if msg[0] == "error" else "unpicklable result")))
    conn.close()


def _run_processes(
    stage: Stage, ctx: StageContext, queue: list[int], settler: _Settler, on_done: Callable[[int], None]
) -> None:
    """Every task at once, each in a process of its own (``stage.independent_tasks``: tasks that work together
    through a shared service, the crawler processes of a Redis frontier). Unlike a pool, one that dies takes
    nothing else with it: the others go on, and it is started again under the failure policy.

    The first task runs in a thread of this process, at once, while the others start: a shared crawl begins
    fetching ~0.05 s after its stage starts instead of after the fork server is up (1-2 s on 2 busy cores)."""
    import multiprocessing.connection as mpc

    # Forked from a fork server that imported the stage's modules once: N processes start in a fraction of
    # the time N spawned interpreters take to import them each (measured with 4 crawler processes on 2
    # cores: ~1.5 s from the start of the stage to the first request with spawn). The fork server is a
    # single-threaded child of this process and ends with it; each task's process watches both.
    fs = mp.get_context("forkserver")
    # "__main__" as by default; "pandas" because pyarrow imports it (when installed) at the first Arrow array a
    # task builds: ~0.5 s of CPU in each process otherwise, on the machine's few cores all at once.
    preload = ["__main__", "corpusforge.executors.local", "pandas", *getattr(stage, "preload_modules", ())]
    fs.set_forkserver_preload(preload)
    level = max(logging.getLogger("corpusforge").getEffectiveLevel(), logging.WARNING)
    init = (str(ctx.run_dir), level, None, os.getpid(), _progress_in_workers())
    running: dict[int, tuple[Any, Any]] = {}
    ended: list[Any] = []  # processes that sent their result: joined at the end (their exit takes a while)
    stopping = False

    def start(rank: int) -> None:
        parent, child = fs.Pipe(duplex=False)
        proc = fs.Process(target=_task_main, args=(stage, ctx, rank, child, init), daemon=True)
        proc.start()
        child.close()
        running[rank] = (proc, parent)

    def start_here(rank: int) -> None:
        mine, theirs = mp.Pipe(duplex=False)

        def main() -> None:
            try:
                msg: tuple[str, Any] = ("ok", execute_task(stage, ctx, rank))
            except BaseException as exc:  # noqa: BLE001 - settled below, as a process's would be
                msg = ("error", exc)
            theirs.send(msg)

        thread = _ThreadTask(target=main, name=f"corpusforge-task-{rank}", daemon=True)
        thread.start()
        running[rank] = (thread, mine)

    for i, rank in enumerate(queue):
        (start_here if i == 0 else start)(rank)
    try:
        while running:
            if STOP.is_set() and not stopping:
                stopping = True  # pass the stop on: each task saves its state and ends partial
                for proc, _ in running.values():
                    if proc.is_alive() and proc.pid is not None:  # the thread here sees STOP itself
                        os.kill(proc.pid, signal.SIGTERM)
            waits = [c for _, c in running.values()] + [p.sentinel for p, _ in running.values() if p.pid is not None]
            mpc.wait(waits, timeout=0.5)
            for rank, (proc, conn) in list(running.items()):
                msg = None
                if conn.poll():
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        msg = None
                if msg is None and proc.is_alive():
                    continue
                conn.close()
                del running[rank]
                if msg is not None and msg[0] == "ok":
                    ended.append(proc)
                    settler.outcome.partial |= msg[1]["partial"]
                    if not msg[1]["partial"]:
                        on_done(rank)
                    continue
                proc.join(timeout=30)
                exc = msg[1] if msg is not None else WorkerDied(f"task {rank}: its process died ({proc.exitcode})")
                if settler.failed(rank, exc) and not STOP.is_set():
                    log.warning("stage %s: task %d runs again in a new process", ctx.stage_name, rank)
                    start(rank)
    finally:
        for proc, conn in running.values():
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
            conn.close()
        for proc in ended:
            proc.join(timeout=30)


class _ThreadTask(threading.Thread):
    """A task run in a thread of the main process, looked after like a task's process (``_run_processes``)."""

    pid = None
    exitcode = None

    def kill(self) -> None:
        STOP.set()  # a thread cannot be killed: it is asked to stop, as on SIGTERM

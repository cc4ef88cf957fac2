"""The Ray executor: each task of a parallel stage is a Ray task; the driver (this process) stays the only
writer of completion markers, stage files and manifests.

``ray_session(address, workers)`` connects once per run: with no address it starts a local Ray instance
(``workers`` CPUs, bound to 127.0.0.1, no dashboard) and shuts it down at the end; with ``auto`` or
``ray://host:port`` it joins a cluster and only disconnects — a cluster we did not start is never shut down.

The work folder must be one path every node sees (NFS, Lustre, a shared disk): before working, each task
checks that it can read a file the driver wrote there for this run, and fails the run with a clear message
when it cannot. Workers write their shards under temp names and rename them into place (as with the local
executor); they return only the small task record, which the driver turns into the completion marker.

A task whose worker process or node is lost is run again by Ray (``max_retries``, bounded); an exception in the
task itself goes to the same error policy as on the local executor. SIGTERM, SIGINT and ``--max-runtime``
reach remote tasks through a stop file in the work folder, which ``StageContext.stop_requested`` reads: the
tasks end as "partial" and a rerun runs only the unfinished ones. Stages that run in one process (the crawl,
exact dedup, the tokenizer, training) run in the driver, as with the local executor.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from corpusforge.errors import FatalError
from corpusforge.executors.local import TasksOutcome, _run_here, _Settler
from corpusforge.executors.policy import WorkerDied
from corpusforge.stage import STOP, Stage, StageContext, execute_task, write_marker

log = logging.getLogger(__name__)

INSTALL_HINT = "the Ray executor needs Ray: pip install 'corpusforge[ray]'"
SHARED_CHECK = ".ray-driver"  # in the run folder: the file each task must see before it works
MAX_RETRIES = 3  # Ray's own retries of a task whose worker or node was lost
STOP_GRACE_S = 60.0  # after a stop, how long running tasks get to end as partial before they are cancelled


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise FatalError(INSTALL_HINT) from None
    return ray


@contextmanager
def ray_session(address: str | None, workers: int) -> Iterator[None]:
    """Connect to Ray for the length of a run (see the module docstring)."""
    ray = _ray()
    started = False
    if ray.is_initialized():
        yield  # a caller (a notebook, a test) connected already: use it, leave it as it is
        return
    # ray.init puts its own SIGTERM handler in (it dumps a stack and exits 1): ours, the cooperative stop that
    # ends a run as partial, goes back in once Ray is up.
    ours = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    if address is None:
        # One machine: bind loopback, not the machine's network address; no dashboard.
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            configure_logging=False,
        )
        started = True
    else:
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    if threading.current_thread() is threading.main_thread():
        for s, handler in ours.items():
            if handler is not None:
                signal.signal(s, handler)
    log.info("Ray %s (%s)", "started on this machine" if started else f"joined at {address}", ray.__version__)
    try:
        yield
    finally:
        ray.shutdown()  # ends the instance we started; for a joined cluster, only this driver's connection


def _remote_task(stage: Stage, ctx: StageContext, rank: int, check: str, token: str) -> dict[str, Any]:
    """Body of a Ray task: confirm the shared folder, run the task, return its record (no marker written)."""
    try:
        seen = Path(check).read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        raise FatalError(
            f"this Ray worker ({socket.gethostname()}) cannot see the work folder {ctx.run_dir} as the driver "
            "wrote it: the work folder must be one path every node sees (NFS, Lustre, a shared disk)"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return execute_task(stage, ctx, rank, marker=False)


def _shared_check(run_dir: Path) -> tuple[Path, str]:
    """Write this stage's check file into the work folder: (its path, the token each task must read in it)."""
    token = uuid.uuid4().hex
    path = run_dir / SHARED_CHECK
    path.write_text(token + "\n")
    return path, token


def _cause(exc: BaseException) -> BaseException:
    """The task's own exception inside a Ray task error, or a lost worker as ``WorkerDied``."""
    ray = _ray()
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        return cause if isinstance(cause, BaseException) else exc
    if isinstance(
        exc, ray.exceptions.WorkerCrashedError | ray.exceptions.NodeDiedError | ray.exceptions.ObjectLostError
    ):
        return WorkerDied(f"its Ray worker or node was lost ({type(exc).__name__}), after {MAX_RETRIES} retries")
    return exc


def run_tasks_ray(
    stage: Stage, ctx: StageContext, pending: list[int], *, workers: int, on_done: Callable[[int], None]
) -> TasksOutcome:
    """Run ``pending`` task ranks of ``stage`` as Ray tasks; ``on_done(rank)`` after each one that finished."""
    outcome = TasksOutcome()
    settler = _Settler(ctx.stage_name, outcome)
    if not pending:
        return outcome
    if not stage.parallel():
        _run_here(stage, ctx, pending, settler, on_done)
        return outcome
    ray = _ray()
    check, token = _shared_check(ctx.run_dir)
    stop_file = ctx.stop_file
    assert stop_file is not None, "the runner sets the stop file for the Ray executor"
    # Tasks that work together (a shared crawl's crawler processes) must all run at once: they wait for each
    # other at the end. They are I/O-bound, so they ask for a fraction of a CPU each, not a whole one.
    # Spread over the nodes: N crawlers on one node would share one machine's bandwidth.
    together = getattr(stage, "independent_tasks", False)
    opts: dict[str, Any] = {"num_cpus": 1.0 / max(1, len(pending)), "scheduling_strategy": "SPREAD"} if together else {}
    remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False, **({"num_cpus": 1} | opts))(_remote_task)
    stage_ref, ctx_ref = ray.put(stage), ray.put(ctx)
    refs: dict[Any, int] = {remote.remote(stage_ref, ctx_ref, r, str(check), token): r for r in pending}
    stopped_at: float | None = None
    try:
        while refs:
            if STOP.is_set() and stopped_at is None:
                stopped_at = time.monotonic()
                stop_file.touch()  # remote tasks see it through ctx.stop_requested() and end as partial
                log.info("stage %s: stop requested; waiting for the Ray tasks to end", ctx.stage_name)
            if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE_S:
                for ref in refs:
                    ray.cancel(ref, force=True)
                outcome.partial = True
                break
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for ref in done:
                rank = refs.pop(ref)
                try:
                    record = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - settled by the policy (which re-raises what stops the run)
                    try:
                        again = settler.failed(rank, _cause(exc))
                    except BaseException:
                        for other in refs:
                            ray.cancel(other, force=True)
                        raise
                    if again:
                        refs[remote.remote(stage_ref, ctx_ref, rank, str(check), token)] = rank
                    continue
                outcome.partial |= record["partial"]
                if not record["partial"]:
                    write_marker(ctx, rank, record)  # the driver alone writes markers
                    on_done(rank)
    finally:
        (ctx.run_dir / SHARED_CHECK).unlink(missing_ok=True)
    if STOP.is_set():
        outcome.partial = True
    return outcome

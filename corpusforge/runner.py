"""The runner: a plan's stages in order, each stage's pending tasks handed to the executor.

``run_recipe(recipe, force=False, max_pages=None, max_runtime_s=None, workers=None, reporter=None)``
returns a ``RunResult`` whose ``status`` is one of the exit codes below.

Batch-job guarantees:
- a lock on ``<workdir>/.lock`` (``flock``): a second concurrent run raises ``LockedError`` at once;
- a completion marker ``<stage>/completions/<rank>.json`` per finished task, written after its outputs are
  durable: a rerun skips finished tasks, and a finished stage (its ``manifest.json`` exists and its config
  hash matches) is skipped whole — rerunning a completed job changes no file;
- an existing stage folder made with a different config is refused (``ConfigError``) unless ``force``,
  which rebuilds that stage and every later one;
- the stage manifest is written last, from the completion markers;
- the run's data card (``corpusforge.card``) is rewritten at the end of every run.

The runner alone holds the lock and writes stage files and manifests; the executor
(``corpusforge.executors.local``) runs the tasks, and the error type decides what happens to a failed one
(``corpusforge.executors.policy``): retried, failed while the others go on (the run then stops after the
stage with FAILED), stopped early (PARTIAL), or the whole run stopped (``FatalError``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import tomli_w

from corpusforge.errors import (
    DONE,
    FAILED,
    PARTIAL,
    ConfigError,
    FatalError,
    Interrupted,
    ShardError,
)
from corpusforge.executors.local import run_tasks
from corpusforge.plan import PlanEntry, make_plan, stage_dirs
from corpusforge.recipe import Recipe
from corpusforge.redact import redact
from corpusforge.stage import STOP, StageContext, TaskResult, clear_stop_file, marker_path
from corpusforge.stats import StepStats, merge_dropped, merge_step_lists
from corpusforge.storage import (
    MANIFEST,
    atomic_write_bytes,
    atomic_write_json,
    clean_temp_files,
    load_manifest,
    validate_folder,
    workdir_lock,
    write_manifest,
)

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
STOP_FILE = ".stop"  # the Ray executor's stop flag for remote tasks


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
        executor: str | None = None,
        ray_address: str | None = None,
    ) -> None:
        self.recipe = recipe
        self.executor = executor or recipe.executor
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"unknown executor {self.executor!r}; one of: local, ray", path="executor")
        self.ray_address = ray_address or recipe.ray_address
        self.force = force
        self.max_pages = max_pages
        # Stages made from an earlier snapshot of a re-crawled input: removed just before they are rebuilt,
        # so a re-crawl that stops early leaves the previous corpus (and model) in place.
        self.rebuild_later: set[str] = set()
        self.deadline = time.time() + max_runtime_s if max_runtime_s else None
        self.workers = workers or recipe.workers
        self.reporter = reporter or LogReporter()
        self.plan = make_plan(recipe)
        self.dirs = stage_dirs(self.plan)
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
        old: dict[str, Any] = {}
        for i, e in enumerate(self.plan):
            if e.external:
                continue
            f = e.out_dir / STAGE_FILE
            if not f.is_file():
                continue
            old = json.loads(f.read_text())
            if old.get("config_hash") != e.config_hash:
                first_changed = i
                break
        if first_changed is None:
            return
        e = self.plan[first_changed]
        if not self.force and not self._reads_new_snapshot(e, old):
            before, now = old.get("config") or {}, e.stage.config()
            if (
                "inputs" in now
                and before.get("inputs") != now["inputs"]
                and {**before, "inputs": None}
                == {
                    **now,
                    "inputs": None,
                }
            ):
                what = (
                    f"the input files of stage {e.name!r} changed since it ran "
                    f"({before.get('input_files', '?')} file(s) then, {now.get('input_files', '?')} now, "
                    "or a size or modification time differs)"
                )
            else:
                what = f"the folder {e.out_dir} was made with a different config for stage {e.name!r}"
            raise ConfigError(
                f"{what}. Use another --workdir, or rerun with --force to rebuild this stage and every later one",
                path=e.spec.path,
            )
        for later in self.plan[first_changed:]:
            if not later.external and later.out_dir.exists():
                if not self.force:  # a new snapshot: removed when rebuilt, so a stopped re-crawl keeps them
                    self.rebuild_later.add(later.name)
                    continue
                log.warning("--force: removing %s", later.out_dir)
                shutil.rmtree(later.out_dir)

    def _reads_new_snapshot(self, e: PlanEntry, old: dict[str, Any]) -> bool:
        """Whether only ``e``'s input moved on, to a newer snapshot of a re-crawled folder (``crawl/snapshot.py``),
        with ``e``'s own config as it ran: a scheduled re-crawl, so ``e`` and every later stage are rebuilt."""
        src = [p for p in self.plan if p.home == e.in_dir]
        now = json.loads(json.dumps(redact(e.stage.config() or e.spec.params), default=str))
        if not src or "snapshot" not in src[-1].stage.config() or old.get("config") != now:
            return False
        log.info("stage %s reads a new snapshot of its input (%s): rebuilding it and what follows", e.name, e.in_dir)
        return True

    def write_resolved_recipe(self) -> None:
        import corpusforge

        doc = redact(dict(self.recipe.raw))  # credentials read *** in the file (the config hash is the same)
        doc["corpusforge_version"] = corpusforge.__version__
        doc["fingerprint"] = self.recipe.fingerprint()
        data = tomli_w.dumps(_toml_safe(doc)).encode()
        path = self.recipe.workdir / "recipe.resolved.toml"
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)

    # -- one stage
    def run_entry(self, e: PlanEntry) -> StageOutcome:
        out = StageOutcome(name=e.name, kind=e.spec.kind, status="done", out_dir=e.out_dir)
        manifest_path = e.out_dir / MANIFEST
        if e.external or (manifest_path.is_file() and (e.out_dir / STAGE_FILE).is_file()):
            # Later stages will read this folder: a cheap check first (every listed file, its size).
            problems = validate_folder(e.out_dir, deep=False)
            if problems:
                raise ShardError(
                    f"stage {e.name} is finished but its folder changed since: {problems[0]}. "
                    f"Remove {e.out_dir} to rebuild it (or restore the file)"
                )
            out.status = "skipped"
            out.manifest = json.loads(manifest_path.read_text())
            if not e.external:
                self._load_stats(e, out)
            return out
        self._open_stage_folder(e)
        ctx = e.context(
            self.recipe,
            self.dirs,
            max_pages=self.max_pages,
            deadline=self.deadline,
            fault=self.fault,
            stop_file=self.stop_file if self.executor == "ray" else None,
        )
        n = out.tasks = e.stage.num_tasks(ctx)
        pending = [r for r in range(n) if not marker_path(e.out_dir, r).is_file()]
        self.reporter.stage_start(e.name, n, n - len(pending))
        run = run_tasks
        if self.executor == "ray":
            from corpusforge.executors.ray import run_tasks_ray as run
        tasks = run(e.stage, ctx, pending, workers=self.workers, on_done=lambda r: self.reporter.task_done(e.name, r))
        out.failed_tasks = sorted(tasks.failed)
        out.errors = [f"task {r}: {why}" for r, why in sorted(tasks.failed.items())]
        if out.failed_tasks or tasks.partial:
            out.status = "failed" if out.failed_tasks else "partial"
            self.reporter.stage_end(e.name, out.status)
            return out
        self._seal_stage(e, ctx, n, out)
        self.reporter.stage_end(e.name, "done")
        return out

    def _open_stage_folder(self, e: PlanEntry) -> None:
        """Create the folder, drop temp files of an interrupted write, record the config it is made with."""
        e.out_dir.mkdir(parents=True, exist_ok=True)
        clean_temp_files(e.out_dir)
        stage_file = e.out_dir / STAGE_FILE
        if not stage_file.is_file():
            record = {
                "config_hash": e.config_hash,
                "kind": e.spec.kind,
                "name": e.name,
                "config": redact(e.stage.config() or e.spec.params),
            }
            atomic_write_json(stage_file, record)

    def _seal_stage(self, e: PlanEntry, ctx: StageContext, n: int, out: StageOutcome) -> None:
        """Every task is done: merge their markers into stats.json, finalize, and write the manifest last."""
        results = [json.loads(marker_path(e.out_dir, r).read_text()) for r in range(n)]
        files = [f for r in results for f in r["files"]]
        steps = merge_step_lists([r["steps"] for r in results])
        for s in steps:
            if not StepStats.from_dict(s).balanced():
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
        params = redact(e.spec.params)
        config = {"stage": e.name, "kind": e.spec.kind, "params": params, "config_hash": e.config_hash}
        out.manifest = write_manifest(e.out_dir, files, config=config, extra=extra)
        self._warn_if_emptied(e, out.manifest, steps)
        out.steps, out.extra = steps, _sum_extra(extra_tasks) | extra

    def _warn_if_emptied(self, e: PlanEntry, manifest: dict[str, Any], steps: list[dict[str, Any]]) -> None:
        """Documents in, none out: legitimate (every document filtered), but never silent."""
        if e.in_dir is None or manifest["rows"] or not all(f["name"].endswith(".arrow") for f in manifest["files"]):
            return
        try:
            rows_in = int(load_manifest(e.in_dir).get("rows", 0))
        except ShardError:
            return
        if rows_in:
            why = merge_dropped(steps)
            log.warning(
                "stage %s kept 0 of %d documents (dropped: %s); the stages after it get nothing",
                e.name,
                rows_in,
                ", ".join(f"{k} {v}" for k, v in why.most_common(5)) or "no reason recorded",
            )

    def _load_stats(self, e: PlanEntry, out: StageOutcome) -> None:
        f = e.out_dir / "stats" / "stats.json"
        if f.is_file():
            st = json.loads(f.read_text())
            out.steps = st.get("steps", [])
            out.extra = _sum_extra(st.get("task_extra", []))
        if out.manifest:
            out.extra |= {k: v for k, v in out.manifest.items() if k not in ("files", "config", "versions", "format")}

    # -- the whole run
    @property
    def stop_file(self) -> Path:
        return self.recipe.workdir / STOP_FILE

    def run(self) -> RunResult:
        self.prepare_workdir()
        with workdir_lock(self.recipe.workdir):
            self.check_configs()
            self.write_resolved_recipe()
            if self.executor != "ray":
                result = self._run_stages()
            else:
                from corpusforge.executors.ray import ray_session

                clear_stop_file(self.stop_file)
                try:
                    with ray_session(self.ray_address, self.workers):
                        result = self._run_stages()
                finally:
                    clear_stop_file(self.stop_file)
            self.write_card(result)
            return result

    def write_card(self, result: RunResult) -> None:
        """The run's data card (``<workdir>/README.md``, ``card.json``, ``card/``), after every run that ends,
        partial or failed too. A card that cannot be made (a shard it cannot read) is logged, not fatal."""
        from corpusforge.card import write_run_card

        try:
            write_run_card(self.recipe, result)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - the stages' outputs stand; a card that cannot be made is loud
            from corpusforge.card import CARD_ALT
            from corpusforge.card_render import CARD_MARK

            wd = self.recipe.workdir  # no stale card describing an earlier run; a README of the user's stays
            readme = wd / "README.md"
            if readme.is_file() and CARD_MARK in readme.read_text(encoding="utf-8", errors="replace"):
                readme.unlink()
            for name in ("card.json", CARD_ALT):
                (wd / name).unlink(missing_ok=True)
            log.error(
                "the data card was not written (%s: %s); the stages' outputs are complete", type(exc).__name__, exc
            )

    def _run_stages(self) -> RunResult:
        outcomes: list[StageOutcome] = []
        status = DONE
        message = ""
        for e in self.plan:
            if STOP.is_set():
                status, message = PARTIAL, "stopped by a signal; rerun to continue"
                break
            if e.name in self.rebuild_later:  # every stage before it finished: now the old ones go, all at once
                for later in self.plan:  # (a MinHash stage's folder holds its sub-stages' folders)
                    if later.name in self.rebuild_later and later.out_dir.exists():
                        log.info("removing %s, made from the previous snapshot", later.out_dir)
                        shutil.rmtree(later.out_dir)
                self.rebuild_later.clear()
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
    with stop_on_signals():
        return Runner(recipe, **kw).run()

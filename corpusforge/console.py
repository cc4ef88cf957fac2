"""What the CLI shows: logging set-up, progress (bars on a terminal, plain lines otherwise), summary tables.

On a terminal, progress is a Rich bar per stage, with the running task's own progress line beside it
(``corpusforge.progress``). When stdout is not a TTY (cron, systemd, CI) there are no control characters:
plain, timestamped log lines (those progress lines among them), and a heartbeat line every ``heartbeat_s``
seconds (``CORPUSFORGE_HEARTBEAT_S``, default 30).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from corpusforge.progress import LOGGER as PROGRESS_LOGGER
from corpusforge.progress import LiveHandler, heartbeat_s
from corpusforge.redact import RedactingFilter, redact_text
from corpusforge.stats import merge_dropped

log = logging.getLogger("corpusforge")


def is_tty() -> bool:
    return sys.stdout.isatty()


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if is_tty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True, tracebacks_show_locals=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(RedactingFilter())  # no credentials in any log line or traceback
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("corpusforge").setLevel(level)


def console() -> Console:
    # No colour codes or cursor movement unless on a terminal.
    return Console(force_terminal=None, no_color=not is_tty(), highlight=False, soft_wrap=True)


class _BarLine(LiveHandler):
    """Shows each ``corpusforge.progress`` record as the live line of the running stage's bar."""

    def __init__(self, bars: BarReporter) -> None:
        super().__init__(logging.INFO)
        self.bars = bars

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.bars.live_line(record.getMessage())
        except Exception:  # noqa: BLE001 - a progress line must never fail the work it reports on
            self.handleError(record)


class BarReporter:
    """Rich progress bars, one per stage (terminal only). While a stage runs, its latest progress line
    (``corpusforge.progress``: pages/s, documents/s, iteration and loss) is shown beside its bar in place,
    instead of scrolling as log lines."""

    def __init__(self, console: Console | None = None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[live]}"),
            transient=False,
            console=console,
        )
        self.tasks: dict[str, Any] = {}
        self.current: str | None = None
        self._handler = _BarLine(self)
        self._logger = logging.getLogger(PROGRESS_LOGGER)
        self._saved: tuple[bool, int] = (True, logging.NOTSET)

    def __enter__(self) -> BarReporter:
        self.progress.start()
        self._saved = (self._logger.propagate, self._logger.level)
        self._logger.addHandler(self._handler)
        self._logger.propagate = False  # shown in the bar, not printed as well
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *_: Any) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate, level = self._saved
        self._logger.setLevel(level)
        self.progress.stop()

    def live_line(self, text: str) -> None:
        if self.current in self.tasks:
            self.progress.update(self.tasks[self.current], live=text)

    def stage_start(self, name: str, tasks: int, done: int) -> None:
        self.tasks[name] = self.progress.add_task(f"{name:<18}", total=tasks, completed=done, live="")
        self.current = name

    def task_done(self, name: str, rank: int) -> None:
        self.progress.advance(self.tasks[name])

    def stage_end(self, name: str, status: str) -> None:
        # The live line goes: a stage's last progress line (83% of the iterations, say) is not its end state.
        self.progress.update(self.tasks[name], description=f"{name:<18} {status}", live="")
        self.current = None


class LineReporter:
    """Plain log lines plus a heartbeat every ``heartbeat_s`` seconds (non-TTY)."""

    def __init__(self, heartbeat_s: float = 30.0) -> None:
        self.heartbeat_s = heartbeat_s
        self.current: tuple[str, int, int, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> LineReporter:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if self.current:
                name, done, total, t0 = self.current
                log.info("stage %s running: %d/%d tasks done, %.0f s elapsed", name, done, total, time.time() - t0)

    def stage_start(self, name: str, tasks: int, done: int) -> None:
        self.current = (name, done, tasks, time.time())
        log.info("stage %s: %d task(s), %d already done", name, tasks, done)

    def task_done(self, name: str, rank: int) -> None:
        if self.current:
            n, d, t, t0 = self.current
            self.current = (n, d + 1, t, t0)
        log.info("stage %s: task %d done", name, rank)

    def stage_end(self, name: str, status: str) -> None:
        self.current = None
        log.info("stage %s: %s", name, status)


def reporter() -> BarReporter | LineReporter:
    return BarReporter() if is_tty() else LineReporter(heartbeat_s())


def _fmt_dropped(dropped: dict[str, int], top: int = 4) -> str:
    items = sorted(dropped.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:top])
    if len(items) > top:
        text += f", +{len(items) - top} more"
    return text or "-"


def stages_table(result: Any) -> Table:
    """Per stage: status, documents in → out, why the others were dropped, files."""
    t = Table(title=f"run {result.workdir}", show_lines=False)
    for col in ("stage", "status", "in", "out", "dropped (why)", "files"):
        t.add_column(col)
    for o in result.stages:
        steps = o.steps or []
        n_in = steps[0]["input"] if steps else None
        n_out = steps[-1]["output"] if steps else (o.manifest or {}).get("rows")
        dropped = dict(merge_dropped(steps))
        files = len((o.manifest or {}).get("files", [])) if o.manifest else 0
        t.add_row(
            o.name,
            o.status,
            "-" if n_in is None else str(n_in),
            "-" if n_out is None else str(n_out),
            _fmt_dropped(dropped),
            str(files),
        )
    return t


def run_with_progress(
    recipe: Any,
    *,
    force: bool = False,
    workers: int | None = None,
    max_pages: int | None = None,
    max_runtime: float | None = None,
    quiet: bool = False,
    executor: str | None = None,
    ray_address: str | None = None,
) -> Any:
    """Run a validated recipe with progress output and print the summary; returns the ``RunResult``."""
    from corpusforge.errors import DONE
    from corpusforge.runner import run_recipe

    with reporter() as rep:
        result = run_recipe(
            recipe,
            force=force,
            workers=workers,
            max_pages=max_pages,
            max_runtime_s=max_runtime,
            reporter=rep,
            executor=executor,
            ray_address=ray_address,
        )
    if not quiet:
        console().print(stages_table(result))
    if result.message:
        if result.status != DONE:
            print(f"corpusforge: error: {redact_text(result.message)}", file=sys.stderr)
        else:
            print(result.message)
    return result


def plan_table(recipe: Any) -> Table:
    """A recipe's plan: stages, kinds, inputs, folders, task counts and what is already done."""
    from corpusforge.plan import make_plan

    entries = make_plan(recipe)
    t = Table(title=f"{recipe.name} → {recipe.workdir} (workers={recipe.workers})")
    for c in ("stage", "kind", "input", "folder", "tasks", "state"):
        t.add_column(c)
    dirs = {e.spec.name: e.home for e in entries}
    for e in entries:
        try:
            n = str(e.stage.num_tasks(e.context(recipe, dirs)))
        except Exception:  # noqa: BLE001 - input not there yet
            n = "?"
        if (e.out_dir / "manifest.json").is_file():
            state = "done"
        elif (e.out_dir / "completions").is_dir():
            state = f"{len(list((e.out_dir / 'completions').glob('*.json')))} task(s) done"
        else:
            state = "pending"
        t.add_row(e.name, e.spec.kind, e.spec.input or "-", str(e.out_dir), n, state)
    return t

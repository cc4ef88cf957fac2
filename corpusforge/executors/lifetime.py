"""Worker processes live no longer than the process that started them.

``kill -9`` of the main process gives its workers no chance to clean up: left alone they go on writing into
the work folder, and a rerun that takes the (now free) lock races them. So every worker asks the kernel to
kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``), and also watches its parent pid from a thread
(other platforms, and a parent that died before the request took effect). While it lives it also holds the
work folder (``storage.hold_workers_lock``), so a rerun waits for it to be gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def die_with_parent(poll_s: float = 0.5, *, parent: int | None = None, ancestor: int | None = None) -> None:
    """End this process (SIGKILL) as soon as the process that started it ends, however it ends.

    ``parent``: the pid of the process that started this one, as it knew itself. Without it, a parent killed
    while this process was still starting up (before this call) would go unseen: ``getppid()`` then already
    names whoever adopted us, and the worker would wait forever for work from a dead pool (its siblings hold
    the pool's pipes open), holding the work folder (seen under load: a rerun refused for 10 s).

    ``ancestor``: a process further up that must be alive too (a worker forked by a fork server: its parent
    is the server, which ends when the main process does; the main process is watched as well).
    """
    if parent is None:
        parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol: the watchdog below still works
            pass
    if os.getppid() != parent or (ancestor is not None and not _alive(ancestor)):
        os._exit(137)  # the parent died before the request: nobody is left to wait for us

    def watch() -> None:
        while os.getppid() == parent and (ancestor is None or _alive(ancestor)):
            time.sleep(poll_s)
        os._exit(137)

    threading.Thread(target=watch, name="corpusforge-parent-watch", daemon=True).start()

"""Worker processes die with the process that started them, even when it died while they were starting."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import ROOT

CHILD = """
import inspect, sys, time
sys.path.insert(0, {root!r})
from corpusforge.executors.lifetime import die_with_parent
time.sleep(1.0)  # still starting up when its parent is killed
# As the executors call it: told who started it (a version that cannot be told works it out itself).
told = "parent" in inspect.signature(die_with_parent).parameters
die_with_parent(**({{"parent": {parent}}} if told else {{}}))
time.sleep(30)
"""

MIDDLE = """
import os, subprocess, sys
child = subprocess.Popen(
    [sys.executable, "-c", {child!r}.replace("{{parent}}", str(os.getpid()))],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
print(child.pid, flush=True)
os._exit(0)  # gone before the child called die_with_parent
"""


def test_a_worker_whose_parent_died_while_it_started_exits_at_once():
    child = CHILD.format(root=str(ROOT), parent="{parent}")
    got = subprocess.run([sys.executable, "-c", MIDDLE.format(child=child)], capture_output=True, text=True, timeout=30)
    pid = int(got.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return  # gone: it saw that the process that started it was not its parent any more
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                return  # exited, not yet reaped
        time.sleep(0.1)
    os.kill(pid, 9)
    raise AssertionError("the orphaned worker kept running")

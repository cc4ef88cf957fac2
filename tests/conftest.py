from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

os.environ["CORPUSFORGE_PLUGINS"] = "tests.helpers"  # worker processes register the test stages too
# The hundreds of small runs of the suite skip the data card's plots (matplotlib); tests/test_card.py and the
# demo's test turn them back on and check them.
os.environ.setdefault("CORPUSFORGE_CARD_PLOTS", "0")
import tests.helpers  # noqa: E402,F401  (registers the test stages)


@pytest.fixture
def shared_data() -> Path:
    d = SHARED / "data"
    if not d.is_dir():
        pytest.skip(f"{d} is absent: put the project's shared/ folder beside the repository")
    return d


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["CORPUSFORGE_PLUGINS"] = "tests.helpers"
    env.pop("CORPUSFORGE_FAULT", None)
    return env

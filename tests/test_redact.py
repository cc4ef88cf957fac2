"""Secrets never reach a file or the console (RELIABILITY 52; issue 12, defect 9): credentials in seeds and
secret-looking recipe keys are planted, the whole run folder and all output are searched for them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w

from corpusforge.redact import MASK, redact, redact_text
from tests.conftest import cli_env
from tests.crawl.faultserver import FaultServer, html

SECRET = "s3cr3tPASSw0rd"


def test_redaction_masks_credentials_and_secret_keys_but_not_lookalikes():
    assert redact_text(f"http://bob:{SECRET}@127.0.0.1:81/a") == f"http://{MASK}@127.0.0.1:81/a"
    assert redact_text(f"Authorization: Bearer {SECRET}") == f"Authorization: {MASK}"
    assert SECRET not in redact_text(f'{{"proxy_password": "{SECRET}"}} token={SECRET}')
    assert (
        redact_text("mail bob@127.0.0.1 max_tokens=5 tokenizer: bpe")
        == "mail bob@127.0.0.1 max_tokens=5 tokenizer: bpe"
    )
    cfg = {
        "seeds": [f"https://u:{SECRET}@h/"],
        "headers": {"Authorization": SECRET},
        "max_tokens": 3,
        "agent_token": "cf",
    }
    assert redact(cfg) == {
        "seeds": [f"https://{MASK}@h/"],
        "headers": {"Authorization": MASK},
        "max_tokens": 3,
        "agent_token": "cf",
    }


def _grep_tree(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture
def site():
    s = FaultServer(
        routes={
            "/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"),
            "/": html('<p>home</p><a href="/a.html">a</a>'),
            "/a.html": html("<p>" + "words of a page " * 60 + "</p>"),
        }
    )
    yield s
    s.close()


def test_a_planted_secret_is_in_no_file_of_the_run_and_in_no_output(tmp_path, site):
    seed = site.base.replace("http://", f"http://crawler:{SECRET}@") + "/"
    spider = tmp_path / "spider.toml"
    spider.write_text(f'name = "s"\nseeds = ["{seed}"]\nallowed_domains = ["127.0.0.1"]\nmax_depth = 2\n')
    recipe = {
        "name": "s",
        "stages": [
            {
                "kind": "crawl",
                "spider": str(spider),
                "seeds": [seed],
                "min_delay_s": 0.0,
            },
            {"kind": "process", "name": "clean", "tasks": 1, "steps": [{"type": "extract", "extractor": "lxml"}]},
        ],
    }
    (tmp_path / "r.toml").write_text(tomli_w.dumps(recipe))
    cmd = [sys.executable, "-m", "corpusforge.cli", "run", "r.toml", "--workdir", "w", "-v"]
    out = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert json.loads((tmp_path / "w" / "clean" / "manifest.json").read_text())["rows"] == 2  # the crawl worked
    assert _grep_tree(tmp_path / "w", SECRET.encode()) == []
    # No credentials were sent: the crawler adds no Authorization header, and canonical URLs carry no userinfo.
    assert all("authorization" not in hit.headers for hit in site.log)
    # The resolved recipe (credentials masked) reruns as the same config: nothing to do, exit 0.
    again = subprocess.run(
        [sys.executable, "-m", "corpusforge.cli", "run", "w/recipe.resolved.toml", "--workdir", "w"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    # An error message that quotes a secret is masked too.
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "corpusforge.cli",
            "run",
            "r.toml",
            "--workdir",
            "w2",
            "--set",
            f'crawl.seeds=["ftp://u:{SECRET}@h/"]',
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "only http and https" in bad.stderr and SECRET not in bad.stdout + bad.stderr

"""Re-crawls into snapshots of one job folder (issue 16): conditional requests, pages carried forward by
reference, tombstones, the whole corpus for every reader, resume after a kill, and the README's cron line and
systemd units run as written."""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from corpusforge.errors import DONE, ConfigError, ShardError
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import current_snapshot, iter_documents, manifest_paths, sha256_file, validate_folder
from tests.conftest import cli_env
from tests.crawl.faultserver import FaultServer, html

README = Path(__file__).resolve().parents[2] / "README.md"
WORDS = (
    "river field morning water farmer animal ground rain valley road village market bridge winter summer "
    "garden letter window evening teacher doctor kitchen station harbour forest mountain story friend"
).split()
TEMPLATES = [
    "The {a} walked along the {b} before the {c} began.",
    "Nobody expected the {a} to reach the {b} so soon.",
    "In the {a}, people talked for hours about the {b} and the {c}.",
    "She wrote a long letter about the {a} while the {b} was still quiet.",
    "When the {a} came back, the whole {b} was waiting near the {c}.",
    "There is an old story that the {a} once crossed the {b} at night.",
    "Every year the {a} brings something new to the {b}.",
    "He remembered how the {a} looked from the {b} in those days.",
    "Some of them left the {a} early, but most stayed by the {b}.",
    "By then the {a} had changed, and so had the {b} beyond the {c}.",
    "They could hear the {a} from the {b}, although it was far away.",
    "It took a week to repair the {a} after the storm hit the {b}.",
]


def prose(seed: str) -> str:
    """Plain English sentences, different for every seed (so no two pages are near-duplicates)."""
    rng = random.Random(seed)
    return " ".join(t.format(**dict(zip("abc", rng.sample(WORDS, 3), strict=True))) for t in rng.sample(TEMPLATES, 10))


class Site:
    """A loopback site whose pages carry an ETag and answer 304 to a matching If-None-Match; ``version``
    changes one page, ``delete`` makes a page answer 404. Every answer's status is logged per path."""

    def __init__(self, pages: list[str]) -> None:
        self.versions = {p: 1 for p in pages}
        self.deleted: set[str] = set()
        self.answers: list[tuple[str, int, str | None]] = []  # (path, status, If-None-Match sent)
        routes = {"/robots.txt": (200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n")}
        routes["/"] = self._index
        routes |= {f"/{p}": self._page(p) for p in pages}
        self.server = FaultServer(routes=routes)

    def _index(self, h) -> None:
        links = "".join(f'<a href="/{p}">{p}</a> ' for p in self.versions if p not in self.deleted)
        h.reply(*html(f"<main>{links}</main>"))

    def _page(self, name: str):
        def handler(h) -> None:
            sent = h.headers.get("If-None-Match")
            if name in self.deleted:
                self.answers.append((name, 404, sent))
                return h.reply(404, {"Content-Type": "text/html"}, b"<html>gone</html>")
            tag = f'"{name}-{self.versions[name]}"'
            if sent == tag:
                self.answers.append((name, 304, sent))
                return h.reply(304, {"ETag": tag}, b"")
            self.answers.append((name, 200, sent))
            text = f"{name} version {self.versions[name]}. " + prose(f"{name}-{self.versions[name]}")
            h.reply(*html(f"<main><h1>{name}</h1><p>{text}</p></main>", ETag=tag))

        return handler

    @property
    def base(self) -> str:
        return self.server.base

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def site():
    made: list[Site] = []

    def make(pages: list[str]) -> Site:
        made.append(Site(pages))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _spider(path: Path, base: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'name = "site"\nseeds = ["{base}/"]\nallowed_domains = ["127.0.0.1"]\n')
    return path


def _recrawl(tmp_path: Path, spider: Path, **params):
    stage = {"kind": "crawl", "spider": str(spider), "min_delay_s": 0.0, "recrawl": True} | params
    return run_recipe(validate_recipe({"name": "t", "workdir": str(tmp_path / "w"), "stages": [stage]}))


def _texts(folder: Path) -> dict[str, str]:
    return {d.url.rsplit("/", 1)[1]: d.html or "" for d in iter_documents(manifest_paths(folder))}


def test_recrawl_stores_changes_carries_the_rest_by_reference_and_tombstones_deletions(tmp_path, site):
    s = site(["a", "b", "c", "d"])
    spider = _spider(tmp_path / "spider.toml", s.base)
    crawl = tmp_path / "w" / "crawl"
    assert _recrawl(tmp_path, spider).status == DONE  # nothing before it: the first snapshot is crawl/ itself
    first = {p.name: sha256_file(p) for p in crawl.iterdir() if p.is_file()}
    s.versions["b"] = 2
    s.deleted.add("c")  # also unlinked from the index: the re-crawl visits every page it had anyway
    s.answers.clear()
    res = _recrawl(tmp_path, spider)
    snap = crawl / "snapshots" / "00001"
    assert res.status == DONE and res.stages[0].out_dir == snap and current_snapshot(crawl) == snap
    # Unchanged pages: asked for with their validators, answered 304, carried; the changed one stored again.
    assert sorted(s.answers) == [("a", 304, '"a-1"'), ("b", 200, '"b-1"'), ("c", 404, '"c-1"'), ("d", 304, '"d-1"')]
    texts = _texts(crawl)
    assert sorted(texts) == ["", "a", "b", "d"] and "b version 2" in texts["b"] and "a version 1" in texts["a"]
    manifest = json.loads((snap / "manifest.json").read_text())
    carried = [f for f in manifest["files"] if "carried_from" in f]
    assert {f["carried_from"] for f in carried} == {"../../seg-00000.arrow"} and manifest["rows"] == 4
    assert sum(f["rows"] for f in carried) == 2  # a and d: references, not copies
    info = manifest["snapshot"]
    assert (info["changed"], info["new"], info["carried"], info["tombstones"]) == (2, 0, 2, 1)  # the index changed
    tombs = json.loads((snap / "tombstones.json").read_text())
    assert [(t["url"].rsplit("/", 1)[1], t["status"], t["file"]) for t in tombs] == [
        ("c", 404, "../../seg-00000.arrow")
    ]
    step = res.stages[0].steps[0]
    assert step["output"] == manifest["rows"] and step["input"] == step["output"] + sum(step["dropped"].values())
    assert step["dropped"] == {"http_404": 1} and step["counters"]["snapshot_tombstones"] == 1
    # The first snapshot's files never changed; both folders validate.
    assert {p.name: sha256_file(p) for p in crawl.iterdir() if p.is_file()} == first
    assert validate_folder(crawl) == [] and validate_folder(snap) == []

    # Nothing changed: a snapshot reading the very same rows, with that message.
    s.answers.clear()
    res = _recrawl(tmp_path, spider)
    third = json.loads((crawl / "snapshots" / "00002" / "manifest.json").read_text())["snapshot"]
    assert res.status == DONE and third["nothing_changed"] and third["view"] == info["view"]
    assert {st for _, st, _ in s.answers} == {304} and _texts(crawl) == texts
    # Without --recrawl a rerun skips the finished snapshot.
    assert _recrawl(tmp_path, spider, recrawl=False).stages[0].status == "skipped"


def test_a_carried_file_altered_later_fails_the_reader_naming_it(tmp_path, site):
    s = site(["a", "b"])
    spider = _spider(tmp_path / "spider.toml", s.base)
    _recrawl(tmp_path, spider)
    s.versions["b"] = 2
    _recrawl(tmp_path, spider)
    seg = tmp_path / "w" / "crawl" / "seg-00000.arrow"
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="seg-00000.arrow"):
        list(iter_documents(manifest_paths(tmp_path / "w" / "crawl")))


def test_recrawl_refuses_an_explicit_previous_or_shared_frontier(tmp_path, site):
    spider = _spider(tmp_path / "spider.toml", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="recrawl"):
        _recrawl(tmp_path, spider, previous=str(tmp_path))


def test_a_killed_recrawl_resumes_in_its_own_snapshot(tmp_path, site):
    s = site([f"p{i}" for i in range(6)])
    spider = _spider(tmp_path / "spider.toml", s.base)
    cmd = [sys.executable, "-m", "corpusforge.cli", "crawl", str(spider), "--workdir", "w", "--recrawl"]
    cmd += ["--set", "crawl.min_delay_s=0", "--set", "crawl.segment_pages=1"]
    run = lambda env: subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run(cli_env()).returncode == DONE
    for i in range(1, 5):
        s.versions[f"p{i}"] = 2
    killed = run(cli_env() | {"CORPUSFORGE_FAULT": "crawl:3"})  # dies hard at the third page stored again
    assert killed.returncode == 137
    snap = tmp_path / "w" / "crawl" / "snapshots" / "00001"
    assert (
        not (snap / "manifest.json").exists() and current_snapshot(tmp_path / "w" / "crawl") == tmp_path / "w" / "crawl"
    )
    rerun = run(cli_env())
    assert rerun.returncode == DONE, rerun.stderr
    assert not (tmp_path / "w" / "crawl" / "snapshots" / "00002").exists()  # resumed, not a new snapshot
    texts = _texts(tmp_path / "w" / "crawl")
    assert sorted(texts) == ["", *(f"p{i}" for i in range(6))]
    assert all(f"version {2 if 1 <= i <= 4 else 1}" in texts[f"p{i}"] for i in range(6))
    assert validate_folder(snap) == []


# ------------------------------------------------------------------------------------------------ README


def _readme_jobs() -> tuple[str, list[str], str]:
    """The README's crontab command, and its systemd service's ExecStart lines and working folder."""
    text = README.read_text()
    (cron,) = re.findall(r"```cron\n(.*?)```", text, re.S)
    line = next(ln for ln in cron.splitlines() if ln.strip() and not ln.startswith("#"))
    command = line.split(None, 5)[5]
    service = next(b for b in re.findall(r"```ini\n(.*?)```", text, re.S) if "[Service]" in b)
    execs = re.findall(r"^ExecStart=(.*)$", service, re.M)
    (workdir,) = re.findall(r"^WorkingDirectory=(.*)$", service, re.M)
    return command, execs, workdir


def _local(command: str, root: Path) -> str:
    # The job folder moves under tmp_path; the loopback site owes no politeness delay (the only other change).
    return command.replace("/srv/corpus", str(root)).replace("min_delay_s=2", "min_delay_s=0")


@pytest.mark.slow  # three crawls and two builds in subprocesses (~25 s)
def test_the_readme_cron_line_and_systemd_service_run_a_recrawl_and_build(tmp_path, site):
    command, execs, workdir = _readme_jobs()
    assert len(execs) == 2 and workdir == "/srv/corpus"
    s = site(["alpha", "beta", "gamma", "delta"])
    root = tmp_path / "srv"
    _spider(root / "spiders" / "site.toml", s.base)
    bindir = Path(sys.executable).parent
    env = cli_env() | {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}

    def cron() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", "-c", _local(command, root)], env=env, capture_output=True, text=True, timeout=300
        )

    def systemd() -> list[subprocess.CompletedProcess[str]]:
        done = []
        for line in execs:  # Type=oneshot: in order, stopping at the first failure
            argv = shlex.split(_local(line, root))
            argv[0] = str(bindir / "corpusforge")
            done.append(subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300))
            if done[-1].returncode != 0:
                break
        return done

    def corpus() -> dict[str, str]:
        return {d.url.rsplit("/", 1)[1]: d.text for d in iter_documents(manifest_paths(root / "build" / "near_dedup"))}

    day1 = cron()
    assert day1.returncode == DONE, day1.stderr[-2000:]
    assert sorted(corpus()) == ["alpha", "beta", "delta", "gamma"]
    s.versions["beta"] = 2
    s.deleted.add("gamma")
    s.answers.clear()
    day2 = systemd()
    assert [r.returncode for r in day2] == [DONE, DONE], day2[-1].stderr[-2000:]
    snap = root / "job" / "crawl" / "snapshots" / "00001"
    assert current_snapshot(root / "job" / "crawl") == snap
    assert sorted(s.answers) == [
        ("alpha", 304, '"alpha-1"'),
        ("beta", 200, '"beta-1"'),
        ("delta", 304, '"delta-1"'),
        ("gamma", 404, '"gamma-1"'),
    ]
    built = corpus()
    assert sorted(built) == ["alpha", "beta", "delta"] and "beta version 2" in built["beta"]
    assert [t["status"] for t in json.loads((snap / "tombstones.json").read_text())] == [404]
    tokens = root / "build" / "tokens" / "manifest.json"
    before = tokens.stat().st_mtime_ns
    day3 = cron()
    assert day3.returncode == DONE, day3.stderr[-2000:]
    assert "nothing changed since 00001" in day3.stdout + day3.stderr
    assert (root / "job" / "crawl" / "snapshots" / "00002" / "manifest.json").is_file()
    assert tokens.stat().st_mtime_ns == before  # the same pages: build skipped every stage
    assert corpus() == built


def test_a_recipe_whose_crawl_recrawls_rebuilds_its_later_stages_from_each_new_snapshot(tmp_path, site):
    s = site(["a", "b"])
    spider = _spider(tmp_path / "spider.toml", s.base)
    crawl = {"kind": "crawl", "spider": str(spider), "min_delay_s": 0.0, "recrawl": True}
    clean = {"kind": "process", "name": "clean", "tasks": 1, "steps": [{"type": "extract", "extractor": "lxml"}]}
    raw = {"name": "t", "workdir": str(tmp_path / "w"), "workers": 1, "stages": [crawl, clean]}
    assert run_recipe(validate_recipe(raw)).status == DONE
    s.versions["b"] = 2
    res = run_recipe(validate_recipe(raw))  # no --force: only the input moved on, to a new snapshot
    assert res.status == DONE and [o.status for o in res.stages] == ["done", "done"]
    texts = {d.url.rsplit("/", 1)[1]: d.text for d in iter_documents(manifest_paths(tmp_path / "w" / "clean"))}
    assert "b version 2" in texts["b"] and "a version 1" in texts["a"]
    stage = json.loads((tmp_path / "w" / "clean" / "stage.json").read_text())
    assert stage["config_hash"] == res.stages[1].manifest["config"]["config_hash"]  # made for this snapshot


def test_a_recrawl_that_stops_early_leaves_the_previous_corpus_in_place(tmp_path, site):
    """The later stages made from the previous snapshot were removed before the crawl ran: a re-crawl
    stopped by a bound (or a signal, or an error) left no corpus until the next full run."""
    s = site(["a", "b", "c"])
    spider = _spider(tmp_path / "spider.toml", s.base)
    crawl = {"kind": "crawl", "spider": str(spider), "min_delay_s": 0.0, "recrawl": True}
    clean = {"kind": "process", "name": "clean", "tasks": 1, "steps": [{"type": "extract", "extractor": "lxml"}]}
    raw = {"name": "t", "workdir": str(tmp_path / "w"), "workers": 1, "stages": [crawl, clean]}
    assert run_recipe(validate_recipe(raw)).status == DONE
    before = (tmp_path / "w" / "clean" / "manifest.json").read_text()
    s.versions["b"] = 2
    res = run_recipe(validate_recipe(raw), max_pages=1)  # the re-crawl stops early: partial
    assert res.status != DONE and (tmp_path / "w" / "clean" / "manifest.json").read_text() == before
    res = run_recipe(validate_recipe(raw))  # the rerun finishes the snapshot, then rebuilds clean from it
    assert res.status == DONE
    texts = {d.url.rsplit("/", 1)[1]: d.text for d in iter_documents(manifest_paths(tmp_path / "w" / "clean"))}
    assert "b version 2" in texts["b"] and "a version 1" in texts["a"]

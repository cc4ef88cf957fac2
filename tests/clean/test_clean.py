"""The clean stage as a whole: per-page extraction limits (size in bytes, an interrupting timer), failures
that never stop a task, and a real process stage (extract → normalize → filters → PII) whose rejected
documents land in ``rejected/`` with their reason (RELIABILITY items 18–19)."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

import pytest

import corpusforge.clean.extract as extract_mod
from corpusforge.clean.extract import Extract, PageTimeout, run_with_deadline
from corpusforge.document import Document
from corpusforge.errors import DONE
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe
from corpusforge.storage import iter_documents, manifest_paths
from tests.helpers import write_doc_shards as _shards

PARAS = [
    "The committee met on Tuesday to review the proposal in detail, and the members agreed that the plan was "
    "sound and that the budget should be revised before the next meeting of the board.",
    "Several people raised concerns about the timeline, and the chair asked for a written summary of the risks "
    "with the options to reduce them, so that the board could decide with all the facts in hand.",
    "After a short break the discussion turned to the new library, which had been delayed by the weather and by "
    "a shortage of materials that nobody had expected at the start of the year.",
]


def page(body: str, title: str = "A page") -> str:
    return (
        f"<html><head><title>{title}</title><script>var tracking = 1;</script></head><body>"
        f"<nav>Home | About | Contact</nav><main>{body}</main><footer>Copyright footer</footer></body></html>"
    )


def hdoc(i: int, html: str, url: str | None = None) -> Document:
    return Document(id=f"p{i:02d}", html=html, url=url or f"http://site.test/{i}")


# ------------------------------------------------------------------------------------------- page limits
def test_timeout_interrupts_a_slow_page_and_the_next_page_is_extracted(monkeypatch):
    real = extract_mod.extract_lxml

    def slow_then_real(html: str) -> str:
        if "SLOW" in html:
            while True:  # a page that would never finish (pure Python and sleeping: both interrupted)
                sum(range(1000))
                time.sleep(0.001)
        return real(html)

    real(page(f"<p>{PARAS[1]}</p>"))  # warm: a cold first extraction (lazy imports) must not count as slow
    monkeypatch.setattr(extract_mod, "extract_lxml", slow_then_real)
    step = Extract(extractor="lxml", timeout_s=0.2)
    docs = [hdoc(1, page("<p>SLOW</p>")), hdoc(2, page(f"<p>{PARAS[0]}</p>"))]
    t0 = time.monotonic()
    out = list(step.run(docs))
    assert time.monotonic() - t0 < 3
    assert [d.id for d in out] == ["p02"] and out[0].text == PARAS[0]
    assert step.stats.dropped == {"extract_timeout": 1}


def test_page_timer_restores_an_outer_timer():
    fired: list[int] = []
    old_handler = signal.getsignal(signal.SIGALRM)
    old_delay, old_interval = signal.getitimer(signal.ITIMER_REAL)

    def outer(signum, frame):  # type: ignore[no-untyped-def]
        fired.append(signum)

    try:
        signal.signal(signal.SIGALRM, outer)
        signal.setitimer(signal.ITIMER_REAL, 60)
        assert run_with_deadline(lambda: "done", 5) == "done"
        assert signal.getsignal(signal.SIGALRM) is outer
        assert 55 < signal.getitimer(signal.ITIMER_REAL)[0] <= 60  # re-armed with what was left
        # An outer timer due before the page limit still fires on time (the page counts as timed out).
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(PageTimeout):
            run_with_deadline(lambda: time.sleep(2), 5)
        time.sleep(0.05)
        assert fired and signal.getsignal(signal.SIGALRM) is outer
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, old_delay, old_interval)


def test_size_limit_counts_utf8_bytes_and_errors_are_counted_not_raised(monkeypatch):
    step = Extract(extractor="lxml", max_html_bytes=2048)
    wide = hdoc(1, "<p>" + "é" * 1500 + "</p>")  # 1,507 characters but 3,007 UTF-8 bytes
    narrow = hdoc(2, "<p>" + "e" * 1500 + "</p>")
    assert [d.id for d in step.run([wide, narrow])] == ["p02"]
    assert step.stats.dropped == {"extract_too_large": 1}

    real = extract_mod.extract_lxml

    def broken(html: str) -> str:
        if "BROKEN" in html:
            raise ValueError("parser exploded")
        return real(html)

    monkeypatch.setattr(extract_mod, "extract_lxml", broken)
    step = Extract(extractor="lxml")
    out = list(step.run([hdoc(1, page("<p>BROKEN</p>")), hdoc(2, page(f"<p>{PARAS[1]}</p>"))]))
    assert [d.id for d in out] == ["p02"] and step.stats.dropped == {"extract_error": 1}


@pytest.mark.parametrize("extractor", ["lxml", "trafilatura"])
def test_hostile_pages_are_parsed_or_rejected_in_bounded_time(extractor):
    pages = [
        "<div>" * 20_000 + "deep" + "</div>" * 20_000,  # deeply nested
        '<?xml version="1.0" encoding="iso-8859-1"?><html><body><p>Declared latin-1, given as str.</p></body></html>',
        '<html><head><meta charset="windows-1252"></head><body><p>caf\ufffd \x00 ok</p></body></html>',
        "\x00" * 100,
        "<p>" + "unclosed <b>tags <i>everywhere " * 3000,
        "",
    ]
    step = Extract(extractor=extractor, timeout_s=5)
    t0 = time.monotonic()
    out = list(step.run([hdoc(i, h) for i, h in enumerate(pages)]))
    assert time.monotonic() - t0 < 30
    assert step.stats.input == len(pages) == step.stats.output + sum(step.stats.dropped.values())
    assert set(step.stats.dropped) <= {"extract_empty", "extract_error", "extract_timeout"}
    assert all("\x00" not in d.text for d in out)


# ---------------------------------------------------------------------------------- the clean stage
def _clean_recipe(tmp_path, input_dir, tasks: int, workers: int, name: str = "run"):
    return validate_recipe(
        {
            "name": name,
            "workdir": str(tmp_path / name),
            "workers": workers,
            "stages": [
                {"kind": "shards", "name": "input", "path": str(input_dir)},
                {
                    "kind": "process",
                    "name": "clean",
                    "tasks": tasks,
                    "keep_rejected": True,
                    "steps": [
                        {"type": "extract", "extractor": "lxml"},
                        {"type": "normalize"},
                        {"type": "url_blocklist", "domains": ["spam.test"]},
                        {"type": "language"},
                        {"type": "length", "min_words": 50},
                        {"type": "gopher_quality"},
                        {"type": "gopher_repetition"},
                        {"type": "pii"},
                    ],
                },
            ],
        }
    )


def _clean_inputs() -> tuple[list[Document], dict[str, str]]:
    good = "".join(f"<p>{p}</p>" for p in PARAS)
    docs = [hdoc(i, page(good.replace("committee", f"committee number {i}"))) for i in range(6)]
    docs.append(hdoc(10, page("<p>Write to jane.doe@example.org about it.</p>" + good)))
    expected = {
        "p20": "extract:extract_empty",
        "p21": "url_blocklist:url_blocked_domain",
        "p22": "length:length_too_few_words",
        "p23": "gopher_quality:gopher_symbol_ratio",
        "p24": "gopher_repetition:gopher_dup_para_fraction",
        "p25": "language:language_not_allowed",
    }
    french = (
        "Le comité s'est réuni mardi pour examiner la proposition en détail, et les membres ont convenu que le "
        "projet était solide et que le budget devait être révisé avant la prochaine réunion du conseil. "
    )
    docs += [
        hdoc(20, "<html><body><script>only()</script></body></html>"),
        hdoc(21, page(good), url="http://www.spam.test/x"),
        hdoc(22, page("<p>Too short to keep.</p>")),
        hdoc(23, page(good + "<p>" + "#news #today " * 20 + "</p>")),
        hdoc(24, page("".join(f"<p>{PARAS[0]}</p>" for _ in range(4)) + f"<p>{PARAS[1]}</p>")),
        hdoc(25, page(f"<p>{french * 3}</p>")),
    ]
    return docs, expected


def test_clean_stage_keeps_rejects_in_rejected_folder_with_reasons(tmp_path):
    docs, expected = _clean_inputs()
    _shards(tmp_path / "in", docs, per_file=4)
    res = run_recipe(_clean_recipe(tmp_path, tmp_path / "in", tasks=2, workers=1))
    assert res.status == DONE, res.message
    clean_dir = tmp_path / "run" / "clean"
    kept = {d.id: d for d in iter_documents(manifest_paths(clean_dir))}
    assert sorted(kept) == [f"p{i:02d}" for i in range(6)] + ["p10"]
    assert all(d.html is None and "\n\n" in d.text and "Home | About" not in d.text for d in kept.values())
    assert kept["p10"].text.startswith("Write to <EMAIL> about it.") and kept["p10"].metadata["pii"] == {"email": 1}
    assert kept["p00"].metadata["title"] == "A page" and kept["p00"].metadata["language"] == "en"

    rejected = {d.id: d for d in iter_documents(sorted((clean_dir / "rejected").glob("*.arrow")))}
    assert {i: d.metadata["rejected_by"] for i, d in rejected.items()} == expected
    assert rejected["p20"].html is not None  # kept as it came, so the failure can be inspected

    # Per-step stats: balanced, chained (one step's output is the next one's input), summed over tasks.
    steps = next(o for o in res.stages if o.name == "clean").steps
    assert steps[0]["input"] == len(docs) and steps[-1]["output"] == len(kept)
    for a, b in zip(steps, steps[1:], strict=False):
        assert a["output"] == b["input"]
    for s in steps:
        assert s["input"] == s["output"] + sum(s["dropped"].values())
    dropped = Counter({f"{s['name']}:{r}": n for s in steps for r, n in s["dropped"].items()})
    assert dropped == Counter(expected.values())
    assert next(s for s in steps if s["name"] == "pii")["counters"] == {"pii_email": 1}


@pytest.mark.slow
def test_clean_stage_output_does_not_depend_on_workers(tmp_path):
    docs, _ = _clean_inputs()
    _shards(tmp_path / "in", docs, per_file=3)

    def kept(name: str, workers: int) -> list[tuple[str, str]]:
        assert run_recipe(_clean_recipe(tmp_path, tmp_path / "in", tasks=3, workers=workers, name=name)).status == DONE
        return sorted((d.id, d.text) for d in iter_documents(manifest_paths(tmp_path / name / "clean")))

    assert kept("w1", 1) == kept("w2", 2)


# ------------------------------------------------------------------------ a step that cannot work is not hidden
def _cli(*args, cwd, env=None):
    import subprocess
    import sys

    from tests.conftest import cli_env

    cmd = [sys.executable, "-m", "corpusforge.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=cli_env() | (env or {}), capture_output=True, text=True, timeout=180)


def _html_recipe(tmp_path, steps: list[dict], workers: int = 1):
    import tomli_w

    pages = tmp_path / "pages"
    pages.mkdir(exist_ok=True)
    for i in range(6):
        (pages / f"p{i}.html").write_text(page(f"<p>{PARAS[i % len(PARAS)]}</p><p>{PARAS[(i + 1) % len(PARAS)]}</p>"))
    recipe = {
        "name": "h",
        "workers": workers,
        "stages": [
            {"kind": "read_html", "name": "input", "path": str(pages), "tasks": 2},
            {"kind": "process", "name": "clean", "tasks": 2, "steps": steps},
        ],
    }
    (tmp_path / "r.toml").write_text(tomli_w.dumps(recipe))
    return tmp_path / "r.toml"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.slow
def test_an_extractor_that_cannot_import_fails_with_the_fix_and_the_rerun_recovers(tmp_path, workers):
    """jusText (under trafilatura) without lxml_html_clean: before, every page became extract_error and the clean
    stage was sealed with 0 documents. Now the task fails at once, saying what to install, visible without -v."""
    recipe = _html_recipe(tmp_path, [{"type": "extract", "extractor": "trafilatura"}], workers=workers)
    broken = _cli(
        "run", recipe, "--workdir", "w", cwd=tmp_path, env={"CORPUSFORGE_TEST_BLOCK_IMPORT": "lxml_html_clean"}
    )
    assert broken.returncode == 1, broken.stderr
    assert "cannot be imported" in broken.stderr and "pip install 'lxml_html_clean'" in broken.stderr
    assert not (tmp_path / "w" / "clean" / "manifest.json").exists()
    fixed = _cli("run", recipe, "--workdir", "w", cwd=tmp_path)
    assert fixed.returncode == DONE, fixed.stderr
    assert json.loads((tmp_path / "w" / "clean" / "manifest.json").read_text())["rows"] == 6


def test_the_hostile_pages_fail_loudly_when_the_extractor_cannot_import(monkeypatch):
    import sys

    from corpusforge.errors import TaskError

    monkeypatch.setitem(sys.modules, "trafilatura", None)  # `import trafilatura` now raises ImportError
    with pytest.raises(TaskError, match="'trafilatura' extractor cannot be imported"):
        list(Extract(extractor="trafilatura").run([hdoc(0, "<div>" * 100 + "deep")]))


def test_an_error_on_most_documents_stops_the_task(monkeypatch):
    from corpusforge.errors import TaskError

    real = extract_mod.extract_lxml

    def broken(html: str) -> str:
        if "BROKEN" in html:
            raise ValueError("parser exploded")
        return real(html)

    monkeypatch.setattr(extract_mod, "extract_lxml", broken)
    bad = [hdoc(i, page(f"<p>BROKEN {PARAS[0]}</p>")) for i in range(80)]
    good = [hdoc(100 + i, page(f"<p>{PARAS[0]}</p>")) for i in range(80)]
    with pytest.raises(TaskError, match=r"failed on 50 of the first 50 documents \(extract_error\).*parser exploded"):
        list(Extract(extractor="lxml").run(bad))
    with pytest.raises(TaskError, match="failed on 3 of the first 4"):  # a short stream: judged at its end
        list(Extract(extractor="lxml").run(bad[:3] + good[:1]))
    mixed = [d for pair in zip(bad[:25], good[:55], strict=False) for d in pair] + good[25:]  # 25 of the first 50
    assert len(list(Extract(extractor="lxml").run(mixed))) == len(mixed) - 25  # half is not more than half


def test_worker_warnings_reach_the_console_and_an_emptied_stage_is_not_silent(tmp_path):
    recipe = _html_recipe(tmp_path, [{"type": "extract", "extractor": "lxml"}, {"type": "test_warn_once"}], workers=2)
    out = _cli("run", recipe, "--workdir", "w", cwd=tmp_path)
    assert out.returncode == DONE, out.stderr
    assert out.stderr.count("test warning from worker") == 2, out.stderr  # one per task, from the spawned workers
    recipe = _html_recipe(
        tmp_path, [{"type": "extract", "extractor": "lxml"}, {"type": "test_min_words", "min_words": 10**6}]
    )
    out = _cli("run", recipe, "--workdir", "w2", cwd=tmp_path)
    assert out.returncode == DONE, out.stderr
    assert "stage clean kept 0 of 6 documents (dropped: too_short 6)" in out.stderr, out.stderr

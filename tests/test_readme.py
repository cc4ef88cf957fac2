"""The README's recipe example is a real recipe: it validates and runs on a folder of pages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from corpusforge.errors import DONE
from corpusforge.recipe import validate_recipe
from corpusforge.runner import run_recipe

README = Path(__file__).resolve().parent.parent / "README.md"
PAGE = "<html><body><main>{}</main></body></html>"
PROSE = (
    "The river rose slowly through the night, and by the morning the lower fields were under water. "
    "Farmers moved their animals to the high ground and waited for the rain to stop. "
)


def test_readme_recipe_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has a TOML recipe example"
    raw = tomllib.loads(blocks[0])
    pages = tmp_path / "my_pages"
    pages.mkdir()
    for i in range(3):
        (pages / f"p{i}.html").write_text(PAGE.format(f"<p>{PROSE * (3 + i)}</p><p>Page {i}.</p>"))
    (pages / "dup.html").write_text(PAGE.format(f"<p>{PROSE * 3}</p><p>Page 0.</p>"))
    monkeypatch.chdir(tmp_path)
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE
    dedup = next(o for o in res.stages if o.name == "dedup").steps[0]
    assert dedup["input"] == 4 and dedup["dropped"] == {"exact_duplicate": 1}


def test_benchmark_harness_prints_table_and_last_line(capsys):
    # Imported through the package path: putting benchmarks/ itself on sys.path would let
    # benchmarks/tokenize.py shadow the standard library's `tokenize` in every process spawned later.
    from benchmarks import _harness as h

    h.print_table([{"what": "docs/s", "ours": 10.0, "peer": 5.0, "ratio": h.ratio(10.0, 5.0)}])
    h.print_keyvals(speedup=2.0, same_ids=True, docs=10)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "speedup=2 same_ids=true docs=10"
    assert "2.00x" in out[-2]


def test_readme_lists_every_command_and_the_code_map_exists():
    import typer.main

    from corpusforge.cli import app

    commands = {c.name for c in typer.main.get_command(app).commands.values()}  # type: ignore[attr-defined]
    listed = set(re.findall(r"^\| `corpusforge ([a-z-]+)", README.read_text(), re.M))
    assert len(commands) == 21 and listed == commands
    root = README.parent
    for folder in re.findall(r"^\| `[^|]*\| `(corpusforge/[a-z_/]+)`", README.read_text(), re.M):
        assert (root / folder).is_dir(), folder

from __future__ import annotations

import pytest

from corpusforge.errors import ConfigError
from corpusforge.recipe import apply_override, load_recipe, validate_recipe


def _raw(**over):
    raw = {
        "name": "t",
        "workdir": "runs/t",
        "stages": [
            {"kind": "test_source", "docs": 10},
            {"kind": "process", "name": "clean", "steps": [{"type": "test_min_words", "min_words": 5}]},
        ],
    }
    raw.update(over)
    return raw


def test_valid_recipe_resolves_defaults_and_inputs():
    r = validate_recipe(_raw())
    assert [s.name for s in r.stages] == ["test_source", "clean"]
    assert r.stages[1].input == "test_source" and r.stages[0].input is None
    assert r.workers == 2


@pytest.mark.parametrize(
    ("mutate", "path", "words"),
    [
        (lambda r: r.update(colour="red"), "colour", "unknown key"),
        (lambda r: r["stages"][0].update(docs="many"), "stages[0].docs", "expected int"),
        (lambda r: r["stages"][0].update(docs=-1), "stages[0].docs", ">= 0"),
        (lambda r: r["stages"][1]["steps"][0].update(min_words=0), "stages[1].steps[0].min_words", ">= 1"),
        (
            lambda r: r["stages"][1]["steps"][0].update(min_wrds=3),
            "stages[1].steps[0].min_wrds",
            "Did you mean 'min_words'",
        ),
        (lambda r: r["stages"][1]["steps"][0].update(type="test_min_word"), "stages[1].steps[0].type", "Did you mean"),
        (lambda r: r["stages"][1].update(kind="proces"), "stages[1].kind", "Did you mean 'process'"),
        (lambda r: r["stages"][1].update(input="nope"), "stages[1].input", "not an earlier stage"),
        (lambda r: r.update(workers=0), "workers", ">= 1"),
        (lambda r: r.update(stages=[]), "stages", "at least one"),
    ],
)
def test_bad_recipes_name_the_field(mutate, path, words):
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError) as exc:
        validate_recipe(raw)
    assert str(exc.value).startswith(path + ":"), str(exc.value)
    assert words in str(exc.value)


def test_overrides_by_index_and_by_stage_name():
    raw = _raw()
    apply_override(raw, "stages[0].docs=42")
    apply_override(raw, "clean.steps[0].min_words=7")
    apply_override(raw, "workers=1")
    apply_override(raw, "name=other-name")
    r = validate_recipe(raw)
    assert r.stages[0].params["docs"] == 42
    assert r.stages[1].params["steps"][0]["min_words"] == 7
    assert r.workers == 1 and r.name == "other-name"
    with pytest.raises(ConfigError):
        apply_override(raw, "stages[9].docs=1")
    with pytest.raises(ConfigError):
        apply_override(raw, "no_equals_sign")


def test_load_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[stages]]\nkind = "test_source"\ndocs = "ten"\n')
    with pytest.raises(ConfigError) as exc:
        load_recipe(bad)
    assert str(bad) in str(exc.value) and "stages[0].docs" in str(exc.value)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_a_registered_function_is_a_step_with_keyword_parameters(tmp_path):
    from corpusforge.errors import DONE
    from corpusforge.runner import run_recipe

    raw = _raw(workdir=str(tmp_path / "w"))
    raw["stages"][1]["steps"] = [{"type": "test_every_nth", "n": 3}]
    res = run_recipe(validate_recipe(raw))
    assert res.status == DONE, res.message
    step = res.stages[1].steps[0]
    assert step["name"] == "test_every_nth"
    assert (step["input"], step["output"], step["dropped"]) == (10, 4, {"dropped": 6})  # ids 0, 3, 6, 9 kept
    raw["stages"][1]["steps"] = [{"type": "test_every_nth", "m": 3}]
    with pytest.raises(ConfigError, match=r"stages\[1\]\.steps\[0\]\.m: unknown key.*Allowed keys: n"):
        validate_recipe(raw)
    raw["stages"][1]["steps"] = [{"type": "test_every_nth", "n": 0}]
    with pytest.raises(ConfigError, match=r"steps\[0\]\.n: must be >= 1"):
        validate_recipe(raw)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused_with_the_field_path(bad):
    raw = _raw()
    raw["stages"][0]["sleep_s"] = bad
    with pytest.raises(ConfigError, match=r"stages\[0\]\.sleep_s: expected a finite number"):
        validate_recipe(raw)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_nan_and_infinity_from_the_command_line_are_refused(tmp_path, text):
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "t"\n[[stages]]\nkind = "test_source"\n')
    with pytest.raises(ConfigError, match="sleep_s: expected a finite number"):
        load_recipe(recipe, [f"test_source.sleep_s={text}"])
    with pytest.raises(ConfigError, match="min_delay_s: expected a finite number"):
        validate_recipe(
            {"name": "c", "stages": [{"kind": "crawl", "spider": "spiders/demo.toml", "min_delay_s": float(text)}]}
        )

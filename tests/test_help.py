"""`--help`: flags show no value type, and `train --help` lists every training parameter with its default."""

from __future__ import annotations

import dataclasses

import pytest
import typer.main
from typer.testing import CliRunner

from corpusforge.cli import app
from corpusforge.train.config import NONE_MEANS, TrainConfig

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _help(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_no_flag_shows_a_bool_type(command):
    text = _help(*([command] if command else []))
    assert "--help" in text and "<bool>" not in text


def test_flags_are_still_listed_and_set_names_its_form():
    text = _help("run")
    assert "--force" in text and "--verbose" in text and "KEY=VALUE" in text and "<list[str]>" not in text


def test_train_help_lists_every_parameter_with_its_default():
    text = _help("train")
    lines = {ln.strip().split(" = ")[0]: ln.strip() for ln in text.splitlines() if " = " in ln}
    for f in dataclasses.fields(TrainConfig):
        if f.default is None:
            shown = NONE_MEANS.get(f.name, "none")
        else:
            shown = str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
        assert lines.get(f.name, "").startswith(f"{f.name} = {shown}   ("), (f.name, lines.get(f.name))
    assert lines["n_layer"] == "n_layer = 4   (int, 1 to 96)"
    assert lines["pos_encoding"] == "pos_encoding = learned   (learned|sinusoidal)"
    assert lines["lr"] == "lr = 0.384 / n_embd, at most 3e-3   (float, >= 0)"

"""The command line: user errors exit 2 with one clear message and no traceback; ``--debug`` shows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hftl.cli import main

HFTL = str(Path(sys.executable).with_name("hftl"))
TYPO = "name: toy\ntask: text-classification\nmodel: {checkpoint: x}\ndata: {source: y}\ntrain: {epocs: 1}\n"


def hftl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HFTL, *args], capture_output=True, text=True, timeout=120, env={**os.environ})


def test_help_lists_the_commands():
    proc = hftl("--help")
    assert proc.returncode == 0, proc.stderr
    for name in ("run", "validate", "plan", "predict", "--debug"):
        assert name in proc.stdout


def test_user_error_exits_2_with_one_message_and_no_traceback(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(TYPO)
    proc = hftl("validate", str(recipe))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"hftl: error: {recipe}: key 'train.epocs' is not allowed. Did you mean 'epochs'?")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_debug_shows_the_traceback(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(TYPO)
    proc = hftl("--debug", "validate", str(recipe))
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr and "RecipeError" in proc.stderr
    assert "hftl: error: " in proc.stderr


def test_validate_accepts_a_good_recipe_with_overrides(text_recipe, capsys):
    assert main(["validate", str(text_recipe()), "train.epochs=2", "strategy.name=feature_extraction"]) == 0
    assert "ok (text-classification" in capsys.readouterr().out


USER_ERRORS = {
    "bad-override": (["validate", "{recipe}", "train.epochs"], "is not of the form key.path=value"),
    "missing-recipe": (["validate", "{tmp}/nope.yaml"], "cannot read the recipe file"),
    "missing-checkpoint": (["run", "{recipe}", "model.checkpoint={tmp}/no-model", "train.max_steps=1"], "no-model"),
    "missing-column": (
        ["run", "{recipe}", "data.columns.text=review", "train.max_steps=1"],
        "column 'review' is not in",
    ),
    "plan-schedule-too-long": (
        ["plan", "{recipe}", "strategy.name=progressive", "strategy.progressive.every=9"],
        "longer than the run",
    ),
    "predict-without-inputs": (["predict", "{tmp}"], "needs inputs"),
}


@pytest.mark.parametrize("argv, words", USER_ERRORS.values(), ids=USER_ERRORS.keys())
def test_user_errors_exit_2_without_traceback(text_recipe, tmp_path, capsys, argv, words):
    recipe = text_recipe()
    args = [a.format(recipe=recipe, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err  # progress bars may come first; the message is the last line
    assert err.strip().splitlines()[-1].startswith("hftl: error: ") and words in err, err
    assert "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch, text_recipe):
    """Only user errors are turned into messages; anything else is a bug and must not be hidden."""
    import hftl.cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setitem(hftl.cli.COMMANDS, "validate", broken)
    with pytest.raises(ZeroDivisionError):
        main(["validate", str(text_recipe())])


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trian", "recipe.yaml"])
    assert info.value.code == 2 and "invalid choice: 'trian'" in capsys.readouterr().err


def test_run_script_passes_debug_and_resume_through(monkeypatch):
    """``accelerate launch hftl/run.py RECIPE ... --resume --debug`` is ``hftl --debug run RECIPE ... --resume``."""
    import runpy

    seen = []
    monkeypatch.setattr("hftl.cli.main", lambda argv: seen.append(argv) or 0)
    monkeypatch.setattr(sys, "argv", ["hftl/run.py", "r.yaml", "train.epochs=1", "--resume", "--debug", "--quiet"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "hftl" / "run.py"), run_name="__main__")
    assert info.value.code == 0
    assert seen == [["--debug", "--quiet", "run", "r.yaml", "train.epochs=1", "--resume"]]

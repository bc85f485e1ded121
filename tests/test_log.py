"""Messages go through the ``hftl`` logger: --quiet keeps warnings, errors and the final summary; --verbose and
HFTL_LOG_LEVEL set the level; a bad HFTL_LOG_LEVEL is a user error."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from hftl.cli import main
from hftl.config import log
from hftl.config.errors import HftlError

SHORT = {"max_steps": 4, "eval_steps": 2, "epochs": 1}


@pytest.fixture(autouse=True)
def restore_level():
    yield
    logging.getLogger("hftl").setLevel(logging.INFO)


def test_quiet_run_prints_only_the_final_summary(text_recipe):
    path = text_recipe(train=SHORT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-m", "hftl", "--quiet", "run", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[done] validation accuracy"), proc.stdout
    assert "[eval]" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-2000:]


def test_default_run_shows_evaluations_and_the_summary(text_recipe, capsys):
    assert main(["run", str(text_recipe(train=SHORT))]) == 0
    out = capsys.readouterr().out
    assert out.count("[eval] step") == 2 and "[done] validation accuracy" in out


@pytest.mark.parametrize(
    "flags, env, level",
    [
        ([], None, logging.INFO),
        (["--quiet"], None, logging.WARNING),
        (["--verbose"], None, logging.DEBUG),
        ([], "WARNING", logging.WARNING),
        ([], "debug", logging.DEBUG),
        (["--verbose"], "ERROR", logging.DEBUG),
    ],
)
def test_flags_and_hftl_log_level_set_the_level(monkeypatch, flags, env, level):
    if env is None:
        monkeypatch.delenv("HFTL_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("HFTL_LOG_LEVEL", env)
    assert log.configure(quiet="--quiet" in flags, verbose="--verbose" in flags) == level
    assert logging.getLogger("hftl").level == level


def test_summary_shows_when_quiet_and_info_does_not(capsys):
    log.configure(quiet=True)
    log.say("[eval] hidden")
    log.say("[data] skipped 2 bad examples", logging.WARNING)
    log.summary("[done] shown")
    captured = capsys.readouterr()
    assert captured.out == "[done] shown\n" and captured.err == "[data] skipped 2 bad examples\n"


def test_bad_log_level_and_contradicting_flags_are_user_errors(monkeypatch, capsys, text_recipe):
    monkeypatch.setenv("HFTL_LOG_LEVEL", "loud")
    assert main(["validate", str(text_recipe())]) == 2
    assert "HFTL_LOG_LEVEL='loud' is not a log level" in capsys.readouterr().err
    monkeypatch.delenv("HFTL_LOG_LEVEL")
    with pytest.raises(HftlError, match="contradict"):
        log.configure(quiet=True, verbose=True)

"""Messages go through the ``hftl`` logger: --quiet keeps warnings, errors and the final summary; --verbose and
HFTL_LOG_LEVEL set the level; a bad HFTL_LOG_LEVEL is a user error."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hftl.cli import main
from hftl.config import log
from hftl.config.errors import HftlError

SHORT = {"max_steps": 4, "eval_steps": 2, "epochs": 1}


@pytest.fixture(autouse=True)
def restore_level():
    yield
    logging.getLogger("hftl").setLevel(logging.INFO)


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


QUIET_DRIVER = """
import contextlib, io, json, sys
from hftl.cli import main
import transformers.modeling_utils  # its log handler binds the process's stderr now, not a command's StringIO
seen = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["--quiet", *argv])
        except SystemExit as exc:  # an argparse error: its message is in err
            code = exc.code
    seen.append({"argv": argv, "code": code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_every_command_with_quiet_says_only_its_summary(text_recipe, tmp_path):
    """validate, plan, run, predict, advise and study with --quiet: no progress line, no warning, no bar; each
    command's own answer (its summary line, the plan table, the predictions) and nothing else. The second run
    loads the real EfficientNet-Lite0 under a new 2-class head, which transformers reports with its LOAD REPORT
    table (a warning; as each trial of a timm study did): --quiet hides it too."""
    from hftl.models.pretrained import resolve_checkpoint
    from tests.test_image_classification import write_stripe_folder

    recipe = text_recipe(train={"max_steps": 2, "eval_steps": 2, "batch_size": 8}, data={"max_eval_samples": 32})
    (tmp_path / "stripes").mkdir()
    images = tmp_path / "images.yaml"
    images.write_text(
        yaml.safe_dump(
            {
                "name": "stripes",
                "task": "image-classification",
                "model": {"checkpoint": resolve_checkpoint("efficientnet-lite0")},  # exported once, in this cache
                "data": {"source": str(write_stripe_folder(tmp_path / "stripes", 32)), "image_size": 32},
                "train": {"min_steps": 0, "max_steps": 1, "batch_size": 8, "eval_steps": 1},
                "output": {"dir": str(tmp_path / "image-run")},
            }
        )
    )
    study = tmp_path / "study.yaml"
    study.write_text(
        yaml.safe_dump(
            {
                "recipe": recipe.name,
                "overrides": {"train.max_steps": 2},
                "axes": {"train.seed": [0]},
            }
        )
    )
    commands = [
        ["validate", str(recipe)],
        ["plan", str(recipe)],
        ["run", str(recipe)],
        ["run", str(images)],
        ["predict", str(tmp_path / "run"), "--text", "a fine film", "--text", "dull"],
        ["advise", str(recipe)],
        ["study", str(study)],
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HFTL_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", QUIET_DRIVER, json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # nothing written past Python's streams either (this check had its own `python -m hftl --quiet run` process,
    # merged here: 10 s saved; `python -m hftl` itself runs in tests/test_reliability.py)
    assert "[eval]" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr[-2000:]
    assert "LOAD REPORT" not in proc.stderr, proc.stderr[-2000:]  # transformers' table for the run's new head
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    for r in seen:
        assert r["code"] == 0 and r["err"] == "", (r["argv"], r["err"][-2000:])
    image_run = next(r for r in seen if r["argv"] == ["run", str(images)])
    assert image_run["out"].startswith("[done] validation accuracy") and image_run["out"].count("\n") == 1
    results = {r["argv"][0]: r for r in seen if r is not image_run}
    lines = {name: r["out"].strip().splitlines() for name, r in results.items()}
    assert len(lines["validate"]) == 1 and ": ok (text-classification" in lines["validate"][0]
    assert lines["plan"][0].strip().startswith("strategy: full") and not any(
        line.startswith("[") for line in lines["plan"]
    ), lines["plan"]
    assert len(lines["run"]) == 1 and lines["run"][0].startswith("[done] validation accuracy"), lines["run"]
    assert [line.split("\t")[0] for line in lines["predict"]] == ["a fine film", "dull"], lines["predict"]
    assert len(lines["advise"]) == 1 and lines["advise"][0].startswith("[advise] recommended strategy: ")
    assert len(lines["study"]) == 1 and lines["study"][0].startswith("[study] 1 complete, 0 failed"), lines["study"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tiny_timm(folder):
    from transformers import TimmWrapperForImageClassification

    from tests.tiny_models import timm_config

    TimmWrapperForImageClassification(timm_config()).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["bert", "timm"])
def test_quiet_hides_the_transformers_load_report_and_the_default_keeps_it(kind, tiny_bert_dir, tmp_path):
    """A checkpoint loaded under a new head (BERT: a missing classifier; timm, as each trial of a timm study: a
    mismatched one) makes transformers warn its LOAD REPORT table: shown by default, gone with --quiet."""
    import transformers
    from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

    folder, factory = (tiny_bert_dir, AutoModelForSequenceClassification)
    if kind == "timm":
        folder, factory = _tiny_timm(tmp_path / "timm"), AutoModelForImageClassification
    seen = _Records()
    library = logging.getLogger("transformers.modeling_utils")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # its default; TRANSFORMERS_VERBOSITY=error would hide it anyway
    library.addHandler(seen)
    reports = {}
    try:
        for quiet in (False, True, False):
            log.configure(quiet=quiet)
            seen.messages.clear()
            factory.from_pretrained(str(folder), num_labels=5, ignore_mismatched_sizes=True)
            reports.setdefault(quiet, []).append(sum("LOAD REPORT" in m for m in seen.messages))
    finally:
        library.removeHandler(seen)
        transformers.logging.set_verbosity(verbosity)
        log.configure()
    assert reports == {False: [1, 1], True: [0]}, reports


def test_the_load_report_loggers_are_every_caller_in_transformers():
    """hftl's quiet filter sits on the loggers transformers passes to its load report: every module calling it."""
    import transformers

    root = Path(transformers.__file__).parent
    callers = {
        "transformers." + ".".join(path.relative_to(root).with_suffix("").parts)
        for path in root.rglob("*.py")
        if path.name != "loading_report.py" and "log_state_dict_report(" in path.read_text(encoding="utf-8")
    }
    assert callers and callers <= set(log.LOAD_REPORT_LOGGERS), callers - set(log.LOAD_REPORT_LOGGERS)

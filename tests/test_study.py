"""Studies: validation before training, grid expansion, resumability after SIGKILL, several workers, reports.

Trials run a tiny random BERT for 2 steps (tests/conftest.py), so a trial is a few seconds, most of it
the runner's fixed costs. The per-trial bookkeeping of the study engine is printed (run with -s).
"""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hftl.cli import main
from hftl.errors import HftlError
from hftl.study import load_study, point_key, to_yaml_text

ROOT = Path(__file__).resolve().parents[1]
FAST = {"train.max_steps": 2, "train.eval_steps": 2, "data.max_eval_samples": 32, "train.batch_size": 8}


@pytest.fixture
def write_study(tmp_path, text_recipe):
    """Write a study on the tiny-BERT recipe; returns a function(**study keys) -> path."""
    recipe = text_recipe(output={"dir": str(tmp_path / "unused")})

    def write(name: str = "toy-study", **doc) -> Path:
        doc = {"recipe": recipe.name, "overrides": dict(FAST), **doc}
        doc.setdefault("axes", {"strategy.name": ["full", "feature_extraction"], "train.seed": [0, 1]})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def hftl_study(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "hftl.cli", "study", *args], env=env, **kw)


# --------------------------------------------------------------------------- validation and expansion
def test_grid_expands_every_point_with_multi_key_values(write_study):
    study = load_study(write_study(axes={
        "strategy.name": ["full", {"label": "full+llrd", "set": {"strategy.name": "full", "strategy.llrd": {"decay": 0.8}}}],
        "lr_mult": {"values": [{"label": 0.1, "set": {"optim.lr": 1e-5, "optim.head_lr": 1e-4}},
                               {"label": 1.0, "set": {"optim.lr": 1e-4, "optim.head_lr": 1e-4}}], "kind": "lr_multiplier"},
        "train.seed": [0, 1, 2]}))
    assert len(study.points) == 2 * 2 * 3
    assert study.metric == "test.accuracy" and study.direction == "maximize"
    assert [a.kind for a in study.axes] == ["strategy", "lr_multiplier", "seed"]
    overrides = study.trial_overrides({"strategy.name": "full+llrd", "lr_mult": 0.1, "train.seed": 2})
    assert 'strategy.llrd={"decay": 0.8}' in overrides and "optim.lr=1.0e-05" in overrides and "train.seed=2" in overrides
    from hftl.recipe import load_recipe

    recipe = load_recipe(study.recipe_file, overrides)
    assert recipe.optim.lr == 1e-5 and recipe.strategy.llrd.decay == 0.8 and recipe.train.max_steps == 2
    assert len({point_key(p) for p in study.points}) == len(study.points)


@pytest.mark.parametrize("value", [1e-05, 3.0e20, 0.1, 5, True, None, "1e-4", "full", [1, 2.5e-7], {"a": 1e-9}])
def test_override_text_reads_back_as_the_same_value(value):
    from hftl.recipe import apply_overrides

    assert apply_overrides({}, [f"k={to_yaml_text(value)}"])["k"] == value


BAD = {
    "bad-axis-key": ({"axes": {"train.seeed": [0, 1]}}, "axis 'train.seeed', value 0", "Did you mean 'seed'?"),
    "bad-value": ({"axes": {"strategy.name": ["full", "fulll"]}}, "axis 'strategy.name', value 'fulll'",
                  "unknown strategy 'fulll'"),
    "bad-number": ({"axes": {"optim.lr": [1e-3, -1]}}, "axis 'optim.lr', value -1", "greater than 0"),
    "bad-study-key": ({"axess": {}}, "key 'axess' is not allowed", "Did you mean 'axes'?"),
    "range-in-grid": ({"axes": {"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True}}}, "axis 'optim.lr' is a range",
                      "search: tpe"),
    "tpe-without-budget": ({"search": "tpe"}, "needs a budget", "trials: N"),
    "reserved-key": ({"overrides": {"output.dir": "x"}}, "key 'output.dir' is set by the study", ""),
    "bad-metric": ({"metric": "accuracy"}, "key 'metric'", "test.accuracy"),
}


@pytest.mark.parametrize("case", BAD)
def test_invalid_studies_exit_2_naming_file_axis_and_value(case, write_study, capsys):
    doc, *expected = BAD[case]
    path = write_study(**doc)
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hftl: error: {path}"), err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    assert not (path.parent / path.stem / "study.db").exists()  # nothing was created, nothing trained


def test_a_bad_combination_names_the_point(write_study):
    # each value is fine alone; together the head LR would be ignored
    path = write_study(axes={"optim.head_lr": [None, 1e-3], "strategy.discriminative": [{"range": [1e-5, 1e-3]}]})
    with pytest.raises(HftlError, match=r"point optim.head_lr=0.001, strategy.discriminative=.*head_lr would be ignored"):
        load_study(path)
    # a value that fails alone is named alone
    path = write_study(axes={"strategy.name": ["full"], "strategy.partial": [{"freeze_groups": 1}]})
    with pytest.raises(HftlError, match=r"axis 'strategy.partial', value '\{\"freeze_groups\": 1\}'.*only applies"):
        load_study(path)


def test_tpe_validates_each_value_and_range_end(write_study):
    study = load_study(write_study(search="tpe", trials=3,
                                   axes={"optim.lr": {"low": 1e-5, "high": 1e-2, "log": True}, "train.seed": [0]}))
    assert study.points == [] and study.axes[0].is_range
    with pytest.raises(HftlError, match=r"axis 'optim.lr', value 0.0"):
        load_study(write_study(search="tpe", trials=3, axes={"optim.lr": {"low": 0.0, "high": 1e-2}}))


def test_shipped_studies_validate():
    for name in ("sentiment-strategies.yaml", "fashion-mnist-strategies.yaml", "lr-multiplier.yaml"):
        study = load_study(ROOT / "studies" / name)
        assert study.points and study.metric == "test.accuracy", name
    assert len(load_study(ROOT / "studies" / "sentiment-strategies.yaml").points) == 5 * 4 * 3
    assert len(load_study(ROOT / "studies" / "fashion-mnist-strategies.yaml").points) == 5 * 3 * 3
    assert len(load_study(ROOT / "studies" / "lr-multiplier.yaml").points) == 5 * 3

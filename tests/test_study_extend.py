"""A grid study grows and shrinks on its storage: new axis values run, finished trials are kept, a label whose
meaning changed is refused, removed points are hidden, and a storage of an earlier hftl is upgraded.

A trial is identified by the resolved recipe it runs with, not by the recipe file's text: a comment edit keeps
every trial; a recipe change that the study file pins back keeps every trial; one it does not pin is refused
naming the keys (exit 2, nothing written); a storage of the previous hftl (recipe text digests) is upgraded by
``hftl study --report``; a search's fingerprint is over the parsed recipe.

The trials' training is replaced by a fake that counts its calls and scores from the trial's recipe, so these
tests measure the study's bookkeeping alone (tests/test_study.py runs the tiny model for real).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hftl.analysis.study import load_study, point_key
from hftl.cli import main
from hftl.config.errors import HftlError
from tests.test_study import FAST, read_csv

LLRD = {"label": "full+llrd", "set": {"strategy.name": "full", "strategy.llrd": {"decay": 0.8}}}


@pytest.fixture
def write_study(tmp_path, text_recipe):
    """(Re)write a study on the tiny-BERT recipe (as tests/test_study.py's); returns a function(**keys) -> path."""
    recipe = text_recipe(output={"dir": str(tmp_path / "unused")})

    def write(name: str = "toy-study", **doc) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"recipe": recipe.name, "overrides": dict(FAST), **doc}, sort_keys=False))
        return path

    return write


@pytest.fixture
def trainings(monkeypatch):
    """Replace the trials' training: each call is recorded as (strategy, seed) and scores from them."""
    calls: list[tuple[str, int]] = []

    def fake_run(recipe, on_evaluate=None):
        calls.append((recipe.strategy.name, recipe.train.seed))
        score = 0.5 + 0.1 * recipe.train.seed + (0.05 if recipe.strategy.name == "full" else 0.0)
        return SimpleNamespace(metrics={"validation": {"accuracy": score}, "test": {"accuracy": score - 0.01}})

    monkeypatch.setattr("hftl.training.train.run", fake_run)
    return calls


def stored_trials(path):
    import optuna

    url = f"sqlite:///{path.parent / path.stem / 'study.db'}"
    return optuna.load_study(study_name=path.stem, storage=url)


def test_a_grid_grows_and_runs_only_its_new_points(write_study, trainings, capsys):
    path = write_study(axes={"strategy.name": ["full", "feature_extraction"], "train.seed": [0]})
    assert main(["study", str(path)]) == 0
    assert sorted(trainings) == [("feature_extraction", 0), ("full", 0)]
    folder = path.parent / path.stem
    before = read_csv(folder / "results.csv")

    trainings.clear()
    write_study(axes={"strategy.name": ["full", "feature_extraction"], "train.seed": [0, 1, 2]})
    assert main(["study", str(path)]) == 0
    assert "4 new point(s) queued" in capsys.readouterr().out
    assert sorted(trainings) == [("feature_extraction", 1), ("feature_extraction", 2), ("full", 1), ("full", 2)]
    rows = read_csv(folder / "results.csv")
    assert len(rows) == 6 and all(r["state"] == "COMPLETE" for r in rows)
    assert rows[:2] == before  # the finished trials, untouched
    report = (folder / "report.md").read_text()
    assert "| full | 0.6500 ± 0.1000 | 0.6400 ± 0.1000 | 3/3 |" in report, report  # seeds 0-2: 0.55, 0.65, 0.75
    assert "no longer in the grid" not in report

    # a new value of the other axis: its three seeds, nothing else
    trainings.clear()
    write_study(axes={"strategy.name": ["full", "feature_extraction", LLRD], "train.seed": [0, 1, 2]})
    assert main(["study", str(path)]) == 0
    assert sorted(trainings) == [("full", 0), ("full", 1), ("full", 2)]
    assert len(read_csv(folder / "results.csv")) == 9
    assert "| full+llrd | " in (folder / "report.md").read_text()
    trainings.clear()
    assert main(["study", str(path)]) == 0 and trainings == []  # finished: nothing runs again


def test_a_label_whose_set_changed_is_refused_and_nothing_is_written(write_study, trainings, capsys):
    path = write_study(axes={"strategy.name": ["feature_extraction", LLRD], "train.seed": [0]})
    assert main(["study", str(path)]) == 0
    db = path.parent / path.stem / "study.db"
    stored = db.read_bytes()
    capsys.readouterr()
    trainings.clear()

    changed = {**LLRD, "set": {"strategy.name": "full", "strategy.llrd": {"decay": 0.5}}}
    write_study(axes={"strategy.name": ["feature_extraction", changed], "train.seed": [0, 1]})
    for args in (["study", str(path)], ["study", str(path), "--report"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hftl: error: {path}: 1 point(s) of this study now resolve to another recipe"), err
        assert (
            "point strategy.name=full+llrd, train.seed=0 (trial 1): strategy.llrd.decay: ran with 0.8, now 0.5" in err
        )
        assert "new label" in err and "`name:`" in err and "Traceback" not in err
    assert trainings == [] and db.read_bytes() == stored  # refused before anything was queued or recorded

    # the same setting under a new label is a new value: its point runs, the old one keeps its trial
    write_study(
        axes={"strategy.name": ["feature_extraction", LLRD, {**changed, "label": "llrd-0.5"}], "train.seed": [0]}
    )
    assert main(["study", str(path)]) == 0
    assert trainings == [("full", 0)]


def test_a_removed_value_is_hidden_and_comes_back(write_study, trainings, capsys):
    path = write_study(axes={"strategy.name": ["full"], "train.seed": [0, 1]})
    assert main(["study", str(path)]) == 0
    folder = path.parent / path.stem
    trainings.clear()

    write_study(axes={"strategy.name": ["full"], "train.seed": [0]})
    assert main(["study", str(path)]) == 0
    assert trainings == []
    rows = read_csv(folder / "results.csv")
    assert [(r["train.seed"], r["state"]) for r in rows] == [("0", "COMPLETE")]
    report = (folder / "report.md").read_text()
    assert "1 earlier trial(s) of points no longer in the grid are not shown" in report
    assert "Trials: 1 complete," in report and "| full | 0.5500 | 0.5400 | 1/1 |" in report
    assert "report.md (1 earlier trial(s) of points no longer in the grid not shown)" in capsys.readouterr().out
    assert len(stored_trials(path).trials) == 2  # still in the storage

    write_study(axes={"strategy.name": ["full"], "train.seed": [0, 1]})  # back: shown again, not rerun
    assert main(["study", str(path), "--report"]) == 0
    assert len(read_csv(folder / "results.csv")) == 2
    assert "no longer in the grid" not in (folder / "report.md").read_text()
    assert main(["study", str(path)]) == 0 and trainings == []


def test_a_worker_takes_only_the_points_of_its_own_grid(write_study):
    """A machine still running the smaller grid leaves the points another machine added to it."""
    from hftl.analysis.study_engine import _next_trial
    from hftl.analysis.study_storage import ensure_study, open_storage

    grown = load_study(write_study(axes={"train.seed": [0, 1, 2]}), check=False)
    storage = open_storage(grown)
    ensure_study(grown, storage)
    small = load_study(write_study(axes={"train.seed": [1]}), check=False)
    import optuna

    ostudy = optuna.load_study(study_name=small.name, storage=storage)
    # a machine whose points resolve to another recipe (its recipe file changed under it) takes none of them
    other = load_study(write_study(overrides={**FAST, "train.max_steps": 3}, axes={"train.seed": [0, 1, 2]}))
    assert _next_trial(other, storage, ostudy) is None
    taken = []
    while (trial := _next_trial(small, storage, ostudy)) is not None:
        taken.append(trial.user_attrs["hftl_labels"])
        ostudy.tell(trial, 0.0)
    assert taken == [{"train.seed": 1}]


def _earlier_hftl_storage(study) -> None:
    """The storage an earlier hftl left (its ensure_study and worker, as they were): the grid enqueued
    without digests, each finished trial's labels recorded as categorical Optuna parameters, and only a digest
    of the whole study -- written here from the formula that version used, as an oracle for Study.fingerprint."""
    import optuna

    from hftl.analysis.study_storage import open_storage

    storage = open_storage(study)
    ostudy = optuna.create_study(storage=storage, study_name=study.name, direction=study.direction)
    for labels in study.points:
        ostudy.enqueue_trial(labels, user_attrs={"hftl_key": point_key(labels), "hftl_labels": labels})
    ostudy.set_user_attr("hftl_metric", study.metric)
    exclude = {"description", "jobs", "storage", "output", "timeout_minutes", "keep_models", "name"}
    doc = {"recipe": study.recipe_file.read_text(), "spec": study.spec.model_dump(mode="json", exclude=exclude)}
    ostudy.set_user_attr("hftl_fingerprint", hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16])
    for _ in study.points:
        trial = ostudy.ask()
        for axis in study.axes:
            trial.suggest_categorical(axis.name, [v.label for v in axis.values])
        trial.set_user_attr("hftl_metrics", {"validation.accuracy": 0.5, "test.accuracy": 0.4})
        ostudy.tell(trial, 0.5)


def test_a_storage_of_an_earlier_hftl_is_upgraded_then_grows(write_study, trainings, capsys):
    path = write_study(axes={"strategy.name": ["full", "feature_extraction"], "train.seed": [0]})
    _earlier_hftl_storage(load_study(path))
    assert main(["study", str(path), "--report"]) == 0  # the same study: upgraded in place, nothing trained
    attrs = stored_trials(path).user_attrs
    assert trainings == [] and "hftl_settings" in attrs and len(attrs["hftl_recipes_before"]) == 2
    assert len(read_csv(path.parent / path.stem / "results.csv")) == 2

    # grown on an upgraded storage: only the new points run, beside trials that carry Optuna parameters
    write_study(axes={"strategy.name": ["full", "feature_extraction"], "train.seed": [0, 1]})
    assert main(["study", str(path)]) == 0
    assert sorted(trainings) == [("feature_extraction", 1), ("full", 1)]
    assert len(read_csv(path.parent / path.stem / "results.csv")) == 4


def test_a_changed_study_on_an_earlier_hftl_storage_is_refused_with_the_way_out(write_study, trainings, capsys):
    path = write_study(axes={"strategy.name": ["full"], "train.seed": [0]})
    _earlier_hftl_storage(load_study(path))
    capsys.readouterr()
    write_study(axes={"strategy.name": ["full"], "train.seed": [0, 1]})
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err
    assert "written by an earlier hftl" in err and "--report` once" in err and "Traceback" not in err
    assert trainings == [] and len(stored_trials(path).trials) == 1


# --------------------------------------------------------------------------- identity: the resolved recipe
AXES = {"strategy.name": ["full", "feature_extraction"], "train.seed": [0, 1]}


def recipe_of(study_path: Path) -> Path:
    doc = yaml.safe_load(study_path.read_text())
    return study_path.parent / doc["recipe"]


def edit_recipe(study_path, comment: str = "", **sections) -> None:
    """Rewrite the study's recipe: a comment line on top and/or some sections' keys changed."""
    path = recipe_of(study_path)
    doc = yaml.safe_load(path.read_text())
    for section, keys in sections.items():
        doc[section] = {**doc.get(section, {}), **keys}
    path.write_text(comment + yaml.safe_dump(doc))


def test_a_comment_edit_keeps_every_trial(write_study, trainings):
    path = write_study(axes=AXES)
    assert main(["study", str(path)]) == 0 and len(trainings) == 4
    trainings.clear()
    edit_recipe(path, comment="# a comment that changes no trial\n")
    assert main(["study", str(path)]) == 0
    assert trainings == [] and len(read_csv(path.parent / path.stem / "results.csv")) == 4


def test_a_pinned_recipe_change_keeps_every_trial(write_study, trainings, capsys):
    """The recipe ships BatchNorm eval; the study pins what its trials ran with (the default) and keeps them."""
    path = write_study(axes=AXES)
    assert main(["study", str(path)]) == 0
    trainings.clear()
    db = path.parent / path.stem / "study.db"
    stored = db.read_bytes()
    edit_recipe(path, strategy={"batchnorm": "eval"}, optim={"lr": 1e-3})
    capsys.readouterr()
    for args in (["study", str(path)], ["study", str(path), "--report"]):  # not pinned: refused, nothing written
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hftl: error: {path}: 4 point(s) of this study now resolve to another recipe"), err
        assert "strategy.batchnorm: ran with frozen (the default), now eval" in err, err
        assert "optim.lr: ran with 0.002, now 0.001" in err and "Pin what they ran with" in err, err
        assert "Traceback" not in err
    assert trainings == [] and db.read_bytes() == stored

    # pinned: under overrides for one key, in a rewritten value for the other (same label, same resolved recipe)
    full = {"label": "full", "set": {"strategy.name": "full", "strategy.batchnorm": "frozen"}}
    feature = {"label": "feature_extraction", "set": {"strategy.name": "feature_extraction"}}
    overrides = dict(FAST)
    pinned = {"strategy.name": [full, feature], "train.seed": [0, 1]}
    write_study(overrides={**overrides, "optim.lr": 2e-3}, axes=pinned)
    assert main(["study", str(path)]) == 2  # feature_extraction's BatchNorm is not pinned yet
    assert "point strategy.name=feature_extraction, train.seed=0" in capsys.readouterr().err
    feature["set"]["strategy.batchnorm"] = "frozen"
    write_study(overrides={**overrides, "optim.lr": 2e-3}, axes=pinned)
    assert main(["study", str(path)]) == 0
    assert trainings == [] and len(read_csv(path.parent / path.stem / "results.csv")) == 4

    # a new value runs with the new recipe beside the kept ones
    write_study(
        overrides={**overrides, "optim.lr": 2e-3},
        axes={**pinned, "strategy.name": [full, feature, {"label": "full+bn-eval", "set": {"strategy.name": "full"}}]},
    )
    assert main(["study", str(path)]) == 0
    assert sorted(trainings) == [("full", 0), ("full", 1)]


def test_the_trial_record_is_the_recipe_without_machine_paths(write_study):
    from hftl.analysis.study_identity import recipe_changes, recipe_identity
    from hftl.analysis.study_storage import ensure_study, open_storage

    study = load_study(write_study(axes={"train.seed": [0]}))
    ostudy = ensure_study(study, open_storage(study))
    (trial,) = ostudy.get_trials(deepcopy=False)
    recorded = trial.user_attrs["hftl_recipe"]
    assert recorded == recipe_identity(study.point_recipe({"train.seed": 0}))
    assert (
        trial.user_attrs["hftl_digest"]
        == hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]
    )
    assert recorded["train"]["seed"] == 0 and recorded["train"]["max_steps"] == 2
    # names, description, the run folder and the Hub are not what a trial measures; the source file is not dumped
    assert not {"name", "description", "output", "hub", "source_file"} & set(recorded)
    assert str(study.recipe_file) not in json.dumps(recorded)
    renamed = study.point_recipe({"train.seed": 0}).model_copy(update={"name": "other", "description": "x"})
    assert recipe_identity(renamed) == recorded
    assert recipe_changes({"train": {"seed": 0}}, {"train": {"seed": 1}, "optim": {"lr": 0.1}}) == [
        "optim.lr: ran with 5e-05 (the default), now 0.1",
        "train.seed: ran with 0, now 1",
    ]
    assert recipe_changes({"train": {"ema": {"decay": 0.9}}}, {}) == [
        "train.ema.decay: ran with 0.9, now null (train.ema's default)"
    ]
    assert recipe_changes(None, {}) == ["no record of what it ran with"]


def _previous_hftl_storage(study, finished: int) -> None:
    """The storage the previous hftl left (its ensure_study, as it was): the grid enqueued with each point's
    overrides digest, each value's keys, and digests of the recipe file's TEXT with the study (without its
    axes, and whole) -- written here from the formulas that version used, as an oracle of the upgrade."""
    import optuna

    from hftl.analysis.study_storage import open_storage

    def text_digest(doc) -> str:
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]

    ostudy = optuna.create_study(storage=open_storage(study), study_name=study.name, direction=study.direction)
    for labels in study.points:
        attrs = {
            "hftl_key": point_key(labels),
            "hftl_labels": labels,
            "hftl_digest": text_digest(study.point_sets(labels)),
        }
        ostudy.enqueue_trial(labels, user_attrs=attrs)
    values = {a.name: {json.dumps(v.label): v.sets for v in a.values} for a in study.axes}
    exclude = {"description", "jobs", "storage", "output", "timeout_minutes", "keep_models", "name"}
    text = study.recipe_file.read_text()
    ostudy.set_user_attr("hftl_values", values)
    base = text_digest({"recipe": text, "spec": study.spec.model_dump(mode="json", exclude=exclude | {"axes"})})
    ostudy.set_user_attr("hftl_base_fingerprint", base)
    ostudy.set_user_attr("hftl_metric", study.metric)
    ostudy.set_user_attr(
        "hftl_fingerprint", text_digest({"recipe": text, "spec": study.spec.model_dump(mode="json", exclude=exclude)})
    )
    for _ in range(finished):
        trial = ostudy.ask()  # the queue's first waiting point
        trial.set_user_attr("hftl_metrics", {"validation.accuracy": 0.5, "test.accuracy": 0.4})
        ostudy.tell(trial, 0.5)


def test_a_previous_hftl_storage_is_upgraded_by_report_then_keeps_its_trials(write_study, trainings, capsys):
    path = write_study(axes=AXES)
    _previous_hftl_storage(load_study(path), finished=3)  # 3 finished, 1 waiting
    db = path.parent / path.stem / "study.db"

    # before the upgrade the recipe's text is what identifies the study: a comment is refused, with the way out
    recipe = recipe_of(path)
    text = recipe.read_text()
    recipe.write_text("# a comment\n" + text)
    stored = db.read_bytes()
    assert main(["study", str(path), "--report"]) == 2
    err = capsys.readouterr().err
    assert "written by an earlier hftl" in err and "put the study file and its recipe back" in err, err
    assert "--report` once" in err and db.read_bytes() == stored
    recipe.write_text(text)

    assert main(["study", str(path), "--report"]) == 0  # upgraded in place, nothing trained
    attrs = stored_trials(path).user_attrs
    assert trainings == [] and "hftl_settings" in attrs
    assert sorted(attrs["hftl_recipes_before"]) == sorted(point_key(p) for p in load_study(path).points)

    # now the recipe may change where the study pins it: the 3 finished trials kept, only the waiting one runs
    edit_recipe(path, comment="# BatchNorm eval now\n", strategy={"batchnorm": "eval"})
    assert main(["study", str(path)]) == 2
    assert "strategy.batchnorm: ran with frozen (the default), now eval" in capsys.readouterr().err
    overrides = yaml.safe_load(path.read_text())["overrides"]
    write_study(overrides={**overrides, "strategy.batchnorm": "frozen"}, axes=AXES)
    assert main(["study", str(path)]) == 0
    assert len(trainings) == 1
    rows = read_csv(path.parent / path.stem / "results.csv")
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)


def test_a_search_is_fingerprinted_over_the_parsed_recipe(write_study):
    from hftl.analysis.study_identity import fingerprint
    from hftl.analysis.study_storage import ensure_study, open_storage

    search = {"search": "tpe", "trials": 2, "axes": {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}}
    path = write_study(**search)
    study = load_study(path)
    ensure_study(study, open_storage(study))
    edit_recipe(path, comment="# a comment\n")
    commented = load_study(path)
    assert fingerprint(commented) == fingerprint(study)
    ensure_study(commented, open_storage(commented))  # the same search
    edit_recipe(path, train={"epochs": 5})
    changed = load_study(path)
    with pytest.raises(HftlError, match="with another recipe, axes or metric. A search must not change"):
        ensure_study(changed, open_storage(changed))


def test_a_search_parses_its_base_recipe_once(write_study, monkeypatch):
    """load_study parses the base recipe (with the fixed overrides); the fingerprint, on opening the storage and
    on recording the study, uses that parse instead of reading the recipe file again."""
    from hftl.analysis.study_identity import fingerprint, recipe_identity
    from hftl.analysis.study_storage import ensure_study, open_storage
    from hftl.config import recipe as recipe_module
    from hftl.config.recipe import as_overrides, load_recipe

    path = write_study(search="tpe", trials=2, axes={"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}})
    study = load_study(path)
    assert recipe_identity(study.base) == recipe_identity(load_recipe(study.recipe_file, as_overrides(FAST)))
    before = fingerprint(study)

    def no_parse(*args, **kwargs):
        raise AssertionError("the base recipe was parsed again")

    monkeypatch.setattr(recipe_module, "load_recipe", no_parse)
    assert fingerprint(study) == before
    ensure_study(study, open_storage(study))  # records the study (hftl_fingerprint)
    ensure_study(study, open_storage(study))  # opens it again: the same search

"""Studies: validation before training, grid expansion, resumability after SIGKILL, several workers, reports.

Trials run a tiny random BERT for 2 steps (tests/conftest.py), so a trial is a few seconds, most of it
the runner's fixed costs. The per-trial bookkeeping of the study engine is printed (run with -s).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from hftl.analysis.study import load_study, point_key
from hftl.cli import main
from hftl.config.errors import HftlError
from hftl.config.recipe import to_yaml_text
from hftl.tasks import selection_metric

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
    study = load_study(
        write_study(
            axes={
                "strategy.name": [
                    "full",
                    {"label": "full+llrd", "set": {"strategy.name": "full", "strategy.llrd": {"decay": 0.8}}},
                ],
                "lr_mult": {
                    "values": [
                        {"label": 0.1, "set": {"optim.lr": 1e-5, "optim.head_lr": 1e-4}},
                        {"label": 1.0, "set": {"optim.lr": 1e-4, "optim.head_lr": 1e-4}},
                    ],
                    "kind": "lr_multiplier",
                },
                "train.seed": [0, 1, 2],
            }
        )
    )
    assert len(study.points) == 2 * 2 * 3
    assert study.metric == "validation.accuracy" and study.report == "test.accuracy"
    assert study.direction == "maximize"
    assert [a.kind for a in study.axes] == ["strategy", "lr_multiplier", "seed"]
    overrides = study.trial_overrides({"strategy.name": "full+llrd", "lr_mult": 0.1, "train.seed": 2})
    assert (
        'strategy.llrd={"decay": 0.8}' in overrides and "optim.lr=1.0e-05" in overrides and "train.seed=2" in overrides
    )
    from hftl.config.recipe import load_recipe

    recipe = load_recipe(study.recipe_file, overrides)
    assert recipe.optim.lr == 1e-5 and recipe.strategy.llrd.decay == 0.8 and recipe.train.max_steps == 2
    assert len({point_key(p) for p in study.points}) == len(study.points)


@pytest.mark.parametrize("value", [1e-05, 3.0e20, 0.1, 5, True, None, "1e-4", "full", [1, 2.5e-7], {"a": 1e-9}])
def test_override_text_reads_back_as_the_same_value(value):
    from hftl.config.recipe import apply_overrides

    assert apply_overrides({}, [f"k={to_yaml_text(value)}"])["k"] == value


BAD = {
    "bad-axis-key": ({"axes": {"train.seeed": [0, 1]}}, "axis 'train.seeed', value 0", "Did you mean 'seed'?"),
    "bad-value": (
        {"axes": {"strategy.name": ["full", "fulll"]}},
        "axis 'strategy.name', value 'fulll'",
        "unknown strategy 'fulll'",
    ),
    "bad-number": ({"axes": {"optim.lr": [1e-3, -1]}}, "axis 'optim.lr', value -1", "greater than 0"),
    "bad-study-key": ({"axess": {}}, "key 'axess' is not allowed", "Did you mean 'axes'?"),
    "range-in-grid": (
        {"axes": {"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True}}},
        "axis 'optim.lr' is a range",
        "search: tpe",
    ),
    "tpe-without-budget": ({"search": "tpe"}, "needs a budget", "trials: N"),
    "pruned-grid": ({"pruner": "median"}, "pruner applies to search: tpe", ""),
    "reserved-key": ({"overrides": {"output.dir": "x"}}, "key 'output.dir' is set by the study", ""),
    "bad-metric": ({"metric": "accuracy"}, "key 'metric'", "validation.accuracy"),
    "test-chooses": ({"metric": "test.accuracy"}, "chooses on validation and reports on test", "'report:'"),
    "bad-report": ({"report": "accuracy"}, "key 'report'", "test.accuracy"),
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
    with pytest.raises(
        HftlError, match=r"point optim.head_lr=0.001, strategy.discriminative=.*head_lr would be ignored"
    ):
        load_study(path)
    # a value that fails alone is named alone
    path = write_study(axes={"strategy.name": ["full"], "strategy.partial": [{"freeze_groups": 1}]})
    with pytest.raises(HftlError, match=r"axis 'strategy.partial', value '\{\"freeze_groups\": 1\}'.*only applies"):
        load_study(path)


def test_tpe_validates_each_value_and_range_end(write_study):
    study = load_study(
        write_study(
            search="tpe", trials=3, axes={"optim.lr": {"low": 1e-5, "high": 1e-2, "log": True}, "train.seed": [0]}
        )
    )
    assert study.points == [] and study.axes[0].is_range
    with pytest.raises(HftlError, match=r"axis 'optim.lr', value 0.0"):
        load_study(write_study(search="tpe", trials=3, axes={"optim.lr": {"low": 0.0, "high": 1e-2}}))


def test_shipped_studies_validate():
    shipped = sorted((ROOT / "studies").glob("*.yaml"))
    assert len(shipped) >= 8
    for path in shipped:  # every one: validates, chooses on validation, reports test, on its task's metric
        study = load_study(path)
        metric = selection_metric(study.base)  # accuracy; entity F1 for NER (wnut-strategies)
        assert study.points and (study.metric, study.report) == (f"validation.{metric}", f"test.{metric}"), path.name
        assert metric in ("accuracy", "f1"), path.name
    # text: 6-7 strategies (LoRA, scratch; full+llrd on BBC News) x 4 sizes x 3 seeds, MNIST 6; Fashion-MNIST at
    # 1,000: 4 x 3; shift: 3 x 4 x 2
    assert len(load_study(ROOT / "studies" / "sentiment-strategies.yaml").points) == 6 * 4 * 3
    assert len(load_study(ROOT / "studies" / "bbc-strategies.yaml").points) == 7 * 4 * 3
    assert len(load_study(ROOT / "studies" / "mnist-strategies.yaml").points) == 6 * 4 * 3  # no full+llrd (60 min)
    assert len(load_study(ROOT / "studies" / "fashion-mnist-1k.yaml").points) == 6 * 3  # + feature_extraction+stages
    assert len(load_study(ROOT / "studies" / "domain-shift.yaml").points) == 3 * 4 * 2  # seeds x severities x arms
    assert len(load_study(ROOT / "studies" / "lr-multiplier.yaml").points) == 5 * 3
    assert len(load_study(ROOT / "studies" / "wnut-strategies.yaml").points) == 3 * 6  # the full size only
    # seeds outermost: a part stopped early leaves whole seeds
    for name in ("domain-shift", "lr-multiplier", "mnist-strategies", "wnut-strategies"):
        assert load_study(ROOT / "studies" / f"{name}.yaml").axes[0].name == "train.seed", name


# --------------------------------------------------------------------------- running
def completed_points(rows: list[dict[str, str]], axes=("strategy.name", "train.seed")) -> list[tuple]:
    return sorted(tuple(r[a] for a in axes) for r in rows if r["state"] == "COMPLETE")


@pytest.mark.slow
def test_tiny_grid_runs_every_point_once_and_reports(write_study, capsys, monkeypatch):
    path = write_study()
    monkeypatch.chdir(path.parent)  # run from the study's folder, as from a repository's root
    assert main(["study", str(path)]) == 0
    capsys.readouterr()
    folder = path.parent / path.stem
    rows = read_csv(folder / "results.csv")
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    assert completed_points(rows) == [
        ("feature_extraction", "0"),
        ("feature_extraction", "1"),
        ("full", "0"),
        ("full", "1"),
    ]
    for r in rows:  # each row is its trial's own final metrics
        final = json.loads((folder / "trials" / r["trial"] / "metrics.json").read_text())
        assert float(r["test.accuracy"]) == pytest.approx(final["test"]["accuracy"])
        assert float(r["validation.accuracy"]) == pytest.approx(final["validation"]["accuracy"])
        # the cost breakdown: every part timed, together no more than the run itself
        parts = {p: float(r[f"seconds.{p}"]) for p in ("load", "tokenize", "model", "train", "validate", "final_eval")}
        assert parts == pytest.approx({p: final["seconds"][p] for p in parts}, abs=0.01)
        assert all(v >= 0 for v in parts.values()) and parts["train"] > 0 and parts["final_eval"] > 0
        assert sum(parts.values()) <= float(r["run_seconds"])
        assert float(r["train_seconds"]) == pytest.approx(final["train_seconds"])
    # the worker encodes each (data, seed) once: the feature_extraction trials reuse the full trials' data
    assert [r["strategy.name"] for r in rows] == ["full", "full", "feature_extraction", "feature_extraction"]
    assert [float(r["seconds.tokenize"]) == 0.0 for r in rows] == [False, False, True, True]
    # a trial keeps what the report needs, not the weights; what it would delete it never wrote (no card, no states)
    kept = {p.name for p in (folder / "trials" / "0").iterdir()}
    assert {"metrics.json", "plan.json", "recipe.yaml", "metrics.jsonl"} <= kept, kept
    assert not kept & {"model.safetensors", "checkpoints", "best", "config.json", "README.md"}, kept
    trial_recipe = yaml.safe_load((folder / "trials" / "0" / "recipe.yaml").read_text())
    assert trial_recipe["output"]["resumable"] is False and trial_recipe["output"]["card"] is False
    report = (folder / "report.md").read_text()
    assert "| full | " in report and "2/2" in report
    assert "| strategy.name | validation.accuracy | test.accuracy | n |" in report, report
    assert "Selection on validation, report on test" in report
    assert "## Cost breakdown" in report and "| all trials | 4 |" in report, report
    # paths as typed from where the study ran, not this machine's folders
    assert f"hftl study {path.name} --report" in report and f"sqlite:///{path.stem}/study.db" in report
    assert str(path.parent) not in report
    overhead = [float(r["overhead_seconds"]) for r in rows]
    run = [float(r["run_seconds"]) for r in rows]
    with capsys.disabled():
        print(
            f"\n[measure] per-trial study overhead {min(overhead):.3f}-{max(overhead):.3f} s "
            f"(median {sorted(overhead)[2]:.3f} s); hftl.training.train.run "
            f"{min(run):.1f}-{max(run):.1f} s per 2-step trial"
        )
    # rerunning a finished study trains nothing
    assert main(["study", str(path)]) == 0
    assert "[study] trial" not in capsys.readouterr().out
    assert read_csv(folder / "results.csv") == rows


def test_failed_trial_is_recorded_and_the_others_go_on(write_study, capsys):
    # a column that is not in the data fails at run time (validation cannot know the data's columns)
    path = write_study(axes={"data.columns": [{}, {"text": "no_such_column"}], "train.seed": [0]})
    assert main(["study", str(path)]) == 1
    rows = read_csv(path.parent / path.stem / "results.csv")
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL"]
    assert "no_such_column" in rows[1]["error"] and rows[0]["error"] == ""
    assert "## Failed trials" in (path.parent / path.stem / "report.md").read_text()


@pytest.mark.slow
def test_report_rebuilds_from_storage_without_training(write_study, capsys, monkeypatch):
    path = write_study(axes={"data.max_train_samples": [40, 80], "strategy.name": ["full"], "train.seed": [0, 1]})
    assert main(["study", str(path)]) == 0
    folder = path.parent / path.stem
    before = read_csv(folder / "results.csv")
    for name in ("results.csv", "report.md", "metric_vs_data_size.png"):
        (folder / name).unlink()
    capsys.readouterr()
    monkeypatch.setattr("hftl.training.train.run", lambda *a, **k: pytest.fail("--report must not train"))
    assert main(["study", str(path), "--report"]) == 0
    assert read_csv(folder / "results.csv") == before
    assert (folder / "metric_vs_data_size.png").stat().st_size > 1000
    assert "| 40 | full |" in (folder / "report.md").read_text()
    assert "[study] trial" not in capsys.readouterr().out


def _wait_for(condition, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, "the study ended before the condition held"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.distributed  # launches processes (about 2 min)
def test_sigkill_then_rerun_runs_only_unfinished_trials(write_study, tmp_path, capsys):
    axes = {"strategy.name": ["full"], "train.seed": [0, 1, 2]}  # three points: one done, one killed, one not begun
    reference = write_study(name="reference", axes=axes)
    assert main(["study", str(reference)]) == 0
    expected = read_csv(reference.parent / reference.stem / "results.csv")
    capsys.readouterr()

    path = write_study(name="killed", axes=axes)
    folder = path.parent / path.stem
    proc = hftl_study(str(path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # kill it while trial 1 runs, after trial 0 has finished
        _wait_for(lambda: (folder / "results.csv").exists() and (folder / "trials" / "1").is_dir(), 300, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = [r for r in read_csv(folder / "results.csv") if r["state"] == "COMPLETE"]
    assert len(done_before) == 1

    assert main(["study", str(path)]) == 0
    out = capsys.readouterr().out
    ran = [line for line in out.splitlines() if line.startswith("[study] trial") and line.endswith("running")]
    assert len(ran) == 2, out  # the killed trial again, and the one that never started; not trial 0
    rows = read_csv(folder / "results.csv")
    assert completed_points(rows) == completed_points(expected) and len(rows) == len(expected)
    assert [r["attempts"] for r in rows].count("2") == 1  # the killed trial, run again as a new trial
    by_point = {(r["strategy.name"], r["train.seed"]): r["test.accuracy"] for r in rows}
    assert by_point == {(r["strategy.name"], r["train.seed"]): r["test.accuracy"] for r in expected}


@pytest.mark.slow
@pytest.mark.distributed  # launches worker processes (about 2 min)
def test_two_workers_run_every_trial_exactly_once(write_study, capsys):
    path = write_study()  # 4 points for 2 workers
    assert main(["study", str(path), "--jobs", "2"]) == 0
    rows = read_csv(path.parent / path.stem / "results.csv")
    assert len(rows) == 4 and all(r["state"] == "COMPLETE" for r in rows)
    assert len(completed_points(rows)) == len(set(completed_points(rows))) == 4
    import optuna

    trials = optuna.load_study(
        study_name="toy-study", storage=f"sqlite:///{path.parent / path.stem / 'study.db'}"
    ).trials
    assert len(trials) == 4  # no extra trial was created
    workers = {t.user_attrs["hftl_worker"]["pid"] for t in trials}
    with capsys.disabled():
        print(f"\n[measure] --jobs 2: 4 trials taken by {len(workers)} worker process(es)")


def _pop_all(url: str, folder: str, out: multiprocessing.Queue) -> None:
    from hftl.analysis.study_engine import _next_trial
    from hftl.analysis.study_storage import open_storage, storage_lock

    study = _POP_STUDY
    storage = open_storage(study)
    import optuna

    ostudy = optuna.load_study(study_name=study.name, storage=storage)
    taken = []
    while True:
        with storage_lock(study):
            trial = _next_trial(study, storage, ostudy)
        if trial is None:
            break
        taken.append(trial.number)
        ostudy.tell(trial, 0.0)
    out.put(taken)


_POP_STUDY = None


def test_concurrent_pops_never_hand_out_a_point_twice(write_study):
    """Four processes race to pop 40 enqueued grid points (no training): each point goes to exactly one."""
    import multiprocessing

    from hftl.analysis.study_storage import ensure_study, open_storage

    global _POP_STUDY
    study = load_study(write_study(axes={"train.seed": list(range(40))}), check=False)
    study.points = [{"train.seed": s} for s in range(40)]
    ensure_study(study, open_storage(study))
    _POP_STUDY = study
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_pop_all, args=(study.storage_url, str(study.folder), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    taken = [n for _ in procs for n in queue.get(timeout=120)]
    for p in procs:
        p.join()
    assert sorted(taken) == list(range(40))


def test_a_changed_study_is_refused_on_an_existing_storage(write_study):
    """A grid's trials may not change recipe, nor the study its settings (tests/test_study_extend.py: the axes
    may change); a search not at all."""
    from hftl.analysis.study_storage import ensure_study, open_storage

    path = write_study()
    study = load_study(path)
    ensure_study(study, open_storage(study))
    ensure_study(study, open_storage(study))  # the same study loads again
    changed = load_study(write_study(overrides={**FAST, "train.max_steps": 3}))  # every point's recipe changes
    with pytest.raises(HftlError, match=r"4 point\(s\) of this study now resolve to another recipe"):
        ensure_study(changed, open_storage(changed))
    with pytest.raises(HftlError, match="train.max_steps: ran with 2, now 3"):
        ensure_study(changed, open_storage(changed))
    changed = load_study(write_study(metric="validation.loss"))
    with pytest.raises(HftlError, match="with another metric, direction or search settings"):
        ensure_study(changed, open_storage(changed))

    search = {"search": "tpe", "trials": 2, "name": "search"}
    tpe = load_study(write_study(**search, axes={"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}))
    ensure_study(tpe, open_storage(tpe))
    grown = load_study(write_study(**search, axes={"optim.lr": {"low": 1e-5, "high": 1e-2, "log": True}}))
    with pytest.raises(HftlError, match="already holds a study named 'search' with another recipe, axes or metric"):
        ensure_study(grown, open_storage(grown))


def synthetic_axis(name: str, kind: str, labels: list):
    from hftl.analysis.study import Axis, AxisValue

    return Axis(name, kind, values=tuple(AxisValue(v, {name: v}) for v in labels))


def synthetic_study(folder, axes: list, metric: str, report: str | None = None):
    """A Study over made-up axes, for the report code alone (its base: the shipped sentiment recipe; nothing trains)."""
    from hftl.analysis.study import Study, StudySpec
    from hftl.config.recipe import load_recipe

    spec = StudySpec(recipe="r.yaml", axes={"x": [1]})
    base = load_recipe(ROOT / "recipes" / "sentiment.yaml")
    return Study(folder / "s.yaml", spec, "s", folder, folder / "r.yaml", base, axes, metric, "maximize", report)


def test_lr_multiplier_and_transfer_gain_plots_from_cells(tmp_path):
    """The plots chosen by axis kinds, on synthetic cells (model.pretrained / data.shift are not recipe keys yet)."""
    from hftl.analysis.study_report import write_plots

    axes = [
        synthetic_axis("lr", "lr_multiplier", [0, 0.1, 1.0]),
        synthetic_axis("model.pretrained", "pretrained", [True, False]),
        synthetic_axis("data.shift.severity", "shift_severity", [0, 3, 5]),
        synthetic_axis("train.seed", "seed", [0, 1]),
    ]
    study = synthetic_study(tmp_path, axes, "test.accuracy")
    cells = [
        {
            "labels": {"lr": lr, "model.pretrained": p, "data.shift.severity": s},
            "n": 2,
            "total": 2,
            "mean": 0.5 + 0.1 * p - 0.02 * s + lr / 10,
            "std": 0.01,
            "train_seconds": 1.0,
        }
        for lr in (0, 0.1, 1.0)
        for p in (True, False)
        for s in (0, 3, 5)
    ]
    assert write_plots(study, cells) == ["metric_vs_lr_multiplier.png", "transfer_gain_vs_shift.png"]
    assert all((tmp_path / name).stat().st_size > 1000 for name in write_plots(study, cells))


def test_best_cell_is_chosen_on_validation_and_test_only_reported(tmp_path):
    """Validation and test disagree on purpose: the pick follows validation, the test mean is only shown."""
    from hftl.analysis.study_report import best_cells, cell_stats

    axes = [
        synthetic_axis("data.max_train_samples", "data_size", [100]),
        synthetic_axis("strategy.name", "strategy", ["a", "b"]),
        synthetic_axis("train.seed", "seed", [0, 1]),
    ]
    study = synthetic_study(tmp_path, axes, "validation.accuracy", "test.accuracy")
    scores = {"a": (0.80, 0.60), "b": (0.70, 0.90)}  # (validation, test): a wins on validation, b on test
    rows = [
        {
            "state": "COMPLETE",
            "data.max_train_samples": 100,
            "strategy.name": name,
            "train.seed": seed,
            "validation.accuracy": val + seed / 100,
            "test.accuracy": test + seed / 100,
            "train_seconds": 1.0,
        }
        for name, (val, test) in scores.items()
        for seed in (0, 1)
    ]
    cells = cell_stats(study, rows)
    [best] = best_cells(study, cells, "data.max_train_samples")
    assert best["labels"]["strategy.name"] == "a"
    assert best["mean"] == pytest.approx(0.805) and best["report_mean"] == pytest.approx(0.605)


def test_cells_follow_the_grid_not_the_trial_numbers(tmp_path):
    """A trial run again after a stop gets a later number; its cell still comes in the grid's place."""
    import itertools

    from hftl.analysis.study_report import cell_stats

    axes = [
        synthetic_axis("strategy.name", "strategy", ["a", "b", "c"]),
        synthetic_axis("train.seed", "seed", [0]),
    ]
    study = synthetic_study(tmp_path, axes, "validation.accuracy")
    study.points = [{"strategy.name": n, "train.seed": s} for n, s in itertools.product(["a", "b", "c"], [0])]
    rows = [  # trial order: a, c, then b (b's first attempt was stopped and queued again)
        {"state": "COMPLETE", "strategy.name": n, "train.seed": 0, "validation.accuracy": 0.5, "train_seconds": 1.0}
        for n in ("a", "c", "b")
    ]
    assert [c["labels"]["strategy.name"] for c in cell_stats(study, rows)] == ["a", "b", "c"]


def test_a_worker_prepares_each_data_and_seed_once(text_recipe, monkeypatch):
    """reuse_prepared_data: trials that differ in strategy / LRs / random weights share the encoded data; another
    seed or size is encoded again; a split a run adds (train.eval_sample) does not leak into the next trial."""
    from hftl import tasks
    from hftl.config.recipe import load_recipe

    path = text_recipe()
    encodes = []
    real = tasks.TASKS.get("text-classification").encode

    def counting(*args, **kwargs):
        encodes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(type(tasks.TASKS.get("text-classification")), "encode", staticmethod(counting), raising=False)
    with tasks.reuse_prepared_data():
        first = tasks.prepare_data(load_recipe(path, ["strategy.name=full"]))
        first.encoded["validation_sample"] = first.encoded["validation"].select([0])
        again = tasks.prepare_data(load_recipe(path, ["strategy.name=feature_extraction", "optim.lr=1e-3"]))
        scratch = tasks.prepare_data(load_recipe(path, ["model.pretrained=false"]))
        other_seed = tasks.prepare_data(load_recipe(path, ["train.seed=1"]))
    outside = tasks.prepare_data(load_recipe(path))
    assert len(encodes) == 3  # first, other seed, outside the block
    assert again.seconds == {"load": 0.0, "tokenize": 0.0} == scratch.seconds and first.seconds["tokenize"] > 0
    assert "validation_sample" not in again.encoded
    for split in first.encoded:
        if split != "validation_sample":
            assert (
                again.encoded[split]["input_ids"]
                == first.encoded[split]["input_ids"]
                == outside.encoded[split]["input_ids"]
            )
    assert other_seed.encoded["train"]["input_ids"] != first.encoded["train"]["input_ids"]


def test_a_search_prunes_trials_on_their_validation_curve(write_study, monkeypatch, capsys):
    """pruner: median feeds each evaluation during training to Optuna; a trial it prunes stops at that evaluation."""
    import optuna

    calls = []

    def always(self):
        calls.append(self.number)
        return True

    monkeypatch.setattr(optuna.Trial, "should_prune", always)
    path = write_study(
        search="tpe",
        trials=2,
        pruner="median",
        overrides={**FAST, "train.max_steps": 6, "train.eval_steps": 2},
        axes={"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
    )
    handler = signal.getsignal(signal.SIGTERM)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["study", str(path)]) == 0
    assert not [w for w in caught if "Heartbeat" in str(w.message)]  # hftl's loop records the heartbeats itself
    assert signal.getsignal(signal.SIGTERM) is handler  # a pruned run gives the signals back
    folder = path.parent / path.stem
    rows = read_csv(folder / "results.csv")
    assert [r["state"] for r in rows] == ["PRUNED", "PRUNED"] and calls == [0, 1]  # each stopped at its first eval
    log = [json.loads(line) for line in (folder / "trials" / "0" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in log if "validation" in r) == 2 and not any("final" in r for r in log)
    assert "2 pruned" in (folder / "report.md").read_text()

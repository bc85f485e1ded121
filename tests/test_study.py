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
from pathlib import Path

import pytest
import yaml

from hftl.analysis.study import load_study, point_key, to_yaml_text
from hftl.cli import main
from hftl.config.errors import HftlError

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
    assert study.metric == "test.accuracy" and study.direction == "maximize"
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
    for name in (
        "sentiment-strategies.yaml",
        "fashion-mnist-strategies.yaml",
        "lr-multiplier.yaml",
        "domain-shift.yaml",
    ):
        study = load_study(ROOT / "studies" / name)
        assert study.points and study.metric == "test.accuracy", name
    # 6 strategies (scratch included) x sizes x 3 seeds; the shift study: pretrained/scratch x 6 severities x 3 seeds
    assert len(load_study(ROOT / "studies" / "sentiment-strategies.yaml").points) == 6 * 4 * 3
    assert len(load_study(ROOT / "studies" / "fashion-mnist-strategies.yaml").points) == 6 * 3 * 3
    assert len(load_study(ROOT / "studies" / "domain-shift.yaml").points) == 2 * 6 * 3
    assert len(load_study(ROOT / "studies" / "lr-multiplier.yaml").points) == 5 * 3


# --------------------------------------------------------------------------- running
def completed_points(rows: list[dict[str, str]], axes=("strategy.name", "train.seed")) -> list[tuple]:
    return sorted(tuple(r[a] for a in axes) for r in rows if r["state"] == "COMPLETE")


def test_tiny_grid_runs_every_point_once_and_reports(write_study, capsys):
    path = write_study()
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
        assert float(r["train_seconds"]) == pytest.approx(final["train_seconds"])
    # a trial keeps what the report needs, not the weights
    kept = {p.name for p in (folder / "trials" / "0").iterdir()}
    assert {"metrics.json", "plan.json", "recipe.yaml", "metrics.jsonl", "README.md"} <= kept, kept
    assert not kept & {"model.safetensors", "checkpoints", "best", "config.json"}, kept
    report = (folder / "report.md").read_text()
    assert "| full | " in report and "2/2" in report and "optuna-dashboard sqlite:///" in report
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


@pytest.mark.distributed  # launches processes (about 2 min)
def test_sigkill_then_rerun_runs_only_unfinished_trials(write_study, tmp_path, capsys):
    reference = write_study(name="reference")
    assert main(["study", str(reference)]) == 0
    expected = read_csv(reference.parent / reference.stem / "results.csv")
    capsys.readouterr()

    path = write_study(name="killed")
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
    assert len(ran) == 3, out  # the killed trial again, and the two that never started; not trial 0
    rows = read_csv(folder / "results.csv")
    assert completed_points(rows) == completed_points(expected) and len(rows) == len(expected)
    assert [r["attempts"] for r in rows].count("2") == 1  # the killed trial, run again as a new trial
    by_point = {(r["strategy.name"], r["train.seed"]): r["test.accuracy"] for r in rows}
    assert by_point == {(r["strategy.name"], r["train.seed"]): r["test.accuracy"] for r in expected}


@pytest.mark.distributed  # launches worker processes (about 2 min)
def test_two_workers_run_every_trial_exactly_once(write_study, capsys):
    path = write_study(axes={"strategy.name": ["full", "feature_extraction"], "train.seed": [0, 1, 2]})
    assert main(["study", str(path), "--jobs", "2"]) == 0
    rows = read_csv(path.parent / path.stem / "results.csv")
    assert len(rows) == 6 and all(r["state"] == "COMPLETE" for r in rows)
    assert len(completed_points(rows)) == len(set(completed_points(rows))) == 6
    import optuna

    trials = optuna.load_study(
        study_name="toy-study", storage=f"sqlite:///{path.parent / path.stem / 'study.db'}"
    ).trials
    assert len(trials) == 6  # no extra trial was created
    workers = {t.user_attrs["hftl_worker"]["pid"] for t in trials}
    with capsys.disabled():
        print(f"\n[measure] --jobs 2: 6 trials taken by {len(workers)} worker process(es)")


def _pop_all(url: str, folder: str, out: multiprocessing.Queue) -> None:
    from hftl.analysis.study_engine import _next_trial, open_storage, storage_lock

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

    from hftl.analysis.study_engine import ensure_study, open_storage

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
    from hftl.analysis.study_engine import ensure_study, open_storage

    path = write_study()
    study = load_study(path)
    ensure_study(study, open_storage(study))
    ensure_study(study, open_storage(study))  # the same study loads again
    changed = load_study(write_study(axes={"strategy.name": ["full"], "train.seed": [0, 1]}))
    with pytest.raises(HftlError, match="already holds a study named 'toy-study' with another recipe"):
        ensure_study(changed, open_storage(changed))


def test_lr_multiplier_and_transfer_gain_plots_from_cells(tmp_path):
    """The plots chosen by axis kinds, on synthetic cells (model.pretrained / data.shift are not recipe keys yet)."""
    from hftl.analysis.study import Axis, AxisValue, Study, StudySpec
    from hftl.analysis.study_report import write_plots

    def axis(name, kind, labels):
        return Axis(name, kind, values=tuple(AxisValue(v, {name: v}) for v in labels))

    study = Study(
        tmp_path / "s.yaml",
        StudySpec(recipe="r.yaml", axes={"x": [1]}),
        "s",
        tmp_path,
        tmp_path / "r.yaml",
        [
            axis("lr", "lr_multiplier", [0, 0.1, 1.0]),
            axis("model.pretrained", "pretrained", [True, False]),
            axis("data.shift.severity", "shift_severity", [0, 3, 5]),
            axis("train.seed", "seed", [0, 1]),
        ],
        "test.accuracy",
        "maximize",
    )
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

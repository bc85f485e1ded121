"""benchmarks/advisor_agreement.py and advisor_thresholds.py: the verdicts, the threshold crossings, the README block
(synthetic results.csv rows and cached advisor measurements; no model is loaded or trained)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_study_results

import hftl.analysis.advise  # noqa: F401  (imported before any test patches FEW_EXAMPLES: its SAMPLE is read once)
from hftl.analysis import advice_rules

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import advisor_agreement as agreement  # noqa: E402
import advisor_thresholds as thresholds  # noqa: E402
import study_tables  # noqa: E402


def cell(label: str, val: float, tests: list[float]) -> dict:
    """A cell as hftl.analysis.study_report.cell_stats gives it (validation mean, test values over seeds)."""
    mean = sum(tests) / len(tests) if tests else math.nan
    std = math.sqrt(sum((t - mean) ** 2 for t in tests) / (len(tests) - 1)) if len(tests) > 1 else 0.0
    n = len(tests)
    return {"labels": {"s": label}, "n": n, "mean": val, "reported": tests, "report_mean": mean, "report_std": std}


# --------------------------------------------------------------------------- verdicts
def test_within_one_point_of_the_best_agrees():
    cells = [cell("fe", 0.80, [0.80, 0.80, 0.80]), cell("full", 0.70, [0.795, 0.795, 0.795])]
    found = agreement.judge(cells, "s", "full")
    assert found["best"] == "fe" and found["agrees"] is True and found["worst"] is True  # 0.5 points behind
    assert found["best_test"] == pytest.approx(0.80) and found["advised_test"] == pytest.approx(0.795)


def test_more_than_a_point_behind_disagrees_unless_within_one_standard_error():
    tight = [cell("fe", 0.9, [0.80, 0.80, 0.80]), cell("full", 0.7, [0.78] * 3), cell("scratch", 0.6, [0.5] * 3)]
    found = agreement.judge(tight, "s", "full")
    assert found["agrees"] is False and found["worst"] is False and found["best_se"] == pytest.approx(0.0)
    # the best cell's test mean 0.80 with std 0.05 over 3 seeds: SE 0.0289, so 2 points behind is within it
    noisy = [cell("fe", 0.9, [0.75, 0.80, 0.85]), cell("full", 0.7, [0.78] * 3), cell("scratch", 0.6, [0.5] * 3)]
    found = agreement.judge(noisy, "s", "full")
    assert found["best_se"] == pytest.approx(0.05 / math.sqrt(3))
    assert found["agrees"] is True


def test_the_best_is_chosen_on_validation_not_test():
    # fe has the better test mean but the worse validation mean: full is the best, fe agrees by being ahead of it
    cells = [cell("fe", 0.6, [0.9, 0.9]), cell("full", 0.7, [0.7, 0.7]), cell("scratch", 0.5, [0.6, 0.6])]
    found = agreement.judge(cells, "s", "scratch")
    assert found["best"] == "full" and found["agrees"] is False and found["worst"] is True
    assert agreement.judge(cells, "s", "fe")["agrees"] is True


def test_not_measured_when_the_advised_cell_is_missing_or_has_one_seed_or_nothing_to_compare():
    cells = [cell("fe", 0.8, [0.8, 0.8, 0.8]), cell("full", 0.9, [0.9]), cell("lora", 0.9, [])]
    assert agreement.judge(cells, "s", None)["agrees"] is None  # not one of the study's strategies
    one_seed = agreement.judge(cells, "s", "full")
    assert one_seed["agrees"] is None and "fewer than 2 seeds" in one_seed["why"]
    alone = agreement.judge(cells, "s", "fe")
    assert alone["agrees"] is None and "no other strategy" in alone["why"] and alone["compared"] == 1


def test_minimising_studies_turn_the_comparisons_round():
    cells = [cell("a", 0.2, [0.30, 0.30]), cell("b", 0.1, [0.10, 0.10])]  # losses: b is best, a the worst
    found = agreement.judge(cells, "s", "a", maximize=False)
    assert found["best"] == "b" and found["agrees"] is False and found["worst"] is True


def test_share_counts_only_measured_cells_and_names_the_goal():
    rows = [
        agreement.Verdict("d", "100", "full", agrees=True, compared=2, strategies=2),
        agreement.Verdict("d", "1000", "full", agrees=True, compared=2, strategies=3),
        agreement.Verdict("d", "4000", "full", agrees=False, compared=3, strategies=3),
        agreement.Verdict("d", "10000", "full"),
    ]
    text = agreement.share(rows)
    assert "**2 of 3**" in text and "(67%)" in text and "not met" in text and "1 cell(s) not measured" in text
    assert "2 of the 3 compared every strategy" in text
    assert "goal (>= 80%, never the worst): met" in agreement.share(rows[:2])


# --------------------------------------------------------------------------- threshold crossings
def test_crossing_interpolates_in_log_size_at_the_first_sign_change():
    found = thresholds.crossing([(1000, 0.02), (100, -0.02), (4000, -0.01)])  # unsorted on purpose
    assert found.kind == "between" and found.sizes == (100, 1000)
    assert found.value == pytest.approx(math.sqrt(100 * 1000))  # half-way in log size
    third = thresholds.crossing([(100, -0.03), (1000, 0.01)])
    assert third.value == pytest.approx(10 ** (2 + 0.75))
    assert thresholds.crossing([(100, 0.0), (1000, 0.05)]).value == pytest.approx(100)  # a tie is not ahead


def test_crossing_bounds_when_no_sign_change_lies_between_measured_sizes():
    assert thresholds.crossing([(100, 0.01), (1000, 0.02)]).text() == "< 100 (ahead at every measured size)"
    assert thresholds.crossing([(100, -0.01), (4000, -0.02)]).text() == "> 4,000 (never ahead)"
    assert thresholds.crossing([]).kind == "none"
    crossings = [
        thresholds.DatasetCrossing("a", thresholds.crossing([(100, -1), (10000, 1)]), ""),
        thresholds.DatasetCrossing("b", thresholds.crossing([(100, 1)]), ""),
        thresholds.DatasetCrossing("c", thresholds.crossing([(1000, -1), (4000, 1)]), ""),
        thresholds.DatasetCrossing("d", thresholds.crossing([(100, -1), (400, 1)]), ""),
    ]
    # 1,000, 2,000 and 200; b a bound
    assert thresholds.summarise(crossings) == "median 1,000 over 3 dataset(s) (bounds only: b < 100)"
    assert thresholds.summarise(crossings[1:2]) == "not placed between measured sizes (bounds only: b < 100)"


def test_separating_interval_for_the_feature_thresholds():
    points = [(0.95, True, "a"), (0.7, False, "b"), (0.8, True, "c")]
    assert thresholds.separating(points, fe_when_high=True) == "between 0.700 (b) and 0.800 (c)"
    assert thresholds.separating([(0.9, False, "x"), (0.8, True, "y")], fe_when_high=True).startswith(
        "no value separates them (x at 0.900 vs y at 0.800)"
    )
    gaps = [(0.05, False, "lost"), (-0.02, True, "held")]
    assert thresholds.separating(gaps, fe_when_high=False) == "between -0.020 (held) and 0.050 (lost)"


# --------------------------------------------------------------------------- a whole study, from results.csv
@pytest.fixture
def toy_study(tmp_path, text_recipe):
    """studies/toy.yaml (4 strategies x sizes 10 / 20 x 2 seeds) and its results.csv."""
    studies, docs = tmp_path / "studies", tmp_path / "docs"
    studies.mkdir()
    (docs / "toy").mkdir(parents=True)
    strategies = [
        {"label": "fe", "set": {"strategy.name": "feature_extraction"}},
        {"label": "half", "set": {"strategy.name": "partial", "strategy.partial": {"freeze_fraction": 0.5}}},
        {"label": "full+llrd", "set": {"strategy.name": "full", "strategy.llrd": {"decay": 0.8}}},
        "full",
        {"label": "scratch", "set": {"strategy.name": "full", "model.pretrained": False}},
    ]
    doc = {"recipe": str(text_recipe()), "axes": {"data.max_train_samples": [10, 20], "strategy.name": strategies}}
    doc["axes"]["train.seed"] = [0, 1]
    (studies / "toy.yaml").write_text(yaml.safe_dump(doc))
    scores = {  # (validation, test) per (strategy, size); partial never ran at 20
        ("fe", 10): (0.8, 0.8),
        ("half", 10): (0.7, 0.7),
        ("full+llrd", 10): (0.6, 0.6),
        ("full", 10): (0.6, 0.6),
        ("scratch", 10): (0.5, 0.5),
        ("fe", 20): (0.7, 0.895),  # within a point of full on test, 20 points behind on validation
        ("full+llrd", 20): (0.85, 0.85),
        ("full", 20): (0.9, 0.9),
        ("scratch", 20): (0.5, 0.5),
    }
    write_study_results(docs / "toy" / "results.csv", scores, test_spread=0.001)
    return studies, docs


def measured(n_train: int, probe: float, baseline: float, majority: float = 0.5) -> dict:
    """A cache entry as --measure writes it, with chosen measurements (today's table decides from them)."""
    m = {"n_train": n_train, "majority": majority, "probe_accuracy": probe, "baseline_accuracy": baseline}
    return {"measurements": {**m, "n_classes": 2, "text": False}, "when_measured": {}, "seconds": 1.0}


def test_strategy_labels_are_matched_to_rungs_by_what_they_train(toy_study):
    (st,) = agreement.strategy_studies(*toy_study)
    assert thresholds.rung_of_values(st.study, st.strategy_axis) == {
        "fe": "feature_extraction",
        "half": "partial",
        "full": "full",  # full+llrd shapes its LRs: not the rung
        "scratch": "scratch",
    }


def test_report_from_results_and_cached_decisions(toy_study, monkeypatch):
    monkeypatch.setattr(advice_rules, "FEW_EXAMPLES", 15)  # 10: small, 20: medium
    # a table whose small band freezes (the verdicts are under test here, not the table's cells)
    freezing = advice_rules.Cell("feature_extraction", "partial", "")
    monkeypatch.setitem(advice_rules.TABLE, ("small", "ordinary"), freezing)
    studies = agreement.strategy_studies(*toy_study)
    cache = {"toy": {"10": measured(10, 0.75, 0.6), "20": measured(20, 0.6, 0.75)}}  # ordinary, then negative
    rungs = {"toy": thresholds.rung_of_values(studies[0].study, studies[0].strategy_axis)}
    small, medium = agreement.verdicts(studies, cache, rungs)
    assert (small.advised, small.branch, small.cell, small.best, small.agrees) == (
        "feature_extraction",
        "small x ordinary",
        "fe",
        "fe",
        True,
    )
    assert (medium.advised, medium.branch, medium.best, medium.agrees, medium.worst) == (
        "full",
        "medium x negative",
        "full",
        True,
        False,
    )
    assert (small.compared, small.strategies, medium.compared, medium.strategies) == (5, 5, 4, 5)
    block, whole = agreement.report(studies, cache)
    assert "agrees in **2 of 2** measured cells (100%)" in block and block in whole
    cells = {tuple(line.split(" | ")[:2]): line for line in whole.splitlines() if line.startswith("| 10 |")}
    assert cells[("| 10", "fe")].startswith("| 10 | fe | 2 | 0.800 ± 0.000 (0.000) |")
    assert cells[("| 10", "fe")].endswith("| best, advised |") and cells[("| 10", "half")].endswith("|  |")
    assert "| 20 | full | 2 | 0.900 ± 0.000 (0.000) | 0.901 ± 0.001 (0.001) | best, advised |" in whole
    assert "| toy | 10 (stale) | 10 |" in whole  # no fingerprint of today's recipe: measured on something else
    cache["toy"]["10"]["fingerprint"] = agreement.fingerprint(studies[0], agreement.advisor_overrides(studies[0], 10))
    assert "| toy | 10 | 10 |" in agreement.report(studies, cache)[1]
    # FEW_EXAMPLES: the best of partial/full against fe, -0.1 at 10 (half 0.7 vs 0.8) and +0.2 at 20 (full 0.9 vs
    # 0.7): a third of the way from 10 to 20 in log size, 12.6
    few = next(line for line in whole.splitlines() if line.startswith("| FEW_EXAMPLES"))
    assert f"median {10 * 2 ** (1 / 3):,.0f} over 1 dataset(s)" in few and "toy: 13 (between 10 and 20)" in few
    assert "[10: half 0.700 vs fe 0.800; 20: full 0.900 vs fe 0.700]" in few
    many = next(line for line in whole.splitlines() if line.startswith("| MANY_EXAMPLES"))
    assert "toy: > 10 (never ahead) [10: full 0.600 vs half 0.700]" in many  # partial never ran at 20
    separable = next(line for line in whole.splitlines() if line.startswith("| SEPARABLE_ERROR_REDUCTION"))
    # the probe removes 20% of the errors at 20, and fe lost there on validation (on test it was within a point)
    assert "toy @ 20 0.200 (lost)" in separable
    negative = next(line for line in whole.splitlines() if line.startswith("| NEGATIVE_GAP"))
    assert "toy @ 10 -0.150 (held)" in negative


def test_sizes_without_a_cached_measurement_are_not_measured(toy_study):
    studies = agreement.strategy_studies(*toy_study)
    rows = agreement.verdicts(studies, {}, {"toy": {}})
    assert [r.agrees for r in rows] == [None, None] and "--measure" in rows[0].why


def test_readme_block_is_replaced_and_a_file_without_one_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- advisor-agreement -->\nold\ntable\n<!-- /advisor-agreement -->\nb\n")
    assert agreement.write_block(readme, "new | table")
    assert readme.read_text() == "a\n<!-- advisor-agreement -->\nnew | table\n<!-- /advisor-agreement -->\nb\n"
    assert agreement.write_block(readme, "again")  # idempotent markers: a second write replaces the first
    assert readme.read_text().count("<!-- advisor-agreement -->") == 1 and "new | table" not in readme.read_text()
    other = tmp_path / "OTHER.md"
    other.write_text("no block\n")
    assert not agreement.write_block(other, "x") and other.read_text() == "no block\n"


def test_cache_round_trip_and_stale_entries_are_measured_again(toy_study, tmp_path, monkeypatch):
    (st,) = agreement.strategy_studies(*toy_study)
    overrides = agreement.advisor_overrides(st, 20)
    assert "data.max_train_samples=20" in overrides and "train.seed=0" in overrides
    assert not any(o.startswith("strategy.") for o in overrides)
    fresh = {**measured(20, 0.6, 0.75), "fingerprint": agreement.fingerprint(st, overrides)}
    cache = {"toy": {"20": fresh, "10": {**measured(10, 0.7, 0.6), "fingerprint": "old"}}}
    calls = []
    monkeypatch.setattr(agreement, "measure", lambda st, size: calls.append(size) or measured(10, 0.75, 0.6))
    path = tmp_path / "cache.json"
    monkeypatch.setattr(agreement, "CACHE", path)
    agreement.measure_missing([st], cache, say=lambda *a: None)
    assert calls == [10]  # 20 is fresh, 10 is stale
    agreement.measure_missing([st], cache, say=lambda *a: None, again=True)
    assert calls == [10, 10, 20]
    assert agreement.read_cache(path)["toy"]["10"]["measurements"]["probe_accuracy"] == 0.75
    assert study_tables.strategy_size_study("missing", *toy_study) is None


def test_a_study_that_extends_another_adds_its_cells_to_that_grid(toy_study):
    """A strategy run at one size only (SetFit, whose pairs grow with the data) by a study that `extends:` the grid:
    its cells join the grid's in the tables and the agreement check, and it is not read as a study of its own."""
    studies, docs = toy_study
    doc = yaml.safe_load((studies / "toy.yaml").read_text())
    setfit = [{"label": "setfit", "set": {"strategy.name": "setfit"}}]
    doc.update(extends="toy.yaml", axes={"data.max_train_samples": [10], "strategy.name": setfit, "train.seed": [0, 1]})
    (studies / "toy-setfit.yaml").write_text(yaml.safe_dump(doc))
    (docs / "toy-setfit").mkdir()
    write_study_results(docs / "toy-setfit" / "results.csv", {("setfit", 10): (0.85, 0.85)}, test_spread=0.001)
    (st,) = agreement.strategy_studies(studies, docs)
    assert [e.name for e in st.extensions] == ["toy-setfit"] and st.strategies[-1] == "setfit"
    assert [c["labels"]["strategy.name"] for c in st.at_size(10)][-1] == "setfit"
    assert len(st.strategies_at(10)) == 6 and len(st.strategies_at(20)) == 5  # setfit runs at 10 only
    assert thresholds.study_rungs(st)["setfit"] == "setfit" and thresholds.study_rungs(st)["fe"] == "feature_extraction"
    rows = study_tables.table("toy", studies, docs).splitlines()
    assert next(r for r in rows if r.startswith("| setfit |")).endswith("| - |")  # not run at 20
    assert "**0.85" in next(r for r in rows if r.startswith("| setfit |"))  # the best at 10 on validation


@pytest.mark.parametrize(
    "change, differs",
    [
        ({"overrides": {"train.epochs": 2}}, "overrides differs"),
        ({"axes": {"data.max_train_samples": [{"label": 10, "set": {"data.max_train_samples": 12}}]}}, "value 10"),
        ({"extends": "missing.yaml"}, "no study file"),
        ({"extends": "bad.yaml"}, "extended by another"),  # itself: a cycle, refused rather than followed
    ],
)
def test_a_study_whose_cells_would_not_be_comparable_cannot_extend_another(toy_study, change, differs):
    from hftl.analysis.study import load_study
    from hftl.config.errors import HftlError

    studies, _ = toy_study
    doc = yaml.safe_load((studies / "toy.yaml").read_text())
    doc["extends"] = "toy.yaml"
    doc["axes"].update(change.pop("axes", {}))
    doc.update(change)
    (studies / "bad.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(HftlError, match=differs):
        load_study(studies / "bad.yaml", check=False)

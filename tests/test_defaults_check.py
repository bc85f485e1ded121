"""benchmarks/defaults_check.py: issue 23's defaults check read from committed results (chosen on validation)."""

from __future__ import annotations

import csv
import math
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import defaults_check as dc  # noqa: E402

COLUMNS = ["trial", "state", "data.max_train_samples", "strategy.name", "train.seed"]


def write_results(path: Path, cells: dict[tuple[str, str], list[tuple[float, float]]]) -> None:
    """results.csv with one row per (size, strategy, seed): the (validation, test) pairs given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*COLUMNS, "validation.accuracy", "test.accuracy"])
        trial = 0
        for (size, strategy), seeds in cells.items():
            for seed, (val, test) in enumerate(seeds):
                writer.writerow([trial, "COMPLETE", size, strategy, seed, val, test])
                trial += 1
        # a failed trial is not a score
        writer.writerow([trial, "FAIL", "100", "full", 9, "", ""])


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    cells = {
        # at 100: "full" leads on validation, "partial" on test; "probe" is the recipe's own cell elsewhere
        ("100", "full"): [(0.90, 0.80), (0.92, 0.82), (0.91, 0.81)],
        ("100", "partial"): [(0.85, 0.95), (0.86, 0.96), (0.84, 0.94)],
        ("100", "probe"): [(0.80, 0.79), (0.81, 0.80), (0.79, 0.78)],
        ("10", "full"): [(0.99, 0.99)] * 3,  # another size: never the full-size best
    }
    write_results(tmp_path / "studies" / "toy" / "results.csv", cells)
    return tmp_path


def check(source_where: dict[str, str]) -> dc.Check:
    return dc.Check(
        "toy",
        "recipes/toy.yaml",
        dc.Grid("studies/toy/results.csv", "data.max_train_samples", "100"),
        "grid note",
        (dc.Measurement("the recipe", dc.Source("studies/toy/results.csv", source_where), "how"),),
    )


def test_best_cell_is_chosen_on_validation_at_the_full_size_and_the_gap_is_on_test(docs):
    [row] = dc.grid_rows([check({"data.max_train_samples": "100", "strategy.name": "probe"})], docs)
    assert row.best == ["full"]  # not "partial" (best on test), not size 10's cell
    assert row.best_scores is not None and row.best_scores.n == 3  # the FAIL row is left out
    assert row.gap_test == pytest.approx(0.81 - 0.79)
    assert row.gap_validation == pytest.approx(0.91 - 0.80)
    oracle = math.sqrt(statistics.stdev([0.79, 0.80, 0.78]) ** 2 / 3 + statistics.stdev([0.80, 0.82, 0.81]) ** 2 / 3)
    assert row.standard_error == pytest.approx(oracle)
    assert row.verdict().startswith("**missed by 1.00** / **missed by 10.00**; ")


def test_verdict_within_and_above_the_goal():
    m = dc.Measurement("the recipe", dc.Source("unused.csv"), "how")
    default = dc.Scores((0.90, 0.90), (0.80, 0.80))
    close = dc.Row("d", m, default, ["x"], dc.Scores((0.905, 0.905), (0.809, 0.809)))
    above = dc.Row("d", m, default, ["x"], dc.Scores((0.80, 0.80), (0.70, 0.70)))
    assert close.verdict() == "within 1 point / within 1 point; no seed spread: no SE"
    assert above.verdict() == "at or above / at or above; within 1 SE"
    one_seed = dc.Row("d", m, dc.Scores((0.9,), (0.8,)), ["x"], default)
    assert one_seed.verdict().endswith("one seed: no SE")


def test_validation_tie_takes_the_gap_to_the_better_test_cell(tmp_path):
    cells = {("100", "a"): [(0.9, 0.80)] * 2, ("100", "b"): [(0.9, 0.85)] * 2, ("100", "c"): [(0.5, 0.5)] * 2}
    write_results(tmp_path / "studies" / "toy" / "results.csv", cells)
    [row] = dc.grid_rows([check({"strategy.name": "c"})], tmp_path)
    assert row.best == ["a", "b"]
    assert row.gap_test == pytest.approx(0.35)


def test_a_grid_reads_its_own_metric_columns(tmp_path):
    """WNUT-16 is checked on entity F1: validation.f1 chooses, test.f1 is reported; accuracy columns are not read."""
    path = tmp_path / "studies" / "ner" / "results.csv"
    path.parent.mkdir(parents=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["trial", "state", "strategy.name", "validation.accuracy", "test.accuracy", "validation.f1", "test.f1"]
        )
        writer.writerow([0, "COMPLETE", "full", 0.99, 0.99, 0.50, 0.55])
        writer.writerow([1, "COMPLETE", "lora", 0.10, 0.10, 0.60, 0.52])
    ner = dc.Check(
        "ner",
        "recipes/ner.yaml",
        dc.Grid("studies/ner/results.csv", None, None, metric="f1"),
        "grid note",
        (dc.Measurement("the recipe", dc.Source("studies/ner/results.csv", {"strategy.name": "full"}), "how"),),
    )
    [row] = dc.grid_rows([ner], tmp_path)
    assert row.best == ["lora"]  # on validation F1, where accuracy would pick full
    assert row.gap_test == pytest.approx(0.52 - 0.55)
    assert row.gap_validation == pytest.approx(0.60 - 0.50)


def test_a_source_matching_no_row_names_the_file_and_the_filter(docs):
    with pytest.raises(SystemExit, match=r"no row of .*toy/results.csv matches \{'strategy.name': 'lora'\}"):
        dc.Source("studies/toy/results.csv", {"strategy.name": "lora"}).read(docs)


def test_committed_results_give_one_row_per_measurement(capsys):
    rows = dc.grid_rows()
    assert len(rows) == sum(len(c.measurements) for c in dc.CHECKS)
    assert all(r.scores.n >= 1 and r.best for r in rows)
    assert dc.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("| Rotten Tomatoes") == 5  # three measurements in table 1, two sizes in table 2


def test_write_replaces_only_the_marked_blocks(tmp_path):
    doc = tmp_path / "defaults.md"
    doc.write_text("intro\n<!-- defaults-check: grid -->\nold\n<!-- /defaults-check -->\nmiddle\n", encoding="utf-8")
    assert dc.write(doc, {"grid": "new table", "previous": "unused"}) == ["grid"]
    assert doc.read_text(encoding="utf-8") == (
        "intro\n<!-- defaults-check: grid -->\nnew table\n<!-- /defaults-check -->\nmiddle\n"
    )

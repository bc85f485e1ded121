"""benchmarks/study_tables.py: the README's strategy tables from a study's results.csv (chosen on validation)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from conftest import write_study_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import study_tables  # noqa: E402


def test_table_reports_test_and_bolds_the_validation_choice(tmp_path, text_recipe):
    recipe = text_recipe()
    studies, docs = tmp_path / "studies", tmp_path / "docs"
    studies.mkdir()
    (docs / "toy").mkdir(parents=True)
    (studies / "toy.yaml").write_text(
        yaml.safe_dump(
            {
                "recipe": str(recipe),
                "axes": {
                    "data.max_train_samples": [10, 20],
                    "strategy.name": ["full", "feature_extraction"],
                    "train.seed": [0, 1],
                },
            }
        )
    )
    # at 10: full wins on validation, feature_extraction on test; at 20 feature_extraction wins both
    scores = {("full", 10): (0.8, 0.6), ("feature_extraction", 10): (0.7, 0.9), ("full", 20): (0.5, 0.5)}
    scores[("feature_extraction", 20)] = (0.9, 0.95)
    write_study_results(docs / "toy" / "results.csv", scores, test_spread=0.01)
    text = study_tables.table("toy", studies, docs)
    lines = text.splitlines()
    assert lines[0] == "| strategy \\ training examples | 10 | 20 |"
    assert lines[2] == "| full | **0.605 ± 0.007** | 0.505 ± 0.007 |"
    assert lines[3] == "| feature_extraction | 0.905 ± 0.007 | **0.955 ± 0.007** |"
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- study-table: toy -->\nold\n<!-- /study-table -->\nb\n")
    assert study_tables.write(readme, {"toy": text}) == ["toy"]
    assert readme.read_text() == f"a\n<!-- study-table: toy -->\n{text}\n<!-- /study-table -->\nb\n"


def test_a_study_without_a_size_axis_is_one_column_and_a_dropped_strategy_keeps_its_row(tmp_path, text_recipe):
    studies, docs = tmp_path / "studies", tmp_path / "docs"
    studies.mkdir()
    (docs / "toy").mkdir(parents=True)
    study = {
        "recipe": str(text_recipe()),
        "overrides": {"data.max_train_samples": 30},
        "axes": {"strategy.name": ["full", "feature_extraction"], "train.seed": [0, 1]},
    }
    (studies / "toy.yaml").write_text(yaml.safe_dump(study))
    # "partial" ran, then left the study file: its measured cell stays, after the axis's strategies
    scores = {("partial", 30): (0.9, 0.7), ("full", 30): (0.8, 0.6), ("feature_extraction", 30): (0.7, 0.9)}
    write_study_results(docs / "toy" / "results.csv", scores, test_spread=0.01)
    lines = study_tables.table("toy", studies, docs).splitlines()
    assert lines[:5] == [
        "| strategy \\ training examples | 30 |",
        "| --- | ---: |",
        "| full | 0.605 ± 0.007 |",
        "| feature_extraction | 0.905 ± 0.007 |",
        "| partial | **0.705 ± 0.007** |",
    ]
    assert "bold: the strategy chosen on `validation.accuracy`." in lines[-1]

"""``data.files`` (split -> files or globs, as load_dataset's data_files) and ``data.stratify`` in a recipe."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from hftl.config.errors import RecipeError
from hftl.config.recipe import load_recipe
from hftl.tasks import TASKS


def write_rows(path: Path, rows: list[tuple[str, str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def rows(n: int, label: str, word: str) -> list[tuple[str, str]]:
    return [(f"the {word} film {i}", label) for i in range(n)]


def splits_of(path: Path):
    recipe = load_recipe(path)
    return TASKS.get(recipe.task).load_splits(recipe)


def test_files_per_split_relative_to_the_recipe_with_globs_and_lists(tmp_path, text_recipe):
    data = tmp_path / "data"
    write_rows(data / "train-1.csv", rows(10, "pos", "good"))
    write_rows(data / "train-2.csv", rows(10, "neg", "bad"))
    write_rows(data / "dev.csv", rows(4, "pos", "fine"))
    write_rows(data / "test-a.csv", rows(3, "neg", "dull"))
    write_rows(data / "test-b.csv", rows(3, "pos", "fun"))
    path = text_recipe(
        data={
            "source": None,
            "group_column": None,
            "files": {
                "train": "data/train-*.csv",
                "validation": "data/dev.csv",
                "test": ["data/test-a.csv", "data/test-b.csv"],
            },
        }
    )
    splits = splits_of(path)
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 20, "validation": 4, "test": 6}
    assert "train: data/train-*.csv" in load_recipe(path).data.where


def test_files_with_a_builder_name_and_tsv_by_suffix(tmp_path, text_recipe):
    write_rows(tmp_path / "all.tsv", rows(20, "pos", "good") + rows(20, "neg", "bad"), delimiter="\t")
    by_suffix = splits_of(text_recipe(data={"source": None, "group_column": None, "files": {"train": "all.tsv"}}))
    assert sum(len(ds) for ds in by_suffix.values()) == 40  # validation and test carved from train
    write_rows(tmp_path / "all.txt", rows(20, "pos", "good") + rows(20, "neg", "bad"))
    named = splits_of(text_recipe(data={"source": "csv", "group_column": None, "files": {"train": "all.txt"}}))
    assert sum(len(ds) for ds in named.values()) == 40


@pytest.mark.parametrize(
    "data, words",
    [
        ({"source": None}, "data.source is required"),
        ({"source": None, "files": {"test": "a.csv"}}, "needs a 'train' entry"),
        ({"stratify": True, "group_column": "movie"}, "either group_column"),
    ],
)
def test_files_and_stratify_are_checked_in_the_recipe(text_recipe, data, words):
    with pytest.raises(RecipeError, match=words):
        load_recipe(text_recipe(data=data))


def test_stratify_keeps_each_label_share_in_the_carved_splits(tmp_path, text_recipe):
    """80% pos / 20% neg: unstratified, a small carved split can miss the rare class; stratified, every split
    holds the same share (to the row)."""
    write_rows(tmp_path / "skewed.csv", rows(80, "pos", "good") + rows(20, "neg", "bad"))
    path = text_recipe(
        data={
            "source": str(tmp_path / "skewed.csv"),
            "group_column": None,
            "stratify": True,
            "validation_size": 0.1,
            "test_size": 0.2,
        }
    )
    counts = {name: Counter(ds["label"]) for name, ds in splits_of(path).items()}
    assert counts == {
        "train": {"pos": 56, "neg": 14},
        "validation": {"pos": 8, "neg": 2},
        "test": {"pos": 16, "neg": 4},
    }


def test_stratify_needs_one_label_per_example(tmp_path, text_recipe):
    import json

    (tmp_path / "ner.jsonl").write_text(
        "".join(json.dumps({"tokens": ["a", "b"], "ner_tags": ["O", "O"]}) + "\n" for _ in range(10))
    )
    path = text_recipe(
        task="token-classification",
        data={"source": str(tmp_path / "ner.jsonl"), "group_column": None, "stratify": True},
    )
    with pytest.raises(RecipeError, match="data.stratify.*needs one label per example"):
        splits_of(path)


def test_a_fixed_split_seed_fixes_the_capped_evaluation_samples_too(tmp_path, text_recipe):
    write_rows(tmp_path / "all.csv", rows(60, "pos", "good") + rows(60, "neg", "bad"))
    base = {"source": None, "group_column": None, "files": {"train": "all.csv"}, "max_eval_samples": 5}

    def evaluated(train_seed: int, split_seed: int | None) -> dict[str, list[str]]:
        path = text_recipe(data={**base, "split_seed": split_seed}, train={"seed": train_seed})
        splits = splits_of(path)
        return {name: sorted(splits[name]["text"]) for name in ("validation", "test")}

    assert evaluated(0, split_seed=7) == evaluated(1, split_seed=7)  # seeds vary training, never what is scored
    assert evaluated(0, split_seed=None) != evaluated(1, split_seed=None)  # without it the seed draws the carve

"""Multi-label, regression and text-pair classification, class weights, the per-class report and hftl evaluate,
on the tiny BERT: one short run per problem type, shared by the tests of this module."""

from __future__ import annotations

import json
import random

import pytest
import torch
import yaml
from conftest import NEGATIVE, POSITIVE, make_reviews

from hftl.cli.commands import main


def rows(n: int = 240) -> list[dict]:
    """Toy reviews with a label set (pos/neg word present), a score (1 for positive) and 0/1 columns."""
    rng = random.Random(3)
    out = make_reviews(n, seed=3)
    for row in out:
        words = row["text"].split()
        tags = sorted({"good" if w in POSITIVE else "bad" for w in words if w in POSITIVE + NEGATIVE})
        row.update(tags=tags, good=int("good" in tags), bad=int("bad" in tags))
        row["score"] = (2.0 if row["label"] == "pos" else -2.0) + rng.random() / 10
        row["other"] = rng.choice(out)["text"]
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("problems") / "reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    return path


def write_recipe(folder, bert, data_file, name, **data) -> str:
    doc = {
        "name": name,
        "task": "text-classification",
        "model": {"checkpoint": str(bert)},
        "data": {"source": str(data_file), "max_length": 16, **data},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "train": {"min_steps": 0, "epochs": 3, "batch_size": 16, "seed": 0},
        "output": {"dir": str(folder / name)},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir, data_file):
    from hftl.cli.api import run_recipe

    folder = tmp_path_factory.mktemp("problem-runs")
    recipes = {
        "multi": write_recipe(
            folder, tiny_bert_dir, data_file, "multi", problem_type="multi_label", columns={"label": "tags"}
        ),
        "regression": write_recipe(
            folder, tiny_bert_dir, data_file, "regression", problem_type="regression", columns={"label": "score"}
        ),
        "pairs": write_recipe(folder, tiny_bert_dir, data_file, "pairs", columns={"text_pair": "other"}),
    }
    return {name: run_recipe(path) for name, path in recipes.items()}


def test_multi_label_learns_label_sets_and_reports_each_label(runs, data_file, tmp_path, capsys):
    result = runs["multi"]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert json.loads((result.run_dir / "labels.json").read_text()) == ["bad", "good"]
    assert result.metrics["test"]["f1_micro"] > 0.8  # the sentiment words are learnt through the BCE loss
    report = json.loads((result.run_dir / "class_report.json").read_text())["test"]["per_class"]
    assert set(report) == {"bad", "good"} and all(c["support"] > 0 for c in report.values())
    assert "### Per class" in (result.run_dir / "README.md").read_text()
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(result.run_dir), str(data_file), "--out", str(out)]) == 0
    scored = json.loads(out.read_text())
    assert scored["examples"] == 240 and scored["metrics"]["f1_micro"] > 0.8
    assert set(scored["report"]["per_class"]) == {"bad", "good"}


def test_label_columns_of_zeros_and_ones_are_a_label_set(tiny_bert_dir, data_file, tmp_path):
    from hftl.config.recipe import load_recipe
    from hftl.tasks import prepare_data

    recipe = load_recipe(
        write_recipe(
            tmp_path, tiny_bert_dir, data_file, "cols", problem_type="multi_label", label_columns=["good", "bad"]
        )
    )
    data = prepare_data(recipe)
    assert data.labels == ["good", "bad"]
    raw = rows()
    train = data.encoded["train"]["labels"]
    assert {tuple(t) for t in train} <= {(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0)}
    assert sum(t[0] for t in train) > 0 and len(train) < len(raw)


def test_regression_predicts_the_number_through_the_pipeline(runs):
    from transformers import pipeline

    result = runs["regression"]
    assert json.loads((result.run_dir / "config.json").read_text())["problem_type"] == "regression"
    test = result.metrics["test"]
    assert test["pearson"] > 0.8 and test["rmse"] < 1.5  # targets are +-2: sentiment words read off
    assert not (result.run_dir / "class_report.json").exists()  # no classes, no per-class report
    predict = pipeline("text-classification", model=str(result.run_dir))
    good, bad = (predict(t)[0] for t in ("a very good movie", "the plot was awful"))
    assert good["label"] == bad["label"] == "score"
    assert good["score"] > 0.5 and bad["score"] < -0.5  # the value itself, no sigmoid


def test_text_pairs_are_tokenized_together_and_predicted_with_pair(runs, tiny_bert_dir, capsys):
    from hftl.config.recipe import load_recipe
    from hftl.tasks import prepare_data

    result = runs["pairs"]
    recipe = load_recipe(result.run_dir / "recipe.yaml")
    encoded = prepare_data(recipe).encoded["train"]
    assert any(1 in row for row in encoded["token_type_ids"])  # the second text is segment B
    code = main(["predict", str(result.run_dir), "--text", "a good film", "--pair", "a dull plot", "--top-k", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "a good film + a dull plot" in out and "pos" in out and "neg" in out


def test_balanced_class_weights_follow_scikit_learn(tiny_bert_dir, data_file):
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    from hftl.tasks.labels import balanced_weights

    targets = [0] * 30 + [1] * 10 + [2] * 5
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(targets))
    assert balanced_weights(targets, 3, "single_label") == pytest.approx(expected.tolist())
    assert balanced_weights([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]], 2, "multi_label") == [1 / 3, 3.0]


def test_weighted_loss_matches_the_models_own_at_equal_weights_and_moves_with_them(tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification

    from hftl.training.losses import TaskLoss

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).eval()
    batch = {"input_ids": torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]]), "labels": torch.tensor([0, 2])}
    out = model(**batch)
    assert TaskLoss([1.0, 1.0, 1.0], False)(out.logits, batch["labels"]).item() == pytest.approx(out.loss.item())
    heavy = TaskLoss([1.0, 1.0, 50.0], False)(out.logits, batch["labels"]).item()
    light = TaskLoss([50.0, 1.0, 1.0], False)(out.logits, batch["labels"]).item()
    assert heavy != pytest.approx(light)
    multi = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert_dir, num_labels=2, problem_type="multi_label_classification"
    ).eval()
    hot = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    own = multi(input_ids=batch["input_ids"], labels=hot)
    assert TaskLoss([1.0, 1.0], True)(own.logits, hot).item() == pytest.approx(own.loss.item())


def test_class_weights_train_and_are_logged(tiny_bert_dir, data_file, tmp_path, capsys):
    from hftl.cli.api import run_recipe

    path = write_recipe(tmp_path, tiny_bert_dir, data_file, "weighted")
    result = run_recipe(path, ["train.class_weights=[1.0, 3.0]", "train.max_steps=3"])
    assert result.metrics["steps"] == 3
    assert yaml.safe_load((result.run_dir / "recipe.yaml").read_text())["train"]["class_weights"] == [1.0, 3.0]
    assert "[loss] class weights: neg 1, pos 3" in capsys.readouterr().out


def test_evaluate_names_a_missing_column_and_an_unknown_label(runs, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("review,label\na good film,pos\nawful,meh\n")
    run_dir = str(runs["pairs"].run_dir)
    assert main(["evaluate", run_dir, str(other)]) == 2
    assert "column 'text'" in capsys.readouterr().err
    assert main(["evaluate", run_dir, str(other), "--column", "text=review", "--column", "text_pair=review"]) == 2
    assert "'meh' is not one of ['neg', 'pos']" in capsys.readouterr().err
    assert not (runs["pairs"].run_dir / "evaluations").exists()

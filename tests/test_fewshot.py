"""Few-shot: ``data.shots`` (K examples per class) and the ``prototypes`` strategy (cosine nearest class mean)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from torch import nn

from hftl.cli import main
from hftl.config.errors import RecipeError
from hftl.config.recipe import load_recipe
from hftl.strategies.prototypes import fit_prototypes
from hftl.tasks import TASKS


def _train_split(path):
    recipe = load_recipe(path)
    return TASKS.get(recipe.task).load_splits(recipe)["train"]


def test_shots_keep_k_per_class_seeded_and_nested(text_recipe):
    splits = {k: _train_split(text_recipe(data={"shots": k})) for k in (3, 8)}
    assert Counter(splits[3]["label"]) == {"pos": 3, "neg": 3}
    assert Counter(splits[8]["label"]) == {"pos": 8, "neg": 8}
    assert set(splits[3]["text"]) <= set(splits[8]["text"])  # a smaller K is a subset of a larger one
    again = _train_split(text_recipe(data={"shots": 3}))
    other = _train_split(text_recipe(data={"shots": 3}, train={"seed": 1}))
    assert again["text"] == splits[3]["text"] and other["text"] != splits[3]["text"]


def test_shots_larger_than_the_smallest_class_name_the_key(text_recipe):
    with pytest.raises(RecipeError, match=r"key 'data.shots'.*class '(pos|neg)' has only \d+"):
        _train_split(text_recipe(data={"shots": 10_000}))


def test_shots_error_exits_2_from_the_cli(text_recipe, capsys):
    assert main(["plan", str(text_recipe(data={"shots": 10_000}))]) == 2
    assert "data.shots" in capsys.readouterr().err


def test_prototypes_are_cosine_nearest_class_means():
    """Independent oracle: predict by the largest cosine to each class's mean unit vector."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=g) * 3
    y = torch.randint(0, 3, (90,), generator=g)
    x = (centers[y] + torch.randn(90, 6, generator=g)) * torch.rand(90, 1, generator=g).add(0.2) * 5  # varied norms
    chain = [nn.Dropout(0.3), nn.Linear(6, 3)]
    fit = fit_prototypes(chain, list(x[:60]), y[:60].tolist(), list(x[60:]), y[60:].tolist(), scale=10.0)
    unit = x / x.norm(dim=1, keepdim=True)
    means = torch.stack([unit[:60][y[:60] == c].mean(0) for c in range(3)])
    expected = (unit[60:] @ (means / means.norm(dim=1, keepdim=True)).T).argmax(-1)
    chain[0].eval()
    with torch.no_grad():
        predicted = chain[1](chain[0](x[60:])).argmax(-1)  # the raw (unnormalised) input, as the saved model sees it
    assert torch.equal(predicted, expected)
    assert torch.all(chain[1].bias == 0)
    assert fit.validation_accuracy == pytest.approx(float((expected == y[60:]).float().mean()))


def test_prototypes_run_saves_a_pipeline_model_that_predicts_the_prototype_class(
    text_recipe, tmp_path, monkeypatch, capsys
):
    from transformers import pipeline

    from hftl.training.train import run

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    path = text_recipe(
        strategy={"name": "prototypes"},
        data={"shots": 8, "group_column": "movie", "max_length": 16},
        train={"epochs": 1, "min_steps": 0},
    )
    result = run(load_recipe(path))
    out = capsys.readouterr().out
    assert "[probe] head set to 2 class prototypes (means of 16 normalised" in out
    assert result.metrics["examples"]["train"] == 16 and result.metrics["best_step"] == 0
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = [r["validation"]["accuracy"] for r in log if "validation" in r]
    assert len(set(scores)) == 1  # LR 0: the loop's steps leave the prototype head as it is
    card = (result.run_dir / "README.md").read_text()
    assert "**prototypes**: The body is frozen; the head is set to the cosine nearest class mean" in card
    pipe = pipeline("text-classification", model=str(result.run_dir))
    assert {p["label"] for p in pipe(["a great film", "a dull film"])} <= {"pos", "neg"}
    assert main(["plan", str(path)]) == 0
    assert "strategy: prototypes" in capsys.readouterr().out


def test_prototypes_without_cached_features_is_a_recipe_error(text_recipe, tmp_path, monkeypatch):
    from hftl.training.train import run

    path = text_recipe(
        strategy={"name": "prototypes"},
        data={"shots": 4, "group_column": "movie", "max_length": 16},
        train={"cache_features": "never", "max_steps": 1},
    )
    with pytest.raises(RecipeError, match="key 'strategy.name': sets the head from cached frozen features"):
        run(load_recipe(path))

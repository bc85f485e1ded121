"""Domain adaptation (hftl/training/adaptation.py): recipe errors, the two losses against hand-written oracles,
a run that scores target_test and keeps the domain classifier out of the published model, and an exact resume."""

from __future__ import annotations

import csv
import json
import math
import signal

import pytest
import torch

from hftl.cli import main
from hftl.config.recipe import load_recipe
from hftl.training.adaptation import TargetBatches, coral_loss, dann_coefficient, merge_batches
from tests.conftest import make_reviews
from tests.test_strategies import run_killed_after_checkpoint, weights


@pytest.fixture
def target_csv(tmp_path):
    """Other 'reviews' (another seed) with an extra numeric column, as unlabeled target data + labeled test."""
    path = tmp_path / "target.csv"
    rows = [{"review": r["text"], "sentiment": r["label"], "stars": i % 5} for i, r in enumerate(make_reviews(200, 7))]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def adapted(text_recipe, target_csv, method="dann", **sections):
    data = {
        "target": {"source": str(target_csv), "columns": {"text": "review", "label": "sentiment"}, "test_size": 0.25}
    }
    return text_recipe(
        data=data,
        strategy={"name": "full", "adaptation": {"method": method}},
        train={"epochs": 1, "min_steps": 0, "log_steps": 1, **sections.get("train", {})},
        output={"keep_checkpoints": "last"},  # the tests read the last resumable state
    )


def test_losses_match_their_definitions():
    assert dann_coefficient(0.0) == 0.0 and dann_coefficient(1.0) == pytest.approx(0.9999092, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(20, 3, generator=g), torch.randn(30, 3, generator=g) * 2
    cov = lambda x: (x - x.mean(0)).T @ (x - x.mean(0)) / (len(x) - 1)  # noqa: E731
    assert coral_loss(s, t).item() == pytest.approx(((cov(s) - cov(t)) ** 2).sum().item() / 36, rel=1e-5)
    assert coral_loss(s, s).item() == pytest.approx(0.0, abs=1e-7)


def test_target_batches_depend_only_on_seed_and_index():
    a = list(TargetBatches(10, 4, seed=3, total=7))
    assert a == list(TargetBatches(10, 4, seed=3, total=7)) and a != list(TargetBatches(10, 4, seed=4, total=7))
    assert all(len(b) == 4 for b in a) and sorted(a[0] + a[1]) == sorted(set(a[0] + a[1]))  # no repeat in an epoch


def test_merged_batch_pads_texts_and_hides_target_labels():
    source = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.tensor([0, 1]),
    }
    target = {
        "input_ids": torch.full((3, 5), 7),
        "attention_mask": torch.ones(3, 5, dtype=torch.long),
        "labels": torch.tensor([0, 0, 0]),
    }
    merged = merge_batches(source, target, pad_id=0)
    assert merged["input_ids"].shape == (5, 5) and merged["labels"].tolist() == [0, 1, -100, -100, -100]
    assert merged["attention_mask"][:2, 3:].sum() == 0


@pytest.mark.parametrize(
    "change, key",
    [
        ({"data": {"target": None}}, "strategy.adaptation"),
        ({"strategy": {"name": "feature_extraction"}}, "strategy.adaptation"),
        ({"columns": {"text": "stars"}}, "data.target.columns.text"),
        ({"columns": {"textt": "review"}}, "data.target.columns.textt"),
    ],
)
def test_bad_adaptation_recipes_name_the_key_and_exit_2(text_recipe, target_csv, capsys, change, key):
    path = adapted(text_recipe, target_csv)
    doc = __import__("yaml").safe_load(path.read_text())
    if "columns" in change:
        doc["data"]["target"]["columns"] = change["columns"]
    if "data" in change:
        doc["data"].pop("target")
    if "strategy" in change:
        doc["strategy"]["name"] = change["strategy"]["name"]
    path.write_text(__import__("yaml").safe_dump(doc))
    command = "run" if key == "data.target.columns.text" else "plan"  # the input type is known once the data is read
    assert main([command, str(path)]) == 2
    assert f"key '{key}'" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["dann", "coral"])
def test_adapted_run_scores_target_test_and_publishes_a_plain_model(text_recipe, target_csv, tmp_path, method, capsys):
    from transformers import pipeline

    from hftl.training.train import run

    result = run(load_recipe(adapted(text_recipe, target_csv, method)))
    assert (
        set(result.metrics["target_test"]) >= {"accuracy", "f1_macro"}
        and result.metrics["examples"]["target_test"] == 50
    )
    out = capsys.readouterr().out
    assert f"[adaptation] {method} (weight 1)" in out and "150 unlabeled examples, 50 labeled" in out
    card = (result.run_dir / "README.md").read_text()
    assert f"Target domain: domain adaptation {method}" in card and "| target_test |" in card
    checkpoint = sorted((result.run_dir / "checkpoints").iterdir())[-1]
    assert (checkpoint / "domain_classifier.safetensors").is_file() == (method == "dann")
    assert not any(k.startswith("domain") for k in weights(result.run_dir / "model.safetensors"))
    assert pipeline("text-classification", model=str(result.run_dir))("a great film")[0]["label"] in {"pos", "neg"}


def test_source_only_run_with_target_data_scores_target_test(text_recipe, target_csv, tmp_path):
    from hftl.training.train import run

    path = adapted(text_recipe, target_csv)
    doc = __import__("yaml").safe_load(path.read_text())
    doc["strategy"].pop("adaptation")
    doc["strategy"]["name"] = "feature_extraction"  # cached features: target_test is cached too
    path.write_text(__import__("yaml").safe_dump(doc))
    assert "accuracy" in run(load_recipe(path)).metrics["target_test"]


def test_dann_resume_after_sigkill_matches_an_uninterrupted_run(text_recipe, target_csv, tmp_path, capsys):
    """Killed right after the step-7 checkpoint (mid-epoch): model, domain classifier and log end the same."""
    from hftl.training.train import run

    path = adapted(text_recipe, target_csv, train={"save_steps": 7, "max_steps": 14})
    straight = run(load_recipe(path, [f"output.dir={tmp_path / 'straight'}"])).run_dir
    killed = tmp_path / "killed"
    assert run_killed_after_checkpoint(path, [f"output.dir={killed}"], step=7) == -signal.SIGKILL
    capsys.readouterr()
    resumed = run(load_recipe(path, [f"output.dir={killed}"]), resume=True).run_dir
    assert "(step 7)" in capsys.readouterr().out
    for name in ("model", "domain_classifier"):
        a = weights(straight / f"checkpoints/step-00000014/{name}.safetensors")
        b = weights(resumed / f"checkpoints/step-00000014/{name}.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, name
    losses = lambda d: [
        r["loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-6) and not any(map(math.isnan, losses(straight)))

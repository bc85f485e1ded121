"""The training loop end to end on a tiny random BERT and a learnable toy task."""

from __future__ import annotations

import json

from hftl.config.recipe import load_recipe
from hftl.training.train import run


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_model_reloads_with_pipeline(text_recipe):
    result = run(load_recipe(text_recipe()))
    log = read_log(result.run_dir)
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.metrics["test"]["accuracy"] > 0.9, result.metrics
    assert json.loads((result.run_dir / "run_status.json").read_text())["status"] == "completed"
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(result.run_dir))
    assert pipe("a great movie")[0]["label"] == "pos"
    assert pipe("an awful plot")[0]["label"] == "neg"

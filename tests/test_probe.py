"""The converged linear probe: L-BFGS logistic regression checked against scikit-learn, and in a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from hftl.config.recipe import load_recipe
from hftl.training.probe import fit_logistic, fit_probe, linear_head


def blobs(n: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 5)) * 2
    y = rng.integers(0, 3, n)
    return torch.tensor(centers[y] + rng.normal(size=(n, 5)), dtype=torch.float32), torch.tensor(y)


def test_lbfgs_logistic_regression_matches_scikit_learn():
    """Same objective as sklearn's LogisticRegression(C) with l2 = 1 / (C n): same solution."""
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(300, 0)
    weight, bias = fit_logistic(x, y, 3, l2=1.0 / (0.5 * len(y)))
    ref = LogisticRegression(C=0.5, tol=1e-8, max_iter=2000).fit(x.numpy(), y.numpy())
    np.testing.assert_allclose(weight.numpy(), ref.coef_, atol=2e-3)
    np.testing.assert_allclose(bias.numpy(), ref.intercept_, atol=2e-3)


def test_probe_fits_the_chains_linear_layer_in_place_and_picks_l2_on_validation():
    x, y = blobs(400, 1)
    chain = [nn.Dropout(0.5), nn.Linear(5, 3)]
    fit = fit_probe(chain, list(x[:300]), y[:300].tolist(), list(x[300:]), y[300:].tolist())
    assert fit is not None and fit.l2 in fit.scores and fit.validation_accuracy == max(fit.scores.values())
    chain[0].eval()
    with torch.no_grad():
        accuracy = float((chain[1](x[300:]).argmax(-1) == y[300:]).float().mean())
    assert accuracy == pytest.approx(fit.validation_accuracy)  # the weights in the layer are the chosen ones
    assert accuracy > 0.9


def test_heads_that_are_not_one_linear_layer_are_not_probed():
    assert linear_head([nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)]) is None
    assert linear_head([nn.LayerNorm(4), nn.Linear(4, 2)]) is None
    assert (
        fit_probe([nn.Linear(4, 2)], [torch.zeros(3, 4)] * 4, [[0, 1, 0]] * 4, [torch.zeros(3, 4)], [[0, 1, 0]]) is None
    )


def test_feature_extraction_run_fits_the_probe_first_and_keeps_it_when_best(text_recipe, tmp_path, monkeypatch, capsys):
    from hftl.training.train import run

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    result = run(load_recipe(text_recipe(strategy={"name": "feature_extraction"}, train={"epochs": 1})))
    out = capsys.readouterr().out
    assert "[probe] head fitted by L-BFGS" in out
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in log if "validation" in r]
    assert evals[0]["step"] == 0  # the probe is scored before any loop step
    probe_score = evals[0]["validation"]["accuracy"]
    assert result.metrics["validation"]["accuracy"] >= probe_score  # keep-best never ends below the probe

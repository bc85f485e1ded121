"""The converged linear probe: L-BFGS logistic regression checked against scikit-learn, and in a real run."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from hftl.config.recipe import load_recipe
from hftl.config.run_folder import read_log
from hftl.models.probe import fit_logistic, fit_probe, linear_head


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


def test_a_fit_is_read_back_from_the_cache_for_the_same_inputs_only(tmp_path, monkeypatch):
    import hftl.models.probe

    x, y = blobs(400, 1)
    args = (list(x[:300]), y[:300].tolist(), list(x[300:]), y[300:].tolist())
    solved = [nn.Linear(5, 3)]
    first = fit_probe(solved, *args, cache=tmp_path)
    assert first is not None and not first.cached and len(list(tmp_path.glob("probe-*.safetensors"))) == 1

    def no_solve(*_args, **_kwargs):
        raise AssertionError("solved again")

    monkeypatch.setattr(hftl.models.probe, "fit_logistic", no_solve)
    read = [nn.Linear(5, 3)]
    again = fit_probe(read, *args, cache=tmp_path)
    assert again is not None and again.cached
    assert (again.l2, again.validation_accuracy, again.scores) == (first.l2, first.validation_accuracy, first.scores)
    assert torch.equal(read[0].weight, solved[0].weight) and torch.equal(read[0].bias, solved[0].bias)
    other_labels = (args[0], [(label + 1) % 3 for label in args[1]], *args[2:])
    with pytest.raises(AssertionError, match="solved again"):  # other labels: another fit
        fit_probe([nn.Linear(5, 3)], *other_labels, cache=tmp_path)
    with pytest.raises(AssertionError, match="solved again"):  # another grid: another fit
        fit_probe([nn.Linear(5, 3)], *args, grid=(1.0,), cache=tmp_path)
    (file,) = tmp_path.glob("probe-*.safetensors")
    file.write_bytes(b"not a safetensors file")  # unreadable: solved again, not an error
    with pytest.raises(AssertionError, match="solved again"):
        fit_probe([nn.Linear(5, 3)], *args, cache=tmp_path)


def test_heads_that_are_not_one_linear_layer_are_not_probed():
    assert linear_head([nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)]) is None
    assert linear_head([nn.LayerNorm(4), nn.Linear(4, 2)]) is None
    assert (
        fit_probe([nn.Linear(4, 2)], [torch.zeros(3, 4)] * 4, [[0, 1, 0]] * 4, [torch.zeros(3, 4)], [[0, 1, 0]]) is None
    )


def test_feature_extraction_run_fits_the_probe_first_and_keeps_it_when_best(text_recipe, tmp_path, monkeypatch, capsys):
    from hftl.training.train import run

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    path = text_recipe(strategy={"name": "feature_extraction"}, train={"epochs": 1})
    result = run(load_recipe(path))
    out = capsys.readouterr().out
    probe = re.search(r"\[probe\] head fitted by L-BFGS in .* \(validation accuracy ([\d.]+);", out)
    assert probe, out
    evals = [r for r in read_log(result.run_dir) if "validation" in r]
    assert evals[0]["step"] == 0  # the probe is scored before any loop step ...
    scores = [e["validation"]["accuracy"] for e in evals]
    assert scores[0] == pytest.approx(float(probe.group(1)), abs=1e-4)  # ... with the head the probe fitted
    assert scores[0] >= 0.85  # the probe alone separates the toy sentiment words (two balanced classes)
    best = scores.index(max(scores))  # keep-best: the final model is the best evaluation's, ties to the first
    assert result.metrics["best_step"] == evals[best]["step"]
    assert result.metrics["validation"] == pytest.approx(evals[best]["validation"], abs=1e-6)

    # The same rows again (another loop budget): the fit is read from the cache, the same head scored at step 0
    again = run(load_recipe(path, [f"output.dir={tmp_path / 'again'}", "train.epochs=2"]))
    assert "[probe] head fitted by L-BFGS (read from the cache) in" in capsys.readouterr().out
    assert read_log(again.run_dir)[0]["validation"] == evals[0]["validation"]

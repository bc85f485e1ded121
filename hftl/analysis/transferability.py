"""LogME: how well frozen features explain the labels, without training anything (You et al., ICML 2021).

"LogME: Practical Assessment of Pre-trained Models for Transfer Learning" models each
one-hot label column ``y`` as a Bayesian linear regression on the features ``F`` (n x d):
``w ~ N(0, 1/alpha I)``, ``y | F, w ~ N(F w, 1/beta I)``, and scores the features by the
log marginal likelihood (the *evidence*) of ``y`` at the ``alpha, beta`` that maximise it,
divided by n and averaged over the classes. Higher is better; it ranks checkpoints and
layers for one target dataset, and its absolute value depends on the data (so hftl also
reports it with the labels shuffled, the value of features that carry no label information).

The maximisation is the paper's fixed-point iteration (MacKay's evidence framework). With the
thin SVD ``F = U diag(sigma) V^T`` (rank r) computed once, every quantity of an iteration is a
sum over r terms, so all classes, and the shuffled labels, cost one SVD:

- ``z = U^T y``; posterior mean ``m = V diag(beta sigma / (alpha + beta sigma^2)) z``;
- ``gamma = sum(beta sigma^2 / (alpha + beta sigma^2))`` (effective number of parameters);
- ``alpha <- gamma / m^T m`` and ``beta <- (n - gamma) / ||F m - y||^2``, until ``alpha / beta`` settles;
- ``evidence = d/2 log alpha + n/2 log beta - 1/2 log|alpha I + beta F^T F| - beta/2 ||F m - y||^2
  - alpha/2 m^T m - n/2 log 2 pi``, with ``log|.| = sum_i log(alpha + beta sigma_i^2) + (d - r) log alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_ITER = 100
TOLERANCE = 1e-6  # relative change of alpha / beta that ends the iteration (the paper uses 1e-2)
EPS = 1e-12


@dataclass(frozen=True)
class Evidence:
    value: float  # log evidence / n
    alpha: float
    beta: float
    iterations: int


def log_evidence(features: np.ndarray, y: np.ndarray) -> Evidence:
    """The maximised log evidence per example of one real-valued target ``y`` (n) given ``features`` (n x d)."""
    u, sigma, _ = np.linalg.svd(np.asarray(features, dtype=np.float64), full_matrices=False)
    return _maximise(u.T @ y, sigma, float(y @ y), *np.asarray(features).shape)


def logme(features: np.ndarray, labels: np.ndarray, shuffled_seed: int | None = None) -> float:
    """LogME of integer class labels: the mean over classes of the one-hot column's maximised log evidence / n.

    ``shuffled_seed``: score the same features against a random permutation of the labels instead (the
    reference value of features that carry no information about them).
    """
    f = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    if shuffled_seed is not None:
        labels = np.random.default_rng(shuffled_seed).permutation(labels)
    u, sigma, _ = np.linalg.svd(f, full_matrices=False)
    classes = np.unique(labels)
    scores = []
    for c in classes:
        y = (labels == c).astype(np.float64)
        scores.append(_maximise(u.T @ y, sigma, float(y @ y), *f.shape).value)
    return float(np.mean(scores))


def evidence_at(features: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence / n of ``y`` at given ``alpha, beta`` (the formula the iteration maximises)."""
    u, sigma, _ = np.linalg.svd(np.asarray(features, dtype=np.float64), full_matrices=False)
    n, d = np.asarray(features).shape
    return _evidence(u.T @ y, sigma, float(y @ y), n, d, alpha, beta)[0]


def _maximise(z: np.ndarray, sigma: np.ndarray, yy: float, n: int, d: int) -> Evidence:
    alpha, beta = 1.0, 1.0
    iteration = 0
    while iteration < MAX_ITER:
        iteration += 1
        s2 = sigma**2
        gamma = float(np.sum(beta * s2 / (alpha + beta * s2)))
        _, mm, residual = _evidence(z, sigma, yy, n, d, alpha, beta)
        new_alpha = gamma / (mm + EPS)
        new_beta = (n - gamma) / (residual + EPS)
        done = abs(new_alpha / new_beta - alpha / beta) <= TOLERANCE * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return Evidence(_evidence(z, sigma, yy, n, d, alpha, beta)[0], alpha, beta, iteration)


def _evidence(
    z: np.ndarray, sigma: np.ndarray, yy: float, n: int, d: int, alpha: float, beta: float
) -> tuple[float, float, float]:
    """(log evidence / n, m^T m, ||F m - y||^2) at ``alpha, beta``, from ``z = U^T y`` and the singular values."""
    s2 = sigma**2
    denom = alpha + beta * s2
    mm = float(np.sum((beta * sigma * z / denom) ** 2))
    # the part of y in the span of U is shrunk by alpha / denom; the rest (yy - |z|^2) is not explained at all
    residual = float(np.sum((alpha * z / denom) ** 2) + max(yy - float(z @ z), 0.0))
    log_det = float(np.sum(np.log(denom))) + (d - len(sigma)) * np.log(alpha)
    value = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - 0.5 * log_det
        - beta / 2 * residual
        - alpha / 2 * mm
        - n / 2 * np.log(2 * np.pi)
    )
    return float(value / n), mm, residual

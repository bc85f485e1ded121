"""Metrics as `evaluate` modules shipped inside hftl (``evaluate.load(name)`` would fetch them from the Hub), and
the per-class report. Training evaluation, ``hftl evaluate`` and the model card all score through here.

What a prediction tensor holds tells the problem type apart (see :func:`problem_of`): class ids (1-d integers),
0/1 label sets (2-d, one column per label), or values (1-d floats).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

LOWER_IS_BETTER = ("loss", "rmse", "mae", "hamming_loss")


@cache
def load_metric(name: str):
    """Load one of hftl's bundled evaluate modules by folder name, offline."""
    import evaluate

    return evaluate.load(str(Path(__file__).parent / name))


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (losses and errors)."""
    return metric.endswith(LOWER_IS_BETTER)


def problem_of(references: Any) -> str:
    """single_label, multi_label or regression, from the gathered references."""
    if references.dim() > 1:
        return "multi_label"
    return "regression" if references.is_floating_point() else "single_label"


def classification_scores(predictions: Any, references: Any) -> dict[str, float]:
    """The scalar metrics of one split: accuracy + macro F1 (single-label), micro/macro F1 (multi-label), or
    RMSE / MAE / R² / Pearson / Spearman (regression)."""
    module = {
        "single_label": "hftl_classification",
        "multi_label": "hftl_multilabel",
        "regression": "hftl_regression",
    }[problem_of(references)]
    return load_metric(module).compute(predictions=predictions.tolist(), references=references.tolist())


def class_report(predictions: Any, references: Any, labels: list[str]) -> dict[str, Any]:
    """Per class (per label) precision, recall, F1 and support, and the confusion matrix for single-label data;
    {} for regression."""
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    kind = problem_of(references)
    if kind == "regression":
        return {}
    pred, ref = np.asarray(predictions.tolist()), np.asarray(references.tolist())
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(
        ref, pred, labels=None if kind == "multi_label" else ids, zero_division=0
    )
    report: dict[str, Any] = {
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(labels)
        }
    }
    if kind == "single_label":
        report["confusion_matrix"] = confusion_matrix(ref, pred, labels=ids).tolist()  # rows: true, columns: predicted
    return report

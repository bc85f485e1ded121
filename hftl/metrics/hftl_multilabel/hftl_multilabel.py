"""Multi-label F1 (micro, macro), subset accuracy and Hamming loss as an `evaluate` module shipped inside hftl."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import accuracy_score, f1_score, hamming_loss


class HftlMultilabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Micro / macro F1 over labels, exact-set (subset) accuracy and Hamming loss for multi-label "
            "classification (predictions thresholded beforehand).",
            citation="",
            inputs_description="predictions, references: one 0/1 list per example, one entry per label",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references):
        pred, ref = np.asarray(predictions), np.asarray(references)
        return {
            "f1_micro": float(f1_score(ref, pred, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(ref, pred, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(ref, pred)),
            "hamming_loss": float(hamming_loss(ref, pred)),
        }

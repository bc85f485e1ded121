"""Accuracy and macro F1 as an `evaluate` module that ships inside hftl, so it loads offline."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score


class HftlClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy and macro-averaged F1 for single-label classification.",
            citation="",
            inputs_description="predictions, references: lists of int class ids",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "f1_macro": float(f1_score(references, predictions, average="macro", zero_division=0)),
        }

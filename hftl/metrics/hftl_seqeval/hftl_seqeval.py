"""Entity-level precision, recall and F1 (seqeval, CoNLL-style) as an `evaluate` module shipped inside hftl.

``evaluate.load("seqeval")`` would fetch the module from the Hub; this copy loads offline
through ``hftl.metrics.load_metric("hftl_seqeval")``. An entity counts as found only when
its type and its whole span match; accuracy is per tag.
"""

import warnings

import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report


class HftlSeqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Entity-level precision, recall and F1 of BIO/IOB tag sequences, plus tag accuracy (seqeval).",
            citation="Nakayama, seqeval: A Python framework for sequence labeling evaluation (2018).",
            inputs_description="predictions, references: one list of tags ('B-PER', 'I-PER', 'O', ...) per sentence",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(self, predictions, references):
        with warnings.catch_warnings():  # numpy warns on the averages when no sentence has an entity
            warnings.simplefilter("ignore", RuntimeWarning)
            report = classification_report(references, predictions, output_dict=True, zero_division=0)
        micro = report.pop("micro avg")
        for average in ("macro avg", "weighted avg"):
            report.pop(average, None)
        scores = {
            "precision": float(micro["precision"]),
            "recall": float(micro["recall"]),
            "f1": float(micro["f1-score"]),
            "accuracy": float(accuracy_score(references, predictions)),
        }
        # Per entity type, as evaluate's own seqeval module reports them.
        scores["per_type"] = {
            kind: {
                "precision": float(s["precision"]),
                "recall": float(s["recall"]),
                "f1": float(s["f1-score"]),
                "number": int(s["support"]),
            }
            for kind, s in report.items()
        }
        return scores

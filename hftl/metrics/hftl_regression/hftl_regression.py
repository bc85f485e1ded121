"""Regression scores (RMSE, MAE, R², Pearson and Spearman correlation) as an `evaluate` module shipped inside hftl."""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


class HftlRegression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="RMSE, MAE, R², Pearson r and Spearman rho of predicted against true values.",
            citation="",
            inputs_description="predictions, references: lists of floats",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        pred, ref = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float)
        constant = np.ptp(pred) == 0 or np.ptp(ref) == 0  # correlation undefined: reported as 0
        return {
            "rmse": float(np.sqrt(mean_squared_error(ref, pred))),
            "mae": float(mean_absolute_error(ref, pred)),
            "r2": float(r2_score(ref, pred)) if len(ref) > 1 else 0.0,
            "pearson": 0.0 if constant else float(pearsonr(pred, ref)[0]),
            "spearman": 0.0 if constant else float(spearmanr(pred, ref)[0]),
        }

"""The multi-label, regression and text-pair recipes, each beside a scikit-learn baseline on the same split.

    python benchmarks/problem_types.py [--seeds 42 43 44] [--recipes wnut-entity-types tomatometer bbc-title-match]

For every shipped recipe named, the splits come from hftl's own loader (so the baseline sees exactly the
training and test examples the run sees); the baseline is TF-IDF (word 1-2-grams) with a linear model fitted on
the training split: one-vs-rest logistic regression with balanced class weights
(rare labels are otherwise never predicted), thresholded at 0.5 (multi-label), ridge regression
(regression), logistic regression on the cosine similarity of the two texts' TF-IDF vectors (pairs). Then
``hftl run`` trains the recipe once per seed (the split is fixed by data.split_seed). Test scores of both, mean
and spread over seeds, go to ``docs/problem_types.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hftl.config.recipe import load_recipe  # noqa: E402
from hftl.metrics import classification_scores  # noqa: E402
from hftl.tasks import TASKS  # noqa: E402


def baseline(recipe) -> dict[str, float]:
    """TF-IDF + a linear model fitted on the recipe's training split, scored on its test split."""
    import numpy as np
    import torch
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    task = TASKS.get(recipe.task)
    splits = task.load_splits(recipe)
    labels = task.label_names(splits, recipe)
    cols = recipe.data.columns
    text, pair, label = cols.get("text", "text"), cols.get("text_pair"), cols.get("label", "label")
    train, test = splits["train"], splits["test"]
    kind = recipe.data.problem_type
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    if pair:  # one feature: how similar the two texts are
        vec.fit(list(train[text]) + list(train[pair]))

        def cosine(ds):
            a, b = vec.transform(list(ds[text])), vec.transform(list(ds[pair]))
            return np.asarray(a.multiply(b).sum(axis=1))

        y_train = [labels.index(str(v)) for v in train[label]]
        model = LogisticRegression().fit(cosine(train), y_train)
        pred = model.predict(cosine(test))
        ref = [labels.index(str(v)) for v in test[label]]
        return classification_scores(torch.tensor(pred), torch.tensor(ref))
    x_train, x_test = vec.fit_transform(list(train[text])), vec.transform(list(test[text]))
    if kind == "regression":
        pred = Ridge(alpha=1.0).fit(x_train, train[label]).predict(x_test)
        return classification_scores(torch.tensor(pred, dtype=torch.float64), torch.tensor(test[label]))
    if kind == "multi_label":

        def hot(values):
            return np.array([[int(name in v) for name in labels] for v in values])

        linear = LogisticRegression(max_iter=1000, class_weight="balanced")
        model = OneVsRestClassifier(linear).fit(x_train, hot(train[label]))
        return classification_scores(torch.tensor(model.predict(x_test)), torch.tensor(hot(test[label])))
    y_train = [labels.index(str(v)) for v in train[label]]
    pred = LogisticRegression(max_iter=1000).fit(x_train, y_train).predict(x_test)
    return classification_scores(torch.tensor(pred), torch.tensor([labels.index(str(v)) for v in test[label]]))


def main() -> None:
    from hftl.cli.api import run_recipe

    parser = argparse.ArgumentParser()
    parser.add_argument("--recipes", nargs="+", default=["wnut-entity-types", "tomatometer", "bbc-title-match"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--out", default=str(ROOT / "docs" / "problem_types.json"))
    parser.add_argument("--runs", default=str(ROOT / "runs" / "problem_types"))
    args = parser.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name in args.recipes:
        recipe = load_recipe(name)
        entry = {"baseline": baseline(recipe), "runs": {}}
        for seed in args.seeds:
            started = time.time()
            folder = Path(args.runs) / f"{name}-{seed}"
            status = folder / "run_status.json"
            interrupted = status.is_file() and json.loads(status.read_text()).get("status") == "interrupted"
            result = run_recipe(
                name,
                [f"train.seed={seed}", f"output.dir={folder}", "output.overwrite=true"],
                resume=interrupted or None,  # a stopped measurement continues from its saved state
            )
            entry["runs"][str(seed)] = {
                "test": result.metrics["test"],
                "seconds": round(time.time() - started, 1),
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            }
        metrics = [k for k in entry["baseline"] if k != "loss"]
        entry["summary"] = {
            k: {
                "baseline": entry["baseline"][k],
                "mean": statistics.mean(r["test"][k] for r in entry["runs"].values()),
                "sd": statistics.stdev([r["test"][k] for r in entry["runs"].values()]) if len(args.seeds) > 1 else 0,
            }
            for k in metrics
        }
        results[name] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        for k, v in entry["summary"].items():
            print(f"{name}\t{k}\tbaseline {v['baseline']:.4f}\thftl {v['mean']:.4f} ± {v['sd']:.4f}", flush=True)


if __name__ == "__main__":
    main()

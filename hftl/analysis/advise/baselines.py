"""The data profile and the measurements on frozen features: LogME, a cross-validated linear probe, the
majority class and a no-transfer baseline on raw inputs (TF-IDF, pooled pixels, token identity).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    import numpy as np

    from hftl.config.schema import Recipe


def profile_data(data: Any, images: bool, recipe: Recipe) -> dict[str, Any]:
    """Examples per split, per class (or entity type), balance, and input lengths or image sizes."""
    import numpy as np

    train = data.encoded["train"]
    if len(train) == 0:
        raise HftlError(
            f"{recipe.source_file}: the training split is empty; hftl advise needs labelled examples "
            "(check data.source, data.splits.train and data.max_train_samples)."
        )
    labels = list(train["labels"])
    token_level = isinstance(labels[0], list)
    if token_level:
        flat = [t for seq in labels for t in seq if t >= 0]
        counts = Counter(data.labels[t] for t in flat)
        entities = Counter(data.labels[t][2:] for t in flat if data.labels[t].startswith("B-"))
        per_class = dict(entities.most_common()) or dict(counts.most_common())
        unit = "labelled tokens"
    else:
        counts = Counter(data.labels[t] for t in labels)
        per_class = {name: counts.get(name, 0) for name in data.labels}
        unit = "examples"
    present = [c for c in counts.values() if c > 0]
    if len(present) < 2:
        only = next(iter(counts), "none")
        raise HftlError(
            f"{recipe.source_file}: the training split has one class only ({only!r}, {sum(present)} "
            f"{unit}); classification needs at least 2. Check data.columns and the label column."
        )
    total = sum(counts.values())
    profile: dict[str, Any] = {
        "n_train": len(train),
        "splits": {s: len(ds) for s, ds in data.encoded.items()},
        "per_class": per_class,
        "per_class_unit": "entities" if token_level and entities else unit,
        "majority": max(counts.values()) / total,
        "majority_class": counts.most_common(1)[0][0],
        "balance": min(present) / max(present),
        "token_level": token_level,
    }
    if "length" in train.column_names:
        lengths = np.asarray(list(train["length"]))
        profile["tokens"] = {
            "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "cut_at_max_length": float(np.mean(lengths >= recipe.data.max_length)),
        }
    if images:
        profile["image_sizes"] = _image_sizes(train)
    return profile


def transferability(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """LogME of the features, and of the same features against shuffled labels (the no-information value)."""
    from hftl.analysis.transferability import logme

    return {"logme": logme(x, y), "logme_shuffled": logme(x, y, shuffled_seed=seed)}


def constant_share(x: np.ndarray) -> float:
    """The share of feature dimensions that are constant over the rows (relative spread below 1e-6): features a
    head cannot read and a body passes no gradient through (advice_rules.CONSTANT_SHARE)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x.std(axis=0) <= 1e-6 * (1.0 + np.abs(x).mean(axis=0))))


def probe_cv(x: np.ndarray, y: np.ndarray, folds: list) -> float:
    """Mean accuracy over the folds of a multinomial logistic regression on standardised features (L-BFGS).

    The L2 strength is scikit-learn's default C=1 (l2 = 1 / n), as in the measurements the table cites.
    """
    import numpy as np
    import torch

    from hftl.models.probe import fit_logistic

    n_classes = int(y.max()) + 1
    scores = []
    with torch.enable_grad():
        for train, test in folds:
            xt = torch.tensor(x[train], dtype=torch.float32)
            mean, std = xt.mean(0), xt.std(0).clamp(min=1e-6)
            weight, bias = fit_logistic((xt - mean) / std, torch.tensor(y[train]), n_classes, l2=1.0 / len(train))
            pred = (((torch.tensor(x[test], dtype=torch.float32) - mean) / std) @ weight.T + bias).argmax(-1)
            scores.append(float((pred.numpy() == y[test]).mean()))
    return float(np.mean(scores))


def raw_baseline(
    subset: Any, processor: Any, task: Any, recipe: Recipe, y: np.ndarray, folds: list
) -> tuple[str, float | None]:
    """A no-transfer model of the raw inputs, scored on the same folds: (what it is, mean accuracy)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if "image" in task.roles:
        x, name = _pixels(subset, processor, task, recipe), "pooled raw pixels (16x16) + logistic regression"
        make = lambda: LogisticRegression(max_iter=300)  # noqa: E731
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    elif "input_ids" in subset.column_names and isinstance(subset[0]["labels"], list):
        ids = [i for seq, lab in zip(subset["input_ids"], subset["labels"]) for i, t in zip(seq, lab) if t >= 0]
        x, name = _one_hot(ids), "token identity + logistic regression"
        make = lambda: LogisticRegression(max_iter=300)  # noqa: E731
    elif "input_ids" in subset.column_names:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = processor.batch_decode([list(ids) for ids in subset["input_ids"]], skip_special_tokens=True)
        name = "TF-IDF (words, 1-2 grams) + logistic regression"
        scores = []
        for train, test in folds:
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
            xt = vectorizer.fit_transform([texts[i] for i in train])
            model = LogisticRegression(max_iter=1000).fit(xt, y[train])
            scores.append(float((model.predict(vectorizer.transform([texts[i] for i in test])) == y[test]).mean()))
        return name, float(np.mean(scores))
    else:
        return "none for these inputs", None
    scores = [float((make().fit(x[train], y[train]).predict(x[test]) == y[test]).mean()) for train, test in folds]
    return name, float(np.mean(scores))


def _folds(y: np.ndarray, k: int, seed: int) -> list:
    """Stratified k folds: each class's examples, shuffled (seeded), dealt round-robin to the folds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = np.arange(len(idx)) % k
    if len(y) < 2 * k:
        raise HftlError(
            f"too few examples ({len(y)}) for {k}-fold cross-validation; hftl advise needs at least {2 * k}."
        )
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


def _pixels(subset: Any, processor: Any, task: Any, recipe: Recipe) -> np.ndarray:
    """Each image as the model's processor gives it, average-pooled to 16 x 16 per channel."""
    import torch

    collate = task.collator(processor, recipe, train=False)
    out = []
    for start in range(0, len(subset), 64):
        rows = subset.select(range(start, min(len(subset), start + 64)))
        batch = collate([dict(zip(rows.column_names, v)) for v in zip(*rows[:].values())])
        out.append(torch.nn.functional.adaptive_avg_pool2d(batch["pixel_values"].float(), 16).flatten(1))
    return torch.cat(out).numpy()


def _one_hot(ids: list[int]) -> Any:
    import numpy as np
    from scipy.sparse import csr_matrix

    return csr_matrix((np.ones(len(ids)), (np.arange(len(ids)), ids)), shape=(len(ids), max(ids) + 1))


def _image_sizes(train: Any, limit: int = 200) -> dict[str, Any]:
    """The commonest image sizes among the first ``limit`` training images (header reads only)."""
    import io

    from PIL import Image

    sizes = Counter()
    for value in train.select(range(min(limit, len(train))))["image"]:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            sizes[f"{image.size[0]}x{image.size[1]}"] += 1
    return {"checked": sum(sizes.values()), "common": dict(sizes.most_common(5))}

"""Labels by problem type (``data.problem_type``): single-label classes, multi-label sets, regression targets.

The declared type is checked against the label column before anything is
written: lists of labels under ``single_label``, fractional numbers that would
become one class per value, text under ``regression``, a plain column under
``multi_label``: each stops the run with one paragraph that names the key, the
column, an offending value and the fix.

Targets as the model sees them: a class id (single-label), a 0/1 float per
label (multi-label, transformers' ``multi_label_classification``), a float
(regression, one output named after the label column).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hftl.config.errors import RecipeError
from hftl.config.registry import TASKS

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import DataSection, Recipe

# The metric that picks the best model, per problem type, when train.metric is not set.
DEFAULT_METRICS = {"single_label": "accuracy", "multi_label": "f1_micro", "regression": "rmse"}
MULTI_LABEL_COLUMN = "__hftl_label_set__"  # built from data.label_columns (one 0/1 column per label)
_SAMPLE = 2000  # label values read to check the declared type


def check_problem_type(recipe: Recipe, supported: tuple[str, ...]) -> None:
    """Recipe-time: the task handles ``data.problem_type``, and ``train.class_weights`` suits it."""
    kind = recipe.data.problem_type
    if kind not in supported:
        raise RecipeError(
            recipe.source_file,
            "data.problem_type",
            f"task '{recipe.task}' handles {' / '.join(supported)}",
            kind,
            hint="Remove data.problem_type, or use a task that handles it: "
            + " / ".join(n for n in TASKS.names() if kind in TASKS.get(n).problem_types),
        )
    if recipe.train.class_weights is not None and recipe.strategy.adaptation is not None:
        raise RecipeError(
            recipe.source_file,
            "train.class_weights",
            "is not combined with strategy.adaptation (its loss is the model's own on the merged batch)",
            recipe.train.class_weights,
            hint="Remove one of them.",
        )
    if kind == "regression" and recipe.train.class_weights is not None:
        raise RecipeError(
            recipe.source_file,
            "train.class_weights",
            "weighs classes; a regression target has none",
            recipe.train.class_weights,
            hint="Remove train.class_weights.",
        )


def label_column_of(data: DataSection, default: str) -> str:
    """The column holding the labels (the set built from ``data.label_columns`` for 0/1 columns)."""
    return MULTI_LABEL_COLUMN if data.label_columns else default


def add_label_set(splits: datasets.DatasetDict, data: DataSection, recipe_file: str | None) -> datasets.DatasetDict:
    """``data.label_columns``: one list-of-labels column from the 0/1 columns (checked to hold 0/1)."""
    names = data.label_columns
    if not names:
        return splits
    for split, ds in splits.items():
        missing = [c for c in names if c not in ds.column_names]
        if missing:
            raise RecipeError(
                recipe_file,
                "data.label_columns",
                f"column(s) {', '.join(repr(c) for c in missing)} are not in the {split} split",
                hint=f"Columns: {', '.join(ds.column_names)}.",
            )
        for name in names:
            bad = next((v for v in ds[name][:_SAMPLE] if v not in (0, 1, True, False, None)), ...)
            if bad is not ...:
                raise RecipeError(
                    recipe_file,
                    "data.label_columns",
                    f"column '{name}' should hold 0/1 (label absent / present), but holds {bad!r}",
                    hint="Use one 0/1 column per label, or one column holding a list of labels per example.",
                )
        splits[split] = ds.map(
            lambda batch: {MULTI_LABEL_COLUMN: [[n for n in names if row[n]] for row in _rows(batch, names)]},
            batched=True,
            desc=f"Label sets of {split}",
        )
    return splits


def _rows(batch: dict[str, list], names: list[str]) -> list[dict[str, Any]]:
    return [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]


def label_names(splits: datasets.DatasetDict, data: DataSection, label_col: str, recipe_file: str | None) -> list[str]:
    """The labels in id order, after checking the column against ``data.problem_type``."""
    import datasets

    from hftl.tasks.common import classification_labels

    kind, values = data.problem_type, splits["train"][label_col][:_SAMPLE]
    if kind == "regression" and isinstance(splits["train"].features[label_col], datasets.ClassLabel):
        raise RecipeError(
            recipe_file,
            "data.problem_type",
            f"is regression, but label column '{label_col}' holds classes "
            f"({', '.join(splits['train'].features[label_col].names[:5])}, ...)",
            hint="For classes use problem_type: single_label; regression needs a numeric column.",
        )
    check_values(values, kind, label_col, recipe_file)
    if kind == "regression":
        return [label_col if label_col != MULTI_LABEL_COLUMN else "value"]
    if kind == "multi_label":
        if data.label_columns:
            return list(data.label_columns)
        if data.label_names:
            return list(data.label_names)
        seen = sorted({str(x) for v in splits["train"][label_col] if v for x in v})
        if len(seen) < 2:
            raise RecipeError(
                recipe_file,
                "data.problem_type",
                f"multi_label needs at least 2 labels; column '{label_col}' names {len(seen)} in the training split",
                "multi_label",
            )
        return seen
    return classification_labels(splits, data.label_names, label_col, recipe_file)


def check_values(values: list[Any], kind: str, col: str, recipe_file: str | None) -> None:
    """Stop when the label values contradict the declared problem type ``kind`` (one paragraph, the fix in it)."""
    present = [(i, v) for i, v in enumerate(values) if v is not None]

    def refuse(what: str, example: tuple[int, Any], hint: str) -> None:
        raise RecipeError(
            recipe_file,
            "data.problem_type",
            f"is {kind}, but label column '{col}' {what} (row {example[0]}: {example[1]!r})",
            hint=hint,
        )

    lists = [(i, v) for i, v in present if isinstance(v, (list, tuple))]
    if kind == "single_label":
        if lists:
            refuse(
                "holds lists of labels",
                lists[0],
                "Set data.problem_type: multi_label (several labels per example), or keep one label per example.",
            )
        fractional = [(i, v) for i, v in present if isinstance(v, float) and not float(v).is_integer()]
        if fractional:
            refuse(
                "holds fractional numbers, which would become one class per distinct value",
                fractional[0],
                "Set data.problem_type: regression to predict the number, or give class names or integer ids.",
            )
    elif kind == "multi_label":
        plain = [(i, v) for i, v in present if not isinstance(v, (list, tuple))]
        if plain:
            refuse(
                "holds single values, not lists of labels",
                plain[0],
                "Give a list of labels per example (a JSON / JSONL / parquet list column), or one 0/1 column per "
                "label with data.label_columns: [a, b, ...]; for one label per example use problem_type: single_label.",
            )
    else:
        not_numbers = [(i, v) for i, v in present if _number(v) is None]
        if lists or len(not_numbers) > len(present) // 2:
            refuse(
                "does not hold numbers",
                (lists or not_numbers)[0],
                "Regression needs a numeric target column; for classes use problem_type: single_label.",
            )


def target_encoder(splits: datasets.DatasetDict, kind: str, label_col: str, labels: list[str]) -> Callable[[Any], Any]:
    """Raw label -> the model's target (class id, multi-hot floats, or a float) for ``data.problem_type``
    ``kind``; None when unusable."""
    from hftl.tasks.common import label_encoder

    if kind == "regression":
        return _number
    if kind == "single_label":
        return label_encoder(splits, label_col, labels)
    index = {name: i for i, name in enumerate(labels)}

    def multi_hot(value: Any) -> list[float] | None:
        if not isinstance(value, (list, tuple)) or any(str(x) not in index for x in value):
            return None
        hot = [0.0] * len(labels)
        for x in value:
            hot[index[str(x)]] = 1.0
        return hot

    return multi_hot


def _number(value: Any) -> float | None:
    """A finite float from a number or numeric text; None otherwise (booleans are not numbers here)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def balanced_weights(targets: list[Any], n_labels: int, kind: str) -> list[float]:
    """``train.class_weights: balanced`` from the training targets: n / (classes x count) per class
    (scikit-learn's rule); multi-label: negatives / positives per label (BCE ``pos_weight``)."""
    import numpy as np

    if kind == "multi_label":
        hot = np.asarray(targets, dtype=float)
        pos = hot.sum(axis=0)
        return [float((len(hot) - p) / p) if p else 1.0 for p in pos]
    counts = np.bincount(np.asarray(targets, dtype=int), minlength=n_labels)
    return [float(len(targets) / (n_labels * c)) if c else 1.0 for c in counts]  # absent: nothing to weigh

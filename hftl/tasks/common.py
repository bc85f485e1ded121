"""Pieces shared by the tasks: column roles, split loading, label encoding, bad-example policy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hftl.config.errors import DataError, RecipeError

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import Recipe


def check_columns_section(recipe: Recipe, roles: dict[str, str | None]) -> None:
    """Reject column roles the task does not read (a typo would otherwise be ignored)."""
    from hftl.config.registry import did_you_mean

    for role in recipe.data.columns:
        if role not in roles:
            raise RecipeError(
                recipe.source_file,
                f"data.columns.{role}",
                f"is not a column role of task '{recipe.task}'.{did_you_mean(role, list(roles))}",
                hint=f"Roles: {', '.join(roles)}.",
            )


def refuse_pooling(recipe: Recipe, own: str) -> None:
    """For tasks whose head keeps the checkpoint's own pooling: ``model.pooling`` must stay ``auto``."""
    if recipe.model.pooling != "auto":
        raise RecipeError(
            recipe.source_file,
            "model.pooling",
            f"only applies to text-classification; {recipe.task} uses {own}",
            recipe.model.pooling,
            hint="Remove model.pooling.",
        )


def column(recipe: Recipe, roles: dict[str, str | None], role: str) -> str | None:
    """The dataset column playing ``role`` (recipe mapping first, then the task default)."""
    return recipe.data.columns.get(role, roles[role])


def load_splits(recipe: Recipe, roles: dict[str, str | None], required: tuple[str, ...]) -> datasets.DatasetDict:
    """Load the data source, carve missing splits, subsample, and check every needed column exists."""
    import datasets

    from hftl.data import sources as data
    from hftl.data import splits as splits_of

    d = recipe.data
    raw = data.load_source(
        d.source, config_name=d.config_name, revision=d.revision, data_files=d.files, recipe_file=recipe.source_file
    )
    wanted = {"train": d.splits.train, "validation": d.splits.validation, "test": d.splits.test}
    for role, name in wanted.items():
        if name is not None and name not in raw and name != role:
            raise RecipeError(
                recipe.source_file,
                f"data.splits.{role}",
                f"split '{name}' is not in {d.where}",
                name,
                hint=f"Available splits: {', '.join(raw)}.",
            )
    if d.splits.train not in raw:
        raise RecipeError(
            recipe.source_file,
            "data.splits.train",
            f"split '{d.splits.train}' is not in {d.where}",
            hint=f"Available splits: {', '.join(raw)}.",
        )
    renamed = datasets.DatasetDict(
        {role: raw[name] for role, name in wanted.items() if name is not None and name in raw}
    )
    if d.group_column is not None and d.group_column not in renamed["train"].column_names:
        raise RecipeError(
            recipe.source_file,
            "data.group_column",
            f"column '{d.group_column}' is not in the data",
            hint=f"Columns: {', '.join(renamed['train'].column_names)}.",
        )
    splits = splits_of.ensure_splits(
        renamed,
        validation=d.validation_size,
        test=d.test_size,
        seed=recipe.train.seed if d.split_seed is None else d.split_seed,
        group_column=d.group_column,
        stratify_column=stratify_column(recipe, roles, renamed),
    )
    if d.splits.test is None and "test" in splits:
        splits.pop("test")
    splits["train"] = splits_of.subsample(splits["train"], d.max_train_samples, recipe.train.seed)
    if d.shots is not None:
        splits["train"] = take_shots(
            splits["train"], recipe, column(recipe, roles, "label") if "label" in roles else None
        )
    for name in [s for s in splits if s != "train"]:
        splits[name] = splits_of.subsample(splits[name], d.max_eval_samples, recipe.train.seed)
    if d.shift is not None:
        splits = shift_splits(splits, recipe, roles)
    present = splits["train"].column_names
    for role in required:
        col = column(recipe, roles, role)
        if col not in present:
            raise RecipeError(
                recipe.source_file,
                f"data.columns.{role}",
                f"column '{col}' is not in {d.where}",
                hint=f"Columns: {', '.join(present)}. Map it with data.columns.{role}: <column>.",
            )
    return splits


def shift_splits(splits: datasets.DatasetDict, recipe: Recipe, roles: dict[str, str | None]) -> datasets.DatasetDict:
    """Apply ``data.shift`` to the input column it names (after carving and subsampling, before encoding)."""
    from hftl.data.shifts import SHIFTS, apply_shift

    shift = recipe.data.shift
    col = column(recipe, roles, SHIFTS.get(shift.name).modality)
    fn = apply_shift(shift.name, shift.severity, shift.seed)
    for name in shift.splits:
        if name in splits and shift.severity > 0:
            splits[name] = splits[name].map(
                lambda batch: {col: [fn(x) for x in batch[col]]},
                batched=True,
                desc=f"Shifting {name} ({shift.name}, severity {shift.severity})",
            )
    return splits


def stratify_column(recipe: Recipe, roles: dict[str, str | None], splits: datasets.DatasetDict) -> str | None:
    """The label column to carve by when ``data.stratify`` is on (one label per example; checked here)."""
    if not recipe.data.stratify:
        return None
    if "label" not in roles:
        raise RecipeError(
            recipe.source_file,
            "data.stratify",
            f"needs one label per example; task '{recipe.task}' has none",
            True,
            hint="Remove data.stratify.",
        )
    col = column(recipe, roles, "label")
    train = splits["train"]
    if col not in train.column_names:
        return None  # the missing column is reported with the other roles
    if any(isinstance(v, (list, dict)) for v in train[col][:100]):
        raise RecipeError(
            recipe.source_file,
            "data.stratify",
            f"needs one label per example, but column '{col}' holds lists or mappings",
            True,
            hint="Remove data.stratify.",
        )
    return col


def take_shots(ds: datasets.Dataset, recipe: Recipe, label_column: str | None) -> datasets.Dataset:
    """``data.shots`` examples of each class: a seeded permutation per class (``train.seed``), rows kept in order.

    Like :func:`hftl.data.sources.subsample`, a smaller K gives a subset of a larger one with the same seed.
    """
    import numpy as np

    k = recipe.data.shots
    if label_column is None or label_column not in ds.column_names:
        raise RecipeError(
            recipe.source_file,
            "data.shots",
            f"needs one label per example; task '{recipe.task}' has none in column {label_column!r}",
            k,
            hint="Remove data.shots.",
        )
    values = [str(v) for v in ds[label_column]]
    classes, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if k > counts.min():
        smallest = str(classes[counts.argmin()])
        raise RecipeError(
            recipe.source_file,
            "data.shots",
            f"asks for {k} examples per class, but class "
            f"{smallest!r} has only {int(counts.min())} in the training split ({len(ds)} rows)",
            k,
            hint=f"Use data.shots <= {int(counts.min())} (or raise data.max_train_samples).",
        )
    rng = np.random.default_rng([recipe.train.seed, 0x5407])  # its own stream: not the carve's or subsample's
    keep = [i for c in range(len(classes)) for i in rng.permutation(np.flatnonzero(inverse == c))[:k]]
    return ds.select(sorted(keep))


def classification_labels(splits: datasets.DatasetDict, recipe: Recipe, label_column: str) -> list[str]:
    """Label names: recipe first, then a ClassLabel feature, then the sorted distinct values."""
    import datasets

    if recipe.data.label_names:
        return list(recipe.data.label_names)
    feature = splits["train"].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({v for v in splits["train"][label_column] if v is not None}, key=str)
    if len(values) < 2:
        raise DataError(
            f"{recipe.source_file}: the label column '{label_column}' has {len(values)} distinct "
            "value(s) in the training split; classification needs at least 2."
        )
    return [str(v) for v in values]


def label_encoder(splits: datasets.DatasetDict, label_column: str, labels: list[str]) -> Callable[[Any], int | None]:
    """Map a raw label (ClassLabel id, name, or value) to its index in ``labels``; None if unknown."""
    import datasets

    feature = splits["train"].features[label_column]
    index = {name: i for i, name in enumerate(labels)}
    names = feature.names if isinstance(feature, datasets.ClassLabel) else None

    def encode(value: Any) -> int | None:
        if value is None:
            return None
        key = names[value] if names is not None and isinstance(value, int) and 0 <= value < len(names) else str(value)
        return index.get(key)

    return encode


def text_problem(text: Any, column_name: str) -> str | None:
    """Why ``text`` cannot be used as an input (None when it can)."""
    if not isinstance(text, str) or not text.strip():
        return f"empty or missing text in column '{column_name}' ({text!r})"
    return None


def select_valid(
    ds: datasets.Dataset,
    recipe: Recipe,
    split: str,
    rows: Iterable[tuple[str | None, Any]],
    to_id: Callable[[Any], int | None],
    labels: list[str],
) -> tuple[datasets.Dataset, list[int], list[int], str | None]:
    """Keep the examples with no input problem and a known label (``data.on_error`` decides the rest).

    ``rows`` yields ``(input problem or None, raw label)`` per example, in order. Returns the kept
    examples, their indices in ``ds``, their label ids, and the skip report (None if nothing skipped).
    """
    bad = BadExamples(recipe, split)
    keep, ids = [], []
    for index, (problem, raw) in enumerate(rows):
        label = to_id(raw)
        if problem:
            bad.bad(index, problem)
        elif label is None:
            bad.bad(index, f"label {raw!r} is not one of {labels} (set data.label_names to change the label set)")
        else:
            keep.append(index)
            ids.append(label)
    return (ds.select(keep) if len(keep) < len(ds) else ds), keep, ids, bad.report()


def without_length(collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """Wrap a transformers collator so it ignores the ``length`` column (used only to group batches)."""

    def collate_features(features: list[dict]) -> dict:
        return collate([{k: v for k, v in f.items() if k != "length"} for f in features])

    return collate_features


class BadExamples:
    """Collects bad examples: raise at once (``on_error: raise``) or count and report (``skip``)."""

    def __init__(self, recipe: Recipe, split: str) -> None:
        self.policy, self.split, self.file = recipe.data.on_error, split, recipe.source_file
        self.skipped: list[tuple[int, str]] = []

    def bad(self, index: int, problem: str) -> None:
        if self.policy == "raise":
            raise DataError(
                f"{self.file}: {self.split} example {index}: {problem}. Fix the data, or set "
                "data.on_error: skip to drop bad examples (they are counted and reported)."
            )
        self.skipped.append((index, problem))

    def report(self) -> str | None:
        if not self.skipped:
            return None
        first = "; ".join(f"#{i}: {p}" for i, p in self.skipped[:3])
        return f"skipped {len(self.skipped)} bad {self.split} example(s) (first: {first})"


# --------------------------------------------------------------------------- evaluation and prediction
def argmax_predictions(outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Class ids from the logits, and the batch's labels (per example, or per token for token tasks)."""
    return outputs.logits.argmax(-1), batch["labels"]


def classification_metrics(predictions: Any, references: Any) -> dict[str, float]:
    """Accuracy and macro F1 (hftl's evaluate module) of single-label predictions."""
    from hftl.metrics import load_metric

    return load_metric("hftl_classification").compute(predictions=predictions.tolist(), references=references.tolist())


def pipeline_predict(run_dir: Any, pipeline_tag: str, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
    """Top-k labels per input through the plain ``transformers.pipeline`` that loads the run folder."""
    from transformers import pipeline

    pipe = pipeline(pipeline_tag, model=str(run_dir))
    outputs = pipe(inputs, top_k=top_k)
    return [out if isinstance(out, list) else [out] for out in outputs]

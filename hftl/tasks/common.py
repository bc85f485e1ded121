"""Pieces shared by the tasks: column roles, split loading, label encoding, bad-example policy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from hftl.config import log
from hftl.config.errors import DataError, RecipeError

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import DataSection, Recipe


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


def require_checkpoint(recipe: Recipe, hint: str, *, init_from: bool) -> None:
    """``model.checkpoint`` is set, or, for a task that can start from an earlier run (``init_from``),
    ``model.init_from``; ``hint`` names example checkpoints."""
    if recipe.model.checkpoint or (init_from and recipe.model.init_from):
        return
    earlier = " (or model.init_from, an earlier run)" if init_from else ""
    raise RecipeError(recipe.source_file, "model.checkpoint", f"is required for {recipe.task}{earlier}", hint=hint)


def refuse_pooling(recipe: Recipe, own: str) -> None:
    """For tasks whose head keeps the checkpoint's own pooling: ``model.pooling`` must stay ``auto``."""
    if recipe.model.pooling != "auto":
        raise RecipeError(
            recipe.source_file,
            "model.pooling",
            f"does not apply to {recipe.task}, which uses {own}",
            recipe.model.pooling,
            hint="Remove model.pooling.",
        )


def column(data: DataSection, roles: dict[str, str | None], role: str) -> str | None:
    """The dataset column playing ``role`` (``data.columns`` first, then the task default)."""
    return data.columns.get(role, roles[role])


def load_splits(
    recipe: Recipe, roles: dict[str, str | None], required: tuple[str, ...], *, task: str
) -> datasets.DatasetDict:
    """Load the ``data`` section's source, carve missing splits, subsample, and check the ``required`` roles' columns.

    ``train.seed`` draws the training subsets and, without ``data.split_seed``, the carve and the capped
    evaluation samples; ``task`` (the task's name) and the recipe's file name what an error is about.
    """
    import datasets

    from hftl.data import sources
    from hftl.data import splits as splits_of

    d, seed, recipe_file = recipe.data, recipe.train.seed, recipe.source_file
    raw = sources.load_source(
        d.source, config_name=d.config_name, revision=d.revision, data_files=d.files, recipe_file=recipe_file
    )
    wanted = {"train": d.splits.train, "validation": d.splits.validation, "test": d.splits.test}
    for role, name in wanted.items():
        if name is not None and name not in raw and name != role:
            raise RecipeError(
                recipe_file,
                f"data.splits.{role}",
                f"split '{name}' is not in {d.where}",
                name,
                hint=f"Available splits: {', '.join(raw)}.",
            )
    if d.splits.train not in raw:
        raise RecipeError(
            recipe_file,
            "data.splits.train",
            f"split '{d.splits.train}' is not in {d.where}",
            hint=f"Available splits: {', '.join(raw)}.",
        )
    renamed = datasets.DatasetDict(
        {role: raw[name] for role, name in wanted.items() if name is not None and name in raw}
    )
    if d.group_column is not None and d.group_column not in renamed["train"].column_names:
        raise RecipeError(
            recipe_file,
            "data.group_column",
            f"column '{d.group_column}' is not in the data",
            hint=f"Columns: {', '.join(renamed['train'].column_names)}.",
        )
    split_seed = d.evaluation_seed(seed)  # the carve and the capped evaluation samples
    splits = splits_of.ensure_splits(
        renamed,
        validation=d.validation_size,
        test=d.test_size,
        seed=split_seed,
        group_column=d.group_column,
        stratify_column=stratify_column(d, roles, renamed, task, recipe_file),
    )
    if d.splits.test is None and "test" in splits:
        splits.pop("test")
    splits["train"] = splits_of.subsample(splits["train"], d.max_train_samples, seed)
    if d.shots is not None:
        label_column = column(d, roles, "label") if "label" in roles else None
        shots = take_shots(splits["train"], d.shots, label_column, seed=seed, task=task, recipe_file=recipe_file)
        splits["train"] = shots
    for name in [s for s in splits if s != "train"]:
        splits[name] = splits_of.subsample(splits[name], d.max_eval_samples, split_seed)
    if d.shift is not None:
        splits = shift_splits(splits, d, roles)
    present = splits["train"].column_names
    for role in required:
        col = column(d, roles, role)
        if col not in present:
            raise RecipeError(
                recipe_file,
                f"data.columns.{role}",
                f"column '{col}' is not in {d.where}",
                hint=f"Columns: {', '.join(present)}. Map it with data.columns.{role}: <column>.",
            )
    return splits


def shift_splits(splits: datasets.DatasetDict, data: DataSection, roles: dict[str, str | None]) -> datasets.DatasetDict:
    """Apply ``data.shift`` to the input column it names (after carving and subsampling, before encoding)."""
    from hftl.data.shifts import SHIFTS, apply_shift

    shift = data.shift
    col = column(data, roles, SHIFTS.get(shift.name).modality)
    fn = apply_shift(shift.name, shift.severity, shift.seed)
    for name in shift.splits:
        if name in splits and shift.severity > 0:
            splits[name] = splits[name].map(
                lambda batch: {col: [fn(x) for x in batch[col]]},
                batched=True,
                desc=f"Shifting {name} ({shift.name}, severity {shift.severity})",
            )
    return splits


def stratify_column(
    data: DataSection, roles: dict[str, str | None], splits: datasets.DatasetDict, task: str, recipe_file: str | None
) -> str | None:
    """The label column to carve by when ``data.stratify`` is on (one label per example; checked here)."""
    if not data.stratify:
        return None
    if "label" not in roles:
        raise RecipeError(
            recipe_file,
            "data.stratify",
            f"needs one label per example; task '{task}' has none",
            True,
            hint="Remove data.stratify.",
        )
    col = column(data, roles, "label")
    train = splits["train"]
    if col not in train.column_names:
        return None  # the missing column is reported with the other roles
    if any(isinstance(v, (list, dict)) for v in train[col][:100]):
        raise RecipeError(
            recipe_file,
            "data.stratify",
            f"needs one label per example, but column '{col}' holds lists or mappings",
            True,
            hint="Remove data.stratify.",
        )
    return col


def take_shots(
    ds: datasets.Dataset, k: int, label_column: str | None, *, seed: int, task: str, recipe_file: str | None
) -> datasets.Dataset:
    """``k`` (``data.shots``) examples of each class: a seeded permutation per class (``seed``: ``train.seed``),
    rows kept in order.

    Like :func:`hftl.data.sources.subsample`, a smaller K gives a subset of a larger one with the same seed.
    """
    import numpy as np

    if label_column is None or label_column not in ds.column_names:
        raise RecipeError(
            recipe_file,
            "data.shots",
            f"needs one label per example; task '{task}' has none in column {label_column!r}",
            k,
            hint="Remove data.shots.",
        )
    values = [str(v) for v in ds[label_column]]
    classes, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    if k > counts.min():
        smallest = str(classes[counts.argmin()])
        raise RecipeError(
            recipe_file,
            "data.shots",
            f"asks for {k} examples per class, but class "
            f"{smallest!r} has only {int(counts.min())} in the training split ({len(ds)} rows)",
            k,
            hint=f"Use data.shots <= {int(counts.min())} (or raise data.max_train_samples).",
        )
    rng = np.random.default_rng([seed, 0x5407])  # its own stream: not the carve's or subsample's
    keep = [i for c in range(len(classes)) for i in rng.permutation(np.flatnonzero(inverse == c))[:k]]
    return ds.select(sorted(keep))


def classification_labels(
    splits: datasets.DatasetDict, label_names: list[str] | None, label_column: str, recipe_file: str | None
) -> list[str]:
    """Label names: ``data.label_names`` first, then a ClassLabel feature, then the sorted distinct values."""
    import datasets

    if label_names:
        return list(label_names)
    feature = splits["train"].features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = sorted({v for v in splits["train"][label_column] if v is not None}, key=str)
    if len(values) < 2:
        raise DataError(
            f"{recipe_file}: the label column '{label_column}' has {len(values)} distinct "
            "value(s) in the training split; classification needs at least 2."
        )
    return [str(v) for v in values]


def label_encoder(splits: datasets.DatasetDict, label_column: str, labels: list[str]) -> Callable[[Any], int | None]:
    """Map a raw label (ClassLabel id, name, or value) to its index in ``labels``; None if unknown."""
    import datasets

    feature = next(iter(splits.values())).features[label_column]
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
    bad: BadExamples,
    rows: Iterable[tuple[str | None, Any]],
    to_id: Callable[[Any], int | None],
    labels: list[str],
    problem_type: str,
) -> tuple[datasets.Dataset, list[int], list[int], str | None]:
    """Keep the examples with no input problem and a known label (``bad``, by ``data.on_error``, takes the rest).

    ``rows`` yields ``(input problem or None, raw label)`` per example, in order. Returns the kept
    examples, their indices in ``ds``, their label ids, and the skip report (None if nothing skipped).
    """
    keep, ids = [], []
    for index, (problem, raw) in enumerate(rows):
        label = to_id(raw)
        if problem:
            bad.bad(index, problem)
        elif label is None:
            bad.bad(
                index,
                f"label {raw!r} is not a number"
                if problem_type == "regression"
                else f"label {raw!r} is not one of {labels} (set data.label_names to change the label set)",
            )
        else:
            keep.append(index)
            ids.append(label)
    return (ds.select(keep) if len(keep) < len(ds) else ds), keep, ids, bad.report()


def add_columns(ds: datasets.Dataset, columns: dict[str, list]) -> datasets.Dataset:
    """``ds`` with ``columns`` added in order (replacing any column of the same name). On a subset (a carved split)
    datasets first rewrites the rows ("Flattening the indices"), a step whose progress bar tells the user nothing:
    it runs without one."""
    with log.no_library_bars():
        if present := [name for name in columns if name in ds.column_names]:
            ds = ds.remove_columns(present)
        for name, values in columns.items():
            ds = ds.add_column(name, values)
    return ds


def pad_multiple(mixed_precision: str) -> int | None:
    """Pad token batches to a multiple of 8 under fp16/bf16 (``train.mixed_precision``: tensor cores work on
    multiples of 8), else exactly."""
    return 8 if mixed_precision in ("fp16", "bf16") else None


def without_length(collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """Wrap a transformers collator so it ignores the ``length`` column (used only to group batches)."""

    def collate_features(features: list[dict]) -> dict:
        return collate([{k: v for k, v in f.items() if k != "length"} for f in features])

    return collate_features


class BadExamples:
    """Collects bad examples of a split: raise at once (``data.on_error: raise``) or count and report (``skip``)."""

    def __init__(self, on_error: str, split: str, recipe_file: str | None) -> None:
        self.policy, self.split, self.file = on_error, split, recipe_file
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
    """Predictions and the batch's targets, by what the targets hold: class ids -> argmax (per example, or per
    token for token tasks); 0/1 label sets -> logits above 0 (sigmoid above 0.5); values -> the single output."""
    logits, targets = outputs.logits, batch["labels"]
    if targets.is_floating_point():
        if targets.dim() > 1:  # multi-label: 0/1 per label
            return (logits > 0).long(), targets.long()
        return logits.reshape(-1).float(), targets.float()  # regression
    return logits.argmax(-1), targets


def pipeline_predict(run_dir: Any, pipeline_tag: str, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
    """Top-k labels per input through the plain ``transformers.pipeline`` that loads the run folder."""
    from transformers import pipeline

    pipe = pipeline(pipeline_tag, model=str(run_dir))
    outputs = pipe(inputs, top_k=top_k)
    return [out if isinstance(out, list) else [out] for out in outputs]

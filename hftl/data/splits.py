"""Splits: carve missing validation / test splits from train (seeded, grouped or stratified), and subsample.

The carve depends only on the data, the fractions and the seed, so every run and process agrees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import datasets
import numpy as np

from hftl.config.errors import DataError

VALIDATION_ALIASES = ("validation", "valid", "dev")


def ensure_splits(
    dsd: datasets.DatasetDict,
    *,
    validation: float = 0.1,
    test: float = 0.1,
    seed: int = 42,
    group_column: str | None = None,
    stratify_column: str | None = None,
) -> datasets.DatasetDict:
    """Return ``dsd`` with ``train``, ``validation`` and ``test`` splits.

    Existing splits are kept (``valid``/``dev`` are renamed ``validation``);
    missing ones are carved from ``train``, as fractions of ``train``. The carve
    is seeded and depends on nothing else, so every run and process agrees.
    ``group_column`` keeps each group (e.g. a movie) inside one split;
    ``stratify_column`` keeps class proportions. A fraction of 0 skips that split.
    """
    splits = dict(dsd)
    for alias in VALIDATION_ALIASES[1:]:
        if alias in splits and "validation" not in splits:
            splits["validation"] = splits.pop(alias)
    if "train" not in splits:
        raise DataError(f"The dataset needs a 'train' split to carve from; it has: {', '.join(splits) or 'none'}.")
    for name, fraction in (("validation", validation), ("test", test)):
        if not 0 <= fraction < 1:
            raise DataError(f"The {name} fraction must be in [0, 1), got {fraction}.")
    if validation + test >= 1:
        raise DataError(f"validation + test fractions must leave rows for train, got {validation} + {test}.")
    if group_column and stratify_column:
        raise DataError("Give group_column or stratify_column, not both.")
    train = splits["train"]
    for column in (group_column, stratify_column):
        if column and column not in train.column_names:
            raise DataError(
                f"Column '{column}' is not in the train split; available columns: {', '.join(train.column_names)}."
            )
    wanted = {
        name: frac for name, frac in (("test", test), ("validation", validation)) if name not in splits and frac > 0
    }
    if wanted:
        if group_column:
            parts = _carve_groups(train[group_column], wanted, seed)
        else:
            parts = _carve_rows(train[stratify_column] if stratify_column else None, len(train), wanted, seed)
        empty = [name for name, indices in parts.items() if not indices]
        if empty:
            unit = f"groups of '{group_column}'" if group_column else "rows (per class)" if stratify_column else "rows"
            carved = ", ".join(f"{name} {fraction}" for name, fraction in wanted.items())
            raise DataError(
                f"Too few {unit} in train ({len(train)} rows) to carve {carved}: {empty[0]} would be "
                "empty. Give the splits in the data or set their fractions to 0."
            )
        splits.update({name: train.select(indices) for name, indices in parts.items()})
    order = [name for name in ("train", "validation", "test") if name in splits]
    return datasets.DatasetDict({name: splits[name] for name in [*order, *(n for n in splits if n not in order)]})


def _carve_rows(strata: Sequence[object] | None, n: int, wanted: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Split row indices: a seeded permutation of each stratum (or of all rows) cut into fractions."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)]
    if strata is not None:
        _, inverse, counts = np.unique([str(s) for s in strata], return_inverse=True, return_counts=True)
        groups = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    parts: dict[str, list[int]] = {name: [] for name in [*wanted, "train"]}
    for rows in groups:
        rows = rng.permutation(rows)
        start = 0
        for name, fraction in wanted.items():
            # Unstratified, a wanted split gets at least one row; per class it may get none.
            stop = start + max(round(fraction * len(rows)), int(strata is None))
            parts[name].extend(rows[start:stop].tolist())
            start = stop
        parts["train"].extend(rows[start:].tolist())
    return {name: sorted(indices) for name, indices in parts.items()}


def _carve_groups(values: Sequence[object], wanted: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Split by group: order groups by a seeded stable hash, then fill each split to its row fraction.

    hashlib (not Python's salted ``hash()``) makes the order the same in every
    process; a group's place depends only on its name and the seed.
    """
    rows_of: dict[str, list[int]] = {}
    for index, group in enumerate(values):
        rows_of.setdefault(str(group), []).append(index)
    order = sorted(rows_of, key=lambda g: hashlib.sha256(f"{seed}\0{g}".encode()).hexdigest())
    parts: dict[str, list[int]] = {name: [] for name in [*wanted, "train"]}
    names = iter(wanted.items())
    current = next(names, None)
    for group in order:
        while current and len(parts[current[0]]) >= current[1] * len(values):
            current = next(names, None)
        # Always leave at least one group for train.
        target = current[0] if current and group != order[-1] else "train"
        parts[target].extend(rows_of[group])
    return {name: sorted(indices) for name, indices in parts.items()}


def subsample(ds: datasets.Dataset, n: int | None, seed: int) -> datasets.Dataset:
    """The first ``n`` rows of a seeded shuffle (all rows when ``n`` is None or too large).

    Stable: the same seed gives the same rows, and a smaller ``n`` gives a subset
    of a larger one. Rows keep their original order, which keeps reads contiguous.
    """
    if n is None or n >= len(ds):
        return ds
    if n < 0:
        raise DataError(f"Subsample size must be >= 0, got {n}.")
    order = np.random.default_rng(seed).permutation(len(ds))
    return ds.select(np.sort(order[:n]))

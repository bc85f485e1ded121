"""The feature cache's files and datasets: per-example head inputs on disk (safetensors), and as a Dataset.

Split from :mod:`hftl.training.feature_cache` (which decides when to cache and what) so each module holds one job.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hftl.models.caching import save_tensors_atomic

CACHE_VERSION = "1"


def write_rows(path: Path, rows: Sequence[torch.Tensor]) -> None:
    """Save per-example tensors as one safetensors file (ragged rows are concatenated), atomically."""
    same = all(r.shape == rows[0].shape for r in rows)
    tensors = {
        "features": torch.stack(list(rows)) if same else torch.cat(list(rows)),
        "sizes": torch.tensor([len(r) for r in rows], dtype=torch.int64),
    }
    save_tensors_atomic(path, tensors, metadata={"layout": "stacked" if same else "ragged", "version": CACHE_VERSION})


def read_rows(path: Path) -> Sequence[torch.Tensor] | None:
    """Rows saved by :func:`write_rows`, or None when the file cannot be read (it is then rebuilt)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            layout = handle.metadata().get("layout")
        tensors = load_file(str(path))
    except (OSError, SafetensorError):
        return None
    if layout == "stacked":
        return tensors["features"]
    return torch.split(tensors["features"], tensors["sizes"].tolist())


class CachedSplit(torch.utils.data.Dataset):
    """One split as (cached head input, label) pairs.

    With ``flipped_rows`` (the features of the horizontally flipped images, ``data.augment.hflip``), each read
    returns them instead with probability 1/2, drawn from torch's global generator as the uncached collator's
    flip is (so a seeded run draws the same flips).
    """

    def __init__(
        self, rows: Sequence[torch.Tensor], labels: list[Any], flipped_rows: Sequence[torch.Tensor] | None = None
    ) -> None:
        self.rows, self.labels, self.flipped_rows = rows, labels, flipped_rows

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        if self.flipped_rows is not None and bool(torch.rand(()) < 0.5):
            return self.flipped_rows[i], self.labels[i]
        return self.rows[i], self.labels[i]

    def every_view(self) -> tuple[list[torch.Tensor], list[Any]]:
        """Every cached row with its label, each orientation once (what a closed-form head is fitted on)."""
        views = [self.rows] if self.flipped_rows is None else [self.rows, self.flipped_rows]
        return [row for view in views for row in view], self.labels * len(views)


def collate_cached(items: list[tuple[torch.Tensor, Any]]) -> dict[str, torch.Tensor]:
    """Stack (or pad, for token-level rows) the features; pad token labels with -100."""
    from torch.nn.utils.rnn import pad_sequence

    rows, labels = zip(*items)
    same = all(r.shape == rows[0].shape for r in rows)
    features = torch.stack(rows) if same else pad_sequence(list(rows), batch_first=True)
    if isinstance(labels[0], (list, tuple)):
        target = pad_sequence([torch.tensor(x, dtype=torch.long) for x in labels], batch_first=True, padding_value=-100)
    else:
        target = torch.tensor(labels, dtype=torch.long)
    return {"features": features, "labels": target}

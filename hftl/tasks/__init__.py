"""Tasks: what a recipe's ``task`` names. One registry, one small module per task.

A task knows its data roles (which columns it reads), how to turn a checkpoint
into a model with the right head, how to encode examples with the checkpoint's
own tokenizer / processor, and which metrics judge it. The training loop only
ever talks to this interface.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from hftl.registry import Registry

if TYPE_CHECKING:
    import datasets
    import torch

    from hftl.recipe import Recipe


class Task(Protocol):
    name: str
    roles: dict[str, str | None]   # data role -> default column (None: optional and off by default)
    required_roles: tuple[str, ...]
    metric: str                    # default metric for picking the best model
    pipeline_tag: str

    def check(self, recipe: "Recipe") -> None:
        """Recipe-time checks (no data or weights)."""

    def load_processor(self, recipe: "Recipe") -> Any:
        """The checkpoint's own tokenizer / image processor."""

    def label_names(self, splits: "datasets.DatasetDict", recipe: "Recipe") -> list[str]:
        """Label names from the recipe or inferred from the data."""

    def encode(self, splits: "datasets.DatasetDict", processor: Any, recipe: "Recipe",
               labels: list[str]) -> "datasets.DatasetDict":
        """Model-ready columns (tensors made by the collator)."""

    def collator(self, processor: Any, recipe: "Recipe", train: bool) -> Any:
        """Batch builder (dynamic padding, augmentation when ``train``)."""

    def build_model(self, recipe: "Recipe", labels: list[str]) -> "torch.nn.Module":
        """The pretrained checkpoint with a new head for ``labels``."""

    def compute_metrics(self, predictions: "torch.Tensor", references: "torch.Tensor",
                        labels: list[str]) -> dict[str, float]:
        """Metrics from gathered predictions (argmax ids) and references (-100 = ignore)."""


TASKS: Registry[Task] = Registry("task")


class PreparedData(NamedTuple):
    processor: Any
    labels: list[str]
    encoded: "datasets.DatasetDict"
    reports: list[str]  # bad examples skipped, one line per split


def prepare_data(recipe: "Recipe") -> PreparedData:
    """Load, split, label and encode a recipe's data with its checkpoint's processor (as a run does)."""
    task = TASKS.get(recipe.task)
    splits = task.load_splits(recipe)
    processor = task.load_processor(recipe)
    labels = task.label_names(splits, recipe)
    encoded, reports = task.encode(splits, processor, recipe, labels)
    return PreparedData(processor, labels, encoded, reports)

# Importing the task modules registers them.
from hftl.tasks import text_classification  # noqa: E402,F401
from hftl.tasks import fusion  # noqa: E402,F401
from hftl.tasks import token_classification  # noqa: E402,F401
from hftl.tasks import image_classification  # noqa: E402,F401

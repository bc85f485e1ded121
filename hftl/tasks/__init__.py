"""Tasks: what a recipe's ``task`` names. One registry, one small module per task.

A task knows its data roles (which columns it reads), how to turn a checkpoint
into a model with the right head, how to encode examples with the checkpoint's
own tokenizer / processor, how to plan a strategy over its model, what its
predictions are and which metrics judge them, how a saved run predicts, and
what the model card says about loading it. The loop, the card and the CLI only
ever talk to the :class:`Task` protocol; none of them asks for a task by name.

Adding a task: a module here with a class implementing every member of
:class:`Task`, registered at its bottom and imported at the bottom of this file,
plus its tests (``tests/test_tasks.py`` checks every registered task against
the protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from hftl.config.registry import Registry

if TYPE_CHECKING:
    import datasets
    import torch

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan


@dataclass(frozen=True)
class CardInfo:
    """What the model card says about loading a run of this task."""

    pipeline_tag: str | None  # transformers pipeline / Hub task; None: hftl's own loader
    example_input: str  # Python literal for the usage snippet
    peft_class: str | None = None  # peft AutoPeftModel* class for LoRA adapters
    pipeline_kwargs: str = ""  # extra pipeline(...) arguments, e.g. ', aggregation_strategy="first"'


@runtime_checkable
class Task(Protocol):
    name: str
    roles: dict[str, str | None]  # data role -> default column (None: optional and off by default)
    required_roles: tuple[str, ...]
    metric: str  # default metric for picking the best model
    towers: tuple[str, ...]  # sub-models planned one by one (fusion); () for a single checkpoint
    peft_task_type: str | None  # peft TaskType name for LoRA (None: peft's generic wrapper)
    card: CardInfo

    def check(self, recipe: Recipe) -> None:
        """Recipe-time checks (no data or weights)."""

    def load_splits(self, recipe: Recipe) -> datasets.DatasetDict:
        """The recipe's data as train / validation / test splits (carved and subsampled as it says)."""

    def load_processor(self, recipe: Recipe) -> Any:
        """The checkpoint's tokenizer / image processor."""

    def label_names(self, splits: datasets.DatasetDict, recipe: Recipe) -> list[str]:
        """The label set, in id order."""

    def encode(
        self, splits: datasets.DatasetDict, processor: Any, recipe: Recipe, labels: list[str]
    ) -> tuple[datasets.DatasetDict, list[str]]:
        """Model-ready columns (tensors made by the collator), and one report line per split with skipped examples."""

    def collator(self, processor: Any, recipe: Recipe, train: bool) -> Callable[[list[dict]], dict]:
        """Batch builder (dynamic padding, augmentation when ``train``)."""

    def build_model(self, recipe: Recipe, labels: list[str]) -> torch.nn.Module:
        """The pretrained checkpoint with a new head for ``labels``."""

    def plan(self, model: torch.nn.Module, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
        """The recipe's strategy over this model's layer groups."""

    def predictions(self, outputs: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions, references) of one evaluation batch, as tensors to gather across processes (-100 = ignore)."""

    def compute_metrics(
        self, predictions: torch.Tensor, references: torch.Tensor, labels: list[str]
    ) -> dict[str, float]:
        """Metrics from the gathered predictions and references."""

    def predict(self, run_dir: str | Path, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        """Labels with scores for each input, best first, from a saved run folder."""


TASKS: Registry[Task] = Registry("task")


class PreparedData(NamedTuple):
    processor: Any
    labels: list[str]
    encoded: datasets.DatasetDict
    reports: list[str]  # bad examples skipped, one line per split


def prepare_data(recipe: Recipe) -> PreparedData:
    """Load, split, label and encode a recipe's data with its checkpoint's processor (as a run does)."""
    task = TASKS.get(recipe.task)
    splits = task.load_splits(recipe)
    processor = task.load_processor(recipe)
    labels = task.label_names(splits, recipe)
    encoded, reports = task.encode(splits, processor, recipe, labels)
    return PreparedData(processor, labels, encoded, reports)


# Importing the task modules registers them.
from hftl.tasks import (  # noqa: E402
    fusion,  # noqa: E402,F401
    image_classification,  # noqa: E402,F401
    text_classification,  # noqa: E402,F401
    token_classification,  # noqa: E402,F401
)

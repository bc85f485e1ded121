"""Tasks: what a recipe's ``task`` names. One registry, one small module per task.

A task knows its data roles (which columns it reads), how to turn a checkpoint
into a model with the right head, how to encode examples with the checkpoint's
own tokenizer / processor, how to plan a strategy over its model, what its
predictions are and which metrics judge them, how a saved run predicts, and
what the model card says about loading it. The loop, the card and the CLI only
ever talk to the :class:`Task` protocol; none of them asks for a task by name.

Adding a task: a module here with a class implementing every member of
:class:`Task`, registered at its bottom (the registry, :data:`hftl.config.registry.TASKS`,
imports every module of this package on its first lookup), plus its tests
(``tests/test_extension_points.py`` checks every registered task against the protocol).
A task that classifies whole examples can take the methods such tasks share from
:mod:`hftl.tasks.classifier` (mixins of methods only; the class still declares its own attributes).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from hftl.config.registry import TASKS

if TYPE_CHECKING:
    import datasets
    import torch

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan


@dataclass(frozen=True)
class CardInfo:
    """What the model card says about loading a run of this task."""

    pipeline_tag: str | None  # transformers pipeline / Hub task; None: hftl's own loader
    example_input: str  # Python expression for the usage snippet; EXAMPLE_IMAGE: the run's example.png
    peft_class: str | None = None  # peft AutoPeftModel* class for LoRA adapters
    pipeline_kwargs: str = ""  # extra pipeline(...) arguments, e.g. ', aggregation_strategy="first"'
    pair_input: str | None = None  # the example for a run with a data.columns.text_pair column


@runtime_checkable
class Task(Protocol):
    name: str
    roles: dict[str, str | None]  # data role -> default column (None: optional and off by default)
    required_roles: tuple[str, ...]
    metric: str  # default metric for picking the best model
    problem_types: tuple[str, ...]  # the data.problem_type values it handles (single_label, multi_label, regression)
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

    def class_report(self, predictions: torch.Tensor, references: torch.Tensor, labels: list[str]) -> dict[str, Any]:
        """Per class (entity type, label) precision / recall / F1 / support, and a confusion matrix where one
        applies, of the same gathered predictions ({} when the problem has no classes)."""

    def predict(self, run_dir: str | Path, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        """Labels with scores for each input, best first, from a saved run folder."""

    def load_trained(self, run_dir: str | Path) -> tuple[torch.nn.Module, Any]:
        """The saved run's model (eval mode) and processor, for scoring new data (``hftl evaluate``)."""


class PreparedData(NamedTuple):
    processor: Any
    labels: list[str]
    encoded: datasets.DatasetDict
    reports: list[str]  # bad examples skipped, one line per split
    seconds: dict[str, float] = {}  # load (read + split), tokenize (processor + encode): a run's cost breakdown


def selection_metric(recipe: Recipe) -> str:
    """The validation metric that picks the best model: ``train.metric``, else the task's default for the
    recipe's ``data.problem_type`` (the task's own metric for single-label data)."""
    from hftl.tasks.labels import DEFAULT_METRICS

    if recipe.train.metric:
        return recipe.train.metric
    kind = recipe.data.problem_type
    return TASKS.get(recipe.task).metric if kind == "single_label" else DEFAULT_METRICS[kind]


def prepare_data(recipe: Recipe) -> PreparedData:
    """Load, split, label and encode a recipe's data with its checkpoint's processor (as a run does).

    Inside :func:`reuse_prepared_data` (a study worker), a recipe whose data, checkpoint and seed were prepared
    before gets that result again: the load and the tokenization are paid once per worker, not per trial.
    """
    import time

    import datasets

    key = _data_key(recipe) if _REUSED is not None else None
    if key is not None and key in _REUSED:
        _REUSED.move_to_end(key)
        kept = _REUSED[key]
        # a fresh DatasetDict: runs add splits to it (train.eval_sample, adaptation); the datasets are immutable
        encoded = datasets.DatasetDict(dict(kept.encoded))
        return PreparedData(kept.processor, kept.labels, encoded, kept.reports, {"load": 0.0, "tokenize": 0.0})
    task = TASKS.get(recipe.task)
    started = time.perf_counter()
    splits = task.load_splits(recipe)
    loaded = time.perf_counter()
    processor = task.load_processor(recipe)
    labels = task.label_names(splits, recipe)
    encoded, reports = task.encode(splits, processor, recipe, labels)
    seconds = {"load": loaded - started, "tokenize": time.perf_counter() - loaded}
    data = PreparedData(processor, labels, encoded, reports, seconds)
    if key is not None and _REUSED is not None:
        _REUSED[key] = PreparedData(processor, labels, datasets.DatasetDict(dict(encoded)), reports, seconds)
        while len(_REUSED) > REUSE_LIMIT:
            _REUSED.popitem(last=False)
    return data


# Prepared data kept by reuse_prepared_data: a grid's trials of one (size, seed) across strategies share it.
REUSE_LIMIT = 8
_REUSED: collections.OrderedDict[str, PreparedData] | None = None


@contextlib.contextmanager
def reuse_prepared_data() -> Iterator[None]:
    """Keep the last few prepared datasets in this process (the study engine's workers run trials in a row)."""
    global _REUSED
    outer, _REUSED = _REUSED, collections.OrderedDict() if _REUSED is None else _REUSED
    try:
        yield
    finally:
        _REUSED = outer


def _data_key(recipe: Recipe) -> str:
    """What the prepared data depends on: the task, the data section, the checkpoint (its processor), the seed
    (it draws the training subset and carves the splits). Not the strategy, optimizer, schedule or output, nor
    model.pretrained (random weights use the same processor)."""
    import json

    model = recipe.model.model_dump(mode="json", exclude={"pretrained"})
    doc = {"task": recipe.task, "model": model, "data": recipe.data.model_dump(mode="json"), "seed": recipe.train.seed}
    return json.dumps(doc, sort_keys=True, default=str)


__all__ = ["TASKS", "CardInfo", "PreparedData", "Task", "prepare_data"]

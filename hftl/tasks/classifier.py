"""What the tasks that classify whole examples share: two small mixins of methods.

Text and image classification, and fusion, predict per example one label, a 0/1 label set or a number
(``data.problem_type``), and judge those predictions alike (:class:`PerExampleEvaluation`). The two
single-checkpoint tasks also read their labels and plan the recipe's strategy alike
(:class:`SingleCheckpointClassifier`). The mixins hold methods only: each task still declares everything its
registry entry describes (name, roles, metric, problem types, towers, card) in its own class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hftl.tasks import labels as label_kinds
from hftl.tasks.common import argmax_predictions, column, load_splits

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import DataSection, Recipe
    from hftl.strategies.plan import Plan


class PerExampleEvaluation:
    """Predictions, metrics and per-class report of a task with one target per example (a label, a 0/1 label
    set, or a number)."""

    def predictions(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        return argmax_predictions(outputs, batch)

    def compute_metrics(self, predictions: Any, references: Any, labels: list[str]) -> dict[str, float]:
        """The problem type's metrics (hftl's evaluate modules): accuracy + macro F1, micro/macro F1, or RMSE & co."""
        from hftl.metrics import classification_scores

        return classification_scores(predictions, references)

    def class_report(self, predictions: Any, references: Any, labels: list[str]) -> dict[str, Any]:
        from hftl.metrics import class_report

        return class_report(predictions, references, labels)


class SingleCheckpointClassifier(PerExampleEvaluation):
    """A classifier built on one checkpoint: its labels come from the ``label`` role's column (or the set built
    from ``data.label_columns``), and the recipe's strategy is planned over the model's own layer groups."""

    name: str
    roles: dict[str, str | None]
    required_roles: tuple[str, ...]

    def load_splits(self, recipe: Recipe) -> datasets.DatasetDict:
        """The recipe's splits, ``data.label_columns`` (0/1 columns) joined into one label-set column.

        The columns checked: the required roles' (the label's only without ``data.label_columns``) and those of
        the optional roles (default column None, e.g. a second text) the recipe maps.
        """
        data = recipe.data
        needed = tuple(role for role in self.required_roles if not (role == "label" and data.label_columns))
        optional = [role for role, default in self.roles.items() if default is None]
        needed += tuple(role for role in optional if column(data, self.roles, role))
        splits = load_splits(recipe, self.roles, needed, task=self.name)
        return label_kinds.add_label_set(splits, data, recipe.source_file)

    def label_column(self, data: DataSection) -> str:
        return label_kinds.label_column_of(data, column(data, self.roles, "label"))

    def label_names(self, splits: datasets.DatasetDict, recipe: Recipe) -> list[str]:
        return label_kinds.label_names(splits, recipe.data, self.label_column(recipe.data), recipe.source_file)

    def plan(self, model: Any, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
        from hftl.strategies.plan import plan_model

        return plan_model(model, recipe, steps_per_epoch, total_steps)

"""Recipe-time checks of the training levers that suit only some tasks: label smoothing, mixup, auto augmentation.

Each lever is off by default; set on a task where it means nothing, it stops the run before anything is loaded,
naming the key and the fix. Called from :func:`hftl.config.recipe.check_recipe` with the recipe's task (only its
``roles`` and ``towers`` are read, so this layer imports no task code).
"""

from __future__ import annotations

from typing import Any

from hftl.config.errors import RecipeError
from hftl.config.schema import Recipe


def check_levers(recipe: Recipe, task: Any) -> None:
    """``train.label_smoothing``, ``train.mixup`` and ``data.augment.auto`` / ``zoom`` / ``low_resolution`` fit the
    task and the problem type."""
    file, kind, train = recipe.source_file, recipe.data.problem_type, recipe.train
    images = "image" in task.roles and not task.towers
    smoothing = train.label_smoothing
    if smoothing > 0 and kind != "single_label":
        raise RecipeError(
            file,
            "train.label_smoothing",
            f"smooths one class per example; data.problem_type is {kind}",
            smoothing,
            hint="Remove train.label_smoothing (or set it to 0).",
        )
    if train.mixup is not None and not (images and kind == "single_label"):
        what = f"task '{recipe.task}'" if not images else f"data.problem_type {kind}"
        raise RecipeError(
            file,
            "train.mixup",
            f"mixes images and their one-class targets (single-label image classification), not {what}",
            hint="Remove train.mixup.",
        )
    for key, on in (("train.label_smoothing", smoothing > 0), ("train.mixup", train.mixup is not None)):
        if on and recipe.strategy.adaptation is not None:
            raise RecipeError(
                file,
                key,
                "is not combined with strategy.adaptation (its loss is the model's own on the merged batch)",
                hint="Remove one of them.",
            )
    augment = recipe.data.augment
    for name in ("auto", "zoom", "low_resolution"):
        value = getattr(augment, name)
        if value is not None and "image" not in task.roles:
            raise RecipeError(
                file,
                f"data.augment.{name}",
                f"augments images; task '{recipe.task}' reads none",
                value.model_dump() if hasattr(value, "model_dump") else value,
                hint=f"Remove data.augment.{name}.",
            )

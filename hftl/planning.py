"""From a built model to a strategy :class:`~hftl.strategies.Plan`; shared by ``hftl run`` and ``hftl plan``."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from hftl.recipe import Recipe
    from hftl.strategies import Plan


def count_steps(recipe: "Recipe", n_batches: int, num_processes: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``n_batches`` training batches split over the processes."""
    per_process = math.ceil(n_batches / num_processes)
    steps_per_epoch = max(1, math.ceil(per_process / recipe.train.grad_accum))
    return steps_per_epoch, recipe.train.max_steps or math.ceil(recipe.train.epochs * steps_per_epoch)


def make_plan(model: "torch.nn.Module", recipe: "Recipe", steps_per_epoch: int, total_steps: int) -> "Plan":
    """Map the model's layer groups and plan the recipe's strategy over them."""
    from hftl.layers import map_layer_groups
    from hftl.strategies import plan_strategy
    from hftl.tasks import TASKS

    task = TASKS.get(recipe.task)
    if hasattr(task, "plan"):  # models made of several checkpoints (fusion) plan each part themselves
        return task.plan(model, recipe, steps_per_epoch, total_steps)
    custom = [(g.name, g.patterns) for g in recipe.strategy.layer_groups or []] or None
    groups = map_layer_groups(model, custom=custom)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return plan_strategy(groups, recipe, steps_per_epoch, total_steps, trainable=trainable)


def describe_plan(recipe: "Recipe", num_processes: int = 1) -> str:
    """Load data and model (no training) and format the plan table."""
    from hftl.loop_utils import wrap_lora
    from hftl.strategies import format_plan
    from hftl.tasks import TASKS

    task = TASKS.get(recipe.task)
    splits = task.load_splits(recipe)
    labels = task.label_names(splits, recipe)
    model = wrap_lora(task.build_model(recipe, labels), recipe)
    n_batches = math.ceil(len(splits["train"]) / recipe.train.batch_size)
    plan = make_plan(model, recipe, *count_steps(recipe, n_batches, num_processes))
    return format_plan(plan, model)

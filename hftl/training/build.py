"""Set-up of a run, one builder per thing the loop needs: data, model, loaders, plan, optimizer, scheduler.

``hftl run`` (:mod:`hftl.training.train`) and ``hftl plan`` build through the same
functions, so the plan a user inspects is the plan a run applies.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from hftl.config.schema import OptimSection, Recipe
    from hftl.strategies.plan import Plan
    from hftl.tasks import PreparedData, Task
    from hftl.training.hooks import ExtraGroup


VALIDATION_SAMPLE = "validation_sample"  # train.eval_sample: what the loop's evaluations score


def load_data(recipe: Recipe, accelerator: Any) -> PreparedData:
    """Load, split, label and encode the data (the main process fills the datasets cache first)."""
    from hftl.data.splits import subsample
    from hftl.tasks import prepare_data

    with accelerator.main_process_first():
        data = prepare_data(recipe)
    validation, cap = data.encoded.get("validation"), recipe.train.eval_sample
    if validation is not None and cap is not None and cap < len(validation):
        # the same rows for every seed when the split is fixed (data.split_seed), like the split itself
        data.encoded[VALIDATION_SAMPLE] = subsample(validation, cap, recipe.data.evaluation_seed(recipe.train.seed))
    from hftl.config.log import say

    for report in data.reports:
        say(f"[data] {report}", logging.WARNING)
    if len(data.encoded["train"]) == 0:
        raise HftlError(f"{recipe.source_file}: the training split is empty after filtering bad examples.")
    return data


def build_model(recipe: Recipe, task: Task, labels: list[str]) -> torch.nn.Module:
    """The checkpoint with the task's head, as the strategy trains it (e.g. wrapped with LoRA adapters)."""
    from hftl.strategies import wrap_model

    model = task.build_model(recipe, labels)
    if recipe.train.gradient_checkpointing:
        enable_gradient_checkpointing(model, recipe)
    return wrap_model(model, recipe)


def use_channels_last(model: torch.nn.Module, accelerator: Any) -> None:
    """A convolutional model on CPU trains in channels-last memory format, oneDNN's fast path: an EfficientNet-Lite0
    training step at 64 px is 1.72x faster (``python benchmarks/channels_last.py``); the weights' values are
    unchanged. Not on GPUs (not measured here) and not when FSDP / DeepSpeed shard the weights (they flatten them)."""
    import torch

    from hftl.training.training_state import is_sharded

    if accelerator.device.type != "cpu" or is_sharded(accelerator):
        return
    if is_convolutional(model):
        model.to(memory_format=torch.channels_last)


def is_convolutional(model: torch.nn.Module) -> bool:
    """Whether the model has 2-d convolutions (a CNN, or a transformer's patch embedding): trained in channels-last
    on CPU (:func:`use_channels_last`)."""
    from torch import nn

    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def enable_gradient_checkpointing(model: torch.nn.Module, recipe: Recipe) -> None:
    """transformers' activation checkpointing (non-reentrant: frozen inputs and LoRA work), or a clear refusal."""
    from hftl.config.errors import RecipeError

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise RecipeError(
            recipe.source_file,
            "train.gradient_checkpointing",
            f"is not supported by this model ({type(model).__name__})",
            True,
            hint="Set train.gradient_checkpointing: false.",
        )
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def build_loaders(recipe: Recipe, task: Task, data: PreparedData) -> tuple[Any, dict[str, Any]]:
    """Training loader (length-grouped, seeded per epoch, so a resumed run sees the same batches) + eval loaders."""
    import torch

    from hftl.training.batching import LengthGroupedBatchSampler, LengthSortedBatchSampler

    train = data.encoded["train"]
    sampler = LengthGroupedBatchSampler(
        _lengths(train),
        recipe.train.batch_size,
        seed=recipe.train.seed,
        group_by_length=recipe.train.group_by_length,
        n=len(train),
    )
    # Each loader has its own generator: starting an iterator then draws no number from the global RNG, so
    # dropout sees the same random stream whether a run was resumed mid-epoch or not.
    workers = loader_workers(recipe.train.num_workers)
    on_gpu = torch.cuda.is_available()
    train_dl = torch.utils.data.DataLoader(
        train,
        batch_sampler=sampler,
        generator=torch.Generator(),
        collate_fn=task.collator(data.processor, recipe, train=True),
        num_workers=workers,
        pin_memory=on_gpu,
        persistent_workers=workers > 0,
    )
    eval_bs = recipe.train.eval_batch_size or recipe.train.batch_size * 2
    eval_dls = {
        split: torch.utils.data.DataLoader(
            data.encoded[split],
            batch_sampler=LengthSortedBatchSampler(_lengths(data.encoded[split]), eval_bs, n=len(data.encoded[split])),
            generator=torch.Generator(),
            collate_fn=task.collator(data.processor, recipe, train=False),
            num_workers=workers,
            pin_memory=on_gpu,
        )
        for split in ("validation", "test", "target_test", VALIDATION_SAMPLE)
        if split in data.encoded
    }  # target: adaptation; the validation sample: train.eval_sample
    return train_dl, eval_dls


def _lengths(split: Any) -> list[int] | None:
    """Token counts of a tokenized split (its ``length`` column), None for inputs without one (images)."""
    return split["length"] if "length" in split.column_names else None


def loader_workers(num_workers: int | None) -> int:
    """``train.num_workers``, or its default: none on CPU (they would take cores from the model), else up to 4."""
    import os

    import torch

    if num_workers is not None:
        return num_workers
    if not torch.cuda.is_available():
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return min(4, max(0, (os.cpu_count() or 1) // max(1, local) - 1))


def plan_for(model: torch.nn.Module, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
    """The recipe's plan over an already built model, for given step counts (``hftl plan``, tests, benchmarks)."""
    from hftl.tasks import TASKS

    return TASKS.get(recipe.task).plan(model, recipe, steps_per_epoch, total_steps)


def build_plan(model: torch.nn.Module, recipe: Recipe, task: Task, n_batches: int, num_processes: int) -> Plan:
    """The strategy's plan over the model; everything that will ever train is made trainable now (before DDP wraps)."""
    from hftl.strategies.plan import count_steps

    plan = task.plan(model, recipe, *count_steps(recipe, n_batches, num_processes))
    from hftl.training.adaptation import check_adaptation_plan

    check_adaptation_plan(recipe, plan)  # strategy.adaptation needs a body that trains
    ever = plan.ever_trainable()
    for name, param in model.named_parameters():
        param.requires_grad_(name in ever)
    return plan


def build_optimizer(
    model: torch.nn.Module, plan: Plan, optim: OptimSection, extra: Sequence[ExtraGroup] = ()
) -> tuple[Any, list[str]]:
    """The optimizer ``optim.name`` names (AdamW by default, :mod:`hftl.training.optimizers`) over every parameter
    that will ever train: one param group per (layer group, decay or not).

    Biases and normalisation weights (1-d tensors) get no weight decay. ``extra``: groups a run hook trains
    beside the model (DANN's domain classifier), after the plan's. Returns the optimizer and the layer-group
    name of each of the plan's param groups (for the LR lambdas and the logged LRs).
    """
    from hftl.training.optimizers import make_optimizer

    params = dict(model.named_parameters())
    groups, names = [], []
    for group in plan.groups:
        if group.start_step is None:
            continue
        decay = [params[p] for p in group.params if params[p].ndim > 1]
        no_decay = [params[p] for p in group.params if params[p].ndim <= 1]
        for chunk, wd, suffix in ((decay, group.weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if chunk:
                groups.append({"params": chunk, "lr": group.lr, "weight_decay": wd, "name": group.name + suffix})
                names.append(group.name)
    groups += [{"params": g.params, "lr": g.lr, "weight_decay": g.weight_decay, "name": g.name} for g in extra]
    return make_optimizer(groups, optim), names


def build_scheduler(optimizer: Any, plan: Plan, group_names: list[str], extra: Sequence[ExtraGroup] = ()) -> Any:
    """LambdaLR from the plan alone: shared schedule x each group's join factor (a pure function of the step);
    each of the ``extra`` groups on its own schedule."""
    import torch

    from hftl.strategies.plan import lr_lambdas

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(plan, group_names) + [g.schedule for g in extra])


def set_step_lrs(optimizer: Any, scheduler: Any, step: int) -> None:
    """Put the LambdaLR scheduler (a pure function of the step) at ``step``, e.g. after resume."""
    scheduler.last_epoch = step
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = group["initial_lr"] * fn(step)


def describe_plan(recipe: Recipe, num_processes: int = 1) -> str:
    """Load data and model (no training) and format the plan table, as ``hftl run`` would apply it
    (``strategy.name: auto`` resolved by the caller, as for a run)."""
    from hftl.strategies.plan import format_plan
    from hftl.tasks import TASKS

    task = TASKS.get(recipe.task)
    splits = task.load_splits(recipe)
    model = build_model(recipe, task, task.label_names(splits, recipe))
    plan = build_plan(model, recipe, task, math.ceil(len(splits["train"]) / recipe.train.batch_size), num_processes)
    from hftl.training.adaptation import describe_adaptation

    adaptation = describe_adaptation(recipe.model_dump(mode="json"))
    return format_plan(plan, model) + "\n" + describe_model(model) + (f"\n  {adaptation}" if adaptation else "")


def describe_model(model: torch.nn.Module) -> str:
    """One line on what the head reads (pooling) and whether the body starts pretrained."""
    from hftl.models.pretrained import describe_head_input

    config = model.config.to_dict() if hasattr(model, "config") else {}
    return f"  head input: {describe_head_input(config)}"

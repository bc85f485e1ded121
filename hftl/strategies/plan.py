"""The :class:`Plan`: a strategy applied to a model's layer groups, as a pure function of the step.

A plan answers, for every layer group, *from which optimizer step does it train*
and *at what peak LR*, and it holds the schedule shared by every group (kind,
warmup, total steps). Everything the loop needs follows from it: which
parameters require grad at step ``s``, each group's LR multiplier at step ``s``,
and which groups are frozen (and so run in eval mode). Because the answer
depends on the step alone, every process computes the same stage, and a resumed
run needs nothing saved beyond the step.

Why the optimizer holds every parameter that will *ever* train, from step 0:
under DDP a parameter must require grad when ``accelerator.prepare`` wraps the
model or its gradients are never synchronised (measured: a layer frozen before
wrapping and unfrozen later drifts apart across ranks). So everything that will
train is trainable at ``prepare`` time, the wrapper is built with
``find_unused_parameters=True`` when the trainable set changes mid-run, and a
frozen-for-now group simply has ``requires_grad=False`` (no gradient, so AdamW
skips it: weights bitwise unchanged) and an LR multiplier of 0. Stage changes
never add optimizer param groups, so a checkpoint's optimizer state always fits.
tests/test_distributed.py proves it on 2 CPU processes; tests/test_strategies.py
checks every (strategy x architecture) step by step and resumes a run killed
mid-schedule.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from hftl.config.errors import RecipeError
from hftl.strategies import STRATEGIES, Where

if TYPE_CHECKING:
    import torch

    from hftl.config.schema import OptimSection, Recipe, StrategySection
    from hftl.models.layers import LayerGroup


@dataclass(frozen=True)
class GroupPlan:
    """One layer group's part of the plan."""

    name: str
    depth: int
    is_head: bool
    params: tuple[str, ...]  # parameters of this group that train (from start_step on)
    frozen_params: tuple[str, ...]  # parameters of this group that never train
    modules: tuple[str, ...]
    lr: float  # peak LR, before the shared warmup/decay schedule
    start_step: int | None  # first optimizer step it trains at; None = never
    warmup_steps: int = 0  # LR ramp after start_step (groups that join late)
    weight_decay: float = 0.0  # AdamW decay of its weight matrices (biases and norm weights get 0)

    def factor(self, step: int) -> float:
        """This group's LR multiplier at ``step`` (0 while frozen, ramping after it joins)."""
        if self.start_step is None or step < self.start_step:
            return 0.0
        if self.warmup_steps and self.start_step > 0:
            return min(1.0, (step - self.start_step + 1) / self.warmup_steps)
        return 1.0


@dataclass(frozen=True)
class Plan:
    """The strategy actually applied: per-group LRs, when each group trains, and the shared schedule."""

    strategy: str
    groups: tuple[GroupPlan, ...]
    steps_per_epoch: int
    total_steps: int
    batchnorm: str = "frozen"
    scheduler: str = "linear"  # the schedule shared by every group (times each group's join factor)
    warmup_steps: int = 0  # optimizer steps of the shared warmup
    options: dict = field(default_factory=dict)  # the recipe's strategy section as applied (decay factors, ...)

    def trainable_at(self, step: int) -> list[GroupPlan]:
        return [g for g in self.groups if g.start_step is not None and g.start_step <= step]

    def trainable_params_at(self, step: int) -> set[str]:
        return {p for g in self.trainable_at(step) for p in g.params}

    def ever_trainable(self) -> set[str]:
        return {p for g in self.groups if g.start_step is not None for p in g.params}

    @property
    def stage_starts(self) -> list[int]:
        """Optimizer steps at which the trainable set changes (0 first)."""
        return sorted({g.start_step for g in self.groups if g.start_step is not None})

    @property
    def changes_mid_run(self) -> bool:
        return len(self.stage_starts) > 1

    def frozen_for_whole_run(self) -> list[GroupPlan]:
        return [g for g in self.groups if g.start_step is None or g.start_step >= self.total_steps]

    def stages(self) -> list[dict]:
        """One entry per change of the trainable set: from which step (and epoch) which groups train."""
        return [
            {"step": s, "epoch": round(s / self.steps_per_epoch, 4), "groups": [g.name for g in self.trainable_at(s)]}
            for s in self.stage_starts
        ]

    def schedule(self, step: int) -> float:
        """The multiplier shared by every group at ``step``: warmup, then linear / cosine decay or constant."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.scheduler == "constant":
            return 1.0
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    def to_dict(self) -> dict:
        """The applied strategy for ``plan.json`` and the model card: groups, LRs, decay factors, stages."""
        return {**asdict(self), "stages": self.stages()}


# --------------------------------------------------------------------------- planning
def count_steps(recipe: Recipe, n_batches: int, num_processes: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for ``n_batches`` training batches split over the processes.

    The budget is ``max_steps`` when given, else ``epochs``, extended to ``min_steps`` at small data.
    """
    per_process = math.ceil(n_batches / num_processes)
    steps_per_epoch = max(1, math.ceil(per_process / recipe.train.grad_accum))
    t = recipe.train
    return steps_per_epoch, t.max_steps or max(math.ceil(t.epochs * steps_per_epoch), t.min_steps)


def warmup_steps(optim: OptimSection, total_steps: int) -> int:
    """Optimizer steps of the shared warmup: ``warmup_steps`` when given, else ``warmup_ratio`` of the run."""
    return optim.warmup_steps if optim.warmup_steps is not None else round(optim.warmup_ratio * total_steps)


def layer_groups_of(model: torch.nn.Module, section: StrategySection, prefix: str = "") -> list[LayerGroup]:
    """The model's layer groups, input to head: the recipe's own regex groups when it gives them, else mapped."""
    from hftl.models.layers import map_layer_groups

    custom = [(g.name, g.patterns) for g in section.layer_groups or []] or None
    return map_layer_groups(model, custom=custom, prefix=prefix)


def plan_model(model: torch.nn.Module, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
    """Map a single model's layer groups and plan the recipe's strategy over them (peft's frozen weights stay so)."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return plan_strategy(
        layer_groups_of(model, recipe.strategy), recipe, steps_per_epoch, total_steps, trainable=trainable
    )


def plan_strategy(
    groups: list[LayerGroup],
    recipe: Recipe,
    steps_per_epoch: int,
    total_steps: int,
    trainable: set[str] | None = None,
    section: StrategySection | None = None,
    key: str = "strategy",
) -> Plan:
    """Turn a strategy section (default: the recipe's) into a :class:`Plan` for these layer groups.

    ``trainable`` is the set of parameter names allowed to train at all (peft
    freezes everything but adapters and ``modules_to_save``); default: all.
    ``key`` is where the section sits in the recipe (a fusion tower's is deeper).
    """
    section = section or recipe.strategy
    spec = STRATEGIES.get(section.name)
    options = spec.options_of(section)
    where = Where(recipe.source_file, f"{key}.{section.name}")
    starts = spec.start_steps(groups, options, steps_per_epoch, total_steps, where)
    lrs = group_lrs(groups, recipe, section, key)
    frozen_one_by_one = spec.frozen_params(groups, options, where) if spec.frozen_params else set()
    join_warmup = spec.join_warmup(options) if spec.join_warmup else 0
    plans = []
    for depth, (group, start, lr) in enumerate(zip(groups, starts, lrs)):
        allowed = [p for p in group.params if (trainable is None or p in trainable) and p not in frozen_one_by_one]
        frozen = tuple(p for p in group.params if p not in allowed)
        if spec.lr_scale:
            lr *= spec.lr_scale(group, options)
        plans.append(
            GroupPlan(
                group.name,
                depth,
                group.is_head,
                tuple(allowed),
                frozen,
                tuple(group.modules),
                lr,
                start if allowed else None,
                join_warmup,
                recipe.optim.weight_decay,
            )
        )
    optim = recipe.optim
    applied = {
        **section.model_dump(mode="json", exclude_none=True, exclude={"towers", "layer_groups"}),
        "lr": optim.lr,
        "head_lr": optim.head_lr,
    }
    plan = Plan(
        section.name,
        tuple(plans),
        steps_per_epoch,
        total_steps,
        section.batchnorm,
        optim.scheduler,
        warmup_steps(optim, total_steps),
        applied,
    )
    if late := [g for g in plan.groups if g.start_step is not None and g.start_step >= total_steps]:
        raise RecipeError(
            recipe.source_file,
            f"{key}.{section.name}",
            f"the schedule is longer than the run ({total_steps} optimizer steps, {steps_per_epoch} per "
            f"epoch): {', '.join(f'{g.name} (from step {g.start_step})' for g in late)} would never train",
            hint="Train longer (train.epochs), unfreeze sooner (every / unit / groups_per_stage / "
            "head_epochs), or stop earlier (progressive.until).",
        )
    if not plan.ever_trainable():
        raise RecipeError(
            recipe.source_file,
            key,
            f"'{section.name}' leaves no parameter to train",
            hint="Check strategy.partial (it may freeze everything, the head included).",
        )
    return plan


def group_lrs(groups: list[LayerGroup], recipe: Recipe, section: StrategySection, key: str = "strategy") -> list[float]:
    """Peak LR per group, input first: flat, layer-wise decayed from the head, or discriminative.

    - flat: ``optim.lr`` for the body, ``optim.head_lr`` (default ``optim.lr``) for the head;
    - ``llrd.decay``: body group at distance d from the head gets ``optim.lr * decay**d``;
    - ``discriminative.lrs``: one LR per group, head included; ``discriminative.range: [lo, hi]``:
      spread geometrically from lo (input group) to hi (head), like fastai's ``slice(lo, hi)``.
    """
    lr, head_lr = recipe.optim.lr, recipe.optim.head_lr or recipe.optim.lr
    disc = section.discriminative
    if disc is not None and disc.lrs is not None:
        if len(disc.lrs) != len(groups):
            raise RecipeError(
                recipe.source_file,
                f"{key}.discriminative.lrs",
                f"needs one LR per layer group, {len(groups)} here ({', '.join(g.name for g in groups)})",
                disc.lrs,
                hint="Or use range: [lo, hi] to spread LRs over the groups.",
            )
        return list(disc.lrs)
    if disc is not None:
        lo, hi = disc.range
        return [lo * (hi / lo) ** (depth / max(1, len(groups) - 1)) for depth in range(len(groups))]
    n_body = sum(not g.is_head for g in groups)
    if section.llrd is None:
        return [head_lr if g.is_head else lr for g in groups]
    return [head_lr if g.is_head else lr * section.llrd.decay ** (n_body - depth) for depth, g in enumerate(groups)]


# --------------------------------------------------------------------------- applying
def lr_lambdas(plan: Plan, param_group_names: list[str]) -> list[Callable[[int], float]]:
    """One LambdaLR multiplier per optimizer param group: the plan's shared schedule x the group's join factor."""
    by_name = {g.name: g for g in plan.groups}
    return [lambda step, g=by_name[name]: plan.schedule(step) * g.factor(step) for name in param_group_names]


def apply_plan(model: torch.nn.Module, plan: Plan, step: int) -> None:
    """Set requires_grad and train/eval mode for ``step`` (call after every ``model.train()``).

    Frozen groups run in eval mode: their dropout is off (faster, deterministic
    features) and, with ``batchnorm: frozen``, BatchNorm statistics stay fixed.
    A BatchNorm whose own weights are frozen inside a training group (partial
    freezing by pattern, LoRA) keeps its statistics fixed too: frozen means frozen.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    trainable = plan.trainable_params_at(step)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    if not model.training:
        return
    modules = dict(model.named_modules())
    for group in plan.groups:
        if group.start_step is not None and group.start_step <= step:
            continue
        for module_name in group.modules:
            module = modules[module_name]
            if plan.batchnorm in ("frozen", "eval"):
                module.eval()
            else:  # keep BatchNorm in train mode (statistics update), the rest in eval mode
                for sub in module.modules():
                    sub.train(isinstance(sub, _BatchNorm))
    if plan.batchnorm in ("frozen", "eval"):
        for module in modules.values():
            frozen = not any(p.requires_grad for p in module.parameters())
            if isinstance(module, _BatchNorm) and (frozen or plan.batchnorm == "eval"):
                module.eval()


def format_plan(plan: Plan, model: torch.nn.Module | None = None) -> str:
    """The table a user needs to trust a strategy: group, depth, params, LR, weight decay, when it trains."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    sizes = {n: p.numel() for n, p in model.named_parameters()} if model is not None else {}

    def count(names) -> int:
        return sum(sizes.get(p, 0) for p in names)

    per_epoch = plan.steps_per_epoch
    table = Table(title=f"strategy: {plan.strategy}  ({plan.total_steps} optimizer steps, {per_epoch} per epoch)")
    for col in ("group", "depth", "params", "trainable", "peak LR", "weight decay", "trains"):
        table.add_column(col, justify="left" if col in ("group", "trains") else "right")
    for g in plan.groups:
        trains = g.start_step is not None
        if not trains:
            when = "never (frozen)"
        elif g.start_step == 0:
            when = f"steps 0-{plan.total_steps - 1}"
        else:
            when = f"from step {g.start_step} (epoch {g.start_step / per_epoch:.3g})"
            when += f", LR ramp over {g.warmup_steps} steps" if g.warmup_steps else ""
        table.add_row(
            g.name + (" (head)" if g.is_head and g.name != "head" else ""),
            str(g.depth),
            f"{count(g.params + g.frozen_params):,}",
            f"{count(g.params):,}" if trains else "0",
            f"{g.lr:.2e}" if trains else "-",
            f"{g.weight_decay:g}" if trains else "-",
            when,
        )
    lines = []
    for i, stage in enumerate(plan.stages()):
        new = [g.name for g in plan.groups if g.start_step == stage["step"]]
        lines.append(
            f"  stage {i}, from step {stage['step']} (epoch {stage['epoch']:.3g}): "
            f"{count(plan.trainable_params_at(stage['step'])):,} trainable parameters (+{', '.join(new)})"
        )
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False).print(table)
    shared = (
        f"  LR schedule (all groups): {plan.scheduler}, {plan.warmup_steps} warmup steps; weight decay applies to "
        f"weight matrices (biases and norm weights: 0); batchnorm in frozen groups: {plan.batchnorm}"
    )
    return buf.getvalue() + "\n".join(lines) + "\n" + shared

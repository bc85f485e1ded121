"""Transfer strategies as pure functions of (layer groups, recipe, step).

A strategy answers two questions for every layer group: *from which optimizer
step does it train* (``None``: never) and *at what peak LR*. Everything the loop
needs follows from that :class:`Plan`: which parameters require grad at step
``s``, each group's LR multiplier at step ``s``, and which groups are frozen (and
so run in eval mode). Because the answer depends on the step alone, every
process computes the same stage, and a resumed run needs nothing saved beyond
the step.

Why the optimizer holds every parameter that will *ever* train, from step 0:
under DDP a parameter must require grad when ``accelerator.prepare`` wraps the
model or its gradients are never synchronised (measured: a layer frozen before
wrapping and unfrozen later drifts apart across ranks). So everything that will
train is trainable at ``prepare`` time, the wrapper is built with
``find_unused_parameters=True`` when the trainable set changes mid-run, and a
frozen-for-now group simply has ``requires_grad=False`` (no gradient, so AdamW
skips it: weights bitwise unchanged) and an LR multiplier of 0. Stage changes
never add optimizer param groups, so a checkpoint's optimizer state always fits.
tests/test_distributed.py proves it on 2 CPU processes (ranks bitwise identical
after every stage; with only the head trainable at ``prepare`` they drift by 3e-2);
tests/test_strategies.py checks every (strategy x architecture) step by step and
resumes a run killed mid-schedule.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

from hftl.errors import RecipeError
from hftl.registry import Registry, did_you_mean

if TYPE_CHECKING:
    from hftl.layers import LayerGroup
    from hftl.recipe import Recipe, StrategySection


@dataclass(frozen=True)
class GroupPlan:
    """One layer group's part of the plan."""

    name: str
    depth: int
    is_head: bool
    params: tuple[str, ...]          # parameters of this group that train (from start_step on)
    frozen_params: tuple[str, ...]   # parameters of this group that never train
    modules: tuple[str, ...]
    lr: float                        # peak LR, before the shared warmup/decay schedule
    start_step: int | None           # first optimizer step it trains at; None = never
    warmup_steps: int = 0            # LR ramp after start_step (progressive / two-stage joins)
    weight_decay: float = 0.0        # AdamW decay of its weight matrices (biases and norm weights get 0)

    def factor(self, step: int) -> float:
        """This group's LR multiplier at ``step`` (0 while frozen, ramping after it joins)."""
        if self.start_step is None or step < self.start_step:
            return 0.0
        if self.warmup_steps and self.start_step > 0:
            return min(1.0, (step - self.start_step + 1) / self.warmup_steps)
        return 1.0


@dataclass(frozen=True)
class Plan:
    """The strategy actually applied: per-group LRs and when each group trains."""

    strategy: str
    groups: tuple[GroupPlan, ...]
    steps_per_epoch: int
    total_steps: int
    batchnorm: str = "frozen"
    scheduler: str = "linear"        # the schedule shared by every group (times each group's join factor)
    warmup_steps: int = 0            # optimizer steps of the shared warmup
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
        return [{"step": s, "epoch": round(s / self.steps_per_epoch, 4),
                 "groups": [g.name for g in self.trainable_at(s)]} for s in self.stage_starts]

    def to_dict(self) -> dict:
        """The applied strategy for ``plan.json`` and the model card: groups, LRs, decay factors, stages."""
        return {**asdict(self), "stages": self.stages()}


# --------------------------------------------------------------------------- registry
# A strategy maps (groups, section, steps_per_epoch, total_steps) to one start step per group (None: never).
StartSteps = Callable[["list[LayerGroup]", "StrategySection", int, int], "list[int | None]"]
STRATEGIES: Registry[StartSteps] = Registry("strategy")


@STRATEGIES.register("full")
def full_finetuning(groups, section, steps_per_epoch, total_steps):
    """Every group trains from the first step (use optim.lr low, optim.head_lr higher)."""
    return [0 for _ in groups]


@STRATEGIES.register("feature_extraction")
def feature_extraction(groups, section, steps_per_epoch, total_steps):
    """The pretrained body is frozen; only the new head trains."""
    return [0 if g.is_head else None for g in groups]


@STRATEGIES.register("partial")
def partial_freezing(groups, section, steps_per_epoch, total_steps):
    """Freeze the first N body groups (or a fraction of them); patterns freeze single parameters instead."""
    opts = section.partial
    body = [g.name for g in groups if not g.is_head]
    if opts.freeze_patterns is not None:
        return [0 for _ in groups]  # applied per parameter in plan_strategy
    n = opts.freeze_groups if opts.freeze_groups is not None else math.floor(opts.freeze_fraction * len(body))
    if n > len(body):
        raise RecipeError(None, "strategy.partial.freeze_groups", f"asks to freeze {n} groups but the model has only "
                          f"{len(body)} body groups ({', '.join(body)})", hint=f"Use at most {len(body)}.")
    return [None if (i < n and not g.is_head) else 0 for i, g in enumerate(groups)]


@STRATEGIES.register("two_stage")
def two_stage(groups, section, steps_per_epoch, total_steps):
    """Head alone for ``two_stage.head_epochs`` epochs, then every group."""
    start = max(1, round(section.two_stage.head_epochs * steps_per_epoch))
    return [0 if g.is_head else start for g in groups]


@STRATEGIES.register("progressive")
def progressive_unfreezing(groups, section, steps_per_epoch, total_steps):
    """Head first; then ``groups_per_stage`` more body groups from the top every ``every`` epochs or steps."""
    opts = section.progressive
    unit = steps_per_epoch if opts.unit == "epoch" else 1
    body = [i for i, g in enumerate(groups) if not g.is_head]
    if opts.until is not None and opts.until > len(body):
        raise RecipeError(None, "strategy.progressive.until", f"asks to unfreeze {opts.until} body groups but the "
                          f"model has only {len(body)} ({', '.join(groups[i].name for i in body)})", opts.until,
                          hint=f"Use at most {len(body)}, or leave it out to unfreeze them all.")
    until = opts.until or len(body)
    starts: list[int | None] = [0 if g.is_head else None for g in groups]
    for k, index in enumerate(reversed(body[len(body) - until:])):  # top body group first
        starts[index] = (k // opts.groups_per_stage + 1) * opts.every * unit
    return starts


@STRATEGIES.register("lora")
def lora(groups, section, steps_per_epoch, total_steps):
    """LoRA adapters (and the head, saved with them) train from the start; peft froze the rest."""
    return [0 for _ in groups]


# --------------------------------------------------------------------------- validation
def check_strategy(section: "StrategySection", recipe: "Recipe", key: str) -> None:
    """Recipe-time checks: known name, only the options that name uses, LR options that agree."""
    file = recipe.source_file
    if section.name not in STRATEGIES:
        raise RecipeError(file, f"{key}.name",
                          f"unknown strategy '{section.name}'.{did_you_mean(section.name, STRATEGIES.names())}",
                          hint=f"Allowed: {', '.join(STRATEGIES.names())}.")
    for option in ("partial", "progressive", "two_stage", "lora"):
        given = getattr(section, option) is not None
        if given and section.name != option:
            raise RecipeError(file, f"{key}.{option}", f"only applies with {key}.name: {option}, but name is "
                              f"'{section.name}'", hint=f"Set {key}.name: {option} or remove {key}.{option}.")
    if section.name == "partial" and section.partial is None:
        raise RecipeError(file, f"{key}.partial", "is required with name: partial",
                          hint="e.g. partial: {freeze_groups: 3} or {freeze_fraction: 0.5} or {freeze_patterns: ['embeddings']}")
    if section.discriminative is not None and recipe.optim.head_lr is not None:
        raise RecipeError(file, f"{key}.discriminative", "sets every group's LR, the head's included, so "
                          "optim.head_lr would be ignored", recipe.optim.head_lr,
                          hint="Remove optim.head_lr (the head gets the last of 'lrs', or the top of 'range').")
    if section.towers is not None and recipe.task != "fusion":
        raise RecipeError(file, f"{key}.towers", "only applies to the fusion task", recipe.task)
    for tower, sub in (section.towers or {}).items():
        check_strategy(sub, recipe, f"{key}.towers.{tower}")


# --------------------------------------------------------------------------- planning
def plan_strategy(groups: "list[LayerGroup]", recipe: "Recipe", steps_per_epoch: int, total_steps: int,
                  trainable: set[str] | None = None, section: "StrategySection | None" = None) -> Plan:
    """Turn the recipe's strategy section into a :class:`Plan` for these layer groups.

    ``trainable`` is the set of parameter names allowed to train at all (peft
    freezes everything but adapters and ``modules_to_save``); default: all.
    """
    section = section or recipe.strategy
    try:
        starts = STRATEGIES.get(section.name)(groups, section, steps_per_epoch, total_steps)
    except RecipeError as exc:  # the strategy functions do not know the recipe's file: name it
        exc.args = (str(exc).replace("<recipe>", recipe.source_file or "<recipe>", 1),)
        raise
    lrs = group_lrs(groups, recipe, section)
    frozen_by_pattern = _pattern_frozen(groups, section, recipe.source_file)
    joining = {"progressive": section.progressive, "two_stage": section.two_stage}.get(section.name)
    plans = []
    for depth, (group, start, lr) in enumerate(zip(groups, starts, lrs)):
        allowed = [p for p in group.params if (trainable is None or p in trainable) and p not in frozen_by_pattern]
        frozen = tuple(p for p in group.params if p not in allowed)
        if not allowed:
            start = None
        if section.name == "two_stage" and not group.is_head:
            lr *= section.two_stage.body_lr_scale
        plans.append(GroupPlan(group.name, depth, group.is_head, tuple(allowed), frozen, tuple(group.modules), lr,
                               start, joining.warmup_steps if joining else 0, recipe.optim.weight_decay))
    optim = recipe.optim
    warmup = optim.warmup_steps if optim.warmup_steps is not None else round(optim.warmup_ratio * total_steps)
    options = {**section.model_dump(mode="json", exclude_none=True, exclude={"towers", "layer_groups"}),
               "lr": optim.lr, "head_lr": optim.head_lr}
    plan = Plan(section.name, tuple(plans), steps_per_epoch, total_steps, section.batchnorm, optim.scheduler,
                warmup, options)
    if late := [g for g in plan.groups if g.start_step is not None and g.start_step >= total_steps]:
        raise RecipeError(recipe.source_file, f"strategy.{section.name}",
                          f"the schedule is longer than the run ({total_steps} optimizer steps, {steps_per_epoch} per "
                          f"epoch): {', '.join(f'{g.name} (from step {g.start_step})' for g in late)} would never train",
                          hint="Train longer (train.epochs), unfreeze sooner (every / unit / groups_per_stage / "
                          "head_epochs), or stop earlier (progressive.until).")
    if not plan.ever_trainable():
        raise RecipeError(recipe.source_file, "strategy", f"'{section.name}' leaves no parameter to train",
                          hint="Check strategy.partial (it may freeze everything, the head included).")
    return plan


def group_lrs(groups: "list[LayerGroup]", recipe: "Recipe", section: "StrategySection") -> list[float]:
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
            raise RecipeError(recipe.source_file, "strategy.discriminative.lrs",
                              f"needs one LR per layer group, {len(groups)} here ({', '.join(g.name for g in groups)})",
                              disc.lrs, hint="Or use range: [lo, hi] to spread LRs over the groups.")
        return list(disc.lrs)
    if disc is not None:
        lo, hi = disc.range
        return [lo * (hi / lo) ** (depth / max(1, len(groups) - 1)) for depth in range(len(groups))]
    n_body = sum(not g.is_head for g in groups)
    if section.llrd is None:
        return [head_lr if g.is_head else lr for g in groups]
    return [head_lr if g.is_head else lr * section.llrd.decay ** (n_body - depth) for depth, g in enumerate(groups)]


def _pattern_frozen(groups: "list[LayerGroup]", section: "StrategySection", file: str | None) -> set[str]:
    if section.partial is None or section.partial.freeze_patterns is None:
        return set()
    key = "strategy.partial.freeze_patterns"
    names = [p for g in groups for p in g.params]
    frozen: set[str] = set()
    for pattern in section.partial.freeze_patterns:
        try:
            hits = {n for n in names if re.search(pattern, n)}
        except re.error as exc:
            raise RecipeError(file, key, f"{pattern!r} is not a valid regular expression ({exc})") from None
        if not hits:
            raise RecipeError(file, key, f"{pattern!r} matches no parameter name", hint=(
                f"Patterns are searched (re.search) in names such as {', '.join(names[:2])} ... {names[-1]}."))
        frozen |= hits
    return frozen


# --------------------------------------------------------------------------- applying
def lr_lambdas(plan: Plan, param_group_names: list[str], warmup_steps: int, schedule: str) -> list[Callable[[int], float]]:
    """One LambdaLR multiplier per optimizer param group: shared schedule x the group's join factor."""
    by_name = {g.name: g for g in plan.groups}

    def base(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, plan.total_steps - warmup_steps)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return [lambda step, g=by_name[name]: base(step) * g.factor(step) for name in param_group_names]


def apply_plan(model, plan: Plan, step: int) -> None:
    """Set requires_grad and train/eval mode for ``step`` (call after every ``model.train()``).

    Frozen groups run in eval mode: their dropout is off (faster, deterministic
    features) and, with ``batchnorm: frozen``, BatchNorm statistics stay fixed.
    A BatchNorm whose own weights are frozen inside a training group (partial
    freezing by pattern, LoRA) keeps its statistics fixed too: frozen means frozen.
    """
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
            if plan.batchnorm == "frozen":
                module.eval()
            else:  # keep BatchNorm in train mode (statistics update), the rest in eval mode
                for sub in module.modules():
                    sub.train(isinstance(sub, _batchnorm_types()))
    if plan.batchnorm == "frozen":
        for module in modules.values():
            if isinstance(module, _batchnorm_types()) and not any(p.requires_grad for p in module.parameters()):
                module.eval()


def _batchnorm_types() -> tuple[type, ...]:
    import torch.nn as nn

    return (nn.modules.batchnorm._BatchNorm,)


def changes_mid_run(section: "StrategySection") -> bool:
    """True when the set of trainable parameters changes during the run (staged strategies)."""
    staged = section.name in ("progressive", "two_stage")
    return staged or any(changes_mid_run(s) for s in (section.towers or {}).values())


def format_plan(plan: Plan, model=None) -> str:
    """The table a user needs to trust a strategy: group, depth, params, LR, weight decay, when it trains."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    sizes = {n: p.numel() for n, p in model.named_parameters()} if model is not None else {}
    count = lambda names: sum(sizes.get(p, 0) for p in names)  # noqa: E731
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
        table.add_row(g.name + (" (head)" if g.is_head and g.name != "head" else ""), str(g.depth), f"{count(g.params + g.frozen_params):,}",
                      f"{count(g.params):,}" if trains else "0", f"{g.lr:.2e}" if trains else "-",
                      f"{g.weight_decay:g}" if trains else "-", when)
    lines = []
    for i, stage in enumerate(plan.stages()):
        new = [g.name for g in plan.groups if g.start_step == stage["step"]]
        lines.append(f"  stage {i}, from step {stage['step']} (epoch {stage['epoch']:.3g}): "
                     f"{count(plan.trainable_params_at(stage['step'])):,} trainable parameters (+{', '.join(new)})")
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False).print(table)
    shared = (f"  LR schedule (all groups): {plan.scheduler}, {plan.warmup_steps} warmup steps; weight decay applies to "
              f"weight matrices (biases and norm weights: 0); batchnorm in frozen groups: {plan.batchnorm}")
    return buf.getvalue() + "\n".join(lines) + "\n" + shared

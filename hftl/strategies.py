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
skips it: weights bitwise unchanged) and an LR multiplier of 0.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

from hftl.errors import HftlError, RecipeError
from hftl.registry import Registry

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
    notes: tuple[str, ...] = field(default_factory=tuple)

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

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- registry
# A strategy maps (groups, section, steps_per_epoch, total_steps) to one start step per group.
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
    """Freeze the first N body groups (or a fraction); patterns freeze single parameters instead."""
    opts = section.partial
    body = sum(not g.is_head for g in groups)
    if opts.freeze_patterns is not None:
        return [0 for _ in groups]  # applied per parameter in plan_strategy
    n = opts.freeze_groups if opts.freeze_groups is not None else math.floor(opts.freeze_fraction * body)
    if n > body:
        raise HftlError(f"strategy.partial.freeze_groups is {n} but the model has only {body} body groups "
                        f"({', '.join(g.name for g in groups if not g.is_head)}). Use at most {body}.")
    return [None if (i < n and not g.is_head) else 0 for i, g in enumerate(groups)]


@STRATEGIES.register("two_stage")
def two_stage(groups, section, steps_per_epoch, total_steps):
    """Head alone for ``two_stage.head_epochs`` epochs, then every group."""
    start = max(1, round(section.two_stage.head_epochs * steps_per_epoch))
    return [0 if g.is_head else start for g in groups]


@STRATEGIES.register("progressive")
def progressive_unfreezing(groups, section, steps_per_epoch, total_steps):
    """Head first; then ``groups_per_stage`` more body groups from the top every ``every`` units."""
    opts = section.progressive
    unit = steps_per_epoch if opts.unit == "epoch" else 1
    body = [i for i, g in enumerate(groups) if not g.is_head]
    until = min(opts.until or len(body), len(body))
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
    """Recipe-time checks: known name, and only the options that name uses."""
    file = recipe.source_file
    if section.name not in STRATEGIES:
        STRATEGIES.get(section.name)  # raises with did-you-mean
    for option in ("partial", "progressive", "two_stage", "lora"):
        given = getattr(section, option) is not None
        if given and section.name != option:
            raise RecipeError(file, f"{key}.{option}", f"only applies with {key}.name: {option}, but name is "
                              f"'{section.name}'", hint=f"Set {key}.name: {option} or remove {key}.{option}.")
    if section.name == "partial" and section.partial is None:
        raise RecipeError(file, f"{key}.partial", "is required with name: partial",
                          hint="e.g. partial: {freeze_groups: 3} or {freeze_fraction: 0.5} or {freeze_patterns: ['embeddings']}")
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
    starts = STRATEGIES.get(section.name)(groups, section, steps_per_epoch, total_steps)
    lrs = group_lrs(groups, recipe, section)
    frozen_by_pattern = _pattern_frozen(groups, section)
    warmup = {"progressive": section.progressive, "two_stage": section.two_stage}.get(section.name)
    plans = []
    for depth, (group, start, lr) in enumerate(zip(groups, starts, lrs)):
        allowed = [p for p in group.params if (trainable is None or p in trainable) and p not in frozen_by_pattern]
        frozen = tuple(p for p in group.params if p not in allowed)
        if not allowed:
            start = None
        if section.name == "two_stage" and not group.is_head:
            lr *= section.two_stage.body_lr_scale
        plans.append(GroupPlan(group.name, depth, group.is_head, tuple(allowed), frozen, tuple(group.modules), lr,
                               start, warmup.warmup_steps if warmup else 0))
    plan = Plan(section.name, tuple(plans), steps_per_epoch, total_steps, section.batchnorm)
    if section.name == "progressive":
        late = [g.name for g in plan.groups if g.start_step is not None and g.start_step >= total_steps]
        if late:
            raise RecipeError(recipe.source_file, "strategy.progressive",
                              f"the unfreezing schedule is longer than the run ({total_steps} steps): "
                              f"{', '.join(late)} would never train",
                              hint="Train longer, unfreeze more often (every / unit / groups_per_stage), or set until.")
    if not plan.ever_trainable():
        raise HftlError("The strategy leaves no parameter to train; check strategy.partial / strategy.name.")
    return plan


def group_lrs(groups: "list[LayerGroup]", recipe: "Recipe", section: "StrategySection") -> list[float]:
    """Peak LR per group: flat, layer-wise decayed from the head, or discriminative."""
    lr, head_lr = recipe.optim.lr, recipe.optim.head_lr or recipe.optim.lr
    n_body = sum(not g.is_head for g in groups)
    if section.discriminative is not None and section.discriminative.lrs is not None:
        given = section.discriminative.lrs
        if len(given) != len(groups):
            raise RecipeError(recipe.source_file, "strategy.discriminative.lrs",
                              f"needs one LR per layer group ({len(groups)}: {', '.join(g.name for g in groups)})",
                              given, hint="Or use range: [lo, hi] to spread LRs over the groups.")
        return list(given)
    out = []
    for depth, group in enumerate(groups):
        if group.is_head:
            out.append(head_lr)
        elif section.llrd is not None:
            out.append(lr * section.llrd.decay ** (n_body - depth))  # distance from the head
        elif section.discriminative is not None:
            lo, hi = section.discriminative.range
            frac = depth / max(1, n_body - 1)
            out.append(lo * (hi / lo) ** frac)  # geometric, like fastai's slice(lo, hi)
        else:
            out.append(lr)
    return out


def _pattern_frozen(groups: "list[LayerGroup]", section: "StrategySection") -> set[str]:
    if section.partial is None or section.partial.freeze_patterns is None:
        return set()
    names = [p for g in groups for p in g.params]
    frozen: set[str] = set()
    for pattern in section.partial.freeze_patterns:
        try:
            hits = {n for n in names if re.search(pattern, n)}
        except re.error as exc:
            raise HftlError(f"strategy.partial.freeze_patterns: {pattern!r} is not a valid regex ({exc}).") from None
        if not hits:
            raise HftlError(f"strategy.partial.freeze_patterns: {pattern!r} matches no parameter. "
                            f"Parameter names look like: {', '.join(names[:3])} ... {names[-1]}.")
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
    table = Table(title=f"strategy: {plan.strategy}  ({plan.total_steps} steps, {plan.steps_per_epoch} per epoch)")
    for col in ("group", "depth", "params", "trains", "peak LR", "trains from"):
        table.add_column(col, justify="right" if col in ("depth", "params", "peak LR") else "left")
    for g in plan.groups:
        n_train = sum(sizes.get(p, 0) for p in g.params)
        n_all = n_train + sum(sizes.get(p, 0) for p in g.frozen_params)
        if g.start_step is None:
            when = "never (frozen)"
        elif g.start_step == 0:
            when = "step 0"
        else:
            when = f"step {g.start_step} (epoch {g.start_step / plan.steps_per_epoch:g})"
            when += f", +{g.warmup_steps} warmup" if g.warmup_steps else ""
        table.add_row(g.name + (" (head)" if g.is_head else ""), str(g.depth), f"{n_all:,}",
                      f"{n_train:,}" if g.start_step is not None else "0",
                      f"{g.lr:.2e}" if g.start_step is not None else "-", when)
    lines = [f"  from step {s}: {sum(sizes.get(p, 0) for p in plan.trainable_params_at(s)):,} trainable parameters"
             for s in plan.stage_starts]
    buf = StringIO()
    Console(file=buf, width=110, force_terminal=False).print(table)
    return buf.getvalue() + "\n".join(lines) + f"\n  batchnorm in frozen groups: {plan.batchnorm}"

"""Run hooks: the few fixed events of a training run where a feature plugs in, and their one registry.

The loop (:func:`hftl.training.train.run`) knows no feature by name. A feature (domain adaptation, the
feature cache, the probe head: :mod:`hftl.training.run_hooks`; the card and the Hub push:
:mod:`hftl.publish.run_hooks`) is a :class:`RunHook` class
registered with :func:`run_hook`, which says when it applies (a function of the recipe), its order among
the others, and its one-line summary (the class docstring's first line). For each run, :func:`hooks_for`
makes one instance of every hook that applies, in order; the instance holds that run's state.

The events, in the order a run reaches them:

==================  ===========================================================================================
``check``           before any work (recipe, task and run folder known): refuse what would fail hours later
``on_data``         the data is loaded; before the model and the loaders are built
``on_plan``         model, loaders and plan built; before the optimizer (may replace loaders, set the head)
``param_groups``    extra optimizer param groups beside the plan's, each with its LR schedule
``before_prepare``  optimizer and scheduler built; returns modules trained beside the model (checkpointed)
``on_start``        prepared, the run folder written and the state restored; before the first step
``train_batch``     a training micro-batch, before its loss: each hook may return a changed batch (mixup)
``loss``            one micro-batch's loss (the first hook returning one wins; default: the model's own)
``on_step``         an optimizer step is done and counted (``ctx.state.step``): the EMA of the weights
``log_fields``      extra fields for a training log line (every process calls it: it may reduce across them)
``on_finish``       the run is complete and its processes have ended (every process calls it)
==================  ===========================================================================================

Adding a hook: a :class:`RunHook` subclass in :mod:`hftl.training.run_hooks` or :mod:`hftl.publish.run_hooks`
(the registry imports them on its first lookup) decorated with
``@run_hook(name, order=..., applies=..., when=...)``, overriding the events it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftl.config.registry import Registry

if TYPE_CHECKING:
    import torch

    from hftl.config.schema import Recipe
    from hftl.training.context import RunContext

EVENTS = (
    "check",
    "on_data",
    "on_plan",
    "param_groups",
    "before_prepare",
    "on_start",
    "train_batch",
    "loss",
    "on_step",
    "log_fields",
    "on_finish",
)


@dataclass(frozen=True)
class ExtraGroup:
    """An optimizer param group a hook adds beside the plan's groups; its LR is ``lr x schedule(step)``."""

    name: str
    params: list[Any]
    lr: float
    weight_decay: float
    schedule: Callable[[int], float]


class RunHook:
    """A feature's handlers for the run's events; every event does nothing unless overridden."""

    def check(self, ctx: RunContext) -> None:
        """Before any work: fail now what would fail after training."""

    def on_data(self, ctx: RunContext) -> None:
        """``ctx.data`` is loaded; the model and loaders are not built yet."""

    def on_plan(self, ctx: RunContext) -> None:
        """``ctx.model``, the loaders and ``ctx.plan`` are built; the optimizer is not."""

    def param_groups(self, ctx: RunContext) -> list[ExtraGroup]:
        """Optimizer param groups to add after the plan's (built once, with the rest of the optimizer)."""
        return []

    def before_prepare(self, ctx: RunContext) -> dict[str, Any]:
        """Optimizer and scheduler built, the model not yet prepared: modules trained beside it, saved with it."""
        return {}

    def on_start(self, ctx: RunContext) -> None:
        """Prepared, the run folder written and ``ctx.state`` restored (``step > 0`` when resumed)."""

    def train_batch(self, ctx: RunContext, batch: dict[str, Any]) -> dict[str, Any]:
        """A training micro-batch (on the device) before its loss; returns it, changed or not."""
        return batch

    def loss(self, ctx: RunContext, batch: dict[str, Any]) -> torch.Tensor | None:
        """This micro-batch's loss, or None to leave it to the next hook (or the model's own loss)."""
        return None

    def on_step(self, ctx: RunContext) -> None:
        """An optimizer step is done: ``ctx.state.step`` counts it, the LRs have moved on."""

    def log_fields(self, ctx: RunContext) -> dict[str, Any]:
        """Fields to add to a training log line of metrics.jsonl (called on every process)."""
        return {}

    def on_finish(self, ctx: RunContext, final: dict[str, Any]) -> None:
        """The run completed with ``final`` metrics; the process group has ended."""


@dataclass(frozen=True)
class HookSpec:
    """A registered hook: the whole description of it."""

    name: str
    make: type[RunHook]
    order: int  # lower runs first at every event
    applies: Callable[[Recipe], bool]  # whether a run of this recipe uses the hook
    when: str  # when it applies, in words (docs, `hftl plan`)
    summary: str  # what it does (the class docstring's first line)

    @property
    def events(self) -> list[str]:
        """The events this hook handles (those its class overrides)."""
        return [e for e in EVENTS if getattr(self.make, e) is not getattr(RunHook, e)]


# The built-in hooks: the loop's own features, and publishing (card, Hub) from the layer above, registered
# on first lookup so that training never imports publish.
HOOKS: Registry[HookSpec] = Registry("run hook", plugins=("hftl.training.run_hooks", "hftl.publish.run_hooks"))


def run_hook(name: str, *, order: int, applies: Callable[[Recipe], bool], when: str) -> Callable:
    """Register a :class:`RunHook` class under ``name`` (see the module docstring)."""

    def add(cls: type[RunHook]) -> type[RunHook]:
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        if any(spec.order == order for _, spec in HOOKS.items()):
            raise ValueError(f"run hook '{name}': order {order} is taken; each hook's place must be explicit")
        HOOKS.register(name)(HookSpec(name, cls, order, applies, when, summary))
        return cls

    return add


class Hooks:
    """The hooks one run uses, in order, and the loop's way of calling them."""

    def __init__(self, specs: list[HookSpec]) -> None:
        self.names = [spec.name for spec in specs]
        self.hooks = [spec.make() for spec in specs]  # this run's instances: they hold its state

    def check(self, ctx: RunContext) -> None:
        for hook in self.hooks:
            hook.check(ctx)

    def on_data(self, ctx: RunContext) -> None:
        for hook in self.hooks:
            hook.on_data(ctx)

    def on_plan(self, ctx: RunContext) -> None:
        for hook in self.hooks:
            hook.on_plan(ctx)

    def param_groups(self, ctx: RunContext) -> list[ExtraGroup]:
        return [group for hook in self.hooks for group in hook.param_groups(ctx)]

    def before_prepare(self, ctx: RunContext) -> dict[str, Any]:
        return {name: module for hook in self.hooks for name, module in hook.before_prepare(ctx).items()}

    def on_start(self, ctx: RunContext) -> None:
        for hook in self.hooks:
            hook.on_start(ctx)

    def loss(self, ctx: RunContext, batch: dict[str, Any]) -> torch.Tensor:
        """The micro-batch's loss, after every hook's ``train_batch``."""
        for hook in self.hooks:
            batch = hook.train_batch(ctx, batch)
        for hook in self.hooks:
            if (loss := hook.loss(ctx, batch)) is not None:
                return loss
        return ctx.model(**batch).loss

    def on_step(self, ctx: RunContext) -> None:
        for hook in self.hooks:
            hook.on_step(ctx)

    def log_fields(self, ctx: RunContext) -> dict[str, Any]:
        return {key: value for hook in self.hooks for key, value in hook.log_fields(ctx).items()}

    def on_finish(self, ctx: RunContext, final: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.on_finish(ctx, final)


def hooks_for(recipe: Recipe) -> Hooks:
    """One instance of every registered hook that applies to ``recipe``, in their order."""
    specs = sorted((spec for _, spec in HOOKS.items() if spec.applies(recipe)), key=lambda spec: spec.order)
    return Hooks(specs)

"""Transfer strategies: one registry, one small module per strategy.

A strategy answers, for every layer group, *from which optimizer step does it
train* (``None``: never). Its registration (:class:`Strategy`) says everything
else hftl needs to know about it, so no other module asks for a strategy by
name: its options (the recipe section ``strategy.<name>``), whether the
trainable set changes mid-run (DDP must then tolerate unused parameters), how
it scales a group's LR, how joining groups warm up, which parameters it freezes
one by one, and how it wraps the model (LoRA). The card and ``hftl plan`` take
its one-line summary from the function's docstring.

Adding a strategy: a module here with its options model and one ``@strategy``
function (the registry, :data:`hftl.config.registry.STRATEGIES`, imports every
module of this package on its first lookup), and its row in
``tests/test_strategies.py``'s tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hftl.config.errors import RecipeError
from hftl.config.registry import STRATEGIES

if TYPE_CHECKING:
    import torch

    from hftl.config.schema import Recipe, Section, StrategySection
    from hftl.models.layers import LayerGroup


@dataclass(frozen=True)
class Where:
    """The recipe file and key a strategy's options came from, so its errors name them directly."""

    file: str | None
    key: str

    def error(self, sub: str, problem: str, value: Any = ..., hint: str = "") -> RecipeError:
        return RecipeError(self.file, f"{self.key}.{sub}" if sub else self.key, problem, value, hint=hint)


class StartSteps(Protocol):
    def __call__(
        self, groups: list[LayerGroup], options: Any, steps_per_epoch: int, total_steps: int, where: Where
    ) -> list[int | None]: ...


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: the whole description of it (see the module docstring)."""

    name: str
    start_steps: StartSteps
    summary: str
    options: type[Section] | None = None  # the model of recipe section strategy.<name>
    options_required: bool = False  # e.g. partial: what to freeze has no sensible default
    options_example: str = ""  # shown when required options are missing
    changes_mid_run: bool = False  # groups join during the run (staged strategies)
    frozen_body: bool = False  # the body never trains in the loop: its features can be cached, but not adapted
    lr_scale: Callable[[LayerGroup, Any], float] | None = None  # extra LR factor per group
    join_warmup: Callable[[Any], int] | None = None  # LR ramp (steps) of groups that join late
    frozen_params: Callable[[list[LayerGroup], Any, Where], set[str]] | None = None  # frozen one by one
    wrap_model: Callable[[torch.nn.Module, Recipe, Any], torch.nn.Module] | None = None  # e.g. peft LoRA
    fit_head_first: Callable[[Any], bool] | None = None  # converge the head on cached features first (L-BFGS)
    # ... with this closed-form fit instead of the L-BFGS probe: options -> fit(chain, train_rows, train_labels,
    # val_rows, val_labels) -> a printable result, or None when the head is not one linear layer (prototypes)
    fit_head: Callable[[Any], Callable[..., Any] | None] | None = None
    # tunes the body before the run's feature cache and loop (setfit): (model, recipe, data, options, accelerator)
    # -> what was done (a dict, logged to metrics.jsonl and shown in the card)
    tune_body: Callable[..., dict[str, Any]] | None = None
    # options -> whether a pooled text head reads unit-length features when the checkpoint's sentence-transformers
    # pipeline ends with Normalize (setfit: its head is fitted on normalised embeddings)
    unit_features: Callable[[Any], bool] | None = None

    def options_of(self, section: StrategySection) -> Any:
        """This strategy's validated options from a strategy section (defaults when the recipe gives none)."""
        given = (section.model_extra or {}).get(self.name)
        if given is not None or self.options is None:
            return given
        return self.options()


def strategy(name: str, **description: Any) -> Callable[[StartSteps], StartSteps]:
    """Register ``fn`` (groups, options, steps_per_epoch, total_steps, where) -> start step per group."""

    def add(fn: StartSteps) -> StartSteps:
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        STRATEGIES.register(name)(Strategy(name, fn, summary, **description))
        return fn

    return add


names_where = STRATEGIES.names_where  # the registered strategies whose description has these field values


def changes_mid_run(section: StrategySection) -> bool:
    """True when the set of trainable parameters changes during the run (here or in any tower)."""
    return STRATEGIES.get(section.name).changes_mid_run or any(
        changes_mid_run(s) for s in (section.towers or {}).values()
    )


def fit_head_first(recipe: Recipe) -> bool:
    """Whether the strategy wants its linear head fitted by L-BFGS on cached frozen features before the loop."""
    spec = STRATEGIES.get(recipe.strategy.name)
    return bool(spec.fit_head_first and spec.fit_head_first(spec.options_of(recipe.strategy)))


def head_fitter(recipe: Recipe) -> Callable[..., Any] | None:
    """The strategy's own closed-form head fit on cached features (replacing the L-BFGS probe), or None."""
    spec = STRATEGIES.get(recipe.strategy.name)
    return spec.fit_head(spec.options_of(recipe.strategy)) if spec.fit_head else None


def tune_body(model: torch.nn.Module, recipe: Recipe, data: Any, accelerator: Any) -> dict[str, Any] | None:
    """Run the strategy's body tuning before the loop (setfit's contrastive phase); what was done, or None."""
    spec = STRATEGIES.get(recipe.strategy.name)
    if spec.tune_body is None:
        return None
    return spec.tune_body(model, recipe, data, spec.options_of(recipe.strategy), accelerator)


# Reformer runs all its layers inside one autograd Function (reversible residuals, recomputed in its backward), and
# the layers' parameters are no inputs of that Function: autograd records it only when its input, the embeddings'
# output, requires grad. With frozen embeddings (LoRA, partial, progressive) no layer would get a gradient, so the
# embeddings' output is made to require grad (transformers' own fix for adapters under checkpointing).
GRADIENT_NEEDS_INPUT = {"reformer"}


def unit_features(recipe: Recipe) -> bool:
    """Whether the strategy asks for the checkpoint's own embedding normalisation before a pooled head."""
    spec = STRATEGIES.get(recipe.strategy.name)
    return bool(spec.unit_features and spec.unit_features(spec.options_of(recipe.strategy)))


def wrap_model(model: torch.nn.Module, recipe: Recipe) -> torch.nn.Module:
    """The model as the recipe's strategy trains it (e.g. wrapped with peft LoRA adapters)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel) and model.config.model_type in GRADIENT_NEEDS_INPUT:
        model.enable_input_require_grads()
    spec = STRATEGIES.get(recipe.strategy.name)
    if spec.wrap_model is None:
        return model
    return spec.wrap_model(model, recipe, spec.options_of(recipe.strategy))


__all__ = ["STRATEGIES", "Strategy", "Where", "strategy"]

"""The training loop's own run hooks (see :mod:`hftl.training.hooks`); the card and the Hub push are
publishing's (:mod:`hftl.publish.run_hooks`).

Each class is only the wiring: the feature's own code stays in its module (domain adaptation in
:mod:`hftl.training.adaptation`, the feature cache in :mod:`hftl.training.feature_cache`, the probe in
:mod:`hftl.models.probe`, class weights in :mod:`hftl.training.losses`, body tuning in the strategy's
module, mixup in :mod:`hftl.training.mixup`, the EMA in :mod:`hftl.training.ema`). Their order, at every event:
body tuning (5), feature cache (10), probe head (20), mixup (22), the loss from the logits (25), domain
adaptation (30), the EMA of the weights (33), then the card (35) and the Hub push (40).
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

from hftl.config import log
from hftl.config.registry import STRATEGIES
from hftl.training.hooks import ExtraGroup, RunHook, run_hook
from hftl.training.losses import loss_from_logits

if TYPE_CHECKING:
    import torch

    from hftl.training.context import RunContext


@run_hook(
    "body_tuning",
    order=5,
    applies=lambda recipe: STRATEGIES.get(recipe.strategy.name).tune_body is not None,
    when="the strategy tunes the body before it is frozen (setfit)",
)
class BodyTuning(RunHook):
    """The body tuned by the strategy before the feature cache freezes it (SetFit's contrastive phase)."""

    def __init__(self) -> None:
        self.tuned: dict[str, Any] | None = None

    def on_plan(self, ctx: RunContext) -> None:
        from hftl.strategies import tune_body

        with ctx.costs.timed("train"):
            self.tuned = tune_body(ctx.model, ctx.recipe, ctx.data, ctx.accelerator)

    def on_start(self, ctx: RunContext) -> None:
        if self.tuned and ctx.state.step == 0:  # what was done, in metrics.jsonl (the card reads it)
            from hftl.training.train import log_record

            log_record(ctx.run_dir, {"step": 0, "body_tuning": self.tuned}, ctx.accelerator)


@run_hook(
    "feature_cache",
    order=10,
    applies=lambda recipe: True,
    when="every run: it caches only when the body is frozen for the whole run, and logs why not otherwise",
)
class FeatureCache(RunHook):
    """The head trains on the frozen body's outputs, computed once and cached on disk."""

    def on_plan(self, ctx: RunContext) -> None:
        from hftl.training import feature_cache

        with ctx.costs.timed("features"):
            ctx.train_dl, ctx.eval_dls, ctx.head_chain = feature_cache.maybe_use_cache(ctx)


def _fits_head(recipe: Any) -> bool:
    from hftl.strategies import fit_head_first, head_fitter

    return fit_head_first(recipe) or head_fitter(recipe) is not None


@run_hook(
    "probe_head",
    order=20,
    applies=_fits_head,
    when="the strategy fits its head before the loop (an L-BFGS probe, or the strategy's own closed form)",
)
class ProbeHead(RunHook):
    """The linear head set on cached features before the loop (L-BFGS, or the strategy's closed form)."""

    def on_plan(self, ctx: RunContext) -> None:
        from hftl.config.errors import RecipeError
        from hftl.strategies import fit_head_first, head_fitter

        fitter = head_fitter(ctx.recipe)  # a strategy's own closed-form head (prototypes) instead of L-BFGS
        if fitter and not ctx.head_chain:
            raise RecipeError(
                ctx.recipe.source_file,
                "strategy.name",
                "sets the head from cached frozen features, which this run cannot use",
                ctx.recipe.strategy.name,
                hint="The [cache] line above says why.",
            )
        with ctx.costs.timed("train"):
            fitted = ctx.head_chain and fit_head_first(ctx.recipe) and fit_probe_head(ctx, fitter)
        ctx.evaluate_first = bool(fitted)  # the fitted probe is the first candidate for the best model


def fit_probe_head(ctx: RunContext, fitter: Any = None) -> bool:
    """Fit a linear head on the cached features by L-BFGS (L2 picked on validation), or by the
    strategy's own ``fitter``; False when the head is not one linear layer on per-example features."""
    from hftl.models.probe import ProbeFit, fit_probe
    from hftl.training.feature_key import cache_dir

    started = time.time()
    train, val = ctx.train_dl.dataset, ctx.eval_dls["validation"].dataset
    rows, labels = train.every_view()  # both orientations of each image under data.augment.hflip
    # the fit itself beside the features it was fitted on: solved once for the same rows, labels and grid
    fitter = fitter or partial(fit_probe, cache=cache_dir())
    fit = fitter(ctx.head_chain, rows, labels, val.rows, val.labels)
    if fit is None:
        log.say("[probe] skipped: the head is not one linear layer on per-example features")
        return False
    if not isinstance(fit, ProbeFit):  # a strategy's own closed form (prototypes)
        log.say(f"[probe] {fit} ({time.time() - started:.1f} s)")
        return True
    log.say(
        f"[probe] head fitted by L-BFGS{' (read from the cache)' if fit.cached else ''} in "
        f"{time.time() - started:.1f} s: L2 {fit.l2:g}"
        + (" (fixed) " if len(fit.scores) == 1 else " ")
        + f"(validation accuracy {fit.validation_accuracy:.4f}; tried "
        + ", ".join(f"{k:g}: {v:.3f}" for k, v in fit.scores.items())
        + ")"
    )
    return True


@run_hook(
    "mixup",
    order=22,
    applies=lambda recipe: recipe.train.mixup is not None,
    when="train.mixup is set (single-label image classification)",
)
class Mixup(RunHook):
    """Each training batch's images mixed (mixup / cutmix, timm) and its targets made class probabilities."""

    def __init__(self) -> None:
        self.mixer: Any = None

    def on_data(self, ctx: RunContext) -> None:
        from hftl.training.mixup import BatchMixer

        train = ctx.recipe.train
        self.mixer = BatchMixer(train.mixup, train.label_smoothing, len(ctx.data.labels))
        log.say(f"[mixup] {train.mixup.model_dump()} (label smoothing {train.label_smoothing:g} of the mixed targets)")

    def train_batch(self, ctx: RunContext, batch: dict[str, Any]) -> dict[str, Any]:
        return self.mixer(batch)


@run_hook(
    "task_loss",
    order=25,
    applies=lambda recipe: loss_from_logits(recipe.train),
    when="train.class_weights, train.label_smoothing or train.mixup is set",
)
class TaskLossFromLogits(RunHook):
    """The loss computed from the logits: a weight per class (train.class_weights), label smoothing, soft targets."""

    def __init__(self) -> None:
        self.loss_fn: Any = None

    def on_data(self, ctx: RunContext) -> None:
        from hftl.training.losses import build_loss

        self.loss_fn = build_loss(ctx.recipe, ctx.data.labels, ctx.data.encoded["train"]["labels"])
        if self.loss_fn.weights is not None:
            weights = ", ".join(f"{n} {w:.3g}" for n, w in zip(ctx.data.labels, self.loss_fn.weights))
            log.say("[loss] class weights: " + weights)
        if self.loss_fn.label_smoothing:
            log.say(f"[loss] label smoothing {self.loss_fn.label_smoothing:g}")

    def loss(self, ctx: RunContext, batch: dict[str, Any]) -> torch.Tensor | None:
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # the model's own loss is not needed
        return self.loss_fn(ctx.model(**inputs).logits, batch["labels"])


@run_hook(
    "adaptation",
    order=30,
    applies=lambda recipe: recipe.data.target is not None,
    when="data.target is set: its labeled part is scored as target_test; strategy.adaptation adds the method",
)
class DomainAdaptation(RunHook):
    """Target-domain batches beside the source ones and the adaptation method's loss on their features."""

    def __init__(self) -> None:
        self.unlabeled: Any = None
        self.adaptation: Any = None  # hftl.training.adaptation_methods.Adaptation, with strategy.adaptation

    def on_data(self, ctx: RunContext) -> None:
        from hftl.training.adaptation import load_target

        self.unlabeled = load_target(ctx.recipe, ctx.task, ctx.data, ctx.accelerator)

    def on_plan(self, ctx: RunContext) -> None:
        from hftl.training.adaptation import build_adaptation

        self.adaptation = build_adaptation(ctx, self.unlabeled)

    def param_groups(self, ctx: RunContext) -> list[ExtraGroup]:
        return self.adaptation.param_groups(ctx.recipe.optim, ctx.plan) if self.adaptation else []

    def before_prepare(self, ctx: RunContext) -> dict[str, Any]:
        return self.adaptation.prepare(ctx.accelerator) if self.adaptation else {}

    def log_fields(self, ctx: RunContext) -> dict[str, Any]:
        stats = self.adaptation.stats(ctx.accelerator) if self.adaptation else {}  # a collective: every process
        return {"adaptation": stats} if stats else {}

    def loss(self, ctx: RunContext, batch: dict[str, Any]) -> torch.Tensor | None:
        if self.adaptation is None:
            return None
        return self.adaptation.loss(ctx.model, batch, ctx.state.step, ctx.accelerator)


@run_hook("ema", order=33, applies=lambda recipe: recipe.train.ema is not None, when="train.ema is set")
class WeightAverage(RunHook):
    """An exponential moving average of the weights (timm ModelEmaV3), evaluated and saved instead of them."""

    def __init__(self) -> None:
        self.ema: Any = None

    def before_prepare(self, ctx: RunContext) -> dict[str, Any]:
        from hftl.training.ema import build_ema, check_ema_launch

        check_ema_launch(ctx.accelerator)
        section = ctx.recipe.train.ema
        self.ema = build_ema(ctx.model, section, ctx.head_chain)
        # on the device, never wrapped for DDP: every process averages the same synchronised weights
        self.ema.module = ctx.accelerator.prepare_model(self.ema.module, evaluation_mode=True)
        ctx.eval_model = self.ema.module
        log.say(f"[ema] decay {section.decay:g}{' with warmup' if section.warmup else ''}: evaluated and saved")
        return {"ema": self.ema.module}  # saved with each resumable state, restored on resume

    def on_step(self, ctx: RunContext) -> None:
        from hftl.training.ema import update_ema
        from hftl.training.launch import bare_model

        update_ema(self.ema, bare_model(ctx.accelerator, ctx.model), ctx.state.step, ctx.accelerator.num_processes)

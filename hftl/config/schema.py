"""The recipe schema: a typed, frozen description of one transfer-learning run.

This module holds only the sections (pydantic models): it imports no task or
strategy code, so the tasks and strategies can use its types. The base section and
the input sections (model, data) are in :mod:`hftl.config.schema_inputs`, re-exported
here. Reading YAML, overrides and the checks that need the registries are in
:mod:`hftl.config.recipe`.

Sections::

    name, task, description
    model     checkpoint (catalog name, Hub id or local folder), revision, init_from, towers/fusion
    data      source, splits, columns (role -> column), label_names, max_length, sizes
    strategy  what trains when (name) + how LRs are shaped (llrd / discriminative) + the strategy's options
    optim     optimizer (adamw / sgd / lamb), lr, head_lr, weight decay, scheduler, warmup, clipping
    train     epochs/steps, batch size, accumulation, precision, eval/save cadence, early stopping, seed,
              label smoothing, mixup, EMA of the weights
    output    run folder
    hub       push at the end of the run
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from hftl.config.schema_inputs import (
    AugmentSection,
    DataSection,
    FusionSection,
    ModelSection,
    Section,
    ShiftSection,
    SplitsSection,
    TargetSection,
    TowerSection,
)

__all__ = [
    "AdaptationSection",
    "AugmentSection",
    "DataSection",
    "DiscriminativeSection",
    "EmaSection",
    "FusionSection",
    "HubSection",
    "LLRDSection",
    "LayerGroupPattern",
    "MixupSection",
    "ModelSection",
    "OptimSection",
    "OutputSection",
    "Recipe",
    "Section",
    "ShiftSection",
    "SplitsSection",
    "StrategySection",
    "TargetSection",
    "TowerSection",
    "TrainSection",
]


# --------------------------------------------------------------------------- strategy
class LLRDSection(Section):
    decay: float = Field(
        description="LR multiplier per group of distance from the head (0 < decay <= 1).", gt=0.0, le=1.0
    )


class DiscriminativeSection(Section):
    lrs: list[float] | None = Field(None, description="One LR per layer group, input to head.")
    range: tuple[float, float] | None = Field(None, description="(lowest, highest) LR spread geometrically.")

    @model_validator(mode="after")
    def _one_of(self) -> DiscriminativeSection:
        if (self.lrs is None) == (self.range is None):
            raise ValueError("give exactly one of 'lrs' (a list, one LR per group) or 'range' ([lo, hi])")
        if self.range is not None and not 0 < self.range[0] <= self.range[1]:
            raise ValueError(f"range must be [lo, hi] with 0 < lo <= hi, got {list(self.range)}")
        if self.lrs is not None and any(lr < 0 for lr in self.lrs):
            raise ValueError(f"LRs must be >= 0, got {self.lrs}")
        return self


class LayerGroupPattern(Section):
    name: str
    patterns: list[str] = Field(min_length=1)


class AdaptationSection(Section):
    method: Literal["dann", "coral"] = Field(
        description="dann: a domain classifier behind gradient reversal "
        "(Ganin & Lempitsky 2015); coral: match feature covariances (Sun & "
        "Saenko 2016). See hftl/training/adaptation.py."
    )
    weight: float = Field(1.0, gt=0.0, description="Weight of the adaptation loss beside the task loss.")
    hidden_size: int = Field(256, gt=0, description="dann: width of the domain classifier's two hidden layers.")


class StrategySection(Section):
    """What trains when (``name``) and how LRs are shaped (``llrd`` / ``discriminative``).

    A strategy's own options sit under its name, e.g. ``progressive: {every: 2}``.
    Their models live with the strategy (``hftl/strategies/``), so this schema keeps
    them as given and :func:`hftl.config.recipe.validate_recipe` types them: the schema
    imports no strategy code, and a new strategy adds no field here.
    """

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field("full", description="What trains when: see `hftl.strategies.STRATEGIES`.")
    llrd: LLRDSection | None = Field(None, description="Layer-wise LR decay.")
    discriminative: DiscriminativeSection | None = Field(None, description="Explicit per-group LRs.")
    batchnorm: Literal["frozen", "train", "eval"] = Field(
        "frozen",
        description="BatchNorm: 'frozen' keeps frozen groups in eval mode (statistics fixed); 'train' lets their "
        "statistics update; 'eval' keeps every BatchNorm on its pretrained statistics for the whole run, also in "
        "groups that train (strategies whose groups join mid-run, on small-batch CNNs: the join no longer swaps the "
        "statistics the head learned on).",
    )
    layer_groups: list[LayerGroupPattern] | None = Field(
        None, description="Describe layer groups by regex (input to head; last is the head) for unmapped models."
    )
    towers: dict[Literal["vision", "text"], StrategySection] | None = Field(
        None, description="Fusion: a strategy per tower."
    )
    adaptation: AdaptationSection | None = Field(
        None, description="Domain adaptation toward data.target, combined with any strategy that trains the body."
    )

    @model_validator(mode="after")
    def _lr_shapes_exclusive(self) -> StrategySection:
        if self.llrd is not None and self.discriminative is not None:
            raise ValueError("use either 'llrd' or 'discriminative', not both: each sets every group's LR")
        return self


# --------------------------------------------------------------------------- optim / train / output / hub
class OptimSection(Section):
    name: Literal["adamw", "sgd", "lamb"] = Field(
        "adamw",
        description="The optimizer over the strategy's param groups (their LRs and weight decay whatever the "
        "name): adamw (torch, fused); sgd (torch, with momentum and Nesterov: the classic for CNNs, needs a "
        "larger lr, e.g. 0.01-0.1); lamb (timm.optim.Lamb: AdamW with a per-layer trust ratio, for large batches).",
    )
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only: momentum.")
    nesterov: bool = Field(True, description="sgd only: Nesterov momentum (needs momentum > 0).")
    lr: float = Field(5e-5, gt=0.0, description="Base LR of the pretrained body.")
    head_lr: float | None = Field(None, gt=0.0, description="LR of the new head (default: lr).")
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    warmup_steps: int | None = Field(None, ge=0, description="Overrides warmup_ratio when set.")
    max_grad_norm: float | None = Field(1.0, gt=0.0)

    @field_validator("momentum", "nesterov")
    @classmethod
    def _sgd_only(cls, value: float | bool, info: ValidationInfo) -> float | bool:
        name, default = info.data.get("name"), cls.model_fields[str(info.field_name)].default
        if value != default and name != "sgd":  # a resolved recipe spells the default out: only a change is refused
            raise ValueError(f"only applies with optim.name: sgd (name is {name}), got {value}")
        return value

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimSection:
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError(
                "sgd: nesterov needs momentum > 0, got momentum 0; set optim.momentum or optim.nesterov: false"
            )
        return self


class MixupSection(Section):
    """timm.data.Mixup on each training batch (its defaults); the loss then takes the mixed soft targets."""

    mixup_alpha: float = Field(1.0, ge=0.0, description="Beta(alpha, alpha) of mixup's blend; 0 = no mixup.")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="Beta(alpha, alpha) of cutmix's box area; 0 = no cutmix.")
    prob: float = Field(1.0, gt=0.0, le=1.0, description="Probability that a batch is mixed at all.")
    switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="With both alphas > 0: probability of cutmix.")

    @model_validator(mode="after")
    def _one_alpha(self) -> MixupSection:
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("mixup_alpha and cutmix_alpha are both 0: set one > 0 (e.g. mixup_alpha: 0.2)")
        return self


class EmaSection(Section):
    """An exponential moving average of the weights (timm.utils.ModelEmaV3), evaluated and saved."""

    decay: float = Field(0.999, gt=0.0, lt=1.0, description="The average's decay per optimizer step.")
    warmup: bool = Field(
        True,
        description="Ramp the decay up as 1 - (1 + step)^(-2/3), capped at decay (timm's warmup): without it, "
        "a run of a few hundred steps keeps most of the pretrained weights in the average (0.999^300 = 0.74).",
    )


class TrainSection(Section):
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
    # Evidence: fine-tuning MiniLM on BBC News (docs/studies/defaults-bbc, 3 seeds) at 800 articles 0.946 with 200
    # steps vs 0.922 with one epoch's 50; at 1,781 (112 steps) 0.952 vs 0.954. Rotten Tomatoes (docs/studies/
    # defaults-sentiment, 3 seeds, mean pooling both): at 1,000 snippets 0.789 with 200 steps vs 0.678 with 32.
    min_steps: int = Field(
        200,
        ge=0,
        description="Train at least this many optimizer steps however small the data "
        "(epochs are added: at 100 examples one epoch is a handful of steps); 0 = epochs alone.",
    )
    batch_size: int = Field(32, gt=0, description="Per-process batch size.")
    eval_batch_size: int | None = Field(None, gt=0)
    grad_accum: int = Field(1, gt=0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    eval_steps: int | None = Field(
        None,
        gt=0,
        description="Evaluate every N optimizer steps (default: each epoch, or 10 times per run when that is rarer).",
    )
    save_steps: int | None = Field(
        None, gt=0, description="Save a resumable state every N steps (default: at each evaluation)."
    )
    save_total_limit: int = Field(
        2, ge=1, description="Resumable states kept; the newest complete one is never deleted."
    )
    eval_sample: int | None = Field(
        None,
        gt=0,
        description="Score validation during training on a fixed random sample of this many examples (it picks "
        "the best model); the best model is then scored once on the full validation and test splits. Default: "
        "the whole validation split at every evaluation.",
    )
    early_stopping_patience: int | None = Field(None, gt=0)
    metric: str | None = Field(None, description="Metric that picks the best model (default: the task's).")
    seed: int = Field(42, ge=0, lt=2**32, description="Seeds python, numpy and torch (numpy needs 0 <= seed < 2**32).")
    resume: bool = False
    group_by_length: bool = Field(True, description="Batch texts of similar length together (less padding).")
    log_steps: int = Field(10, gt=0)
    trackers: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(default_factory=list)
    num_threads: int | None = Field(None, gt=0, description="torch threads per process (default: cores / processes).")
    cache_features: Literal["auto", "never"] = Field(
        "auto", description="Cache frozen-backbone features when possible."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, about a third more compute."
    )
    compile: bool = Field(
        False,
        description="torch.compile the model (inductor). Off by default: on CPU it cost more than it saved "
        "(studies/compile-cpu.yaml: 258 s vs 112 s eager, mostly compilation); "
        "`accelerate launch --dynamo_backend` is honoured as well.",
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes per training process (image decoding and augmentation off the "
        "training loop; pinned memory and persistent workers on GPU). Default: 0 on CPU, where workers take "
        "cores from the model, else min(4, cores per process). A mid-epoch resume of an augmented image run is "
        "not bit-exact, with or without workers: the loader collates the next batch before a state is saved "
        "(and workers draw from their own random streams).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Single-label classification: train on targets (1 - x) one-hot + x / classes "
        "(torch's CrossEntropyLoss label_smoothing; 0.1 is the usual value). Tempers over-confident fits "
        "of small data; validation and test losses stay plain cross-entropy.",
    )
    mixup: MixupSection | None = Field(
        None,
        description="Mixup / CutMix of training images (timm.data.Mixup), e.g. {mixup_alpha: 0.2} or "
        "{mixup_alpha: 0.8, cutmix_alpha: 1.0}; label_smoothing is applied to the mixed targets. Single-label "
        "image classification; a frozen body's features are then not cached. It slows the fit: give it more epochs.",
    )
    ema: EmaSection | None = Field(
        None,
        description="Keep an exponential moving average of the weights ({} for decay 0.999 with warmup), "
        "updated after each optimizer step; it is what is evaluated, picked as the best and saved.",
    )
    class_weights: Literal["balanced"] | list[float] | None = Field(
        None,
        description="Weigh the loss by class for imbalanced data: 'balanced' = n / (classes x count), from the "
        "training split (scikit-learn's rule), or one weight per label in label order. Multi-label: the weight of "
        "each label's positives (BCE pos_weight; balanced = negatives / positives).",
    )

    @field_validator("class_weights")
    @classmethod
    def _weights_positive(cls, weights: str | list[float] | None) -> str | list[float] | None:
        if isinstance(weights, list) and (len(weights) < 2 or any(w <= 0 for w in weights)):
            raise ValueError(f"needs one weight > 0 per label (at least 2), got {weights}")
        return weights


class OutputSection(Section):
    dir: str | None = Field(None, description="Run folder (default: runs/<name>).")
    overwrite: bool = Field(False, description="Allow training into a folder that holds a completed run.")
    keep_checkpoints: Literal["none", "last", "all"] = Field(
        "none",
        description="Resumable states left in checkpoints/ once a run completes: none (the folder holds "
        "the model and small files), the last one, or all that save_total_limit kept. best/ is always removed "
        "once its model is published to the folder's root.",
    )
    resumable: bool = Field(
        True,
        description="Save a resumable state every train.save_steps; false: none is written (a stopped run starts "
        "again from step 0). hftl study's trials set it: a stopped trial runs again from its start anyway.",
    )
    card: bool = Field(
        True,
        description="Write the model card (README.md) and its plots into the completed run folder (always when "
        "hub.push). hftl study's trials set it false: the study's report is their summary.",
    )

    @model_validator(mode="after")
    def _kept_states_are_saved(self) -> OutputSection:
        if self.keep_checkpoints != "none" and not self.resumable:
            raise ValueError(
                f"keep_checkpoints: {self.keep_checkpoints} keeps resumable states, but resumable: false saves none; "
                "set one of them back"
            )
        return self


class HubSection(Section):
    push: bool = False
    repo_id: str | None = None
    private: bool = False
    revision: str | None = None

    @model_validator(mode="after")
    def _repo_when_push(self) -> HubSection:
        if self.push and not self.repo_id:
            raise ValueError("push: true needs repo_id (e.g. 'your-name/my-model')")
        return self


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name; also the default run folder.")
    task: str = Field(description="One of hftl.tasks.TASKS.")
    description: str = ""
    model: ModelSection
    data: DataSection
    strategy: StrategySection = StrategySection()
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    output: OutputSection = OutputSection()
    hub: HubSection = HubSection()
    # Where the recipe was read from; excluded from the saved copy.
    source_file: str | None = Field(None, exclude=True)

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir or Path("runs") / self.name)

    def with_augment(self, **changes: Any) -> Recipe:
        """This recipe with some ``data.augment`` fields changed (a copy; e.g. a collator's view of the data)."""
        augment = self.data.augment.model_copy(update=changes)
        return self.model_copy(update={"data": self.data.model_copy(update={"augment": augment})})

    def to_yaml(self) -> str:
        """The fully resolved recipe (every default spelled out), as saved in the run folder."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

"""The recipe schema: a typed, frozen description of one transfer-learning run.

This module holds only the sections (pydantic models): it imports no task or
strategy code, so the tasks and strategies can use its types. Reading YAML,
overrides and the checks that need the registries are in :mod:`hftl.config.recipe`.

Sections::

    name, task, description
    model     checkpoint (catalog name, Hub id or local folder), revision, init_from, towers/fusion
    data      source, splits, columns (role -> column), label_names, max_length, sizes
    strategy  what trains when (name) + how LRs are shaped (llrd / discriminative) + the strategy's options
    optim     lr, head_lr, weight decay, scheduler, warmup, clipping
    train     epochs/steps, batch size, accumulation, precision, eval/save cadence, early stopping, seed
    output    run folder
    hub       push at the end of the run
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base of every recipe section: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- model
class TowerSection(Section):
    checkpoint: str = Field(description="Catalog name, Hub model id or local folder of this tower.")
    revision: str | None = Field(None, description="Hub branch, tag or commit of the checkpoint.")


class FusionSection(Section):
    method: Literal["concat", "gated"] = Field("concat", description="How pooled tower features are combined.")
    hidden_size: int = Field(256, gt=0, description="Width of the fusion MLP.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class ModelSection(Section):
    checkpoint: str | None = Field(None, description="Catalog name, Hub model id or local folder.")
    revision: str | None = Field(None, description="Hub branch, tag or commit.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the checkpoint (off by default).")
    pretrained: bool = Field(
        True,
        description="false: the checkpoint's architecture with random weights (the "
        "from-scratch baseline of a transfer).",
    )
    pooling: Literal["auto", "pooler", "cls", "mean", "max"] = Field(
        "auto",
        description="What a text classifier's head reads: auto = what the checkpoint was trained for (a "
        "sentence-transformers 1_Pooling/config.json), else the checkpoint's own head class (BERT: its pooler).",
    )
    init_from: str | None = Field(
        None,
        description="Start from an earlier hftl run folder's weights (multi-stage transfer); the head is "
        "re-initialised when the labels differ.",
    )
    towers: dict[Literal["vision", "text"], TowerSection] | None = Field(None, description="Fusion towers.")
    fusion: FusionSection | None = None


# --------------------------------------------------------------------------- data
class SplitsSection(Section):
    train: str = "train"
    validation: str | None = Field("validation", description="Carved from train when the source has none.")
    test: str | None = Field("test", description="Carved from train when the source has none; null for no test.")


class AugmentSection(Section):
    random_resized_crop: bool = True
    min_scale: float = Field(0.6, gt=0.0, le=1.0)
    hflip: bool = True


class ShiftSection(Section):
    name: str = Field(description="A shift of hftl.data.shifts.SHIFTS, e.g. gaussian_noise, contrast, char_noise.")
    severity: int = Field(0, ge=0, le=5, description="0 = identity, 1..5 ever stronger (ImageNet-C style).")
    seed: int = Field(0, ge=0)
    splits: list[Literal["train", "validation", "test"]] = Field(
        ["train", "validation", "test"],
        min_length=1,
        description="Which splits are shifted: all (a shifted target domain) or test only (a robustness test).",
    )


class TargetSection(Section):
    """Unlabeled target-domain data for domain adaptation (``strategy.adaptation``), and its labeled test split."""

    source: str = Field(description="Catalog name, Hub dataset id, local file or folder, as data.source.")
    config_name: str | None = None
    revision: str | None = None
    split: str = Field("train", description="Split whose inputs (never its labels) are the unlabeled target data.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Role -> column in the target data (default: the source's column for that role).",
    )
    test_split: str | None = Field(None, description="A labeled target split, scored as 'target_test'.")
    test_size: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Carve this labeled fraction of the target "
        "split as 'target_test' (seeded by train.seed); the rest is the unlabeled data.",
    )
    max_samples: int | None = Field(None, gt=0, description="At most this many unlabeled target examples.")

    @model_validator(mode="after")
    def _one_test(self) -> TargetSection:
        if self.test_split is not None and self.test_size is not None:
            raise ValueError("give test_split (a labeled split) or test_size (carved), not both")
        return self


class DataSection(Section):
    source: str | None = Field(
        None,
        description="Catalog name, Hub dataset id, local file (csv/json/jsonl/parquet) "
        "or folder; with `files`, a builder name (csv, json, ...) or Hub id, or omitted.",
    )
    files: dict[str, str | list[str]] | None = Field(
        None,
        description="Split -> file, glob or list of them (datasets.load_dataset's data_files), e.g. "
        "{train: a.csv, validation: b.csv}; relative to the recipe's folder. The builder follows the suffix.",
    )
    config_name: str | None = None
    revision: str | None = None
    splits: SplitsSection = SplitsSection()
    validation_size: float = Field(0.1, gt=0.0, lt=1.0, description="Fraction carved for validation if missing.")
    test_size: float = Field(0.1, gt=0.0, lt=1.0, description="Fraction carved for test if missing.")
    group_column: str | None = Field(None, description="Keep each group (e.g. a movie) inside one split.")
    split_seed: int | None = Field(
        None,
        ge=0,
        description="Seed of the validation/test carve (default: train.seed). "
        "Fix it to vary train.seed over runs without moving examples between splits.",
    )
    stratify: bool = Field(False, description="Carve missing splits keeping each label's share (classification).")
    columns: dict[str, str] = Field(default_factory=dict, description="Role -> column, e.g. {text: review}.")
    label_names: list[str] | None = Field(None, description="Label order; inferred from the data when omitted.")
    problem_type: Literal["single_label", "multi_label", "regression"] = Field(
        "single_label",
        description="What the label column holds: single_label = one class per example (cross-entropy); "
        "multi_label = a list of classes per example, or several 0/1 columns named by label_columns (sigmoid + "
        "binary cross-entropy, thresholded at 0.5); regression = a number per example (one output, MSE). Checked "
        "against the data: lists, floats or text that contradict it stop the run before anything is written.",
    )
    label_columns: list[str] | None = Field(
        None,
        min_length=2,
        description="multi_label: several 0/1 columns, one per label (the column names become the label names), "
        "instead of one column holding a list of labels.",
    )
    max_length: int = Field(128, gt=0, le=8192, description="Token limit for text inputs.")
    image_size: int | None = Field(
        None,
        gt=0,
        le=4096,
        description="Square image side in pixels for CNN/timm "
        "checkpoints (default: the checkpoint's image processor size).",
    )
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(None, gt=0)
    shots: int | None = Field(
        None,
        gt=0,
        description="Few-shot: keep K labeled training examples per class (seeded "
        "by train.seed, after max_train_samples); the rest of the training split is unused.",
    )
    on_error: Literal["raise", "skip"] = Field("raise", description="Bad examples: fail, or skip and report.")
    label_all_subtokens: bool = Field(False, description="NER: label every sub-word, not just the first.")
    augment: AugmentSection = AugmentSection()
    shift: ShiftSection | None = Field(None, description="A named, seeded, graded domain shift of the inputs.")
    target: TargetSection | None = Field(
        None,
        description="Target-domain data (domain adaptation; see "
        "strategy.adaptation); its labeled test split is scored as target_test.",
    )

    @model_validator(mode="after")
    def _where_the_data_is(self) -> DataSection:
        if self.source is None and not self.files:
            raise ValueError(
                "data.source is required (a catalog name, Hub id, file or folder), unless data.files "
                "names the files ({train: a.csv, ...})"
            )
        if self.files is not None and "train" not in self.files and self.splits.train not in self.files:
            raise ValueError(
                f"data.files needs a '{self.splits.train}' entry (the split to train on), got {sorted(self.files)}"
            )
        if self.label_columns is not None and self.problem_type != "multi_label":
            raise ValueError(
                "label_columns (several 0/1 columns) describe a multi-label problem: set problem_type: multi_label"
            )
        if self.label_columns is not None and self.label_names is not None:
            raise ValueError("label_columns names the labels already (one 0/1 column each): remove label_names")
        if self.problem_type == "regression" and (self.stratify or self.shots is not None):
            raise ValueError("stratify and shots count examples per class; a regression target has no classes")
        if self.stratify and self.group_column:
            raise ValueError("use either group_column (keep groups together) or stratify (keep label shares), not both")
        return self

    @property
    def where(self) -> str:
        """The data source as a user would name it in a message."""
        files = ", ".join(f"{k}: {v}" for k, v in (self.files or {}).items())
        return " ".join(part for part in (self.source, files and f"files {{{files}}}") if part)

    @field_validator("label_names")
    @classmethod
    def _labels_unique(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if len(names) < 2:
                raise ValueError(f"needs at least 2 labels, got {names}")
            if len(set(names)) != len(names):
                raise ValueError(f"labels must be unique, got {names}")
        return names


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
    lr: float = Field(5e-5, gt=0.0, description="Base LR of the pretrained body.")
    head_lr: float | None = Field(None, gt=0.0, description="LR of the new head (default: lr).")
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    warmup_steps: int | None = Field(None, ge=0, description="Overrides warmup_ratio when set.")
    max_grad_norm: float | None = Field(1.0, gt=0.0)


class TrainSection(Section):
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides epochs).")
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
        "cores from the model, else min(4, cores per process). With workers, augmentation draws from the "
        "workers' random streams: a mid-epoch resume is not bit-exact.",
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

    def to_yaml(self) -> str:
        """The fully resolved recipe (every default spelled out), as saved in the run folder."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

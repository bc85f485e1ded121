"""The recipe: a typed, frozen, validated description of one transfer-learning run.

A recipe is YAML (read with a safe loader) plus optional ``key.path=value``
overrides. It is validated completely before any weights or data are loaded:
unknown keys are rejected with a did-you-mean, every error names the file and
the dotted key path, shows the bad value and says what is allowed.

Sections::

    name, task, description
    model     checkpoint (catalog name, Hub id or local folder), revision, init_from, towers/fusion
    data      source, splits, columns (role -> column), label_names, max_length, sizes
    strategy  what trains when (name) + how LRs are shaped (llrd / discriminative) + lora
    optim     lr, head_lr, weight decay, scheduler, warmup, clipping
    train     epochs/steps, batch size, accumulation, precision, eval/save cadence, early stopping, seed
    output    run folder
    hub       push at the end of the run
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hftl.errors import RecipeError
from hftl.registry import did_you_mean


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
    init_from: str | None = Field(
        None, description="Start from an earlier hftl run folder's weights (multi-stage transfer); the head is "
        "re-initialised when the labels differ.")
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


class DataSection(Section):
    source: str = Field(description="Catalog name, Hub dataset id, local file (csv/json/jsonl/parquet) or folder.")
    config_name: str | None = None
    revision: str | None = None
    splits: SplitsSection = SplitsSection()
    validation_size: float = Field(0.1, gt=0.0, lt=1.0, description="Fraction carved for validation if missing.")
    test_size: float = Field(0.1, gt=0.0, lt=1.0, description="Fraction carved for test if missing.")
    group_column: str | None = Field(None, description="Keep each group (e.g. a movie) inside one split.")
    columns: dict[str, str] = Field(default_factory=dict, description="Role -> column, e.g. {text: review}.")
    label_names: list[str] | None = Field(None, description="Label order; inferred from the data when omitted.")
    max_length: int = Field(128, gt=0, le=8192, description="Token limit for text inputs.")
    image_size: int | None = Field(None, gt=0, le=4096, description="Square image side in pixels for CNN/timm "
                                   "checkpoints (default: the checkpoint's image processor size).")
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(None, gt=0)
    on_error: Literal["raise", "skip"] = Field("raise", description="Bad examples: fail, or skip and report.")
    label_all_subtokens: bool = Field(False, description="NER: label every sub-word, not just the first.")
    augment: AugmentSection = AugmentSection()

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
    decay: float = Field(description="LR multiplier per group of distance from the head (0 < decay <= 1).", gt=0.0, le=1.0)


class DiscriminativeSection(Section):
    lrs: list[float] | None = Field(None, description="One LR per layer group, input to head.")
    range: tuple[float, float] | None = Field(None, description="(lowest, highest) LR spread geometrically.")

    @model_validator(mode="after")
    def _one_of(self) -> "DiscriminativeSection":
        if (self.lrs is None) == (self.range is None):
            raise ValueError("give exactly one of 'lrs' (a list, one LR per group) or 'range' ([lo, hi])")
        if self.range is not None and not 0 < self.range[0] <= self.range[1]:
            raise ValueError(f"range must be [lo, hi] with 0 < lo <= hi, got {list(self.range)}")
        if self.lrs is not None and any(lr < 0 for lr in self.lrs):
            raise ValueError(f"LRs must be >= 0, got {self.lrs}")
        return self


class PartialSection(Section):
    freeze_groups: int | None = Field(None, ge=0, description="Freeze the first N layer groups.")
    freeze_fraction: float | None = Field(None, ge=0.0, le=1.0, description="Freeze this fraction of the body.")
    freeze_patterns: list[str] | None = Field(None, description="Freeze parameters matching these regexes.")

    @model_validator(mode="after")
    def _one_of(self) -> "PartialSection":
        given = [k for k in ("freeze_groups", "freeze_fraction", "freeze_patterns") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of freeze_groups, freeze_fraction, freeze_patterns (got {given or 'none'})")
        return self


class ProgressiveSection(Section):
    every: int = Field(1, gt=0, description="Unfreeze the next block every this many units.")
    unit: Literal["epoch", "step"] = "epoch"
    groups_per_stage: int = Field(1, gt=0, description="Layer groups unfrozen at each stage.")
    until: int | None = Field(None, gt=0, description="Stop once this many body groups are unfrozen (default all).")
    warmup_steps: int = Field(0, ge=0, description="Ramp newly unfrozen groups' LR from 0 over this many steps.")


class TwoStageSection(Section):
    head_epochs: float = Field(1.0, gt=0, description="Epochs of head-only training before the body joins.")
    body_lr_scale: float = Field(1.0, gt=0, description="Multiplier on the body LR in stage two.")
    warmup_steps: int = Field(0, ge=0)


class LoraSection(Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="Module names to adapt; peft's default for the model type when omitted.")


class LayerGroupPattern(Section):
    name: str
    patterns: list[str] = Field(min_length=1)


class StrategySection(Section):
    name: str = Field("full", description="What trains when: see `hftl.strategies.STRATEGIES`.")
    llrd: LLRDSection | None = Field(None, description="Layer-wise LR decay.")
    discriminative: DiscriminativeSection | None = Field(None, description="Explicit per-group LRs.")
    partial: PartialSection | None = None
    progressive: ProgressiveSection | None = None
    two_stage: TwoStageSection | None = None
    lora: LoraSection | None = None
    batchnorm: Literal["frozen", "train"] = Field(
        "frozen", description="BatchNorm in frozen groups: 'frozen' keeps eval mode (statistics fixed).")
    layer_groups: list[LayerGroupPattern] | None = Field(
        None, description="Describe layer groups by regex (input to head; last is the head) for unmapped models.")
    towers: dict[Literal["vision", "text"], "StrategySection"] | None = Field(
        None, description="Fusion: a strategy per tower.")

    @model_validator(mode="after")
    def _lr_shapes_exclusive(self) -> "StrategySection":
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
    batch_size: int = Field(32, gt=0, description="Per-process batch size.")
    eval_batch_size: int | None = Field(None, gt=0)
    grad_accum: int = Field(1, gt=0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N optimizer steps (default: each epoch).")
    save_steps: int | None = Field(None, gt=0, description="Save a resumable state every N steps (default: at each evaluation).")
    save_total_limit: int = Field(2, ge=1, description="Resumable states kept; the newest complete one is never deleted.")
    early_stopping_patience: int | None = Field(None, gt=0)
    metric: str | None = Field(None, description="Metric that picks the best model (default: the task's).")
    seed: int = Field(42, ge=0, lt=2**32, description="Seeds python, numpy and torch (numpy needs 0 <= seed < 2**32).")
    resume: bool = False
    group_by_length: bool = Field(True, description="Batch texts of similar length together (less padding).")
    log_steps: int = Field(10, gt=0)
    trackers: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(default_factory=list)
    num_threads: int | None = Field(None, gt=0, description="torch threads per process (default: cores / processes).")
    cache_features: Literal["auto", "never"] = Field("auto", description="Cache frozen-backbone features when possible.")


class OutputSection(Section):
    dir: str | None = Field(None, description="Run folder (default: runs/<name>).")
    overwrite: bool = Field(False, description="Allow training into a folder that holds a completed run.")


class HubSection(Section):
    push: bool = False
    repo_id: str | None = None
    private: bool = False
    revision: str | None = None

    @model_validator(mode="after")
    def _repo_when_push(self) -> "HubSection":
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


# --------------------------------------------------------------------------- loading
def load_recipe(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; no weights or data are touched."""
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(file, None, f"cannot read the recipe file ({exc.strerror})",
                          hint="Check the path; shipped recipes live in recipes/.") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(file, None, f"is not UTF-8 text (byte {exc.start})", hint="Save the recipe as UTF-8.") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise RecipeError(file, None, f"is not valid YAML{line}: {getattr(exc, 'problem', None) or exc}",
                          hint="Recipes are plain YAML mappings; Python tags such as !!python/object are refused.") from None
    except RecursionError:
        raise RecipeError(file, None, "is nested too deeply to be a recipe") from None
    if doc is None:
        raise RecipeError(file, None, "is empty", hint="A recipe needs at least name, task, model.checkpoint and data.source.")
    if not isinstance(doc, dict):
        raise RecipeError(file, None, f"must be a YAML mapping of sections, not a {type(doc).__name__}", doc)
    doc = apply_overrides(doc, overrides, file)
    return validate_recipe(doc, file)


def apply_overrides(doc: dict[str, Any], overrides: list[str] | tuple[str, ...], file: str | None = None) -> dict[str, Any]:
    """Return a copy of ``doc`` with each ``key.path=value`` set (values parsed as YAML scalars/lists)."""
    doc = copy.deepcopy(doc)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(file, None, f"override {item!r} is not of the form key.path=value",
                              hint="For example: train.epochs=2 optim.lr=3e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        if isinstance(value, dict) and not raw.lstrip().startswith("{"):
            value = raw  # 'a: b' is text; a mapping needs braces: data.columns={text: review}
        node = doc
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(file, ".".join(parts[: i + 1]), "is a value, so it has no sub-keys", child,
                                  hint=f"Override it directly: {'.'.join(parts[: i + 1])}=...")
            node = child
        node[parts[-1]] = value
    return doc


def validate_recipe(doc: dict[str, Any], file: str | None = None) -> Recipe:
    """Validate a recipe document (schema + registries + cross-field checks)."""
    try:
        recipe = Recipe.model_validate({**doc, "source_file": file})
    except ValidationError as exc:
        raise _recipe_error(exc, file) from None
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Cross-field checks that need the registries (tasks, strategies, catalog)."""
    from hftl import strategies, tasks  # local: these import the registries, not torch

    file = recipe.source_file
    if recipe.task not in tasks.TASKS:
        raise RecipeError(file, "task", f"unknown task '{recipe.task}'.{did_you_mean(recipe.task, tasks.TASKS.names())}",
                          hint=f"Allowed: {', '.join(tasks.TASKS.names())}.")
    tasks.TASKS.get(recipe.task).check(recipe)
    strategies.check_strategy(recipe.strategy, recipe, "strategy")


def _recipe_error(exc: ValidationError, file: str | None) -> RecipeError:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p != "source_file"]
        key = ".".join(loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1])
            lines.append(f"key '{key}' is not allowed.{did_you_mean(loc[-1], allowed)} "
                         f"Allowed here: {', '.join(allowed)}.")
        elif err["type"] == "missing":
            lines.append(f"key '{key}' is required.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"key '{key}': {msg}" + ("." if "got " in msg else f" (got {err['input']!r})."))
    message = lines[0] if len(lines) == 1 else "\n  - " + "\n  - ".join(lines)
    err = RecipeError(file, None, "invalid recipe")
    err.args = (f"{file or '<recipe>'}: {message}",)
    return err


def _allowed_keys(loc: list[str]) -> list[str]:
    """Field names of the schema section at a key path (for did-you-mean)."""
    model: Any = Recipe
    for part in loc:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            # dict-valued sections (towers): the key is a dict key, stay on the value type
            continue
        model = _section_type(field.annotation)
        if model is None:
            return []
    fields = getattr(model, "model_fields", {})
    return [name for name in fields if name != "source_file"]


def _section_type(annotation: Any) -> Any:
    """The Section class inside an annotation such as ``X | None`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None

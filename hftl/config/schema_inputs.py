"""The recipe schema's base section and its input sections: the model a run starts from and the data it trains on.

:mod:`hftl.config.schema` holds the rest (strategy, optim, train, output, hub) and the :class:`Recipe` itself,
and re-exports these names, so ``from hftl.config.schema import DataSection`` keeps working.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


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
    pooling: Literal["auto", "pooler", "cls", "mean", "max", "stages"] = Field(
        "auto",
        description="What a classifier's head reads. Text: auto = what the checkpoint was trained for (a "
        "sentence-transformers 1_Pooling/config.json), else the checkpoint's own head class (BERT: its pooler); "
        "pooler, cls, mean or max. Images: auto = the checkpoint's own head class; stages = a linear head on the "
        "average-pooled output of every stage of a timm model plus its pre-classifier vector, concatenated "
        "(hftl/models/stages_model.py).",
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


class LowResolutionSection(Section):
    """Some training images rendered at a low resolution (``data.augment.low_resolution``)."""

    size: int = Field(
        gt=0,
        description="Side in pixels of the low-resolution rendering: the image is downscaled (antialiased) to "
        "size x size, then the usual resize brings it to the model's input, blocky and blurred as a small "
        "image upscaled by the processor is (e.g. 8 for scikit-learn's 8x8 digits).",
    )
    probability: float = Field(
        0.5, gt=0.0, le=1.0, description="Share of training images rendered so (the rest keep their resolution)."
    )
    bits: int | None = Field(
        None,
        ge=1,
        le=8,
        description="Also keep only this many bits per channel (torchvision's posterize): 4 bits = 16 grey levels, "
        "as the 0..16 counts of the 8x8 digits. null: no quantisation.",
    )


class AugmentSection(Section):
    """Training-time image augmentation (torchvision); evaluation always sees the processor's plain image."""

    random_resized_crop: bool = True
    min_scale: float = Field(0.6, gt=0.0, le=1.0)
    hflip: bool = True
    auto: Literal["trivialaugment", "randaugment"] | None = Field(
        None,
        description="An automatic augmentation policy on training images at the model's input size, before "
        "normalisation: torchvision's TrivialAugmentWide (one random op of random strength per image, no setting) "
        "or RandAugment (2 random ops at randaugment_magnitude). Pays on small image sets trained for several "
        "epochs; off by default. Images only; a frozen body's features are then not cached.",
    )
    randaugment_magnitude: int = Field(
        9, ge=0, le=30, description="auto: randaugment's strength, 0..30 (torchvision's 31 bins; 9 as in its paper)."
    )

    zoom: tuple[float, float] | None = Field(
        None,
        description="[min, max] scale of a random zoom about the image's centre, before any crop (torchvision's "
        "RandomAffine scale; > 1 zooms in, < 1 out), e.g. [1.0, 1.4] lets an MNIST digit (a 20x20 box in 28x28) "
        "fill the frame as digits cropped to their bounding box do. Source images only: the unlabeled target "
        "batches of strategy.adaptation keep their framing. null: no zoom.",
    )
    low_resolution: LowResolutionSection | None = Field(
        None,
        description="Render some training images at a low resolution (after the zoom), so a model trained on "
        "sharp images also reads small upscaled ones, e.g. {size: 8, probability: 0.5, bits: 4}. Source images "
        "only, as zoom. null: off.",
    )

    @property
    def beyond_flip(self) -> bool:
        """Whether training images differ from evaluation's at random in more than a horizontal flip (crop,
        policy, zoom, low resolution): a frozen body's cached features can replay a flip, not these."""
        return (
            self.random_resized_crop
            or self.auto is not None
            or self.zoom is not None
            or self.low_resolution is not None
        )

    @field_validator("zoom")
    @classmethod
    def _zoom_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1]:
            raise ValueError(f"must be [min, max] scales with 0 < min <= max, e.g. [1.0, 1.4]; got {list(value)}")
        return value

    @field_validator("randaugment_magnitude")
    @classmethod
    def _with_randaugment(cls, value: int, info: ValidationInfo) -> int:
        default = cls.model_fields["randaugment_magnitude"].default  # a resolved recipe spells it out
        if value != default and info.data.get("auto") != "randaugment":
            raise ValueError(
                f"only applies with data.augment.auto: randaugment (auto is {info.data.get('auto')}), got {value}"
            )
        return value


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
        description="Seed of the validation/test carve and of the max_eval_samples samples (default: train.seed). "
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

    def evaluation_seed(self, train_seed: int) -> int:
        """The seed of the validation/test carve and of every evaluation sample: ``split_seed``, else ``train.seed``."""
        return train_seed if self.split_seed is None else self.split_seed

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

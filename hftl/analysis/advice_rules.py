"""The advisor's decision table: (training-set size x what the frozen features already do) -> strategy.

Pure and light (no torch): :mod:`hftl.analysis.advise` measures, this module decides, and
:mod:`hftl.config.recipe` checks ``strategy.name: auto`` (:data:`AUTO`). The table is data: one row per
(size band, feature class), each naming the recommended rung of the adaptivity
ladder, the runner-up and why. The thresholds are constants with the measurement
they come from; most are provisional until the strategy-vs-size studies
(``studies/*.yaml``) are in, and the README says which.

Strategy names appear here because recommending them is this module's job; it never
branches on one (tests/test_extension_points.py lists the exemption).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hftl.config.recipe import ADVICE_KEY, AUTO  # noqa: F401  (the advisor's names in a recipe)

# --------------------------------------------------------------------------- thresholds (update from studies/)
# Where the probe stops being the choice. MEASURED (docs/studies/sentiment-strategies, MiniLM on Rotten
# Tomatoes, 3 seeds, validation means, at least 100 optimizer steps): partial 0.703 / 0.788 / 0.805 / 0.825 vs
# the probe 0.678 / 0.768 / 0.771 / 0.788 at 100 / 1,000 / 4,000 / 10,207 snippets: fine-tuning the top half wins
# at every size, so the "ordinary" column no longer freezes at any size (the earlier rule, probe below 2,000,
# came from fine-tunes of 16-63 steps that never left the majority class). The band edge now only separates what
# the other columns say; it stays where it was until a second dataset's study (studies/bbc-strategies.yaml)
# places it.
FEW_EXAMPLES = 2_000
# Where full fine-tuning overtakes partial. MEASURED on one dataset (docs/studies/sentiment-strategies, validation
# means): partial 0.805 vs full 0.796 at 4,000 snippets, full 0.837 vs partial 0.825 at 10,207; it crosses between
# (about 5,900 interpolated in log size). Full also leads at 1,000 (0.797 vs 0.788), so the threshold report
# (benchmarks/advisor_thresholds.py, first crossing) says ~390, but at 1,000-4,000 the two are within a standard
# error. 8,000 is kept (above the last crossing) until a second dataset's study places it.
MANY_EXAMPLES = 8_000
# Frozen features "already separate the labels" when a linear probe removes this share of the majority-class
# baseline's errors. MEASURED on one dataset (docs/studies/bbc-strategies, MiniLM on BBC News, 3 seeds, validation
# means): the advisor's probe removes 92-93% of the errors at 400 / 1,000 / 1,781 articles (86% at 100), and
# adapting the top half still gains 2-3 points there (partial 0.966 / 0.966 / 0.969 vs the probe 0.931 / 0.943 /
# 0.949), so "separable" no longer means "freeze": it means the cheap probe is a close runner-up.
SEPARABLE_ERROR_REDUCTION = 0.90
# Likely negative transfer: the probe on frozen features scores this much below the raw-input baseline (TF-IDF or
# pixels + logistic regression, same folds). PROVISIONAL: about two standard errors of a 3-fold accuracy on ~1,000.
NEGATIVE_GAP = 0.03
# Frozen features that carry no signal: this share of the feature dimensions is constant over the advisor's sample.
# MEASURED (docs/studies/digits-screen, EfficientNet-Lite0 on scikit-learn's 8x8 digits, `hftl advise`): at 32 px
# 99.6% of the 1,280 pooled features are constant over the 1,257 training digits (mostly exactly 0: ImageNet's
# BatchNorm statistics and ReLU6 leave nothing alive in maps of 1x1), so the probe sees nothing and full
# fine-tuning gets no gradient
# (its loss stays at ln 10; validation 0.10-0.16); every pretrained strategy of docs/studies/digits-strategies stays
# below 0.66 there while scratch reaches 0.70-0.93. At 64 px 37% are constant and full fine-tuning reaches 0.96.
CONSTANT_SHARE = 0.90
# Fine-tuning needs enough optimizer steps: with 500-1,000 snippets and 16-63 steps it stayed at the majority class,
# and one epoch of the full 10.2k (319 steps at batch 32) reached 0.830. Budget: epochs giving at least this many.
MIN_FINETUNE_STEPS = 300
MAX_EPOCHS = 10

# Few-shot text: below this many labeled examples per class (data.shots, or a small labeled set), a probe or
# prototypes on frozen features stay near the majority class (MiniLM on Rotten Tomatoes, docs/adaptation_fewshot.md:
# prototypes 0.592 +- 0.109 at K=8 and 0.646 +- 0.047 at K=16, majority 0.601; probe at 100 snippets 0.676), and
# SetFit's contrastive tuning of the body on pairs of the shots is the practitioners' remedy (Tunstall et al. 2022).
# PROVISIONAL: "~100 per class" is the rule. MEASURED AGAINST IT (docs/studies/fewshot_setfit.md, 3 seeds, no
# validation data, setfit's own head on normalised features): on Rotten Tomatoes SetFit is not clearly better than
# prototypes (K=8 0.579 vs 0.592, K=16 0.667 vs 0.646); on BBC News it is (K=8 0.923 vs 0.878). As a cell of the
# strategy grids at 100 examples (studies/sentiment-setfit.yaml, bbc-setfit.yaml: 3 seeds, chosen on validation), it
# is the best cell on Rotten Tomatoes (test 0.734 +- 0.022; the grid's best 0.709) and 0.7 points behind the best on
# BBC News (0.933 vs progressive 0.940): within the agreement check's 1-point margin in both.
FEW_SHOT_PER_CLASS = 100

SIZE_BANDS = ("small", "medium", "large")
FEATURE_CLASSES = ("separable", "ordinary", "negative")
CONSTANT = "constant"  # read before the table: frozen features without signal (CONSTANT_SHARE), at every size


# --------------------------------------------------------------------------- the ladder of strategies
@dataclass(frozen=True)
class Rung:
    """One step of the adaptivity ladder: a strategy and the recipe keys it sets (LRs, budget, pooling)."""

    strategy: str
    options: dict[str, Any] = field(default_factory=dict)  # strategy.<name>
    lr: float | None = None  # optim.lr (the body); None: the body never trains
    head_lr: float = 1e-3
    image_lrs: tuple[float, float] | None = None  # (lr, head_lr) for image inputs
    epochs: float | None = None  # None: from MIN_FINETUNE_STEPS
    name: str | None = None  # the label, when it is not the strategy's name (scratch: full from random weights)
    sets: dict[str, Any] = field(default_factory=dict)  # other recipe keys the rung sets (dotted paths)

    @property
    def label(self) -> str:
        return self.name or self.strategy


# Input to head, least to most adaptive. Text LRs: the strategy studies (body 1e-4, head 1e-3; probe head 1e-2):
# full fine-tuning at 1e-4 / 1e-3 scored 0.838 ± 0.003 on 10,207 Rotten Tomatoes snippets against 0.827 ± 0.008 at
# 5e-5 / 5e-4 (docs/studies/defaults.md), and 1:10 is lr-multiplier's best ratio. Image LRs: recipes/
# fashion-mnist-efficientnet.yaml (3e-4 / 3e-3: 0.793 on 1,000 images); for partial on images: not measured.
LADDER = (
    Rung("feature_extraction", head_lr=1e-2, epochs=3),  # L-BFGS probe first, then 3 cheap epochs on cached features
    Rung("partial", {"freeze_fraction": 0.5}, lr=1e-4, head_lr=1e-3, image_lrs=(3e-4, 3e-3)),  # 0.816 at 4,000
    Rung("full", lr=1e-4, head_lr=1e-3, image_lrs=(3e-4, 3e-3)),
)
FE, PARTIAL, FULL = (r.label for r in LADDER)
# Off the ladder: the same architecture from random weights, what is left when pretrained features hurt. LRs as
# studies/sentiment-strategies.yaml's scratch cell (body 1e-4, head 1e-3) and recipes/mnist-scratch.yaml (2e-3).
SCRATCH_RUNG = Rung(
    "full",
    lr=1e-4,
    head_lr=1e-3,
    image_lrs=(2e-3, 2e-3),
    name="scratch",
    sets={"model.pretrained": False, "strategy.batchnorm": "frozen"},  # no pretrained statistics to keep
)
SCRATCH = SCRATCH_RUNG.label
# Off the ladder (text only, few shots): the body is tuned contrastively, the head then fitted by L-BFGS; its own
# budget (strategy.setfit), one pass of the loop over the cached features with the head kept (LR 0 there).
SETFIT_RUNG = Rung("setfit", epochs=1)
SETFIT = SETFIT_RUNG.label
RUNGS = (*LADDER, SCRATCH_RUNG, SETFIT_RUNG)


# --------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Cell:
    rung: str
    runner_up: str
    why: str


# Frozen features that lose to raw inputs are the one thing freezing cannot fix: the "negative" column never freezes.
# Full fine-tuning can move away from the pretrained features (and keeps what still helps); scratch is the runner-up,
# and `hftl advise --verify` runs both. Which of the two wins per size is for the strategy x size studies to say.
NEGATIVE_WHY = "the frozen features lose to raw inputs, so freezing them cannot recover;"
SEPARABLE_WHY = (
    "the frozen features already separate the labels, yet adapting the top half still gained 2-3 points (MiniLM on "
    "BBC News, validation: partial 0.966 vs the probe 0.943 at 1,000 articles); the probe is the cheap runner-up"
)

TABLE: dict[tuple[str, str], Cell] = {
    ("small", "separable"): Cell(PARTIAL, FE, SEPARABLE_WHY),
    ("small", "ordinary"): Cell(
        PARTIAL,
        FE,
        "few examples, but enough optimizer steps: adapting the top half beats the probe on frozen features "
        "(MiniLM on Rotten Tomatoes, validation: 0.703 vs 0.677 at 100 snippets, 0.788 vs 0.768 at 1,000)",
    ),
    ("small", "negative"): Cell(
        FULL,
        SCRATCH,
        NEGATIVE_WHY + " Few examples: starting from the pretrained weights and adapting them all beats "
        "freezing them (a 768-passage binary text set: full 0.727 / 0.760 vs feature_extraction 0.688, TF-IDF 0.736)",
    ),
    ("medium", "separable"): Cell(PARTIAL, FE, SEPARABLE_WHY),
    ("medium", "ordinary"): Cell(
        PARTIAL,
        FULL,
        "a few thousand examples: adapting the top half wins (MiniLM at "
        "4,000: partial 0.816 vs probe 0.749) at 0.6x the step time of full",
    ),
    ("medium", "negative"): Cell(
        FULL, SCRATCH, NEGATIVE_WHY + " There are enough examples to adapt the whole body; compare with scratch"
    ),
    ("large", "separable"): Cell(PARTIAL, FULL, SEPARABLE_WHY + "; with many examples full fine-tuning may edge it"),
    ("large", "ordinary"): Cell(FULL, PARTIAL, "many examples: full fine-tuning (MiniLM on 10.2k: 0.83)"),
    ("large", "negative"): Cell(
        FULL, SCRATCH, NEGATIVE_WHY + " Many examples: full fine-tuning, with training from scratch the runner-up"
    ),
}


# Frozen features without signal (CONSTANT_SHARE): there is nothing to transfer at this input, at any size.
CONSTANT_CELL = Cell(
    SCRATCH,
    FULL,
    "the frozen features are constant over the examples (no signal reaches the head, and no gradient the body): "
    "start from random weights (EfficientNet-Lite0 on 8x8 digits at 32 px, test: scratch 0.70 / 0.93 at 100 / "
    "1,257 digits, every pretrained strategy below 0.66); or give the checkpoint inputs closer to its own "
    "(64 px: full fine-tuning 0.98 on the same digits)",
)

# Few-shot text rows (read before TABLE when the training set has < FEW_SHOT_PER_CLASS examples per class).
FEW_SHOT_TABLE: dict[str, Cell] = {
    "separable": Cell(
        PARTIAL,
        SETFIT,
        SEPARABLE_WHY + " (also below 100 examples per class: 0.966 vs 0.931 at 400 articles, 80 a class)",
    ),
    "ordinary": Cell(
        SETFIT,
        FE,
        "few examples per class: frozen features stay near the majority class (MiniLM prototypes 0.59-0.65 at "
        "K = 8-16, majority 0.60); SetFit tunes the body on pairs of the shots",
    ),
    "negative": Cell(
        SETFIT, FULL, "few examples and frozen features worse than raw inputs: the body must adapt, from pairs"
    ),
}


@dataclass(frozen=True)
class Measurements:
    """What the table reads (accuracies from the same cross-validation folds of the training split)."""

    n_train: int
    majority: float  # accuracy of always predicting the commonest class
    probe_accuracy: float  # linear probe on the frozen features
    baseline_accuracy: float | None  # raw inputs + logistic regression (None: not measured for this input)
    n_classes: int | None = None  # label count (None: unknown, the few-shot rows are not read)
    text: bool = False  # text inputs (SetFit is for sentence embeddings)
    constant_share: float | None = None  # share of the feature dimensions constant over the sample (None: unknown)


def few_shot(m: Measurements) -> bool:
    """Text with fewer than FEW_SHOT_PER_CLASS labeled examples per class (e.g. ``data.shots``)."""
    return bool(m.text and m.n_classes and m.n_train < FEW_SHOT_PER_CLASS * m.n_classes)


@dataclass(frozen=True)
class Decision:
    size_band: str
    feature_class: str
    rung: Rung
    runner_up: Rung
    why: str
    flags: tuple[str, ...]

    @property
    def branch(self) -> str:
        return f"{self.size_band} x {self.feature_class}"


def size_band(n: int) -> str:
    return "small" if n < FEW_EXAMPLES else "medium" if n < MANY_EXAMPLES else "large"


def feature_class(m: Measurements) -> str:
    if m.constant_share is not None and m.constant_share >= CONSTANT_SHARE:
        return CONSTANT
    if m.baseline_accuracy is not None and m.probe_accuracy < m.baseline_accuracy - NEGATIVE_GAP:
        return "negative"
    majority_error = 1.0 - m.majority
    if majority_error > 0 and (m.probe_accuracy - m.majority) / majority_error >= SEPARABLE_ERROR_REDUCTION:
        return "separable"
    return "ordinary"


def decide(m: Measurements) -> Decision:
    """The table's answer for these measurements, with the branch taken and warnings."""
    band, kind = size_band(m.n_train), feature_class(m)
    if kind == CONSTANT:
        cell = CONSTANT_CELL
    elif few_shot(m):
        band, cell = "few-shot", FEW_SHOT_TABLE[kind]
    else:
        cell = TABLE[(band, kind)]
    flags = []
    if kind == CONSTANT:
        flags.append(
            f"{m.constant_share:.1%} of the frozen features are constant over the sampled examples: the pretrained "
            "body passes no signal at this input. For images far smaller than the checkpoint's training size, raise "
            "data.image_size (or let BatchNorm re-estimate its statistics: strategy.batchnorm: frozen); otherwise "
            "check the inputs' preprocessing"
        )
    elif kind == "negative":
        flags.append(
            f"likely negative transfer: raw inputs + logistic regression ({m.baseline_accuracy:.3f}) beat "
            f"the linear probe on frozen features ({m.probe_accuracy:.3f}): the body must adapt (or start from "
            "scratch); consider another checkpoint"
        )
    if m.probe_accuracy <= m.majority + 0.01:
        flags.append(f"the frozen features barely beat the majority class ({m.probe_accuracy:.3f} vs {m.majority:.3f})")
    return Decision(band, kind, rung(cell.rung), rung(cell.runner_up), cell.why, tuple(flags))


def rung(label: str) -> Rung:
    return next(r for r in RUNGS if r.label == label)


def neighbours(label: str) -> list[Rung]:
    """The next less and the next more adaptive rungs (those that exist), for ``hftl advise --verify``."""
    if label == SETFIT:  # off the ladder: the frozen-body probe below it, full fine-tuning above
        return [rung(FE), rung(FULL)]
    if label not in [r.label for r in LADDER]:
        return [LADDER[-1]]  # scratch: its neighbour is full fine-tuning
    i = [r.label for r in LADDER].index(label)
    return [LADDER[j] for j in (i - 1, i + 1) if 0 <= j < len(LADDER)]


def contenders(decision: Decision) -> list[Rung]:
    """What ``--verify`` runs: the recommended rung, its ladder neighbours and the table's runner-up."""
    out = [decision.rung, *neighbours(decision.rung.label), decision.runner_up]
    return [r for i, r in enumerate(out) if r.label not in [o.label for o in out[:i]]]


def epochs_for(r: Rung, n_train: int, batch_size: int) -> float:
    """The rung's budget: its own epochs, else enough epochs for MIN_FINETUNE_STEPS optimizer steps."""
    if r.epochs is not None:
        return r.epochs
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    return float(min(MAX_EPOCHS, max(1, math.ceil(MIN_FINETUNE_STEPS / steps_per_epoch))))


def rung_settings(r: Rung, n_train: int, batch_size: int, images: bool, pooling: str | None) -> dict[str, Any]:
    """The recipe keys (dotted paths) that put a recipe on this rung."""
    sets: dict[str, Any] = {"strategy.name": r.strategy, **r.sets}
    if r.options:
        sets[f"strategy.{r.strategy}"] = dict(r.options)
    lr, head_lr = r.image_lrs if images and r.image_lrs else (r.lr, r.head_lr)
    if lr is not None:
        sets["optim.lr"] = lr
    sets["optim.head_lr"] = head_lr
    sets["train.epochs"] = epochs_for(r, n_train, batch_size)
    if r.lr is None and images:  # a frozen body's features are cached only when nothing random feeds it
        sets["data.augment"] = {"random_resized_crop": False, "hflip": False}
    if r.lr is None and pooling == "pooler":
        # MiniLM probes at 4,000 snippets: mean-pooled token states 0.749, the BERT pooler output 0.698 (OFFLINE.md)
        sets["model.pooling"] = "mean"
    return sets


def strategy_settings(label: str, n_train: int, batch_size: int = 32, images: bool = False) -> dict[str, Any]:
    """The recipe keys (dotted paths) ``hftl advise`` writes for the rung named ``label`` (a strategy of the table,
    e.g. its runner-up) at ``n_train`` training examples: for setting it against the advice in a study."""
    return rung_settings(rung(label), n_train, batch_size, images, pooling=None)


def describe_table() -> str:
    """The table as text (``hftl advise`` prints it with the branch taken)."""
    lines = [f"  {'':8}" + "".join(f"{k:<22}" for k in FEATURE_CLASSES)]
    for band in SIZE_BANDS:
        lines.append(f"  {band:<8}" + "".join(f"{TABLE[(band, k)].rung:<22}" for k in FEATURE_CLASSES))
    lines.append(f"  {CONSTANT} features (>= {CONSTANT_SHARE:.0%} of them constant), any size: {CONSTANT_CELL.rung}")
    lines.append(
        f"  text with < {FEW_SHOT_PER_CLASS} examples per class: "
        + ", ".join(f"{k} {FEW_SHOT_TABLE[k].rung}" for k in FEATURE_CLASSES)
    )
    return "\n".join(lines)

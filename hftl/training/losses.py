"""The training loss computed from the logits, when the model's own loss is not the one to train on.

Without ``train.class_weights``, ``train.label_smoothing`` and ``train.mixup`` the loop uses the model's own loss
(transformers picks it from ``config.problem_type``). With any of them, the same loss is computed here: cross-entropy
(ignoring -100 positions) with a weight per class and torch's label smoothing, or with the soft targets mixup made
(already smoothed by timm's Mixup, so not smoothed twice); multi-label: BCE with ``pos_weight``, the weight of each
label's positives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftl.config.errors import RecipeError

if TYPE_CHECKING:
    import torch

    from hftl.config.schema import Recipe, TrainSection


@dataclass
class TaskLoss:
    """Cross-entropy (single-label, per token; class-weighted, label-smoothed, or on soft targets) or BCE with
    ``pos_weight`` (multi-label)."""

    weights: list[float] | None
    multi_label: bool
    label_smoothing: float = 0.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        weight = None if self.weights is None else torch.tensor(self.weights, device=logits.device)
        if self.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits.float(), labels.float(), pos_weight=weight
            )
        if labels.is_floating_point():  # class probabilities per example (mixup's targets, smoothed by it)
            return torch.nn.functional.cross_entropy(logits.float(), labels.float(), weight=weight)
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            weight=weight,
            ignore_index=-100,
            label_smoothing=self.label_smoothing,
        )


def loss_from_logits(train: TrainSection) -> bool:
    """Whether ``train.class_weights``, ``train.label_smoothing`` or ``train.mixup`` asks for :class:`TaskLoss`
    rather than the model's own loss."""
    return train.class_weights is not None or train.label_smoothing > 0 or train.mixup is not None


def build_loss(recipe: Recipe, labels: list[str], train_targets: list[Any]) -> TaskLoss | None:
    """The loss ``train.class_weights``, ``train.label_smoothing`` and ``train.mixup`` ask for (None: the model's
    own loss)."""
    from hftl.tasks.labels import balanced_weights

    train, kind = recipe.train, recipe.data.problem_type
    asked = train.class_weights
    if not loss_from_logits(train):
        return None
    if asked is None:
        weights = None
    elif asked == "balanced":
        flat = [t for row in train_targets for t in (row if isinstance(row, list) and kind != "multi_label" else [row])]
        weights = balanced_weights([t for t in flat if t != -100], len(labels), kind)
    elif len(asked) != len(labels):
        raise RecipeError(
            recipe.source_file,
            "train.class_weights",
            f"gives {len(asked)} weights for {len(labels)} labels",
            asked,
            hint=f"One weight per label, in label order: {', '.join(labels)}; or 'balanced'.",
        )
    else:
        weights = list(asked)
    # with mixup, timm's Mixup smooths the mixed targets itself (hftl.training.mixup)
    smoothing = 0.0 if train.mixup is not None else train.label_smoothing
    return TaskLoss(weights, kind == "multi_label", smoothing)

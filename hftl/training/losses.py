"""The training loss when ``train.class_weights`` is set: computed from the logits, weighted per class.

Without class weights the loop uses the model's own loss (transformers picks it from ``config.problem_type``).
With them, the same loss is computed here with a weight per class (cross-entropy, ignoring -100 positions)
or per label (multi-label: BCE's ``pos_weight``, the weight of each label's positives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hftl.config.errors import RecipeError

if TYPE_CHECKING:
    import torch

    from hftl.config.schema import Recipe


@dataclass
class WeightedLoss:
    """Class-weighted cross-entropy (single-label, per token) or BCE with ``pos_weight`` (multi-label)."""

    weights: list[float]
    multi_label: bool

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        import torch

        weight = torch.tensor(self.weights, device=logits.device)
        if self.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(
                logits.float(), labels.float(), pos_weight=weight
            )
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), weight=weight, ignore_index=-100
        )


def build_loss(recipe: Recipe, labels: list[str], train_targets: list[Any]) -> WeightedLoss | None:
    """The weighted loss ``train.class_weights`` asks for (None: the model's own loss)."""
    from hftl.tasks.labels import balanced_weights

    asked, kind = recipe.train.class_weights, recipe.data.problem_type
    if asked is None:
        return None
    if asked == "balanced":
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
    return WeightedLoss(weights, kind == "multi_label")

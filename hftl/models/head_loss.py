"""The loss of hftl's own classification heads, by the config's ``problem_type``, as transformers' heads compute it.

Imports only torch: the pooled text classifier (:mod:`hftl.models.pooled_model`) and the all-stages image classifier
(:mod:`hftl.models.stages_model`) import it relatively, so transformers copies this file beside theirs into a saved
run (``auto_map`` remote code) and ``trust_remote_code=True`` loads it without hftl.
"""

from __future__ import annotations

import torch
from torch import nn


def head_loss(problem_type: str | None, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error (``regression``), binary cross-entropy per label (``multi_label_classification``), else
    cross-entropy over the classes; computed in float32, as under autocast the logits may be half precision."""
    if problem_type == "regression":
        return nn.functional.mse_loss(logits.float().view(-1), labels.float().view(-1))
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return nn.functional.cross_entropy(logits.float(), labels.view(-1))

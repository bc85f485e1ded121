"""What hftl's own classifiers share: the loss by ``problem_type``, and the registration with transformers.

Imports only torch and transformers: the pooled text classifier (:mod:`hftl.models.pooled_model`) and the all-stages
image classifier (:mod:`hftl.models.stages_model`) import it relatively, so transformers copies this file beside
theirs into a saved run (``auto_map`` remote code) and ``trust_remote_code=True`` loads it without hftl.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig


def head_loss(problem_type: str | None, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error (``regression``), binary cross-entropy per label (``multi_label_classification``), else
    cross-entropy over the classes; computed in float32, as under autocast the logits may be half precision."""
    if problem_type == "regression":
        return nn.functional.mse_loss(logits.float().view(-1), labels.float().view(-1))
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return nn.functional.cross_entropy(logits.float(), labels.view(-1))


def register_auto(config_class: Any, model_class: Any, auto_model_class: Any) -> None:
    """Register a config and model class with ``AutoConfig`` and ``auto_model_class`` (so a saved run loads
    without ``trust_remote_code`` once the defining module is imported), and for ``auto_map`` (so
    ``save_pretrained`` writes it and copies the defining file, the remote code, into the run)."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    auto_model_class.register(config_class, model_class, exist_ok=True)
    config_class.register_for_auto_class()
    model_class.register_for_auto_class(auto_model_class.__name__)

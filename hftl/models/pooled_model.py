"""A text classifier whose head reads what its checkpoint was trained to produce: mean, max or CLS pooling.

``AutoModelForSequenceClassification`` on a BERT-like checkpoint puts the head on
the BERT pooler (CLS -> dense -> tanh). Sentence-transformers checkpoints such as
all-MiniLM-L6-v2 were trained for *mean* pooling instead (their
``1_Pooling/config.json`` says so), and a head on the pooler loses 6-10 points of
accuracy at small data (measured; see the README). This class puts a dropout +
linear head on the pooled token states of any ``AutoModel`` body.

``normalize: true`` scales each pooled vector to unit length before the head, as
a sentence-transformers checkpoint whose ``modules.json`` ends with a
``Normalize`` module does (all-MiniLM-L6-v2), and as the setfit library's head
sees it. It lives in the forward pass, so training, the feature cache (which
records the head's input), the saved run and ``pipeline`` loading all see the
same features.

It is saved and loaded the transformers way: ``save_pretrained`` writes a
config with ``model_type: hftl-pooled-classifier`` (the body's config nested
inside) and this file with an ``auto_map``, so ``pipeline("text-classification",
model=RUN, trust_remote_code=True)`` loads a run anywhere, and after
``import hftl.models.pooled_model`` (which registers the classes with the Auto
factories) without ``trust_remote_code``. This module imports only torch,
transformers and its neighbour ``head_common.py`` (relatively: ``save_pretrained``
copies both), so the two files are the remote code itself.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from .head_common import head_loss, register_auto  # relative: save_pretrained copies it beside this file

POOLINGS = ("mean", "max", "cls")


class PooledClassifierConfig(PretrainedConfig):
    model_type = "hftl-pooled-classifier"
    sub_configs = {}

    def __init__(
        self,
        body: dict[str, Any] | None = None,
        pooling: str = "mean",
        classifier_dropout: float = 0.1,
        normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        self.body = dict(body or {})
        self.pooling = pooling
        self.normalize = normalize
        self.classifier_dropout = classifier_dropout
        super().__init__(**kwargs)

    def body_config(self) -> PretrainedConfig:
        body = dict(self.body)
        return AutoConfig.for_model(body.pop("model_type"), **body)


def pool(states: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """One vector per sequence from its token states (padding excluded), as sentence-transformers pools."""
    if how == "cls":
        return states[:, 0]
    keep = (mask if mask is not None else torch.ones(states.shape[:2], device=states.device)).unsqueeze(-1)
    keep = keep.to(states.dtype)
    if how == "max":
        return states.masked_fill(keep == 0, torch.finfo(states.dtype).min).max(dim=1).values
    return (states * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1e-9)


class PooledModelForSequenceClassification(PreTrainedModel):
    config_class = PooledClassifierConfig
    base_model_prefix = "body"
    supports_gradient_checkpointing = True

    def __init__(self, config: PooledClassifierConfig, body: nn.Module | None = None) -> None:
        super().__init__(config)
        self.body = body if body is not None else AutoModel.from_config(config.body_config())
        if getattr(self.body, "pooler", None) is not None:  # the BERT pooler is not read: no unused parameters
            self.body.pooler = None
        hidden = self.body.config.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and module is self.classifier:
            std = getattr(self.body.config, "initializer_range", 0.02)
            module.weight.data.normal_(mean=0.0, std=std)
            module.bias.data.zero_()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **inputs: Any,
    ) -> SequenceClassifierOutput:
        inputs = {k: v for k, v in inputs.items() if k in ("token_type_ids", "position_ids", "inputs_embeds")}
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, **inputs)
        pooled = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        if getattr(self.config, "normalize", False):  # configs saved before the flag existed: not normalised
            pooled = nn.functional.normalize(pooled, dim=-1)
        logits = self.classifier(self.dropout(pooled))
        loss = None if labels is None else head_loss(self.config.problem_type, logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


register_auto(PooledClassifierConfig, PooledModelForSequenceClassification, AutoModelForSequenceClassification)

"""Prototypes: few-shot classification by the nearest class mean of frozen, pooled, L2-normalised features.

With a handful of labeled examples per class (``data.shots``), fitting even a
linear head is noisy; a *prototype* per class (the mean of its examples'
normalised features, normalised again) and cosine similarity to it needs no
training at all (the nearest-mean classifier of Snell et al. 2017's prototypical
networks, on a frozen pretrained body). It runs on the feature cache
(:mod:`hftl.training.feature_cache`), like the L-BFGS probe of ``feature_extraction``:
the body's pooled outputs are computed once, and the prototypes take seconds.

Where the normalisation lives, so the saved run still loads with
``transformers.pipeline``: the head stays the checkpoint's own linear layer,
with ``weight = scale * prototypes / mean training feature norm`` and
``bias = 0``. The *input* is not normalised inside the model; that changes
nothing in the predictions, since ``argmax_c p_c . x / |x|`` is
``argmax_c p_c . x`` (``|x|`` is the same for every class). Only the scores
differ: the softmax temperature of an example scales with its norm relative to
the training mean (about 1). This is the approximation, and it is the only one.

Options: ``scale`` (the logit scale at the mean norm: softmax sharpness only),
``finetune_head`` (false: the head keeps the prototypes, LR 0 in the loop; true:
the loop's AdamW epochs continue from them, i.e. a prototype-initialised probe).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy


class PrototypesOptions(Section):
    scale: float = Field(
        10.0,
        gt=0.0,
        description="Logit scale: logits = scale * cosine (at the mean feature "
        "norm); changes the scores' sharpness, never the predicted class.",
    )
    finetune_head: bool = Field(
        False,
        description="false: the head is the prototypes (LR 0 in the loop); true: "
        "the loop's AdamW steps then train the head from them (optim.head_lr).",
    )


@dataclass(frozen=True)
class PrototypeFit:
    classes: int
    examples: int
    validation_accuracy: float

    def __str__(self) -> str:
        return (
            f"head set to {self.classes} class prototypes (means of {self.examples} normalised training features; "
            f"validation accuracy {self.validation_accuracy:.4f})"
        )


def class_prototypes(x, y, n_classes: int):
    """Unit-norm class means of unit-norm features; a class without examples gets a zero prototype."""
    import torch

    z = torch.nn.functional.normalize(x.float(), dim=1)
    sums = torch.zeros(n_classes, z.shape[1]).index_add_(0, y, z)
    return torch.nn.functional.normalize(sums, dim=1)


def fit_prototypes(chain, train_rows, train_labels, val_rows, val_labels, scale: float = 10.0):
    """Set the chain's linear layer to cosine nearest-prototype classification (the head must be one linear layer)."""
    import torch

    from hftl.config.errors import HftlError
    from hftl.training.probe import head_inputs, linear_head

    linear = linear_head(chain)
    x, x_val = head_inputs(chain, train_rows), head_inputs(chain, val_rows)
    if linear is None or x is None or x_val is None or not isinstance(train_labels[0], int):
        raise HftlError(
            "strategy 'prototypes' needs a head that is one linear layer on one pooled vector per example "
            "(single-label classification); this model's head is not."
        )
    prototypes = class_prototypes(x, torch.tensor(train_labels), linear.out_features)
    mean_norm = x.float().norm(dim=1).mean().clamp(min=1e-12)
    with torch.no_grad():
        linear.weight.copy_((scale * prototypes / mean_norm).to(linear.weight.dtype))
        linear.bias.zero_()
    cosine = torch.nn.functional.normalize(x_val.float(), dim=1) @ prototypes.T
    accuracy = float((cosine.argmax(-1) == torch.tensor(val_labels)).float().mean())
    return PrototypeFit(linear.out_features, len(train_labels), accuracy)


@strategy(
    "prototypes",
    options=PrototypesOptions,
    fit_head_first=lambda options: True,
    fit_head=lambda options: partial(fit_prototypes, scale=options.scale),
    lr_scale=lambda group, options: 1.0 if options.finetune_head or not group.is_head else 0.0,
)
def prototypes(groups, options: PrototypesOptions, steps_per_epoch, total_steps, where):
    """The body is frozen; the head is set to the cosine nearest class mean (prototype) of the pooled features."""
    return [0 if g.is_head else None for g in groups]

"""Feature caching (:mod:`hftl.training.feature_cache`), when it applies: the recipe, the plan and a traced batch.

Checked before anything is cached; each failure is logged as the reason for skipping:

- ``train.cache_features`` is ``auto``; no body group trains at any step of the run;
- no BatchNorm statistics update in the body (``strategy.batchnorm: train``);
- nothing random feeds the body but a horizontal flip: image tasks need ``data.augment``'s random resized crop
  and automatic policy (and ``train.mixup``) off, and the train and eval collators must give the same inputs on a
  sample once the flip is set aside. ``data.augment.hflip`` is replayed exactly from the cached features of both
  orientations (:mod:`hftl.training.feature_cache`);
- on a sample batch, traced in training and in evaluation configuration, the
  head group's modules (e.g. BERT's ``dropout`` then ``classifier``) run once
  each, one tensor in, chained output to input, the last one giving the logits;
  and the head's input is the same in both configurations (no randomness
  outside the frozen groups). Leading parameter-free modules that act the same
  in both (timm's global pooling) are folded into the cached features, so the
  cache holds pooled vectors; the head's own dropout is replayed in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hftl.config.registry import STRATEGIES
from hftl.training.feature_extraction import model_inputs

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import AugmentSection, MixupSection
    from hftl.strategies.plan import Plan


def skip_reason(
    model: nn.Module,
    plan: Plan,
    task: Any,
    encoded: datasets.DatasetDict,
    cache_features: str,
    augment: AugmentSection,
    mixup: MixupSection | None = None,
) -> str | None:
    """Why features cannot be cached for this run (from ``train.cache_features``, ``data.augment``,
    ``train.mixup`` and the plan alone), or None."""
    if cache_features == "never":
        return "train.cache_features is 'never'"
    frozen = {g.name for g in plan.frozen_for_whole_run()}
    heads = [g for g in plan.groups if g.is_head]
    if len(heads) != 1 or heads[0].name in frozen:
        return "the model has no trainable head group"
    training = [g.name for g in plan.groups if not g.is_head and g.name not in frozen]
    if training:
        shown = ", ".join(training[:4]) + (" ..." if len(training) > 4 else "")
        return (
            f"body group(s) {shown} train during the run (strategy '{plan.strategy}'); caching needs the "
            "whole body frozen for the whole run, e.g. strategy.name="
            + " / ".join(STRATEGIES.names_where(frozen_body=True))
        )
    body_modules = [m for name, m in model.named_modules() if not _in_any(name, heads[0].modules)]
    if plan.batchnorm == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in body_modules):
        return "strategy.batchnorm is 'train': the frozen body's BatchNorm statistics change while training"
    if "image" in task.roles and augment.beyond_flip:
        return (
            "random augmentation feeds the backbone (data.augment); set data.augment.random_resized_crop=false "
            "(and remove data.augment.auto, zoom and low_resolution) to cache features (data.augment.hflip is "
            "replayed from the cache)"
        )
    if mixup is not None:
        return "train.mixup mixes the raw images that feed the backbone; remove it to cache features"
    if any("labels" not in encoded[split].column_names for split in encoded):
        return "the encoded data has no 'labels' column"
    config = getattr(model, "config", None)
    if (
        getattr(config, "problem_type", None) not in (None, "single_label_classification")
        or getattr(config, "num_labels", 2) < 2
    ):
        return "the task's loss is not single-label cross-entropy"
    return None


def augmentation_reason(train_collate: Any, eval_collate: Any, sample: list[dict]) -> str | None:
    """None when the train collator gives exactly the eval collator's inputs on ``sample`` (nothing random)."""
    a, b = train_collate(sample), eval_collate(sample)
    same = a.keys() == b.keys() and all(
        not isinstance(a[k], torch.Tensor) or (a[k].shape == b[k].shape and torch.equal(a[k], b[k])) for k in a
    )
    return None if same else "the training collator's inputs differ from evaluation's (random augmentation?)"


def trace_head(model: nn.Module, plan: Plan, batch: dict[str, Any]) -> tuple[list[str], str | None]:
    """The head modules to replay on cached inputs (first one hooked), or a reason they cannot be.

    Runs ``batch`` in evaluation and in training configuration (frozen groups in
    eval mode, as the loop runs them) and checks the head is a plain chain whose
    input does not depend on the mode.
    """
    from hftl.strategies.plan import apply_plan

    head = next(g for g in plan.groups if g.is_head)
    model.eval()
    evaluated, _ = _record(model, head.modules, batch)
    model.train()
    apply_plan(model, plan, 0)
    trained, logits = _record(model, head.modules, batch)
    model.eval()
    for calls in (evaluated, trained):
        if sorted(c.name for c in calls) != sorted(head.modules) or [c.name for c in calls] != [
            c.name for c in trained
        ]:
            ran = ", ".join(c.name for c in calls) or "none"
            return [], f"the head's modules ({', '.join(head.modules)}) do not each run once per forward (ran: {ran})"
        if bad := [c.name for c in calls if c.input is None]:
            return [], f"head module '{bad[0]}' takes more than one input tensor"
    for before, after in zip(trained, trained[1:]):
        if after.input is not before.output:
            return [], (
                f"something hftl cannot replay runs between head modules '{before.name}' and "
                f"'{after.name}' (an activation or a functional dropout)"
            )
    if not (trained[-1].output is logits or torch.equal(trained[-1].output, logits)):
        return [], f"the last head module '{trained[-1].name}' does not give the model's logits"
    if not _close(trained[0].input, evaluated[0].input):
        return (
            [],
            "the head's input differs between training and evaluation: something random runs outside the frozen groups",
        )
    modules = dict(model.named_modules())
    start = 0
    while (
        start < len(trained) - 1
        and not any(True for _ in modules[trained[start].name].parameters())
        and _close(trained[start].output, evaluated[start].output)
    ):
        start += 1  # a parameter-free, deterministic module (pooling): cache its output instead
    return [c.name for c in trained[start:]], None


@dataclass
class _Call:
    name: str
    input: torch.Tensor | None  # None when the module got anything but exactly one tensor
    output: Any


def _record(model: nn.Module, names: Sequence[str], batch: dict[str, Any]) -> tuple[list[_Call], torch.Tensor]:
    """Run ``batch`` and record each head module's input and output, in call order."""
    modules = dict(model.named_modules())
    calls: list[_Call] = []

    def pre(name: str):
        def hook(module, args, kwargs):
            one = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            calls.append(_Call(name, args[0] if one else None, None))

        return hook

    def post(module, args, output):
        calls[-1].output = output

    handles = [
        h
        for name in names
        for h in (
            modules[name].register_forward_pre_hook(pre(name), with_kwargs=True),
            modules[name].register_forward_hook(post),
        )
    ]
    try:
        with torch.no_grad():
            logits = model(**model_inputs(batch)).logits
    finally:
        for handle in handles:
            handle.remove()
    return calls, logits


def _in_any(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _close(a: Any, b: Any) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
    )

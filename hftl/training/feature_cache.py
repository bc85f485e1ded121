"""Feature caching: when the whole body is frozen, compute what the head receives once, then train only the head.

When every non-head layer group is frozen for the entire run (strategy
``feature_extraction``, or ``partial`` freezing every body group) and nothing
random feeds the body, each example's head input is a fixed tensor. It is
computed once (eval mode, inference mode), captured by a forward hook on the
head, stored on disk, and every epoch (and every evaluation) then runs the head
alone: with MiniLM that is one small matrix product per batch instead of a
six-layer encoder.

How it plugs into :func:`hftl.training.train.run` (the ``feature_cache`` run hook of
:mod:`hftl.training.run_hooks`, after the plan, before the optimizer): the train
and eval DataLoaders are swapped for loaders over the cached tensors (the train loader
keeps the run's batch sampler, so the batches and their order are the same), and the model's ``forward`` is swapped
for one that runs the head modules on them and returns the task's loss
(cross-entropy, -100 ignored). The model keeps its parameters, names and
modules, so the plan, optimizer, DDP wrapping, checkpoints, resume and
``save_pretrained`` (the full model, with the head weights trained on the
cache) work unchanged.

When it applies: :mod:`hftl.training.feature_eligibility`; the cache's key and folder:
:mod:`hftl.training.feature_key`; extraction: :mod:`hftl.training.feature_extraction`; the files:
:mod:`hftl.training.feature_store`.

A horizontal flip (``data.augment.hflip`` on an image task, with no random crop or automatic policy) is the one
augmentation the cache replays exactly: the training split is also extracted flipped, and each time the loop
reads an example it gets the flipped features with probability 1/2, as the uncached collator flips the pixels;
the L-BFGS probe (and a strategy's closed-form head) is fitted on both orientations of every training image.
Evaluation reads the unflipped features, so the saved model is the same linear head on the same features.

Limits: the whole train split's features are held in memory. Under several
processes each one extracts its share and the shares are gathered (one
machine, or a shared cache folder); only the main process writes. Two-stage and
progressive runs are not cached (the body joins mid-run). Heads that read
several tensors, or with unregistered operations between their modules
(DistilBERT's ReLU, timm's functional ``drop_rate``), are skipped. Files are
never evicted: delete the ``features`` folder to reclaim space.
"""

from __future__ import annotations

import time
import types
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hftl.models.caching import rng_untouched
from hftl.training.feature_eligibility import augmentation_reason, skip_reason, trace_head
from hftl.training.feature_extraction import load_or_build, rows_of, to_device
from hftl.training.feature_key import cache_file, cache_key
from hftl.training.feature_store import CachedSplit, collate_cached

if TYPE_CHECKING:
    from hftl.config.schema import Recipe
    from hftl.training.context import RunContext


def maybe_use_cache(
    ctx: RunContext,
) -> tuple[torch.utils.data.DataLoader, dict[str, torch.utils.data.DataLoader], list[nn.Module]]:
    """The run hook's work: loaders over cached head inputs (and a head-only ``model.forward``), or the loaders
    unchanged.

    Also returns the head's modules run on the cached inputs, in order (empty when nothing is cached).

    Every process must call it (the decision and the extraction are collective).
    """
    from accelerate.utils import broadcast_object_list

    from hftl.config.log import say  # main process only; hidden by --quiet

    model, plan, recipe, task, accelerator = ctx.model, ctx.plan, ctx.recipe, ctx.task, ctx.accelerator
    processor, encoded, train_dl, eval_dls = ctx.data.processor, ctx.data.encoded, ctx.train_dl, ctx.eval_dls
    collate = task.collator(processor, recipe, train=False)
    flips = "image" in task.roles and recipe.data.augment.hflip  # replayed from a flipped copy of the train split
    chain: list[str] = []
    with rng_untouched():
        reason = skip_reason(
            model, plan, task, encoded, recipe.train.cache_features, recipe.data.augment, recipe.train.mixup
        )
        if reason is None:
            sample = rows_of(encoded["train"], range(min(8, len(encoded["train"]))))
            reason = augmentation_reason(task.collator(processor, unflipped(recipe), train=True), collate, sample)
        if reason is None:
            model.to(accelerator.device)
            chain, reason = trace_head(model, plan, to_device(collate(sample), accelerator.device))
    reason, chain = broadcast_object_list([reason, chain])  # the main process decides for all
    if reason is not None:
        say(f"[cache] skipped: {reason}")
        return train_dl, eval_dls, []

    modules = dict(model.named_modules())
    key = cache_key(model, plan, recipe.model, recipe.data, processor, chain[0])
    say(
        f"[cache] the body is frozen for the whole run: the head ({' -> '.join(chain)}) trains on cached "
        f"inputs of '{chain[0]}'"
    )
    splits = {"train": train_dl, **eval_dls}

    def extract(split: str, key_text: str, collate_fn: Any) -> tuple[Any, str, str]:
        """One split's cached head inputs (read, or built now) and the words for the log line."""
        path, started = cache_file(key_text, encoded[split]), time.time()
        with rng_untouched():
            rows, built = load_or_build(
                path,
                model,
                modules[chain[0]],
                encoded[split],
                collate_fn,
                splits[split].batch_sampler.batch_size,
                accelerator,
            )
        return (
            rows,
            f"{'built' if built else 'reused'} features of {len(rows)} examples",
            f"({time.time() - started:.1f} s) {path}",
        )

    cached = {}
    for split in splits:
        rows, what, where = extract(split, key, collate)
        shape = tuple(rows[0].shape) if all(r.shape == rows[0].shape for r in rows) else ("T", *rows[0].shape[1:])
        say(f"[cache] {split}: {what}, shape {shape} {where}")
        cached[split] = CachedSplit(rows, list(encoded[split]["labels"]))
    if flips:
        rows, what, where = extract("train", f"{key}|hflip", flipped(collate))
        say(f"[cache] train, flipped (data.augment.hflip): {what} {where}")
        cached["train"] = CachedSplit(cached["train"].rows, cached["train"].labels, flipped_rows=rows)
    install_head_forward(model, [modules[name] for name in chain])
    new_train = torch.utils.data.DataLoader(
        cached["train"], batch_sampler=train_dl.batch_sampler, generator=train_dl.generator, collate_fn=collate_cached
    )
    new_eval = {
        split: torch.utils.data.DataLoader(
            cached[split], batch_sampler=dl.batch_sampler, generator=dl.generator, collate_fn=collate_cached
        )
        for split, dl in eval_dls.items()
    }
    return new_train, new_eval, [modules[name] for name in chain]


def unflipped(recipe: Recipe) -> Recipe:
    """The recipe with ``data.augment.hflip`` off (the flip is replayed from the cache, not drawn on pixels)."""
    return recipe.with_augment(hflip=False)


def flipped(collate: Any) -> Any:
    """The evaluation collator with every image mirrored left-right: what the training collator's flip gives."""

    def collate_flipped(features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(features)
        return {**batch, "pixel_values": batch["pixel_values"].flip(-1)}

    return collate_flipped


def install_head_forward(model: nn.Module, chain: list[nn.Module]) -> None:
    """Make ``model(features=..., labels=...)`` run only the head chain and the cross-entropy loss."""
    from transformers.modeling_outputs import SequenceClassifierOutput

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None, **_: Any) -> SequenceClassifierOutput:
        x = features
        for module in chain:
            x = module(x)
        loss = None
        if labels is not None:  # what the transformers heads compute: mean cross-entropy, -100 ignored
            loss = nn.functional.cross_entropy(x.flatten(0, -2).float(), labels.flatten(), ignore_index=-100)
        return SequenceClassifierOutput(loss=loss, logits=x)

    model.forward = types.MethodType(forward, model)

"""Feature caching: when the whole body is frozen, compute what the head receives once, then train only the head.

When every non-head layer group is frozen for the entire run (strategy
``feature_extraction``, or ``partial`` freezing every body group) and nothing
random feeds the body, each example's head input is a fixed tensor. It is
computed once (eval mode, inference mode), captured by a forward hook on the
head, stored on disk, and every epoch (and every evaluation) then runs the head
alone: with MiniLM that is one small matrix product per batch instead of a
six-layer encoder.

How it plugs into :func:`hftl.training.train.run` (one marked call, before
``accelerator.prepare``): the train and eval DataLoaders are swapped for loaders
over the cached tensors (the train loader keeps the run's batch sampler, so the
batches and their order are the same), and the model's ``forward`` is swapped
for one that runs the head modules on them and returns the task's loss
(cross-entropy, -100 ignored). The model keeps its parameters, names and
modules, so the plan, optimizer, DDP wrapping, checkpoints, resume and
``save_pretrained`` (the full model, with the head weights trained on the
cache) work unchanged.

Checked before anything is cached; each failure is logged as the reason for skipping:

- ``train.cache_features`` is ``auto``; no body group trains at any step of the run;
- no BatchNorm statistics update in the body (``strategy.batchnorm: train``);
- nothing random feeds the body: image tasks need ``data.augment`` off, and the
  train and eval collators must give the same inputs on a sample;
- on a sample batch, traced in training and in evaluation configuration, the
  head group's modules (e.g. BERT's ``dropout`` then ``classifier``) run once
  each, one tensor in, chained output to input, the last one giving the logits;
  and the head's input is the same in both configurations (no randomness
  outside the frozen groups). Leading parameter-free modules that act the same
  in both (timm's global pooling) are folded into the cached features, so the
  cache holds pooled vectors; the head's own dropout is replayed in training.

The cache lives in ``<hftl cache dir>/features`` (see :func:`hftl.data.sources.cache_dir`),
one safetensors file per split, named by a digest of: the checkpoint, revision and
resolved commit, a digest of the frozen weights themselves (so ``init_from`` or an
edited local folder invalidates it), the model's class and config (label fields
aside), the processor's config, ``data.max_length`` and the other data settings
that can shape inputs, the hooked module, the torch / transformers versions, and
the content of the split's model-input columns (so the same data from any recipe
hits, and any change in rows, tokenization or truncation misses).

Limits: the whole train split's features are held in memory. Under several
processes each one extracts its share and the shares are gathered (one
machine, or a shared cache folder); only the main process writes. Two-stage and
progressive runs are not cached (the body joins mid-run). Heads that read
several tensors, or with unregistered operations between their modules
(DistilBERT's ReLU, timm's functional ``drop_rate``), are skipped. Files are
never evicted: delete the ``features`` folder to reclaim space.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hftl.training.feature_store import CACHE_VERSION, CachedSplit, collate_cached, read_rows, write_rows

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan

NOT_INPUTS = ("labels", "length")  # encoded columns the body never reads
# Data settings that cannot change what the body computes for a given encoded row (the rows are hashed).
_ROW_SETTINGS = {
    "source",
    "config_name",
    "revision",
    "splits",
    "validation_size",
    "test_size",
    "group_column",
    "columns",
    "label_names",
    "max_train_samples",
    "max_eval_samples",
    "on_error",
    "augment",
    "shots",
    "target",
}  # shots selects rows; the target's rows are hashed like any split's


def maybe_use_cache(
    model: nn.Module,
    plan: Plan,
    recipe: Recipe,
    task: Any,
    processor: Any,
    encoded: datasets.DatasetDict,
    train_dl: torch.utils.data.DataLoader,
    eval_dls: dict[str, torch.utils.data.DataLoader],
    accelerator: Any,
) -> tuple[torch.utils.data.DataLoader, dict[str, torch.utils.data.DataLoader], list[nn.Module]]:
    """The loop's hook: loaders over cached head inputs (and a head-only ``model.forward``), or the loaders unchanged.

    Also returns the head's modules run on the cached inputs, in order (empty when nothing is cached).

    Every process must call it (the decision and the extraction are collective).
    """
    from accelerate.utils import broadcast_object_list

    from hftl.config.log import say  # main process only; hidden by --quiet

    collate = task.collator(processor, recipe, train=False)
    chain: list[str] = []
    with rng_untouched():
        reason = skip_reason(model, plan, recipe, task, encoded)
        if reason is None:
            sample = _rows(encoded["train"], range(min(8, len(encoded["train"]))))
            reason = augmentation_reason(task.collator(processor, recipe, train=True), collate, sample)
        if reason is None:
            model.to(accelerator.device)
            chain, reason = trace_head(model, plan, _to(collate(sample), accelerator.device))
    reason, chain = broadcast_object_list([reason, chain])  # the main process decides for all
    if reason is not None:
        say(f"[cache] skipped: {reason}")
        return train_dl, eval_dls, []

    modules = dict(model.named_modules())
    key = cache_key(model, plan, recipe, processor, chain[0])
    say(
        f"[cache] the body is frozen for the whole run: the head ({' -> '.join(chain)}) trains on cached "
        f"inputs of '{chain[0]}'"
    )
    splits = {"train": train_dl, **eval_dls}
    cached = {}
    for split, dl in splits.items():
        path = cache_file(key, encoded[split])
        started = time.time()
        with rng_untouched():
            rows, built = load_or_build(
                path,
                model,
                modules[chain[0]],
                encoded[split],
                collate,
                dl.batch_size or recipe.train.batch_size * 2,
                accelerator,
            )
        shape = tuple(rows[0].shape) if all(r.shape == rows[0].shape for r in rows) else ("T", *rows[0].shape[1:])
        say(
            f"[cache] {split}: {'built' if built else 'reused'} features of {len(rows)} examples, shape {shape} "
            f"({time.time() - started:.1f} s) {path}"
        )
        cached[split] = CachedSplit(rows, list(encoded[split]["labels"]))
    install_head_forward(model, [modules[name] for name in chain])
    new_train = torch.utils.data.DataLoader(
        cached["train"], batch_sampler=train_dl.batch_sampler, generator=train_dl.generator, collate_fn=collate_cached
    )
    new_eval = {
        split: torch.utils.data.DataLoader(
            cached[split], batch_size=dl.batch_size, generator=dl.generator, collate_fn=collate_cached
        )
        for split, dl in eval_dls.items()
    }
    return new_train, new_eval, [modules[name] for name in chain]


# --------------------------------------------------------------------------- when it applies
def skip_reason(model: nn.Module, plan: Plan, recipe: Recipe, task: Any, encoded: datasets.DatasetDict) -> str | None:
    """Why features cannot be cached for this run (from the recipe and plan alone), or None."""
    if recipe.train.cache_features == "never":
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
            "whole body frozen for the whole run, e.g. strategy.name=feature_extraction"
        )
    body_modules = [m for name, m in model.named_modules() if not _in_any(name, heads[0].modules)]
    if plan.batchnorm == "train" and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in body_modules):
        return "strategy.batchnorm is 'train': the frozen body's BatchNorm statistics change while training"
    augment = recipe.data.augment
    if "image" in task.roles and (augment.random_resized_crop or augment.hflip):
        return (
            "random augmentation feeds the backbone (data.augment); set data.augment.random_resized_crop=false "
            "and data.augment.hflip=false to cache features"
        )
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
            logits = model(**_inputs(batch)).logits
    finally:
        for handle in handles:
            handle.remove()
    return calls, logits


# --------------------------------------------------------------------------- the cache
def cache_dir() -> Path:
    from hftl.data.sources import cache_dir as root

    return root() / "features"


def cache_key(model: nn.Module, plan: Plan, recipe: Recipe, processor: Any, hooked: str) -> str:
    """Digest of everything but the rows that decides what the body computes (see the module docstring)."""
    import transformers

    head = next(g for g in plan.groups if g.is_head)
    config = model.config.to_dict() if hasattr(model, "config") else {}
    for field in (
        "id2label",
        "label2id",
        "num_labels",
        "_commit_hash",
        "transformers_version",
        "architectures",
        "_name_or_path",
        "problem_type",
    ):
        config.pop(field, None)
    data = {k: v for k, v in recipe.data.model_dump(mode="json").items() if k not in _ROW_SETTINGS}
    fields = {
        "version": CACHE_VERSION,
        "checkpoint": recipe.model.checkpoint,
        "revision": recipe.model.revision,
        "commit": getattr(getattr(model, "config", None), "_commit_hash", None),
        "class": type(model).__name__,
        "config": config,
        "processor": _processor_config(processor),
        "data": data,
        "hooked": hooked,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    head_params = set(head.params) | set(head.frozen_params)
    for name, tensor in model.state_dict().items():
        if name not in head_params:  # the frozen weights themselves
            digest.update(name.encode())
            digest.update(_bytes(tensor))
    return digest.hexdigest()


def cache_file(key: str, ds: datasets.Dataset) -> Path:
    """Where the features of split ``ds`` under ``key`` (:func:`cache_key`) live (``hftl advise`` shares them)."""
    return cache_dir() / f"{_digest(key, dataset_digest(ds))}.safetensors"


def dataset_digest(ds: datasets.Dataset) -> str:
    """Digest of the content of a split's model-input columns (rows in order), via Arrow IPC."""
    import pyarrow as pa

    columns = [c for c in ds.column_names if c not in NOT_INPUTS]
    # Without the schema metadata: datasets stores its (recipe-dependent) fingerprint there.
    table = ds.select_columns(columns).with_format("arrow")[:].combine_chunks().replace_schema_metadata(None)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(memoryview(sink.getvalue())).hexdigest()


def load_or_build(
    path: Path,
    model: nn.Module,
    hooked: nn.Module,
    ds: datasets.Dataset,
    collate: Any,
    batch_size: int,
    accelerator: Any,
) -> tuple[Sequence[torch.Tensor], bool]:
    """The split's per-example head inputs from ``path``, or extracted (each process its share) and saved."""
    from accelerate.utils import broadcast_object_list, gather_object

    rows = None
    if broadcast_object_list([path.is_file()])[0]:
        rows = read_rows(path)
        if rows is not None and len(rows) == len(ds):
            return rows, False
    mine = list(range(accelerator.process_index, len(ds), accelerator.num_processes))
    shares = gather_object([(mine, extract(model, hooked, ds, mine, collate, batch_size, accelerator.device))])
    rows = [torch.empty(0)] * len(ds)
    for indices, features in shares:
        for i, row in zip(indices, features):
            rows[i] = row
    if accelerator.is_main_process:
        write_rows(path, rows)
    accelerator.wait_for_everyone()
    return rows, True


def extract(
    model: nn.Module,
    hooked: nn.Module,
    ds: datasets.Dataset,
    indices: list[int],
    collate: Any,
    batch_size: int,
    device: Any,
) -> list[torch.Tensor]:
    """What ``hooked`` receives for each example of ``indices`` (CPU float32; token padding removed)."""
    lengths = list(ds["length"]) if "length" in ds.column_names else None
    order = sorted(range(len(indices)), key=lambda k: -lengths[indices[k]]) if lengths else list(range(len(indices)))
    out: list[torch.Tensor] = [torch.empty(0)] * len(indices)
    captured: list[torch.Tensor] = []
    handle = hooked.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    model.eval()
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if convolutional:  # oneDNN's fast path: about 2x faster CNN inference on CPU (EfficientNet-Lite0, measured)
        model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = _to(collate(_rows(ds, [indices[k] for k in chunk])), device)
                captured.clear()
                model(**_inputs(batch))
                for k, row in zip(chunk, _per_example(captured[0], batch.get("attention_mask"))):
                    out[k] = row.float().cpu().clone()
    finally:
        handle.remove()
        if convolutional:
            model.to(memory_format=torch.contiguous_format)
    return out


def _per_example(features: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Split a batch of head inputs into examples, dropping padded token positions."""
    if mask is not None and features.dim() >= 3 and features.shape[1] == mask.shape[1]:
        return [row[keep.bool()] for row, keep in zip(features, mask)]
    return list(features)


# --------------------------------------------------------------------------- training on the cache
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


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Leave torch / random / numpy RNG states as they were: a cached run draws the same dropout masks."""
    import numpy as np

    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(py)
    np.random.set_state(np_state)


def _rows(ds: datasets.Dataset, indices: Sequence[int]) -> list[dict[str, Any]]:
    columns = ds[list(indices)]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _in_any(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _close(a: Any, b: Any) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5)
    )


def _bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _processor_config(processor: Any) -> Any:
    """A JSON-able description of the tokenizer / image processor (what it does, not where it came from)."""
    if hasattr(processor, "to_dict"):  # image processors, feature extractors
        return processor.to_dict()
    kwargs = {
        k: v
        for k, v in getattr(processor, "init_kwargs", {}).items()
        if k not in ("name_or_path", "vocab_file", "tokenizer_file")
    }
    return {
        "class": type(processor).__name__,
        "size": len(processor) if hasattr(processor, "__len__") else None,
        "kwargs": kwargs,
    }


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

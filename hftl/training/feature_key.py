"""Feature caching (:mod:`hftl.training.feature_cache`): where a split's cached features live, and their key.

The cache lives in ``<hftl cache dir>/features`` (see :func:`hftl.data.cache.cache_dir`),
one safetensors file per split, named by a digest of: the checkpoint, revision and
resolved commit, a digest of the frozen weights themselves (so ``init_from`` or an
edited local folder invalidates it), the model's class and config (label fields
aside), the processor's config, ``data.max_length`` and the other data settings
that can shape inputs, the hooked module, the torch / transformers versions, and
the content of the split's model-input columns (so the same data from any recipe
hits, and any change in rows, tokenization or truncation misses).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hftl.models.caching import tensor_bytes
from hftl.training.feature_store import CACHE_VERSION

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import DataSection, ModelSection
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


def cache_dir() -> Path:
    from hftl.data.cache import cache_dir as root

    return root() / "features"


def cache_key(
    model: nn.Module, plan: Plan, model_section: ModelSection, data_section: DataSection, processor: Any, hooked: str
) -> str:
    """Digest of everything but the rows that decides what the body computes (see the module docstring): the
    recipe's ``model`` and ``data`` sections are the settings it reads."""
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
    data = {k: v for k, v in data_section.model_dump(mode="json").items() if k not in _ROW_SETTINGS}
    fields = {
        "version": CACHE_VERSION,
        "checkpoint": model_section.checkpoint,
        "revision": model_section.revision,
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
            digest.update(tensor_bytes(tensor))
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

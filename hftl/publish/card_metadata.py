"""Model card (:mod:`hftl.publish.card`): the Hub metadata block (library, base model, datasets, pipeline tag,
tags, model-index results)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hftl.config.errors import HftlError
from hftl.config.run_folder import RunFiles, read_run
from hftl.publish.card_facts import adapter_settings, short_source, source_name, task_of

# Catalog datasets that are the same data as a Hub dataset (for the `datasets:` metadata).
DATASET_HUB_IDS = {"fashion-mnist": "zalando-datasets/fashion_mnist"}
# A Hub model id: NAMESPACE/NAME, or a bare NAME (canonical repos such as bert-base-uncased). Data sources need the
# namespace: a bare name may be an offline catalog entry registered only when its task loads data.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def card_data(run: RunFiles, repo_id: str | None = None) -> Any:
    """Hub metadata: library, base model, datasets, pipeline tag, tags and model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    task, source = run.recipe["task"], source_name(run.recipe["data"])
    pipeline_tag = task_of(run).card.pipeline_tag
    dataset = dataset_hub_id(source)
    results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset or short_source(source),
            dataset_name=short_source(source),
            dataset_split=split,
            metric_type=name,
            metric_value=round(float(value), 4),
        )
        for split in ("test", "validation")
        for name, value in run.final.get(split, {}).items()
        if name != "loss" and isinstance(value, (int, float))
    ]
    strategy = run.recipe["strategy"]["name"]
    tags = [
        "hftl",
        "transfer-learning",
        f"strategy:{strategy}",
        *([str(adapter_settings(run.adapter_dir)["peft_type"] or "peft").lower()] if run.adapter_dir else []),
    ]
    library = (
        "transformers" if run.has_full_model and pipeline_tag else "peft" if run.adapter_dir else None
    )  # None: hftl's own loader (fusion)
    bases = [b for b in (checkpoint_hub_id(c) for c in base_checkpoints(run.recipe)) if b]
    return ModelCardData(
        library_name=library,
        base_model=(bases[0] if len(bases) == 1 else bases) or None,
        datasets=[dataset] if dataset else None,
        pipeline_tag=pipeline_tag,
        tags=tags,
        model_name=(repo_id or run.recipe["name"]).split("/")[-1],
        eval_results=results or None,
    )


def base_checkpoints(recipe: dict[str, Any]) -> list[str]:
    """The pretrained checkpoint(s) at the root of this run (following init_from chains)."""
    model = recipe["model"]
    if model.get("init_from"):
        try:
            return base_checkpoints(read_run(model["init_from"]).recipe)
        except (HftlError, RecursionError):
            pass
    if model.get("towers"):
        return [t["checkpoint"] for t in model["towers"].values()]
    return [model["checkpoint"]] if model.get("checkpoint") else []


def checkpoint_hub_id(checkpoint: str) -> str | None:
    """The Hub id of a checkpoint: catalog names map to their Hub alias; local folders have none."""
    from hftl.models.pretrained import CHECKPOINTS

    if checkpoint in CHECKPOINTS:
        entry = CHECKPOINTS.get(checkpoint)
        # the alias with a namespace: the catalog's own short name is not a Hub repo
        return next(
            (name for name, fn in CHECKPOINTS.items() if fn is entry and "/" in name and _HUB_ID.match(name)), None
        )
    return checkpoint if _HUB_ID.match(checkpoint) and not Path(checkpoint).exists() else None


def dataset_hub_id(source: str) -> str | None:
    """The Hub id of a data source: catalog names map through DATASET_HUB_IDS; builders, files and folders have none."""
    from hftl.data.catalog import DATASETS
    from hftl.data.sources import FILE_BUILDERS, PACKAGED_BUILDERS

    if source in DATASET_HUB_IDS:
        return DATASET_HUB_IDS[source]
    if source in DATASETS or source in PACKAGED_BUILDERS or Path(source).suffix.lower() in FILE_BUILDERS:
        return None
    return source if _HUB_DATASET_ID.match(source) and not Path(source).exists() else None

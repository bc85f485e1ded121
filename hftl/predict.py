"""Predictions from a trained run folder, through the plain ``transformers.pipeline``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hftl.errors import HftlError

PIPELINES = {"text-classification": "text-classification", "image-classification": "image-classification",
             "token-classification": "token-classification"}


def run_task(run_dir: str | Path) -> str:
    """The task a run folder was trained for (from its saved recipe)."""
    recipe_file = Path(run_dir) / "recipe.yaml"
    if not recipe_file.is_file():
        raise HftlError(f"{run_dir} is not an hftl run folder (no recipe.yaml). Train one with `hftl run RECIPE`.")
    return yaml.safe_load(recipe_file.read_text(encoding="utf-8"))["task"]


def predict(run_dir: str | Path, inputs: list[Any], top_k: int = 1) -> list[list[dict[str, Any]]]:
    """Labels with scores for each input (texts or image paths), best first."""
    task = run_task(run_dir)
    if not (Path(run_dir) / "config.json").is_file():
        raise HftlError(f"{run_dir} has no saved model yet (the run did not complete). Resume it with --resume.")
    if task not in PIPELINES:
        from hftl.tasks import TASKS

        return TASKS.get(task).predict(run_dir, inputs, top_k)  # tasks without a transformers pipeline
    from transformers import pipeline

    if task == "token-classification":
        # "first": a word takes its first sub-word's tag, as hftl trains and scores it ("simple" splits a word
        # whose later sub-words, never trained, come out as B-X).
        pipe = pipeline("token-classification", model=str(run_dir), aggregation_strategy="first")
        return [[{"label": f"{e['entity_group']}:{e['word']}", "score": float(e["score"])} for e in out] or
                [{"label": "(no entities)", "score": 1.0}] for out in pipe(inputs)]
    pipe = pipeline(PIPELINES[task], model=str(run_dir))
    outputs = pipe(inputs, top_k=top_k)
    return [out if isinstance(out, list) else [out] for out in outputs]

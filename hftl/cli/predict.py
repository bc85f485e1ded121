"""Predictions from a trained run folder, through the task that trained it (a plain ``transformers.pipeline``
for the single-checkpoint tasks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftl.config.errors import HftlError
from hftl.training.run_folder import run_task


def predict(run_dir: str | Path, inputs: list[Any], top_k: int = 1) -> list[list[dict[str, Any]]]:
    """Labels with scores for each input (texts, image paths, or what the task takes), best first."""
    from hftl.tasks import TASKS

    task = run_task(run_dir)
    if not (Path(run_dir) / "config.json").is_file():
        raise HftlError(f"{run_dir} has no saved model yet (the run did not complete). Resume it with --resume.")
    return TASKS.get(task).predict(run_dir, inputs, top_k)

"""Experiment trackers, logged through Accelerate (``train.trackers`` in a recipe).

Accelerate silently drops a tracker whose package is missing; a run asked to
log to one says so before it starts instead.
"""

from __future__ import annotations

import importlib.util

from hftl.config.errors import HftlError

# recipe name -> pip package (also the module name)
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_trackers(names: list[str]) -> None:
    """Fail with the pip command when a tracker chosen in ``train.trackers`` is not installed."""
    missing = [TRACKER_PACKAGES[n] for n in names if importlib.util.find_spec(TRACKER_PACKAGES[n]) is None]
    if missing:
        raise HftlError(
            f"train.trackers asks for {', '.join(missing)}, which is not installed here. Install it "
            f"(pip install {' '.join(missing)}) or remove it from train.trackers."
        )

"""The two one-stage strategies without options: everything trains, or only the new head."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy


class FeatureExtractionOptions(Section):
    head_solver: Literal["lbfgs", "adamw"] = Field(
        "lbfgs",
        description="lbfgs: when the features are cached, first fit the linear head to convergence by "
        "full-batch L-BFGS (L2 picked on validation; the loop's epochs then continue from it, and the best model on "
        "validation is kept); adamw: only the loop's epochs.",
    )


@strategy("full")
def full_finetuning(groups, options, steps_per_epoch, total_steps, where):
    """Every group trains from the first step (use optim.lr low, optim.head_lr higher)."""
    return [0 for _ in groups]


@strategy(
    "feature_extraction",
    options=FeatureExtractionOptions,
    fit_head_first=lambda options: options.head_solver == "lbfgs",
)
def feature_extraction(groups, options, steps_per_epoch, total_steps, where):
    """The pretrained body is frozen; only the new head trains."""
    return [0 if g.is_head else None for g in groups]

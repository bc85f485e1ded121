"""The two one-stage strategies without options: everything trains, or only the new head."""

from __future__ import annotations

from functools import partial
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
    l2: float | None = Field(
        None,
        gt=0.0,
        description="With head_solver lbfgs: a fixed L2 (on standardised features) instead of the pick on the "
        "validation split, for runs without validation data to spare (few-shot); null: pick on validation.",
    )


def _fixed_l2_probe(options: FeatureExtractionOptions):
    from hftl.models.probe import fit_probe

    return partial(fit_probe, grid=(options.l2,)) if options.l2 is not None and options.head_solver == "lbfgs" else None


@strategy("full")
def full_finetuning(groups, options, steps_per_epoch, total_steps, where):
    """Every group trains from the first step (use optim.lr low, optim.head_lr higher)."""
    return [0 for _ in groups]


@strategy(
    "feature_extraction",
    options=FeatureExtractionOptions,
    frozen_body=True,
    fit_head_first=lambda options: options.head_solver == "lbfgs",
    fit_head=_fixed_l2_probe,
)
def feature_extraction(groups, options, steps_per_epoch, total_steps, where):
    """The pretrained body is frozen; only the new head trains."""
    return [0 if g.is_head else None for g in groups]

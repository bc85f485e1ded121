"""Two-stage fine-tuning (fastai's ``fine_tune``): the new head alone first, then every group."""

from __future__ import annotations

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy


class TwoStageOptions(Section):
    head_epochs: float = Field(1.0, gt=0, description="Epochs of head-only training before the body joins.")
    body_lr_scale: float = Field(1.0, gt=0, description="Multiplier on the body LR in stage two.")
    warmup_steps: int = Field(0, ge=0, description="Ramp the body's LR from 0 over this many steps when it joins.")


@strategy(
    "two_stage",
    options=TwoStageOptions,
    changes_mid_run=True,
    lr_scale=lambda group, options: 1.0 if group.is_head else options.body_lr_scale,
    join_warmup=lambda options: options.warmup_steps,
)
def two_stage(groups, options: TwoStageOptions, steps_per_epoch, total_steps, where):
    """Head alone for ``two_stage.head_epochs`` epochs, then every group."""
    start = max(1, round(options.head_epochs * steps_per_epoch))
    return [0 if g.is_head else start for g in groups]

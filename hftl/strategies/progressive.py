"""Progressive (gradual) unfreezing, as in ULMFiT: the head first, then body groups from the top down."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy


class ProgressiveOptions(Section):
    every: int = Field(1, gt=0, description="Unfreeze the next block every this many units.")
    unit: Literal["epoch", "step", "percent"] = Field(
        "epoch",
        description="epoch, optimizer step, or percent of the run's steps (a schedule that keeps its shape "
        "whatever the data size and budget: every 25 percent = stages at 1/4, 1/2, 3/4 of the run).",
    )
    groups_per_stage: int = Field(1, gt=0, description="Layer groups unfrozen at each stage.")
    until: int | None = Field(None, gt=0, description="Stop once this many body groups are unfrozen (default all).")
    warmup_steps: int = Field(0, ge=0, description="Ramp newly unfrozen groups' LR from 0 over this many steps.")


@strategy(
    "progressive", options=ProgressiveOptions, changes_mid_run=True, join_warmup=lambda options: options.warmup_steps
)
def progressive_unfreezing(groups, options: ProgressiveOptions, steps_per_epoch, total_steps, where):
    """Head first; then ``groups_per_stage`` more body groups from the top every ``every`` epochs, steps or percent."""
    unit = {"epoch": steps_per_epoch, "step": 1, "percent": total_steps / 100}[options.unit]
    body = [i for i, g in enumerate(groups) if not g.is_head]
    if options.until is not None and options.until > len(body):
        raise where.error(
            "until",
            f"asks to unfreeze {options.until} body groups but the model has only "
            f"{len(body)} ({', '.join(groups[i].name for i in body)})",
            options.until,
            hint=f"Use at most {len(body)}, or leave it out to unfreeze them all.",
        )
    until = options.until or len(body)
    starts: list[int | None] = [0 if g.is_head else None for g in groups]
    for k, index in enumerate(reversed(body[len(body) - until :])):  # top body group first
        starts[index] = round((k // options.groups_per_stage + 1) * options.every * unit)
    return starts

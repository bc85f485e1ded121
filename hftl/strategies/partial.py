"""Partial freezing: the first N body groups (or a fraction of them, or parameters by pattern) never train."""

from __future__ import annotations

import math
import re

from pydantic import Field, model_validator

from hftl.config.schema import Section
from hftl.strategies import strategy


class PartialOptions(Section):
    freeze_groups: int | None = Field(None, ge=0, description="Freeze the first N layer groups.")
    freeze_fraction: float | None = Field(None, ge=0.0, le=1.0, description="Freeze this fraction of the body.")
    freeze_patterns: list[str] | None = Field(None, description="Freeze parameters matching these regexes.")

    @model_validator(mode="after")
    def _one_of(self) -> PartialOptions:
        given = [k for k in ("freeze_groups", "freeze_fraction", "freeze_patterns") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of freeze_groups, freeze_fraction, freeze_patterns (got {given or 'none'})"
            )
        return self


def pattern_frozen(groups, options: PartialOptions, where) -> set[str]:
    """Parameters frozen one by one by ``freeze_patterns`` (each pattern must match something)."""
    if options.freeze_patterns is None:
        return set()
    names = [p for g in groups for p in g.params]
    frozen: set[str] = set()
    for pattern in options.freeze_patterns:
        try:
            hits = {n for n in names if re.search(pattern, n)}
        except re.error as exc:
            raise where.error("freeze_patterns", f"{pattern!r} is not a valid regular expression ({exc})") from None
        if not hits:
            raise where.error(
                "freeze_patterns",
                f"{pattern!r} matches no parameter name",
                hint=(f"Patterns are searched (re.search) in names such as {', '.join(names[:2])} ... {names[-1]}."),
            )
        frozen |= hits
    return frozen


@strategy(
    "partial",
    options=PartialOptions,
    options_required=True,
    frozen_params=pattern_frozen,
    options_example="e.g. partial: {freeze_groups: 3} or {freeze_fraction: 0.5} or {freeze_patterns: ['embeddings']}",
)
def partial_freezing(groups, options: PartialOptions, steps_per_epoch, total_steps, where):
    """Freeze the first N body groups (or a fraction of them); patterns freeze single parameters instead."""
    body = [g.name for g in groups if not g.is_head]
    if options.freeze_patterns is not None:
        return [0 for _ in groups]  # frozen parameter by parameter (pattern_frozen)
    n = options.freeze_groups if options.freeze_groups is not None else math.floor(options.freeze_fraction * len(body))
    if n > len(body):
        raise where.error(
            "freeze_groups",
            f"asks to freeze {n} groups but the model has only {len(body)} body groups ({', '.join(body)})",
            hint=f"Use at most {len(body)}.",
        )
    return [None if (i < n and not g.is_head) else 0 for i, g in enumerate(groups)]

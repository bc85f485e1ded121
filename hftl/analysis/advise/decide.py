"""From measurements to a recipe: the recommended keys applied (``--write``) and ``strategy.name: auto``
resolved at the start of a run. The table itself is :mod:`hftl.analysis.advice_rules`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.analysis.advice_rules import (
    ADVICE_KEY,
    AUTO,
)
from hftl.config import log

if TYPE_CHECKING:
    from hftl.config.schema import Recipe
from hftl.analysis.advise.measure import Advice, _plain_strategy, advise
from hftl.analysis.advise.report import _fmt


def recommended_recipe(recipe_file: str, overrides: list[str], advice: Advice) -> dict[str, Any]:
    """The input recipe as written (with the command-line overrides) plus the recommended keys."""
    import yaml

    from hftl.config.recipe import apply_overrides, as_overrides, validate_recipe

    doc = apply_overrides(yaml.safe_load(Path(recipe_file).read_text(encoding="utf-8")), overrides, recipe_file)
    doc["strategy"] = _plain_strategy(doc.get("strategy") or {})
    doc = apply_overrides(doc, as_overrides(advice.settings), recipe_file)
    validate_recipe(doc, recipe_file)  # what we write must load
    return doc


def resolve_strategy(recipe: Recipe) -> Recipe:
    """``strategy.name: auto`` -> the advisor's choice (cheap path: no step times); other recipes unchanged.

    The chosen recipe keeps the advice under ``strategy.advice`` (so it reaches recipe.yaml, plan.json and
    the model card). Every process of a launch measures the same rows with the same seed, so all choose alike.
    """
    if recipe.strategy.name != AUTO:
        return recipe
    from hftl.config.recipe import apply_overrides, as_overrides, validate_recipe

    advice = advise(recipe, step_times=False, say=lambda *a: None)
    d = advice.decision
    log.say(
        f"[advise] strategy.name: auto -> {d.rung.label} (branch {d.branch}: {d.why}; probe "
        f"{advice.features['probe_cv_accuracy']:.3f}, baseline {_fmt(advice.features['baseline_cv_accuracy'])}, "
        f"majority {advice.data['majority']:.3f}, {advice.data['n_train']:,} training examples; "
        f"{advice.seconds:.0f} s)"
    )
    for flag in d.flags:
        log.warn(f"[advise] warning: {flag}")
    doc = recipe.model_dump(mode="json")
    doc["strategy"] = _plain_strategy(doc["strategy"])
    doc = apply_overrides(doc, as_overrides(advice.settings), recipe.source_file)
    doc["strategy"][ADVICE_KEY] = advice.record()
    return validate_recipe(doc, recipe.source_file)

"""What a study's trials are, for its storage: the resolved recipe each one runs with, not the recipe file's text.

A grid trial is identified by its point's recipe as :func:`hftl.config.recipe.load_recipe` builds it (the base
recipe, the fixed overrides, then the point's axis values), dumped without the fields left at their default (so
a field added with a default by a later hftl changes no trial) and without what changes nothing a trial measures
(the recipe's name and description, where the run is written and published). Each enqueued trial records that
dump (``hftl_recipe``) and its digest (``hftl_digest``), so editing a recipe's comments, or moving a setting from
the recipe into the study file, keeps every finished trial, and a change that does reach a trial is refused
naming the keys that differ (:func:`recipe_changes`).

What is not in a trial's recipe is the study's settings (:func:`settings_digest`: metric, direction, search,
sampler seed, budget, pruner); a grid must keep them to keep its trials. A sampled search (``search: tpe``) must
keep everything, axes included (:func:`fingerprint`), since its sampler learnt from the trials it has.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from hftl.analysis.study import Study
    from hftl.config.schema import Recipe

# Recipe sections that change nothing a trial measures: its names, where it is written (the study sets
# output.dir per trial) and where it is published.
NOT_MEASURED = {"name", "description", "output", "hub"}


def digest(doc: Any) -> str:
    """A short, stable digest of a JSON document."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """What a trial runs with: the recipe's non-default fields, as JSON (what the storage gives back).

    ``source_file`` (the machine's path to the recipe) is never dumped (the schema excludes it); paths the
    recipe itself names (a checkpoint folder, a data file) are kept as written.
    """
    dump = recipe.model_dump(mode="json", exclude_defaults=True, exclude=NOT_MEASURED)
    return json.loads(json.dumps(dump, sort_keys=True))


def point_recipe(study: Study, labels: dict[str, Any]) -> dict[str, Any]:
    """The identity of one grid point's trial."""
    return recipe_identity(study.point_recipe(labels))


def point_digest(study: Study, labels: dict[str, Any]) -> str:
    return digest(point_recipe(study, labels))


def settings(study: Study) -> dict[str, Any]:
    """The study's settings that are not in any trial's recipe, yet decide what its trials mean."""
    spec = study.spec
    return {
        "metric": study.metric,
        "direction": study.direction,
        "search": spec.search,
        "seed": spec.seed,
        "trials": spec.trials,
        "pruner": spec.pruner,
    }


def settings_digest(study: Study) -> str:
    """What must stay the same for a grid to keep its trials (``hftl_settings``); its axes, recipe and fixed
    overrides may change as long as no trial's recipe does (checked per trial)."""
    return digest(settings(study))


def fingerprint(study: Study) -> str:
    """The whole study (``hftl_fingerprint``): its settings, its axes as written and the base recipe (with the
    fixed overrides) as :func:`~hftl.analysis.study.load_study` parsed it, so a comment in the recipe file changes
    nothing."""
    base = recipe_identity(study.base)
    axes = study.spec.model_dump(mode="json", include={"axes"})["axes"]
    return digest({"settings": settings(study), "axes": axes, "recipe": base})


def recorded_recipe(trial: Any, before: dict[str, Any]) -> dict[str, Any] | None:
    """What a trial ran (or is queued to run) with: its own record, else the one recorded when an earlier
    hftl's storage was upgraded (``hftl_recipes_before``, by point); None if neither."""
    recipe = trial.user_attrs.get("hftl_recipe")
    return recipe if recipe is not None else before.get(trial.user_attrs.get("hftl_key"))


def recipe_changes(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """The keys whose value differs, e.g. ``strategy.batchnorm: ran with frozen (the default), now eval``."""
    if before is None:
        return ["no record of what it ran with"]
    old, new = _leaves(before), _leaves(now)
    return [
        f"{key}: ran with {_shown(key, old)}, now {_shown(key, new)}"
        for key in sorted(old.keys() | new.keys())
        if key not in old or key not in new or old[key] != new[key]
    ]


def _leaves(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(key: str, leaves: dict[str, Any]) -> str:
    return _text(leaves[key]) if key in leaves else _default_text(key)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _default_text(dotted: str) -> str:
    """How a recipe field left at its default reads (a value at its default is not in a trial's record), e.g.
    ``frozen (the default)``, or ``null (train.ema's default)`` for a key of a section that is off by default."""
    from hftl.config.schema import Recipe

    cls: Any = Recipe
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = cls.model_fields.get(part) if _is_model(cls) else None
        if field is None or (field.is_required() and i == len(parts) - 1):
            return "unset"
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        if i == len(parts) - 1 or (value is None and not field.is_required()):
            shown = _text(value.model_dump(mode="json") if isinstance(value, BaseModel) else value)
            whose = "the" if i == len(parts) - 1 else f"{'.'.join(parts[: i + 1])}'s"
            return f"{shown} ({whose} default)"
        cls = next((t for t in (field.annotation, *getattr(field.annotation, "__args__", ())) if _is_model(t)), None)
    return "unset"


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, BaseModel)

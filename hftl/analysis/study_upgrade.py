"""Storages written by an earlier hftl, which identified a study by its recipe file's text: checked the way they
were written and, when they hold this very study, upgraded to record what each of their trials ran with.

Two earlier formats exist. The first kept only ``hftl_fingerprint``, a digest of the recipe's text and the whole
study file. The second added ``hftl_base_fingerprint`` (the recipe's text and the study without its axes),
``hftl_values`` (the keys each axis value set) and, per trial enqueued since, ``hftl_digest`` (the digest of the
point's overrides). A storage of either is accepted when the study and its recipe's text still match what it
recorded, computed here the way that hftl did; :func:`earlier_recipes` then gives each of its trials' recipes,
which :func:`hftl.analysis.study_storage.record_study` records once (``hftl_recipes_before``, by point: Optuna
does not let a finished trial's attributes change). After that the storage is checked as any other.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hftl.analysis.study import point_key
from hftl.analysis.study_identity import digest, point_recipe, recipe_identity
from hftl.config.errors import HftlError
from hftl.config.recipe import as_overrides

if TYPE_CHECKING:
    from hftl.analysis.study import Study

# Study keys that earlier hftl left out of its fingerprints.
_NOT_DECIDING = {"description", "jobs", "storage", "output", "timeout_minutes", "keep_models", "name"}

EARLIER = (
    " This storage was written by an earlier hftl, which identified a study by its recipe file's text and kept "
    "no record of what each trial ran with; put the study file and its recipe back as they were, run "
    "`hftl study {file} --report` once (it records what each trial ran with and trains nothing), then make the "
    "change: trials whose recipe it does not change are kept."
)


def is_earlier(attrs: dict[str, Any]) -> bool:
    """A storage (its study's user attributes) written by an earlier hftl; an empty one is new, not earlier."""
    return "hftl_fingerprint" in attrs and "hftl_settings" not in attrs


def earlier_fingerprint(study: Study, exclude: set[str]) -> str:
    """The digest earlier hftl kept: the recipe file's text and the study file's keys but ``exclude``."""
    text = study.recipe_file.read_text(encoding="utf-8")
    return digest({"recipe": text, "spec": study.spec.model_dump(mode="json", exclude=exclude)})


def check_earlier(study: Study, ostudy: Any) -> None:
    """Refuse an earlier hftl's storage unless it holds this study, as that hftl would have told (nothing is
    written); the way out is to put the study back and upgrade it (:data:`EARLIER`)."""
    attrs = ostudy.user_attrs
    whole, base = attrs.get("hftl_fingerprint"), attrs.get("hftl_base_fingerprint")
    way_out = EARLIER.format(file=study.file)
    if study.spec.search == "tpe" or base is None:
        if whole != earlier_fingerprint(study, _NOT_DECIDING):
            raise HftlError(
                f"{study.file}: the storage already holds a study named '{study.name}' with another recipe, "
                "axes or metric. Give this one another `name:`, or delete the old storage to start again." + way_out
            )
        return
    if base != earlier_fingerprint(study, _NOT_DECIDING | {"axes"}):
        raise HftlError(
            f"{study.file}: the storage already holds a study named '{study.name}' with another recipe text, "
            "fixed overrides, metric or search settings." + way_out
        )
    stored: dict[str, dict[str, Any]] = attrs.get("hftl_values") or {}
    for axis in study.axes:
        for value in axis.values:
            before = stored.get(axis.name, {}).get(_label_key(value.label))
            if before is not None and before != _jsonable(value.sets):
                raise HftlError(
                    f"{study.file}: axis '{axis.name}', value {value.label!r} now sets {_jsonable(value.sets)}, but "
                    f"its trials in the storage ran with {before}." + way_out
                )
    points = {point_key(labels): labels for labels in study.points}
    for t in ostudy.get_trials(deepcopy=False):
        labels = points.get(t.user_attrs.get("hftl_key"))
        if labels is not None and t.user_attrs.get("hftl_digest") not in (None, digest(study.point_sets(labels))):
            shown = ", ".join(f"{k}={v}" for k, v in labels.items())
            raise HftlError(
                f"{study.file}: point {shown}: trial {t.number} in the storage ran with other overrides than this "
                "point resolves to now (two axes that set one key, in another order?)." + way_out
            )


def earlier_recipes(study: Study, ostudy: Any) -> dict[str, dict[str, Any]]:
    """What the trials of an earlier hftl's storage ran with, by point key (call after :func:`check_earlier`).

    A point of today's grid: its recipe now (the check made sure it is the one it ran with). A point the grid
    no longer has: rebuilt from the keys its axis values set then (``hftl_values``), in its axes' order; left
    out if that cannot be done (its trials stay hidden, and are refused if the point comes back).
    """
    from hftl.config.recipe import load_recipe

    values = ostudy.user_attrs.get("hftl_values") or {}
    points = {point_key(labels): labels for labels in study.points}
    recipes: dict[str, dict[str, Any]] = {}
    for t in ostudy.get_trials(deepcopy=False):
        key, labels = t.user_attrs.get("hftl_key"), t.user_attrs.get("hftl_labels")
        if key is None or key in recipes or "hftl_recipe" in t.user_attrs:
            continue
        if key in points:
            recipes[key] = point_recipe(study, points[key])
            continue
        sets = dict(study.spec.overrides)
        try:
            for axis, label in (labels or {}).items():
                sets.update(values[axis][_label_key(label)])
            recipe = load_recipe(study.recipe_file, as_overrides(sets))
        except (KeyError, HftlError):
            continue
        recipes[key] = recipe_identity(recipe)
    return recipes


def _label_key(label: Any) -> str:
    """A label as a mapping key that keeps its type (1 and "1" are different labels)."""
    return json.dumps(label)


def _jsonable(value: Any) -> Any:
    """``value`` as the storage gives it back (JSON), so a recorded value and today's compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))

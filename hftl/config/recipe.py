"""Reading a recipe: YAML (safe loader) + ``key.path=value`` overrides -> a validated :class:`Recipe`.

A recipe is validated completely before any weights or data are loaded, in one
step: the schema (:mod:`hftl.config.schema`: types, ranges, unknown keys with a
did-you-mean), then the checks that need the registries (the task's own
checks, the strategy's options typed by the model it registers, combinations
of the two). Every error names the file and the dotted key path, shows the bad
value and says what is allowed.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from hftl.config.errors import HftlError, RecipeError
from hftl.config.recipe_levers import check_levers
from hftl.config.registry import SHIFTS, STRATEGIES, TASKS, did_you_mean
from hftl.config.schema import Recipe, Section, StrategySection
from hftl.config.yaml_loader import load_yaml

if TYPE_CHECKING:
    from hftl.tasks import Task

__all__ = ["AUTO", "Recipe", "apply_overrides", "load_recipe", "to_yaml_text", "validate_recipe"]

AUTO = "auto"  # strategy.name that asks the advisor (hftl.analysis.advise) where the recipe is loaded for a run
ADVICE_KEY = "advice"  # strategy.advice: the advisor's record in a resolved recipe (informational)


# --------------------------------------------------------------------------- loading
def load_recipe(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe; no weights or data are touched.

    ``path`` is a file, or the name of a shipped recipe (``sentiment``; see :mod:`hftl.config.shipped_recipes`).
    """
    from hftl.config.shipped_recipes import resolve_recipe_path

    file = resolve_recipe_path(str(path))
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(
            file,
            None,
            f"cannot read the recipe file ({exc.strerror})",
            hint="Check the path, or name a shipped recipe (`hftl recipes` lists them).",
        ) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            file, None, f"is not UTF-8 text (byte {exc.start})", hint="Save the recipe as UTF-8."
        ) from None
    try:
        doc = load_yaml(text, file)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise RecipeError(
            file,
            None,
            f"is not valid YAML{line}: {getattr(exc, 'problem', None) or exc}",
            hint="Recipes are plain YAML mappings; Python tags such as !!python/object are refused.",
        ) from None
    except RecursionError:
        raise RecipeError(file, None, "is nested too deeply to be a recipe") from None
    if doc is None:
        raise RecipeError(
            file, None, "is empty", hint="A recipe needs at least name, task, model.checkpoint and data.source."
        )
    if not isinstance(doc, dict):
        raise RecipeError(file, None, f"must be a YAML mapping of sections, not a {type(doc).__name__}", doc)
    doc = apply_overrides(doc, overrides, file)
    return validate_recipe(doc, file)


def apply_overrides(
    doc: dict[str, Any], overrides: list[str] | tuple[str, ...], file: str | None = None
) -> dict[str, Any]:
    """Return a copy of ``doc`` with each ``key.path=value`` set (values parsed as YAML scalars/lists)."""
    doc = copy.deepcopy(doc)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(
                file,
                None,
                f"override {item!r} is not of the form key.path=value",
                hint="For example: train.epochs=2 optim.lr=3e-5",
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        if isinstance(value, dict) and not raw.lstrip().startswith("{"):
            value = raw  # 'a: b' is text; a mapping needs braces: data.columns={text: review}
        node = doc
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(
                    file,
                    ".".join(parts[: i + 1]),
                    "is a value, so it has no sub-keys",
                    child,
                    hint=f"Override it directly: {'.'.join(parts[: i + 1])}=...",
                )
            node = child
        node[parts[-1]] = value
    return doc


def as_overrides(sets: dict[str, Any]) -> list[str]:
    """``key=value`` override texts for dotted recipe keys (what :func:`load_recipe` reads back as ``sets``)."""
    return [f"{key}={to_yaml_text(value)}" for key, value in sets.items()]


def to_yaml_text(value: Any) -> str:
    """A value as the text of a ``key=value`` override that YAML reads back as the same value.

    Needed because PyYAML reads ``1e-05`` (Python's repr of 0.00001) as a string.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exp = text.split("e")
            text = f"{mantissa}.0e{exp if exp[0] in '+-' else '+' + exp}"
        return text
    if isinstance(value, str):
        return json.dumps(value)  # double-quoted YAML: never re-typed
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_yaml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_yaml_text(v) for v in value) + "]"
    raise HftlError(f"cannot write {value!r} ({type(value).__name__}) as a recipe value")


def validate_recipe(doc: dict[str, Any], file: str | None = None) -> Recipe:
    """Validate a recipe document (schema + registries + cross-field checks)."""
    try:
        recipe = Recipe.model_validate({**doc, "source_file": file})
    except ValidationError as exc:
        raise _recipe_error(exc, file) from None
    return check_recipe(recipe)


def check_recipe(recipe: Recipe) -> Recipe:
    """The checks that need the registries; returns the recipe with its strategy options typed."""
    file = recipe.source_file
    if recipe.task not in TASKS:
        raise RecipeError(
            file,
            "task",
            f"unknown task '{recipe.task}'.{did_you_mean(recipe.task, TASKS.names())}",
            hint=f"Allowed: {', '.join(TASKS.names())}.",
        )
    task = TASKS.get(recipe.task)
    recipe = recipe.model_copy(update={"strategy": check_strategy(recipe.strategy, recipe, "strategy")})
    if recipe.data.shift is not None:
        check_shift(recipe, task.roles)
    task.check(recipe)
    if recipe.strategy.batchnorm == "eval" and not recipe.model.pretrained:
        raise RecipeError(
            file,
            "strategy.batchnorm",
            "'eval' keeps every BatchNorm on its pretrained statistics, but model.pretrained is false: there are "
            "none (a random network's BatchNorm would stay at mean 0 and variance 1 for the whole run)",
            hint="Set strategy.batchnorm: frozen (the statistics update as the body trains).",
        )
    check_adaptation(recipe, task)  # data.target / strategy.adaptation
    check_levers(recipe, task)  # label smoothing, mixup, auto augmentation: only where they mean something
    return recipe


def check_adaptation(recipe: Recipe, task: Task) -> None:
    """Domain adaptation (hftl/training/adaptation.py): the method has target data, the target fits the task."""
    target, adaptation = recipe.data.target, recipe.strategy.adaptation
    if adaptation is not None and target is None:
        raise RecipeError(
            recipe.source_file,
            "strategy.adaptation",
            "needs unlabeled target-domain data",
            hint="Add data.target: {source: ..., columns: {...}}.",
        )
    if target is None:
        return
    if task.towers or "label" not in task.roles:
        raise RecipeError(
            recipe.source_file,
            "data.target",
            f"domain adaptation supports tasks with one label per example and one model, not '{recipe.task}'",
            hint="Remove data.target.",
        )
    for role in target.columns:
        if role not in task.roles:
            raise RecipeError(
                recipe.source_file,
                f"data.target.columns.{role}",
                f"is not a column role of task '{recipe.task}'.{did_you_mean(role, list(task.roles))}",
                hint=f"Roles: {', '.join(task.roles)}.",
            )


def check_shift(recipe: Recipe, roles: dict[str, str | None]) -> None:
    """A known shift, of an input the task reads (images or texts)."""
    shift = recipe.data.shift
    if shift.name not in SHIFTS:
        raise RecipeError(
            recipe.source_file,
            "data.shift.name",
            f"unknown shift '{shift.name}'.{did_you_mean(shift.name, SHIFTS.names())}",
            hint=f"Allowed: {', '.join(SHIFTS.names())}.",
        )
    modality = SHIFTS.get(shift.name).modality
    if modality not in roles:
        fitting = [n for n, s in SHIFTS.items() if s.modality in roles]
        raise RecipeError(
            recipe.source_file,
            "data.shift.name",
            f"'{shift.name}' shifts {modality} inputs, which task '{recipe.task}' does not read",
            hint=f"Use one of: {', '.join(fitting) or '(none)'}.",
        )


def check_strategy(section: StrategySection, recipe: Recipe, key: str) -> StrategySection:
    """Known name, options typed by the strategy's own model and only for that strategy, LR options that agree."""
    file = recipe.source_file
    if section.name == AUTO:  # resolved where the recipe is loaded for a run (hftl.analysis.advise.resolve_strategy)
        check_auto(section, file, key)
        return section
    if section.name not in STRATEGIES:
        raise RecipeError(
            file,
            f"{key}.name",
            f"unknown strategy '{section.name}'.{did_you_mean(section.name, STRATEGIES.names())}",
            hint=f"Allowed: {', '.join(STRATEGIES.names())}.",
        )
    spec = STRATEGIES.get(section.name)
    with_options = [name for name, s in STRATEGIES.items() if s.options is not None]
    typed: dict[str, Any] = {}
    for option, given in (section.model_extra or {}).items():
        if given is None:  # `strategy.two_stage: null` (e.g. an override clearing it) means not given
            continue
        if option == ADVICE_KEY:  # what hftl advise measured and decided for `auto`: kept as a record, not read
            continue
        if option not in with_options:
            allowed = [*(f for f in StrategySection.model_fields), *with_options]
            raise RecipeError(
                file,
                f"{key}.{option}",
                f"is not allowed.{did_you_mean(option, allowed)}",
                hint=f"Allowed here: {', '.join(allowed)}.",
            )
        if option != section.name:
            raise RecipeError(
                file,
                f"{key}.{option}",
                f"only applies with {key}.name: {option}, but name is '{section.name}'",
                hint=f"Set {key}.name: {option} or remove {key}.{option}.",
            )
        typed[option] = _validate_section(STRATEGIES.get(option).options, given, file, f"{key}.{option}")
    if spec.options_required and section.name not in typed:
        raise RecipeError(
            file,
            f"{key}.{section.name}",
            f"is required with name: {section.name}",
            hint=f"Its keys: {', '.join(spec.options.model_fields)}. {spec.options_example}".strip(),
        )
    if section.discriminative is not None and recipe.optim.head_lr is not None:
        raise RecipeError(
            file,
            f"{key}.discriminative",
            "sets every group's LR, the head's included, so optim.head_lr would be ignored",
            recipe.optim.head_lr,
            hint="Remove optim.head_lr (the head gets the last of 'lrs', or the top of 'range').",
        )
    task = TASKS.get(recipe.task)
    if spec.wrap_model is not None and task.towers:
        raise RecipeError(
            file,
            f"{key}.name",
            f"'{section.name}' wraps a whole model, which task '{recipe.task}' "
            f"(made of the towers {', '.join(task.towers)}) does not support yet",
            section.name,
            hint="Use a strategy per tower that does not wrap the model: "
            f"{', '.join(STRATEGIES.names_where(wrap_model=None))}.",
        )
    if section.towers is not None and not task.towers:
        raise RecipeError(
            file,
            f"{key}.towers",
            f"only applies to tasks made of several towers, not '{recipe.task}'",
            hint=f"Remove it, or use a task made of towers: {', '.join(n for n in TASKS if TASKS.get(n).towers)}.",
        )
    towers = {t: check_strategy(sub, recipe, f"{key}.towers.{t}") for t, sub in (section.towers or {}).items()}
    return section.model_copy(update={**typed, **({"towers": towers} if towers else {})})


def check_auto(section: StrategySection, file: str | None, key: str) -> None:
    """``strategy.name: auto`` leaves the strategy, its options and the LR shape to the advisor."""
    given = [k for k in (section.model_extra or {}) if k != ADVICE_KEY]
    given += [k for k in ("llrd", "discriminative", "towers") if getattr(section, k) is not None]
    if given:
        raise RecipeError(
            file,
            f"{key}.{given[0]}",
            f"does not go with {key}.name: {AUTO} (the advisor chooses the strategy, its options and the LRs)",
            hint=f"Remove {key}.{given[0]}, or name a strategy.",
        )


def _validate_section(model: type[BaseModel], given: Any, file: str | None, key: str) -> BaseModel:
    """Validate one nested section (e.g. a strategy's options) with errors keyed under ``key``."""
    try:
        return model.model_validate({} if given is None else given)
    except ValidationError as exc:
        raise _recipe_error(exc, file, prefix=key.split("."), root=model) from None


def _recipe_error(
    exc: ValidationError, file: str | None, prefix: list[str] | None = None, root: type[BaseModel] = Recipe
) -> RecipeError:
    """One error naming every bad key of a pydantic ValidationError (``prefix``: where ``root`` sits)."""
    prefix = prefix or []
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p != "source_file"]
        key = ".".join(prefix + loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc[:-1], root)
            lines.append(
                f"key '{key}' is not allowed.{did_you_mean(loc[-1], allowed)} Allowed here: {', '.join(allowed)}."
            )
        elif err["type"] == "missing":
            lines.append(f"key '{key}' is required.")
        elif err["type"] == "model_type" and loc == []:
            lines.append(f"key '{key}' must be a mapping (got {err['input']!r}).")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"key '{key}': {msg}" + ("." if "got " in msg else f" (got {err['input']!r})."))
    message = lines[0] if len(lines) == 1 else "\n  - " + "\n  - ".join(lines)
    error = RecipeError(file, None, "invalid recipe")
    error.args = (f"{file or '<recipe>'}: {message}",)
    return error


def _allowed_keys(loc: list[str], root: type[BaseModel] = Recipe) -> list[str]:
    """Field names of the schema section at a key path (for did-you-mean)."""
    model: Any = root
    for part in loc:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            # dict-valued sections (towers): the key is a dict key, stay on the value type
            continue
        model = _section_type(field.annotation)
        if model is None:
            return []
    fields = getattr(model, "model_fields", {})
    return [name for name in fields if name != "source_file"]


def _section_type(annotation: Any) -> Any:
    """The Section class inside an annotation such as ``X | None`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None

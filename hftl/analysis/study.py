"""Studies: one base recipe, a few axes of overrides, a metric and a budget; every trial validated up front.

A study file is YAML::

    recipe: ../recipes/sentiment.yaml          # relative to the study file
    overrides: {train.epochs: 3}               # fixed for every trial
    axes:
      strategy.name: [feature_extraction, full,
                      {label: full+llrd, set: {strategy.name: full, strategy.llrd: {decay: 0.8}}}]
      data.max_train_samples: [100, 1000]
      train.seed: [0, 1, 2]
    metric: validation.accuracy                # what chooses (best trial, TPE, pruning); default shown
    report: test.accuracy                      # reported beside, never used to choose; default shown

An axis is a recipe key path with a list of values, or any name whose values are all
``{label, set}`` mappings (one knob that is really several keys). ``search: tpe`` with
``trials: N`` samples instead, and axes may then be ranges ``{low, high, log}``.

Selection on validation, report on test: ``metric`` (what the best trial, TPE and pruning
optimise) must be a validation metric; ``report`` (default: the task's metric on the test split)
is shown beside it in every table and plot and never chooses anything.

Before anything trains, every grid point's recipe is built with
:func:`hftl.config.recipe.load_recipe` (each axis value alone first, so an error names the axis and
value that cause it). The engine (storage, workers, trials) is :mod:`hftl.analysis.study_engine`; the
results (csv, markdown, plots) are :mod:`hftl.analysis.study_report`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hftl.config.errors import HftlError, RecipeError
from hftl.config.recipe import as_overrides
from hftl.config.registry import did_you_mean
from hftl.config.yaml_loader import load_yaml

if TYPE_CHECKING:
    from hftl.config.schema import Recipe

Kind = Literal["data_size", "seed", "strategy", "lr_multiplier", "pretrained", "shift_severity"]
# Axes whose role the report knows from the key path alone; others are marked with `kind:`.
DEFAULT_KINDS: dict[str, str] = {
    "data.max_train_samples": "data_size",
    "data.shots": "data_size",
    "train.seed": "seed",
    "strategy.name": "strategy",
    "model.pretrained": "pretrained",
    "data.shift.severity": "shift_severity",
}
# Keys the study itself sets for every trial.
RESERVED = ("output.dir", "output.overwrite", "train.resume")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class AxisSpec(_Model):
    """An axis written as a mapping: listed values, or (for ``search: tpe``) a range."""

    values: list[Any] | None = Field(None, description="The points of the axis (grid or categorical).")
    low: float | None = Field(None, description="Range start (search: tpe).")
    high: float | None = Field(None, description="Range end (search: tpe).")
    log: bool = Field(False, description="Sample the range on a log scale.")
    step: float | None = Field(None, gt=0, description="Range step (integers when low, high and step are whole).")
    kind: Kind | None = Field(None, description="The axis's role in the report, e.g. lr_multiplier.")

    @model_validator(mode="after")
    def _values_or_range(self) -> AxisSpec:
        if (self.values is None) == (self.low is None or self.high is None):
            raise ValueError("give either 'values: [...]' or a range 'low: ..., high: ...'")
        if self.values is not None and not self.values:
            raise ValueError("'values' is empty")
        if self.low is not None and self.high is not None:
            if self.low >= self.high:
                raise ValueError(f"low must be below high, got low={self.low}, high={self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0, got {self.low}")
        return self


class StudySpec(_Model):
    """The study file, as written."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Study name in the storage (default: the file's stem).",
    )
    description: str = ""
    recipe: str = Field(description="Base recipe, relative to the study file.")
    extends: str | None = Field(
        None,
        description="Another study file (relative to this one) whose grid this study adds cells to, e.g. a strategy "
        "that study runs at no size because it would cost too much at the larger ones. Checked when loaded: the same "
        "recipe, overrides, metric and report, the same axes, and a value labelled as one of that study's sets the "
        "same keys (it is the same point); the reports that read that study's results (benchmarks/study_tables.py, "
        "benchmarks/advisor_agreement.py) show these cells with its own.",
    )
    overrides: dict[str, Any] = Field(default_factory=dict, description="key.path -> value, for every trial.")
    axes: dict[str, list[Any] | AxisSpec] = Field(min_length=1)
    metric: str | None = Field(
        None, description="What chooses: a validation metric in metrics.json (default: validation.<task metric>)."
    )
    report: str | None = Field(
        None, description="Reported beside, never chosen on (default: test.<task metric> if there is a test split)."
    )
    direction: Literal["maximize", "minimize"] | None = Field(None, description="Default: minimize for *loss.")
    search: Literal["grid", "tpe"] = "grid"
    trials: int | None = Field(None, gt=0, description="Budget of sampled trials (search: tpe).")
    seed: int = Field(0, ge=0, description="Seed of the TPE sampler.")
    pruner: Literal["none", "median", "successive_halving"] = Field(
        "none",
        description="search: tpe: stop a trial whose validation curve falls behind (Optuna's MedianPruner or "
        "SuccessiveHalvingPruner, fed by each evaluation during training).",
    )
    timeout_minutes: float | None = Field(None, gt=0, description="Workers start no trial after this long.")
    output: str | None = Field(None, description="Study folder (default: <file folder>/<file stem>/).")
    storage: str | None = Field(None, description="Optuna RDB URL (default: sqlite:///<study folder>/study.db).")
    jobs: int = Field(1, gt=0, description="Local worker processes (each gets cores/jobs torch threads).")
    keep_models: bool = Field(False, description="Keep each trial's weights and checkpoints/.")
    max_retries: int = Field(2, ge=0, description="Re-queue a trial whose worker died at most this often.")

    @model_validator(mode="after")
    def _budget(self) -> StudySpec:
        if self.search == "tpe" and self.trials is None:
            raise ValueError("search: tpe needs a budget: trials: N")
        if self.search == "grid" and self.trials is not None:
            raise ValueError("trials applies to search: tpe; a grid runs every point once")
        if self.search == "grid" and self.pruner != "none":
            raise ValueError("pruner applies to search: tpe; a grid runs every point to the end")
        return self


@dataclass(frozen=True)
class AxisValue:
    """One point of one axis: the label shown in reports and the recipe keys it sets."""

    label: Any
    sets: dict[str, Any]


@dataclass(frozen=True)
class Axis:
    name: str
    kind: str | None
    values: tuple[AxisValue, ...] = ()  # listed values
    low: float | None = None  # or a range (tpe)
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_range(self) -> bool:
        return self.low is not None

    def value_for(self, label: Any) -> AxisValue:
        """The listed value with this label, or the range value ``label`` itself."""
        if self.is_range:
            return AxisValue(label, {self.name: label})
        for value in self.values:
            if value.label == label:
                return value
        raise HftlError(f"axis '{self.name}' has no value labelled {label!r}")


@dataclass
class Study:
    """A validated study: everything the engine and the report need, nothing trained yet."""

    file: Path
    spec: StudySpec
    name: str
    folder: Path
    recipe_file: Path
    base: Recipe  # the base recipe with the fixed overrides, parsed once (the task, the splits, the fingerprint)
    axes: list[Axis]
    metric: str  # chooses (validation)
    direction: str
    report: str | None = None  # reported beside (test), never chosen on
    points: list[dict[str, Any]] = field(default_factory=list)  # grid: axis -> label, in grid order
    recipes: dict[str, Recipe] = field(default_factory=dict, repr=False)  # point_recipe's, by point key

    @property
    def storage_url(self) -> str:
        return self.spec.storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"

    def point_sets(self, labels: dict[str, Any]) -> dict[str, Any]:
        """The recipe keys one point sets: the fixed overrides, then each axis's value (later axes win)."""
        sets = dict(self.spec.overrides)
        for axis in self.axes:
            sets.update(axis.value_for(labels[axis.name]).sets)
        return sets

    def trial_overrides(self, labels: dict[str, Any]) -> list[str]:
        """``key=value`` overrides for one point (axes in order, later axes win), fixed ones first."""
        return as_overrides(self.point_sets(labels))

    def point_recipe(self, labels: dict[str, Any]) -> Recipe:
        """The recipe one point's trial runs with (before the study's output.dir), built once per study.

        What a trial is, for the storage: :mod:`hftl.analysis.study_identity` records it per trial.
        """
        key = point_key(labels)
        if key not in self.recipes:
            from hftl.config.recipe import load_recipe

            self.recipes[key] = load_recipe(self.recipe_file, self.trial_overrides(labels))
        return self.recipes[key]


def point_key(labels: dict[str, Any]) -> str:
    """A grid point's identity in the storage (axis order independent)."""
    return json.dumps(labels, sort_keys=True, default=str)


# --------------------------------------------------------------------------- loading
def load_study(path: str | Path, storage: str | None = None, check: bool = True, _extended: bool = False) -> Study:
    """Read and validate a study file, and build every trial's recipe (grid) or each value's (tpe).

    ``check=False`` skips building the trials' recipes (workers: their parent has checked them). ``_extended``:
    loaded as the study another extends (its own ``extends`` is refused, not followed: no chain, no cycle).
    """
    file = Path(path)
    try:
        doc = load_yaml(file.read_text(encoding="utf-8"), str(file))
    except OSError as exc:
        raise HftlError(f"{file}: cannot read the study file ({exc.strerror}).") from None
    except UnicodeDecodeError as exc:
        raise HftlError(f"{file}: is not UTF-8 text (byte {exc.start}); save the study as UTF-8.") from None
    except yaml.YAMLError as exc:
        raise HftlError(f"{file}: is not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise HftlError(f"{file}: a study is a YAML mapping (recipe, axes, metric, ...), not {type(doc).__name__}.")
    try:
        spec = StudySpec.model_validate(doc)
    except ValidationError as exc:
        raise _spec_error(exc, file) from None
    if storage:
        spec = spec.model_copy(update={"storage": storage})
    recipe_file = (file.parent / spec.recipe).resolve()
    folder = Path(spec.output) if spec.output else file.parent / file.stem
    if spec.output and not folder.is_absolute():
        folder = file.parent / folder
    axes = [_axis(name, raw, spec, file) for name, raw in spec.axes.items()]
    for key in [
        *spec.overrides,
        *(k for a in axes for v in a.values for k in v.sets),
        *(a.name for a in axes if a.is_range),
    ]:
        if key in RESERVED:
            raise HftlError(f"{file}: key '{key}' is set by the study for every trial (trials/<number>/); remove it.")
    base = _load_base(recipe_file, as_overrides(spec.overrides), file)
    from hftl.metrics import lower_is_better
    from hftl.tasks import selection_metric

    task_metric = selection_metric(base)
    metric = spec.metric or f"validation.{task_metric}"
    if metric.split(".")[0] != "validation" or "." not in metric:
        raise HftlError(
            f"{file}: key 'metric': a study chooses on validation and reports on test, so 'metric' is "
            f"validation.<name>, e.g. validation.{task_metric} (got {metric!r}). Put a test metric under "
            f"'report:' (default: test.{task_metric})."
        )
    if base.data.splits.validation is None:
        raise HftlError(
            f"{file}: key 'metric' is {metric!r} but the recipe has no validation split "
            "(data.splits.validation: null); give it one, e.g. data.splits.validation: 0.1."
        )
    report = spec.report or (f"test.{task_metric}" if base.data.splits.test is not None else None)
    if report is not None:
        if report.split(".")[0] not in ("test", "validation") or "." not in report:
            raise HftlError(f"{file}: key 'report': expected <split>.<name>, e.g. test.{task_metric} (got {report!r}).")
        if report.startswith("test.") and base.data.splits.test is None:
            raise HftlError(
                f"{file}: key 'report' is {report!r} but the recipe has no test split (data.splits.test: null)."
            )
    direction = spec.direction or ("minimize" if lower_is_better(metric) else "maximize")
    study = Study(file, spec, spec.name or file.stem, folder, recipe_file, base, axes, metric, direction, report)
    if spec.extends is not None and _extended:
        raise HftlError(f"{file}: key 'extends': this study is extended by another, so it cannot extend one itself.")
    if spec.extends is not None:
        _check_extends(study, file.parent / spec.extends)
    if spec.search == "grid":
        study.points = [
            dict(zip([a.name for a in axes], combo))
            for combo in itertools.product(*[[v.label for v in a.values] for a in axes])
        ]
    else:  # sampled: each listed value and each range end, with the other axes' first values
        study.points = [
            {**{a.name: a.low if a.is_range else a.values[0].label for a in axes}, axis.name: label}
            for axis in axes
            for label in ([axis.low, axis.high] if axis.is_range else [v.label for v in axis.values])
        ]
    for labels in study.points if check else ():  # every trial's recipe, before anything trains
        _check_point(study, labels)
    if spec.search == "tpe":
        study.points = []
    return study


def _check_extends(study: Study, other_file: Path) -> None:
    """``extends``: this study's cells belong in the other's grid (same fixed settings, same points for the same
    labels), or a clear error naming the first difference."""
    if not other_file.is_file():
        raise HftlError(f"{study.file}: key 'extends': no study file {other_file}; name the study this one adds to.")
    other = load_study(other_file, check=False, _extended=True)

    def differs(what: str, mine: Any, theirs: Any) -> HftlError:
        return HftlError(
            f"{study.file}: key 'extends': its cells would not be comparable with {other_file}'s: {what} differs "
            f"({mine!r} here, {theirs!r} there). A study that adds cells to another shares its recipe, overrides, "
            "metric, report and axes; copy them from it."
        )

    for what, mine, theirs in (
        ("recipe", study.recipe_file, other.recipe_file),
        ("overrides", study.spec.overrides, other.spec.overrides),
        ("metric", study.metric, other.metric),
        ("report", study.report, other.report),
        ("the axes", sorted(a.name for a in study.axes), sorted(a.name for a in other.axes)),
    ):
        if mine != theirs:
            raise differs(what, mine, theirs)
    theirs_by_name = {a.name: {str(v.label): v.sets for v in a.values} for a in other.axes}
    for axis in study.axes:
        for value in axis.values:
            sets = theirs_by_name[axis.name].get(str(value.label))
            if sets is not None and sets != value.sets:
                raise differs(f"axis '{axis.name}' value {value.label!r}", value.sets, sets)


def _axis(name: str, raw: list[Any] | AxisSpec, spec: StudySpec, file: Path) -> Axis:
    entry = raw if isinstance(raw, AxisSpec) else AxisSpec(values=raw)
    kind = entry.kind or DEFAULT_KINDS.get(name)
    if entry.values is None:
        if spec.search == "grid":
            raise HftlError(
                f"{file}: axis '{name}' is a range ({entry.low}..{entry.high}); a grid needs listed "
                "values. Use search: tpe with trials: N, or list the values."
            )
        return Axis(name, kind, low=entry.low, high=entry.high, log=entry.log, step=entry.step)
    values = []
    for raw_value in entry.values:
        if isinstance(raw_value, dict) and set(raw_value) == {"label", "set"}:
            sets = raw_value["set"]
            if not isinstance(sets, dict) or not sets:
                raise HftlError(
                    f"{file}: axis '{name}', value {raw_value['label']!r}: 'set' must be a non-empty "
                    "mapping of key.path: value."
                )
            values.append(AxisValue(raw_value["label"], dict(sets)))
        else:
            values.append(AxisValue(_label(raw_value), {name: raw_value}))
    labels = [v.label for v in values]
    if len(set(map(str, labels))) != len(labels):
        raise HftlError(f"{file}: axis '{name}' has repeated values/labels {labels}: each point runs once.")
    bad = [v.label for v in values if not _is_scalar(v.label)]
    if bad:
        raise HftlError(f"{file}: axis '{name}': label {bad[0]!r} must be a number, text, true/false or null.")
    return Axis(name, kind, values=tuple(values))


def _check_point(study: Study, labels: dict[str, Any]) -> None:
    """Build one point's recipe; on an error, name the single axis value that fails alone, else the point."""
    from hftl.config.recipe import load_recipe

    try:
        study.point_recipe(labels)
        return
    except HftlError as exc:
        error = exc
    fixed = as_overrides(study.spec.overrides)
    for axis in study.axes:
        sets = axis.value_for(labels[axis.name]).sets
        try:
            load_recipe(study.recipe_file, fixed + as_overrides(sets))
        except HftlError as alone:
            raise HftlError(
                f"{study.file}: axis '{axis.name}', value {labels[axis.name]!r}: the trial's recipe is invalid: {alone}"
            ) from None
    shown = ", ".join(f"{k}={v}" for k, v in labels.items())
    raise HftlError(f"{study.file}: point {shown}: the trial's recipe is invalid: {error}") from None


def _load_base(recipe_file: Path, overrides: list[str], file: Path) -> Recipe:
    from hftl.config.recipe import load_recipe

    try:
        return load_recipe(recipe_file, overrides)
    except HftlError as exc:
        raise HftlError(f"{file}: key 'recipe' / 'overrides': the base recipe is invalid: {exc}") from None


def _spec_error(exc: ValidationError, file: Path) -> HftlError:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = list(StudySpec.model_fields) if len(err["loc"]) == 1 else list(AxisSpec.model_fields)
            lines.append(
                f"key '{key}' is not allowed.{did_you_mean(str(err['loc'][-1]), allowed)} "
                f"Allowed here: {', '.join(allowed)}."
            )
        elif err["type"] == "missing":
            lines.append(f"key '{key}' is required.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(
                f"key '{key or '(top level)'}': {msg}" + ("." if "got " in msg else f" (got {err['input']!r}).")
            )
    return RecipeError(str(file), None, lines[0] if len(lines) == 1 else "\n  - " + "\n  - ".join(lines))


# --------------------------------------------------------------------------- values
def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _label(value: Any) -> Any:
    """A plain value's label: itself when scalar (a storage parameter), else compact text."""
    return value if _is_scalar(value) else json.dumps(value, sort_keys=True)

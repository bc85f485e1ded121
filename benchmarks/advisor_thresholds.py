"""Where the advisor's thresholds (hftl/analysis/advice_rules.py) lie in the strategy x size studies.

Used by ``benchmarks/advisor_agreement.py``, which prints the result as the "threshold evidence" table of
docs/studies/advisor_agreement.md. Everything reads the validation means of the studies' cells (n >= 2 seeds):
test is what the agreement check reports, never what places a threshold.

- Size thresholds: per dataset, the training-set size where one group of strategies' best validation mean overtakes
  another's, interpolated linearly in log(size) between the two measured sizes around the first sign change.
  FEW_EXAMPLES: the best of partial / full over feature_extraction; MANY_EXAMPLES: full over partial. The rule takes
  the median over the datasets whose crossing lies between two measured sizes (the others give only a bound).
- Feature thresholds: per (dataset x size) with the advisor's measurements cached, whether feature_extraction held
  (its validation mean within 1 point of the best cell's) against the probe's error reduction
  (SEPARABLE_ERROR_REDUCTION) and the raw-input baseline's lead over the probe (NEGATIVE_GAP).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from hftl.analysis.advice_rules import FE, FULL, PARTIAL, RUNGS

MIN_SEEDS = 2


def rung_of_values(study: Any, strategy_axis: Any) -> dict[str, str]:
    """The study's strategy labels that are one of the advisor's rungs: {study label: rung label}.

    A value is a rung when its trial recipe trains what the rung trains: the same ``strategy.name``, the rung's
    strategy options (e.g. partial's ``freeze_fraction: 0.5``), no LR shaping (``llrd`` / ``discriminative``) and
    the same ``model.pretrained`` (scratch: false). LRs and epochs may differ from the rung's (the study fixes its
    own); the first value that matches a rung is its cell. ``full+llrd``, ``progressive`` and ``lora`` match none.
    """
    from hftl.config.recipe import load_recipe

    base = {a.name: a.values[0].label for a in study.axes}
    found: dict[str, str] = {}
    for value in strategy_axis.values:
        recipe = load_recipe(study.recipe_file, study.trial_overrides({**base, strategy_axis.name: value.label}))
        found_rung = _matching_rung(recipe.model_dump(mode="json"))
        if found_rung and found_rung not in found.values():
            found[str(value.label)] = found_rung
    return found


def study_rungs(st: Any) -> dict[str, str]:
    """:func:`rung_of_values` of a StrategySizeStudy and of the studies that extend it (their strategy labels
    are cells of its grid too); a rung already found keeps its first label."""
    found: dict[str, str] = {}
    for read in (st, *st.extensions):
        for label, rung in rung_of_values(read.study, read.strategy_axis).items():
            if rung not in found.values():
                found[label] = rung
    return found


def _matching_rung(doc: dict[str, Any]) -> str | None:
    strategy = doc["strategy"]
    if strategy.get("llrd") is not None or strategy.get("discriminative") is not None:
        return None
    for r in RUNGS:
        options = strategy.get(r.strategy) or {}
        if (
            strategy["name"] == r.strategy
            and all(options.get(k) == v for k, v in r.options.items())
            and doc["model"]["pretrained"] == r.sets.get("model.pretrained", True)
        ):
            return r.label
    return None


# --------------------------------------------------------------------------- size thresholds
@dataclass(frozen=True)
class Crossing:
    """Where ``high`` overtakes ``low`` along the sizes: ``value`` when between two measured sizes, else a bound."""

    kind: str  # "between", "below" (already ahead at the smallest size), "above" (never ahead), "none" (no data)
    value: float | None = None
    sizes: tuple[float, ...] = ()  # the two sizes around the crossing, or the bound

    def text(self) -> str:
        if self.kind == "between":
            return f"{self.value:,.0f} (between {self.sizes[0]:,.0f} and {self.sizes[1]:,.0f})"
        if self.kind == "below":
            return f"< {self.sizes[0]:,.0f} (ahead at every measured size)"
        if self.kind == "above":
            return f"> {self.sizes[0]:,.0f} (never ahead)"
        return "not measured"


def crossing(points: list[tuple[float, float]]) -> Crossing:
    """``points``: (size, high mean - low mean) at the measured sizes. The first size where the difference turns
    positive, interpolated linearly in log(size) between the last size at or below zero and the next one."""
    points = sorted(points)
    if not points:
        return Crossing("none")
    if points[0][1] > 0:
        return Crossing("below", sizes=(points[0][0],))
    for (s0, d0), (s1, d1) in zip(points, points[1:]):
        if d0 <= 0 < d1:
            t = -d0 / (d1 - d0)
            value = math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0)))
            return Crossing("between", value, (s0, s1))
    return Crossing("above", sizes=(points[-1][0],))


def size_label_value(label: object, n_train: int | dict[str, Any] | None = None) -> float | None:
    """A size label as a number (``10207``; a non-numeric label such as ``full`` needs the measured n_train, given
    as a number or as the label's cache entry)."""
    try:
        return float(str(label).replace(",", ""))
    except ValueError:
        if isinstance(n_train, dict):
            n_train = n_train.get("measurements", {}).get("n_train")
        return float(n_train) if n_train else None


@dataclass(frozen=True)
class DatasetCrossing:
    dataset: str
    crossing: Crossing
    cells: str  # which cells set it


def size_crossings(
    studies: list[Any],
    rungs_of: dict[str, dict[str, str]],
    low: set[str],
    high: set[str],
    n_train: dict[tuple[str, str], int],
) -> list[DatasetCrossing]:
    """Per study: where the best validation mean of the rungs ``high`` overtakes that of ``low`` (rung labels);
    ``rungs_of``: per study, {strategy label: rung label}; ``n_train``: (study, size label) -> examples measured."""
    out = []
    for st in studies:
        rungs = rungs_of[st.name]
        sign = 1.0 if st.study.direction == "maximize" else -1.0
        points, used = [], []
        for value in st.size_axis.values:
            size = size_label_value(value.label, n_train.get((st.name, str(value.label))))
            measured = [c for c in st.at_size(value.label) if c["n"] >= MIN_SEEDS]
            lows = [c for c in measured if rungs.get(str(c["labels"][st.strategy_axis.name])) in low]
            highs = [c for c in measured if rungs.get(str(c["labels"][st.strategy_axis.name])) in high]
            if size is None or not lows or not highs:
                continue
            best_low = max(lows, key=lambda c: sign * c["mean"])
            best_high = max(highs, key=lambda c: sign * c["mean"])
            points.append((size, sign * (best_high["mean"] - best_low["mean"])))
            used.append(
                f"{value.label}: {_name(st, best_high)} {best_high['mean']:.3f} vs {_name(st, best_low)} "
                f"{best_low['mean']:.3f}"
            )
        out.append(DatasetCrossing(st.name, crossing(points), "; ".join(used) or "no size with both measured"))
    return out


def _name(st: Any, cell: dict[str, Any]) -> str:
    return str(cell["labels"][st.strategy_axis.name])


def summarise(crossings: list[DatasetCrossing]) -> str:
    """The rule's value: the median over the datasets whose crossing lies between two measured sizes."""
    values = [c.crossing.value for c in crossings if c.crossing.kind == "between" and c.crossing.value]
    bounds = [
        f"{c.dataset} {c.crossing.text().split(' (')[0]}" for c in crossings if c.crossing.kind in ("below", "above")
    ]
    shown = f" (bounds only: {', '.join(bounds)})" if bounds else ""
    if not values:
        return "not placed between measured sizes" + shown
    return f"median {statistics.median(values):,.0f} over {len(values)} dataset(s)" + shown


# --------------------------------------------------------------------------- feature thresholds
@dataclass(frozen=True)
class FePoint:
    """One (dataset x size): the advisor's measurements beside how feature_extraction fared (validation means)."""

    cell: str  # "dataset @ size"
    n_train: int
    error_reduction: float  # (probe - majority) / (1 - majority)
    gap: float | None  # raw-input baseline - probe (None: no baseline for this input)
    fe_held: bool  # feature_extraction's validation mean within 1 point of the best cell's


def separating(points: list[tuple[float, bool, str]], fe_when_high: bool) -> str:
    """The interval of thresholds that would put every cell where feature_extraction held on its side and every
    cell where it lost on the other; ``fe_when_high``: the table freezes above the threshold (else below)."""
    held = [(v, c) for v, ok, c in points if ok]
    lost = [(v, c) for v, ok, c in points if not ok]
    if not points:
        return "not measured"
    if fe_when_high:  # T in (max lost, min held]
        lo, hi = max(lost, default=None), min(held, default=None)
    else:  # T in [max held, min lost)
        lo, hi = max(held, default=None), min(lost, default=None)
    if lo is not None and hi is not None and lo[0] >= hi[0]:
        return f"no value separates them ({lo[1]} at {lo[0]:.3f} vs {hi[1]} at {hi[0]:.3f})"
    left = f"{lo[0]:.3f} ({lo[1]})" if lo else "-inf"
    right = f"{hi[0]:.3f} ({hi[1]})" if hi else "+inf"
    return f"between {left} and {right}"


def feature_evidence(points: list[FePoint], few_examples: int) -> dict[str, tuple[str, str]]:
    """{constant: (where the studies put it, from which cells)} for the two feature-class thresholds.

    Separable matters where the table would not freeze anyway (n >= FEW_EXAMPLES); the negative gap where it would
    (n < FEW_EXAMPLES): there a cell whose baseline beats the probe and where feature_extraction lost should be
    "negative", and one where it held should not.
    """
    big = [p for p in points if p.n_train >= few_examples]
    small = [p for p in points if p.n_train < few_examples and p.gap is not None]
    return {
        "SEPARABLE_ERROR_REDUCTION": (
            separating([(p.error_reduction, p.fe_held, p.cell) for p in big], fe_when_high=True),
            _cells(big, "probe's error reduction"),
        ),
        "NEGATIVE_GAP": (
            separating([(p.gap, p.fe_held, p.cell) for p in small if p.gap is not None], fe_when_high=False),
            _cells(small, "baseline - probe"),
        ),
    }


def _cells(points: list[FePoint], what: str) -> str:
    if not points:
        return "no (dataset x size) with measurements and 2+ seeds of feature_extraction"
    shown = [
        f"{p.cell} {p.error_reduction if what.startswith('probe') else p.gap:.3f} ({'held' if p.fe_held else 'lost'})"
        for p in points
    ]
    return f"{what}, feature_extraction held/lost: " + "; ".join(shown)


SIZE_THRESHOLDS = {  # constant: (the group that wins below it, the group that overtakes above it)
    "FEW_EXAMPLES": ({FE}, {PARTIAL, FULL}),
    "MANY_EXAMPLES": ({PARTIAL}, {FULL}),
}

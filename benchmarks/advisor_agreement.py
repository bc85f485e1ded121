"""The advisor's agreement check: its pick against the best strategy of each (dataset x size) cell of the studies.

    PYTHONPATH=. python benchmarks/advisor_agreement.py --measure          # measure what the cache lacks (10-30 s each)
    PYTHONPATH=. python benchmarks/advisor_agreement.py --measure --again  # ... everything (the advisor's code changed)
    PYTHONPATH=. python benchmarks/advisor_agreement.py                    # the comparison alone, from the cache
    PYTHONPATH=. python benchmarks/advisor_agreement.py --write README.md  # ... and the README's marked block

For every committed study with a strategy axis and a data-size axis (docs/studies/<name>/results.csv, read as
benchmarks/study_tables.py reads it) and each of its sizes:

- the advisor's measurements (:func:`hftl.analysis.advise.advise`, no step times) on the study's base recipe with
  its overrides, the size's keys (``data.max_train_samples``) and the first seed: cached per (study, size) in
  docs/studies/advisor_agreement.json, so a run without ``--measure`` only recomputes the comparison. The decision
  is taken again from the cached measurements with today's table, so a changed threshold needs no new measurement;
- the advised rung as a study cell (:func:`advisor_thresholds.rung_of_values`: same strategy, options and
  pretrained weights; the study's own LRs and epochs);
- the best cell, chosen on the validation mean, and the verdict on the test means: *agrees* when the advised
  cell is within 1 point of the best cell or within one standard error of the best cell's mean; *worst* when the
  advised cell has the lowest test mean of the size. A size whose advised strategy was not run, or has fewer than
  2 seeds, or has no other strategy with 2 seeds to compare with, is *not measured* and not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import advisor_thresholds as thresholds  # noqa: E402
import study_tables  # noqa: E402
from study_tables import DOCS, ROOT, StrategySizeStudy  # noqa: E402

CACHE = DOCS / "advisor_agreement.json"
REPORT = DOCS / "advisor_agreement.md"
POINT = 0.01  # "within 1 point" of accuracy
COMMAND = "python benchmarks/advisor_agreement.py [--measure] --write README.md"


# --------------------------------------------------------------------------- the verdict
@dataclass(frozen=True)
class Verdict:
    """One (dataset x size): what the advisor picked, the best cell and how the pick fared (test means)."""

    dataset: str
    size: str
    advised: str  # the advisor's rung label ("" when not measured yet)
    branch: str = ""
    cell: str | None = None  # the study's label of the advised rung (None: not run in this study)
    best: str | None = None
    best_test: float = math.nan
    best_se: float = math.nan
    advised_test: float = math.nan
    compared: int = 0  # strategies of the size with >= 2 seeds
    strategies: int = 0  # strategies of the study
    agrees: bool | None = None  # None: not measured
    worst: bool = False
    why: str = ""


def judge(cells: list[dict[str, Any]], strategy: str, advised_cell: str | None, maximize: bool = True) -> dict:
    """The verdict for one size: ``cells`` are the size's cell_stats (``mean`` validation, ``report_*`` test),
    ``advised_cell`` the strategy label of the advised rung in the study (None: not run)."""
    sign = 1.0 if maximize else -1.0
    measured = [c for c in cells if c["n"] >= thresholds.MIN_SEEDS and len(c["reported"]) >= thresholds.MIN_SEEDS]
    out: dict[str, Any] = {"compared": len(measured), "strategies": len(cells), "agrees": None}
    advised = next((c for c in measured if str(c["labels"][strategy]) == str(advised_cell)), None)
    if advised_cell is None:
        return {**out, "why": "the advised strategy is not one of the study's"}
    if advised is None:
        return {**out, "why": f"{advised_cell} has fewer than {thresholds.MIN_SEEDS} seeds"}
    if len(measured) < 2:
        return {**out, "why": f"no other strategy with {thresholds.MIN_SEEDS}+ seeds at this size"}
    best = max(measured, key=lambda c: sign * c["mean"])  # chosen on validation
    se = best["report_std"] / math.sqrt(len(best["reported"]))
    lag = sign * (best["report_mean"] - advised["report_mean"])  # how far the advised cell is behind, on test
    lowest = min(sign * c["report_mean"] for c in measured)
    return {
        **out,
        "best": str(best["labels"][strategy]),
        "best_test": best["report_mean"],
        "best_se": se,
        "advised_test": advised["report_mean"],
        "agrees": lag <= POINT + 1e-12 or lag <= se + 1e-12,
        "worst": sign * advised["report_mean"] <= lowest,
        "why": f"{lag * 100:.1f} points behind the best" if lag > 0 else "the best or ahead of it on test",
    }


def decision_of(entry: dict[str, Any]) -> Any:
    """Today's table applied to the cached measurements."""
    from hftl.analysis.advice_rules import Measurements, decide

    return decide(Measurements(**entry["measurements"]))


def verdicts(
    studies: list[StrategySizeStudy], cache: dict[str, Any], rungs: dict[str, dict[str, str]]
) -> list[Verdict]:
    """One verdict per (study, size), the advised rung taken from the cache (not measured when absent);
    ``rungs``: per study, {strategy label: rung label} (:func:`advisor_thresholds.rung_of_values`)."""
    out = []
    for st in studies:
        cell_of = {rung: label for label, rung in rungs[st.name].items()}
        for value in st.size_axis.values:
            size = str(value.label)
            entry = cache.get(st.name, {}).get(size)
            if entry is None:
                found = judge(st.at_size(value.label), st.strategy_axis.name, None)
                found["why"] = "no advisor measurement cached (run with --measure)"
                found["strategies"] = len(st.strategies_at(value.label))
                out.append(Verdict(st.name, size, "", **found))
                continue
            decision = decision_of(entry)
            cell = cell_of.get(decision.rung.label)
            found = judge(st.at_size(value.label), st.strategy_axis.name, cell, st.study.direction == "maximize")
            found["strategies"] = len(st.strategies_at(value.label))
            out.append(Verdict(st.name, size, decision.rung.label, decision.branch, cell, **found))
    return out


# --------------------------------------------------------------------------- measuring (the cache)
def advisor_overrides(st: StrategySizeStudy, size: object) -> list[str]:
    """The study's fixed overrides, the size's keys and the first value of every other non-strategy axis (the seed):
    the recipe the study's trials at this size start from, before a strategy is set."""
    labels = {a.name: a.values[0].label for a in st.study.axes}
    labels[st.size_axis.name] = size
    sets = dict(st.study.spec.overrides)
    for axis in st.study.axes:
        if axis.name != st.strategy_axis.name:
            sets.update(axis.value_for(labels[axis.name]).sets)
    from hftl.config.recipe import as_overrides

    return as_overrides(sets)


def fingerprint(st: StrategySizeStudy, overrides: list[str]) -> str:
    """What the measurement reads, resolved: the recipe's task, model and data sections and seed (with the
    overrides applied) and the advisor's sample size. A study's budget keys (epochs, evaluation cadence, LRs)
    leave it unchanged; a change to the advisor's own code does not show here (``--measure --again``)."""
    from hftl.analysis.advise import SAMPLE
    from hftl.config.recipe import load_recipe

    recipe = load_recipe(st.study.recipe_file, overrides).model_dump(mode="json")
    read = {k: recipe[k] for k in ("task", "model", "data")} | {"seed": recipe["train"]["seed"], "sample": SAMPLE}
    return hashlib.sha256(json.dumps(read, sort_keys=True, default=str).encode()).hexdigest()[:16]


def measure(st: StrategySizeStudy, size: object) -> dict[str, Any]:
    """Run the advisor's measurements for one (study, size); the cache entry."""
    from hftl.analysis.advise import advise
    from hftl.config.recipe import load_recipe

    overrides = advisor_overrides(st, size)
    recipe = load_recipe(st.study.recipe_file, overrides)
    started = time.time()
    advice = advise(recipe, step_times=False, say=lambda *a: None)
    return {
        "overrides": overrides,
        "fingerprint": fingerprint(st, overrides),
        "measurements": dataclasses.asdict(advice.measurements),
        "when_measured": {"strategy": advice.decision.rung.label, "branch": advice.decision.branch},
        "seconds": round(time.time() - started, 1),
    }


def measure_missing(
    studies: list[StrategySizeStudy], cache: dict[str, Any], say: Any = print, again: bool = False
) -> dict[str, Any]:
    """Measure every (study, size) whose entry is absent or stale (recipe, overrides or sample changed); ``again``:
    every one (after a change to what the advisor measures, which the fingerprint cannot see)."""
    for st in studies:
        for value in st.size_axis.values:
            entry = cache.get(st.name, {}).get(str(value.label))
            fresh = entry and entry.get("fingerprint") == fingerprint(st, advisor_overrides(st, value.label))
            if fresh and not again:
                continue
            entry = measure(st, value.label)
            cache.setdefault(st.name, {})[str(value.label)] = entry
            say(f"measured {st.name} @ {value.label}: {entry['when_measured']} in {entry['seconds']} s")
            write_cache(cache)  # after each: a stopped run keeps what it measured
    return cache


def read_cache(path: Path | None = None) -> dict[str, Any]:
    path = path or CACHE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_cache(cache: dict[str, Any], path: Path | None = None) -> None:
    (path or CACHE).write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- the report
def share(rows: list[Verdict]) -> str:
    counted = [r for r in rows if r.agrees is not None]
    if not counted:
        return "is not measured yet in any (dataset x size) cell."
    agree = sum(bool(r.agrees) for r in counted)
    worst = sum(r.worst for r in counted)
    complete = sum(r.compared == r.strategies for r in counted)
    goal = "met" if agree / len(counted) >= 0.8 and not worst else "not met"
    return (
        f"agrees in **{agree} of {len(counted)}** measured cells ({agree / len(counted):.0%}); the worst strategy "
        f"in {worst}; goal (>= 80%, never the worst): {goal}. {complete} of the {len(counted)} compared every "
        f"strategy of the study; {len(rows) - len(counted)} cell(s) not measured."
    )


def agreement_table(rows: list[Verdict]) -> str:
    out = [
        "| dataset | size | advised (branch) | its cell, test | best on validation, test ± SE | compared | verdict |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        advised = f"{r.advised} ({r.branch})" if r.advised else "-"
        its = f"{r.cell} {r.advised_test:.3f}" if not math.isnan(r.advised_test) else (r.cell or "not run")
        its = its if r.advised else "-"
        best = f"{r.best} {r.best_test:.3f} ± {r.best_se:.3f}" if r.best else "-"
        verdict = "not measured" if r.agrees is None else ("agrees" if r.agrees else "disagrees")
        verdict += " (worst)" if r.worst else ""
        out.append(
            f"| {r.dataset} | {r.size} | {advised} | {its} | {best} | {r.compared}/{r.strategies} | "
            f"{verdict}: {r.why} |"
        )
    return "\n".join(out)


def cells_table(st: StrategySizeStudy, rows: list[Verdict]) -> str:
    """Every cell of one study: validation (chooses) and test (reported), mean ± std (SE) over seeds."""
    sign = 1.0 if st.study.direction == "maximize" else -1.0
    marks = {}
    for value in st.size_axis.values:  # the best on validation among cells with 2+ seeds, as the verdicts choose
        measured = [c for c in st.at_size(value.label) if c["n"] >= thresholds.MIN_SEEDS]
        if measured:
            best = max(measured, key=lambda c: sign * c["mean"])
            marks[(str(value.label), str(best["labels"][st.strategy_axis.name]))] = "best"
    for r in rows:
        if r.dataset == st.name and r.cell:
            marks[(r.size, r.cell)] = "best, advised" if marks.get((r.size, r.cell)) else "advised"
    out = [
        f"`{st.name}`: `{st.study.metric}` chooses, `{st.study.report}` is reported; mean ± std (standard error) "
        "over the completed seeds.",
        "",
        "| size | strategy | seeds | validation | test | |",
        "| ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for c in st.cells:
        size, strategy = str(c["labels"][st.size_axis.name]), str(c["labels"][st.strategy_axis.name])
        if not c["n"]:
            continue
        val, test = (c["mean"], c["std"], c["n"]), (c["report_mean"], c["report_std"], len(c["reported"]))
        shown = [f"{m:.3f} ± {sd:.3f} ({sd / math.sqrt(n):.3f})" if n else "-" for m, sd, n in (val, test)]
        out.append(f"| {size} | {strategy} | {c['n']} | {shown[0]} | {shown[1]} | {marks.get((size, strategy), '')} |")
    return "\n".join(out)


def stale(studies: list[StrategySizeStudy], cache: dict[str, Any]) -> set[tuple[str, str]]:
    """(study, size) entries measured on another recipe or other overrides than the study's today."""
    out = set()
    for st in studies:
        for value in st.size_axis.values:
            entry = cache.get(st.name, {}).get(str(value.label))
            if entry and entry.get("fingerprint") != fingerprint(st, advisor_overrides(st, value.label)):
                out.add((st.name, str(value.label)))
    return out


def measurements_table(cache: dict[str, Any], old: set[tuple[str, str]]) -> str:
    """What the advisor measured per (study, size) and what today's table decides from it."""
    out = [
        "| study | size | examples | majority | probe (3-fold) | raw-input baseline | constant features | "
        "today's branch: pick | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, sizes in sorted(cache.items()):
        for size, entry in sorted(sizes.items(), key=lambda kv: thresholds.size_label_value(*kv) or 0.0):
            m, d = entry["measurements"], decision_of(entry)
            base = "-" if m["baseline_accuracy"] is None else f"{m['baseline_accuracy']:.3f}"
            constant = "-" if m.get("constant_share") is None else f"{m['constant_share']:.1%}"
            size = f"{size} (stale)" if (name, size) in old else size
            out.append(
                f"| {name} | {size} | {m['n_train']:,} | {m['majority']:.3f} | {m['probe_accuracy']:.3f} | {base} | "
                f"{constant} | {d.branch}: {d.rung.label} | {entry.get('seconds', '-')} |"
            )
    return "\n".join(out)


def evidence_table(studies: list[StrategySizeStudy], cache: dict[str, Any], rungs: dict[str, dict[str, str]]) -> str:
    from hftl.analysis import advice_rules as rules
    from hftl.analysis.advice_rules import Measurements

    n_train = {
        (name, size): entry["measurements"]["n_train"] for name, sizes in cache.items() for size, entry in sizes.items()
    }
    out = [
        "| threshold | value now | where the studies put it | from which cells (validation means, 2+ seeds) |",
        "| --- | ---: | --- | --- |",
    ]
    for constant, (low, high) in thresholds.SIZE_THRESHOLDS.items():
        found = thresholds.size_crossings(studies, rungs, low, high, n_train)
        cells = "; ".join(f"{c.dataset}: {c.crossing.text()} [{c.cells}]" for c in found) or "no study"
        out.append(f"| {constant} | {getattr(rules, constant):,} | {thresholds.summarise(found)} | {cells} |")
    points = []
    for st in studies:
        fe_label = next((k for k, v in rungs[st.name].items() if v == rules.FE), None)
        sign = 1.0 if st.study.direction == "maximize" else -1.0
        for value in st.size_axis.values:
            entry = cache.get(st.name, {}).get(str(value.label))
            measured = [c for c in st.at_size(value.label) if c["n"] >= thresholds.MIN_SEEDS]
            fe = next((c for c in measured if str(c["labels"][st.strategy_axis.name]) == str(fe_label)), None)
            if entry is None or fe is None or len(measured) < 2:
                continue
            best = max(measured, key=lambda c: sign * c["mean"])  # placing a threshold is a choice: validation
            m = Measurements(**entry["measurements"])
            reduction = (m.probe_accuracy - m.majority) / (1 - m.majority) if m.majority < 1 else 0.0
            gap = None if m.baseline_accuracy is None else m.baseline_accuracy - m.probe_accuracy
            held = sign * (best["mean"] - fe["mean"]) <= POINT + 1e-12
            points.append(thresholds.FePoint(f"{st.name} @ {value.label}", m.n_train, reduction, gap, held))
    for constant, (where, cells) in thresholds.feature_evidence(points, rules.FEW_EXAMPLES).items():
        out.append(f"| {constant} | {getattr(rules, constant)} | {where} | {cells} |")
    out.append(
        f"| MIN_FINETUNE_STEPS, MAX_EPOCHS | {rules.MIN_FINETUNE_STEPS}, {rules.MAX_EPOCHS} | not set by these "
        "studies (each fixes its own epochs) | - |"
    )
    return "\n".join(out)


def report(studies: list[StrategySizeStudy], cache: dict[str, Any]) -> tuple[str, str]:
    """(the README block, the whole report)."""
    rungs = {st.name: thresholds.study_rungs(st) for st in studies}
    rows = verdicts(studies, cache, rungs)
    old = stale(studies, cache)
    rows = [dataclasses.replace(r, branch=f"{r.branch}; stale") if (r.dataset, r.size) in old else r for r in rows]
    block = "\n".join(
        [
            f"Generated by `{COMMAND}` from `docs/studies/*/results.csv` and the advisor's cached measurements "
            "(`docs/studies/advisor_agreement.json`). Best cell chosen on validation; verdicts on test means "
            "(3 seeds where complete): *agrees* within 1 point or one standard error of the best cell.",
            "",
            agreement_table(rows),
            "",
            "The advisor's pick " + share(rows),
        ]
    )
    measured = ", ".join(f"{n} ({len(s)} sizes)" for n, s in sorted(cache.items())) or "none"
    whole = "\n".join(
        [
            "# The advisor's agreement check",
            "",
            f"Regenerate: `{COMMAND}` (`--measure` runs the advisor's measurements the cache lacks, seconds "
            "below; without it only the comparison is recomputed, with today's table applied to the cached "
            "measurements; `--measure --again` measures everything again). Studies read: "
            + (", ".join(f"`{st.name}`" for st in studies) or "none")
            + f". Measurements cached: {measured}.",
            "",
            "The advisor measures the study's base recipe with its overrides at that size and the first seed "
            "(`hftl.analysis.advise.advise(recipe, step_times=False)`); its rung is matched to the study's cell "
            "that trains the same parameters (same strategy, options and pretrained weights; the study's own LRs "
            "and epochs). A cell counts only when the advised strategy and at least one other have 2+ seeds; "
            "'compared' is how many of the study's strategies had them.",
            "",
            "## Agreement",
            "",
            block,
            "",
            "## The cells",
            "",
            "\n\n".join(cells_table(st, rows) for st in studies) or "No strategy x size study has results yet.",
            "",
            "## The advisor's measurements",
            "",
            "Cross-validated on up to 2,000 training examples of the size's subset (seed of the first trial); "
            "seconds: the measuring alone, on the machine and load of the `--measure` run. *Stale*: measured before "
            "the study file or its recipe changed (`--measure` measures it again).",
            "",
            measurements_table(cache, old),
            "",
            "## Threshold evidence",
            "",
            "Where each threshold of `hftl/analysis/advice_rules.py` lies in the same results (size thresholds: the "
            "crossing of the validation means, interpolated in log size; the rule takes the median over datasets; "
            "feature thresholds: the values that would separate the sizes where feature_extraction held, i.e. its "
            "validation mean within 1 point of the best cell's, from those where it lost). Placing a threshold is a "
            "choice, so it reads validation means only; the agreement above reports test.",
            "",
            evidence_table(studies, cache, rungs),
            "",
        ]
    )
    return block, whole


def write_block(path: Path, body: str) -> bool:
    """Replace the text between ``<!-- advisor-agreement -->`` and ``<!-- /advisor-agreement -->``; False when
    the file has no such block (nothing written)."""
    text = study_tables.replace_block(
        path.read_text(encoding="utf-8"), "<!-- advisor-agreement -->", "<!-- /advisor-agreement -->", body
    )
    if text is None:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def strategy_studies(studies: Path = ROOT / "studies", docs: Path = DOCS) -> list[StrategySizeStudy]:
    return [
        st
        for p in sorted(docs.iterdir())
        if p.is_dir() and (st := study_tables.strategy_size_study(p.name, studies, docs))
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="run the advisor on what the cache lacks")
    parser.add_argument("--again", action="store_true", help="with --measure: measure every (study, size) again")
    parser.add_argument("--write", type=Path, help="replace the marked block of this file (e.g. README.md)")
    args = parser.parse_args()
    if args.write and not args.write.is_file():
        print(f"error: --write {args.write}: no such file; name the README to update.", file=sys.stderr)
        return 2
    from hftl.config.errors import HftlError

    try:
        studies = strategy_studies()
        cache = read_cache()
        if args.measure:
            cache = measure_missing(studies, cache, again=args.again)
        block, whole = report(studies, cache)
    except HftlError as exc:  # a study or recipe that does not load: its own one-paragraph message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    REPORT.write_text(whole, encoding="utf-8")
    print(whole)
    if args.write:
        if not write_block(args.write, block):
            print(f"{args.write}: no <!-- advisor-agreement --> ... <!-- /advisor-agreement --> block; add one.")
            return 2
        print(f"written: {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A study's results, rebuilt from its storage alone: results.csv, report.md and the plots the axes call for.

Everything here reads the Optuna storage (never the trial folders), so ``hftl study --report``
works on any machine that reaches the storage, while workers are still running.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path
from typing import Any

from hftl.analysis.study import Study, point_key
from hftl.analysis.study_plots import write_plots

FIXED_COLUMNS = ("train_seconds", "run_seconds", "overhead_seconds", "attempts", "error", "dir")
# A trial's cost breakdown (metrics.json "seconds", written by hftl.training.train.run), in the order a run spends it.
COST_PARTS = ("load", "tokenize", "model", "features", "train", "validate", "final_eval")


def latest_trials(ostudy: Any) -> list[Any]:
    """Every trial but those superseded by a retry (a trial whose worker died is queued again as a new trial)."""
    trials = ostudy.get_trials(deepcopy=False)
    superseded = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.number not in superseded]


def current_trials(study: Study, ostudy: Any) -> list[Any]:
    """The latest trials of the study's points: a grid that shrank keeps its other trials in the storage
    (they count again if their values come back), but they are not this study's results."""
    trials = latest_trials(ostudy)
    if study.spec.search != "grid":
        return trials
    points = {point_key(labels) for labels in study.points}
    return [t for t in trials if t.user_attrs.get("hftl_key") in points]


def result_rows(study: Study, ostudy: Any) -> list[dict[str, Any]]:
    """One row per current trial: axis labels, state, metrics, times and error."""
    rows = []
    for t in sorted(current_trials(study, ostudy), key=lambda t: t.number):
        labels = t.user_attrs.get("hftl_labels") or dict(t.params)
        metrics = t.user_attrs.get("hftl_metrics") or {}
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update({axis.name: labels.get(axis.name) for axis in study.axes})
        row[study.metric] = metrics.get(study.metric, t.value if t.state.name == "COMPLETE" else None)
        if study.report:
            row[study.report] = metrics.get(study.report)
        row.update(
            {
                k: v
                for k, v in sorted(metrics.items())
                if k.startswith(("test.", "validation.")) and k not in (study.metric, study.report)
            }
        )
        row.update({f"seconds.{p}": metrics.get(f"seconds.{p}") for p in COST_PARTS})
        row.update(
            {
                "train_seconds": metrics.get("train_seconds"),
                "run_seconds": t.user_attrs.get("hftl_run_seconds"),
                "overhead_seconds": t.user_attrs.get("hftl_overhead_seconds"),
                "attempts": len(t.system_attrs.get("retry_history", [])) + 1,
                "error": t.user_attrs.get("hftl_error") if t.state.name == "FAIL" else None,
                "dir": f"trials/{t.number}",
            }
        )
        rows.append(row)
    return rows


def write_results(study: Study, ostudy: Any) -> Path:
    """results.csv, written atomically (several workers rewrite it after each trial)."""
    rows = result_rows(study, ostudy)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in FIXED_COLUMNS]
    columns += list(FIXED_COLUMNS)
    study.folder.mkdir(parents=True, exist_ok=True)
    path = study.folder / "results.csv"
    tmp = path.with_name(f".results-{os.getpid()}.csv")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns or ["trial"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def write_report(study: Study, ostudy: Any = None) -> Path:
    """results.csv, report.md and the plots; loads the study from its storage when not given."""
    if ostudy is None:
        from hftl.analysis.study_storage import load_optuna, open_storage, upgrade_storage
        from hftl.config.errors import HftlError

        optuna = load_optuna()
        try:
            ostudy = optuna.load_study(study_name=study.name, storage=open_storage(study))
        except KeyError:
            raise HftlError(
                f"{study.file}: the storage {study.storage_url} has no study '{study.name}' yet; "
                "run `hftl study` first."
            ) from None
        upgrade_storage(study, ostudy)  # refuses a study that would misread the storage's trials
    write_results(study, ostudy)
    rows = result_rows(study, ostudy)
    cells = cell_stats(study, rows)
    plots = write_plots(study, cells)
    hidden = len(latest_trials(ostudy)) - len(current_trials(study, ostudy))
    path = study.folder / "report.md"
    path.write_text(_markdown(study, rows, cells, plots, hidden), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- statistics
def cell_axes(study: Study) -> list[str]:
    """The axes that define a cell: all but the seed axes (seeds are what mean ± std is over)."""
    return [a.name for a in study.axes if a.kind != "seed"]


def cell_stats(study: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell, in the grid's order (a search's: as cells first appear): mean, std and count of the choosing metric
    (``mean``/``std``, validation) and of the reported one (``report_mean``/``report_std``, test)."""
    names = cell_axes(study)
    cells: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(str(row[n]) for n in names)
        cell = cells.setdefault(
            key, {"labels": {n: row[n] for n in names}, "values": [], "reported": [], "seconds": [], "total": 0}
        )
        cell["total"] += 1
        if row["state"] == "COMPLETE" and row[study.metric] is not None:
            cell["values"].append(float(row[study.metric]))
            if study.report and row.get(study.report) not in (None, ""):
                cell["reported"].append(float(row[study.report]))
            if row["train_seconds"] is not None:
                cell["seconds"].append(float(row["train_seconds"]))
    for cell in cells.values():
        cell["n"] = len(cell["values"])
        cell["mean"], cell["std"] = _mean_std(cell["values"])
        cell["report_mean"], cell["report_std"] = _mean_std(cell["reported"])
        cell["train_seconds"] = statistics.fmean(cell["seconds"]) if cell["seconds"] else math.nan
    # Grid order, not trial order: a trial run again after a stop is a new, later trial of an early cell.
    grid: dict[tuple, int] = {}
    for i, labels in enumerate(study.points):
        grid.setdefault(tuple(str(labels[n]) for n in names), i)
    return sorted(cells.values(), key=lambda c: grid.get(tuple(str(c["labels"][n]) for n in names), len(grid)))


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# --------------------------------------------------------------------------- markdown
def _fmt(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return "-"


def _pm(mean: float, std: float, n: int) -> str:
    """Mean ± sample std; one trial has no spread, so it shows the value alone."""
    if not n or math.isnan(mean):
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"


def _cost_breakdown(study: Study, rows: list[dict[str, Any]]) -> list[str]:
    """Seconds spent per part of the completed trials (summed), per strategy (else per value of the first axis)."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r.get("run_seconds") is not None]
    if not done:
        return []
    by = next((a.name for a in study.axes if a.kind == "strategy"), None) or next(iter(cell_axes(study)), None)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in done:
        groups.setdefault(str(r[by]) if by else "all trials", []).append(r)
    if by and len(groups) > 1:
        groups["all trials"] = done
    head = ["trials", *COST_PARTS, "other", "run"]
    out = [
        "",
        "## Cost breakdown",
        "",
        "Seconds summed over the completed trials (one process's clock; `other`: the rest of the run, "
        "i.e. set-up, checkpoints, the card and plots). `load` reads and splits the data, `tokenize` loads the "
        "processor and encodes, `model` builds the checkpoint with its head, `features` fills or reads the frozen "
        "feature cache, `train` is the steps (and the probe fit), `validate` the evaluations during training, "
        "`final_eval` the best model on the full validation and test splits.",
        "",
        f"| {by or ''} | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
    ]
    for name, group in groups.items():
        parts = [sum(float(r.get(f"seconds.{p}") or 0.0) for r in group) for p in COST_PARTS]
        run = sum(float(r["run_seconds"]) for r in group)
        cells = [str(len(group)), *(f"{v:.0f}" for v in parts), f"{run - sum(parts):.0f}", f"{run:.0f}"]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def best_cells(study: Study, cells: list[dict[str, Any]], within: str | None) -> list[dict[str, Any]]:
    """For each value of the ``within`` axis (e.g. the data size), the cell with the best mean on validation; with
    ``within`` None, the one best cell of them all."""
    pick = max if study.direction == "maximize" else min
    groups: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        if cell["n"]:
            groups.setdefault(str(cell["labels"][within]) if within else "", []).append(cell)
    return [pick(group, key=lambda c: c["mean"]) for group in groups.values()]


def _best_per_group(study: Study, cells: list[dict[str, Any]]) -> list[str]:
    """'Which strategy at which size': picked on validation, its test mean shown beside."""
    kinds = {a.kind: a.name for a in study.axes if a.kind}
    if "data_size" not in kinds or len(cell_axes(study)) < 2:
        return []
    size = kinds["data_size"]
    out = ["", f"Best cell per `{size}`, chosen on `{study.metric}` (mean over seeds):", ""]
    for cell in best_cells(study, cells, size):
        shown = ", ".join(f"{k}={v}" for k, v in cell["labels"].items() if k != size)
        beside = f", {study.report} {_pm(cell['report_mean'], cell['report_std'], len(cell['reported']))}"
        out.append(
            f"- {size}={cell['labels'][size]}: {shown} ({study.metric} {cell['mean']:.4f}"
            + (beside if study.report else "")
            + ")"
        )
    return out


def _markdown(
    study: Study, rows: list[dict[str, Any]], cells: list[dict[str, Any]], plots: list[str], hidden: int = 0
) -> str:
    states = [r["state"] for r in rows]
    seeds = [a.name for a in study.axes if a.kind == "seed"]
    done = [r for r in rows if r["state"] == "COMPLETE" and r[study.metric] is not None]
    best = (max if study.direction == "maximize" else min)(done, key=lambda r: r[study.metric]) if done else None
    out = [f"# Study `{study.name}`", ""]
    if study.spec.description:
        out += [study.spec.description.strip(), ""]
    reported = f", reported beside on `{study.report}`" if study.report else ""
    out += [
        f"Base recipe `{os.path.relpath(study.recipe_file, study.folder)}`, {study.spec.search} search. "
        f"Selection on validation, report on test: every choice (best trial, best cell, the search) is made on "
        f"`{study.metric}` ({study.direction}){reported}, which chooses nothing. "
        f"Trials: {states.count('COMPLETE')} complete, "
        f"{states.count('FAIL')} failed, {states.count('PRUNED')} pruned, {states.count('RUNNING')} running, "
        f"{states.count('WAITING')} waiting.",
        "",
    ]
    if hidden:
        out += [
            f"{hidden} earlier trial(s) of points no longer in the grid are not shown (they stay in the storage).",
            "",
        ]
    if best:
        shown = ", ".join(f"{a.name}={best[a.name]}" for a in study.axes)
        beside = f"; {study.report} {_fmt(best.get(study.report))}" if study.report else ""
        out += [f"Best trial on validation: #{best['trial']} ({shown}): {best[study.metric]:.4f}{beside}.", ""]
    if study.spec.search == "grid":
        over = f"over seeds (`{'`, `'.join(seeds)}`)" if seeds else "(no seed axis: one trial per cell)"
        out += [f"Mean ± sample std {over}; n = completed trials / trials of the cell.", ""]
        names = cell_axes(study)
        columns = [*names, study.metric, *([study.report] if study.report else []), "n", "train s"]
        out += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(names) + "---:|" * (len(columns) - len(names))]
        for c in cells:
            values = [_pm(c["mean"], c["std"], c["n"])]
            if study.report:
                values.append(_pm(c["report_mean"], c["report_std"], len(c["reported"])))
            secs = f"{c['train_seconds']:.1f}" if c["n"] and not math.isnan(c["train_seconds"]) else "-"
            out.append(
                "| "
                + " | ".join([*(str(c["labels"][n]) for n in names), *values, f"{c['n']}/{c['total']}", secs])
                + " |"
            )
        out += _best_per_group(study, cells)
    else:
        columns = [a.name for a in study.axes] + [study.metric] + ([study.report] if study.report else [])
        out += [
            "| trial | " + " | ".join(columns) + " |",
            "|---:|" + "---|" * len(study.axes) + "---:|" * (len(columns) - len(study.axes)),
        ]
        for r in sorted(done, key=lambda r: r[study.metric], reverse=study.direction == "maximize")[:20]:
            out.append(
                f"| {r['trial']} | "
                + " | ".join(f"{r[a.name]:.4g}" if isinstance(r[a.name], float) else str(r[a.name]) for a in study.axes)
                + f" | {r[study.metric]:.4f}"
                + (f" | {_fmt(r.get(study.report))}" if study.report else "")
                + " |"
            )
    out += _cost_breakdown(study, rows)
    failed = [r for r in rows if r["state"] == "FAIL"]
    if failed:
        out += ["", "## Failed trials", "", "| trial | point | error |", "|---:|---|---|"]
        for r in failed:
            point = ", ".join(f"{a.name}={r[a.name]}" for a in study.axes)
            out.append(f"| {r['trial']} | {point} | {str(r['error']).replace('|', '/').splitlines()[0][:300]} |")
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    overhead = [r["overhead_seconds"] for r in rows if r["overhead_seconds"] is not None]
    out += [
        "",
        "## Notes",
        "",
        "- `train.seed` seeds the `data.max_train_samples` subset and the initialisation; it also seeds the "
        "carved validation/test split unless the study fixes `data.split_seed` (the shipped studies do).",
        "- Every number comes from `results.csv` (one row per trial; a trial whose worker died was run again "
        "and only its last attempt is listed). Study bookkeeping per trial (all but the run itself): "
        + (f"median {statistics.median(overhead):.3f} s." if overhead else "-"),
        f"- Rebuild: `hftl study {_from_here(study.file)} --report`. Browse: `optuna-dashboard {_shown_url(study)}`.",
        "",
    ]
    return "\n".join(out)


def _from_here(path: str | Path) -> str:
    """A path as typed from the folder the study runs in (the repository's root for the shipped studies):
    relative when below it, so a committed report names no machine's folders."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _shown_url(study: Study) -> str:
    """The storage URL for the report: a SQLite file relative to where the study runs (sqlite:///relative)."""
    url = study.storage_url
    return "sqlite:///" + _from_here(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else url

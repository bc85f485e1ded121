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

from hftl.analysis.study import Study

FIXED_COLUMNS = ("train_seconds", "run_seconds", "overhead_seconds", "attempts", "error", "dir")


def current_trials(ostudy: Any) -> list[Any]:
    """Every trial but those superseded by a retry (a trial whose worker died is queued again as a new trial)."""
    trials = ostudy.get_trials(deepcopy=False)
    superseded = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.number not in superseded]


def result_rows(study: Study, ostudy: Any) -> list[dict[str, Any]]:
    """One row per current trial: axis labels, state, metrics, times and error."""
    rows = []
    for t in sorted(current_trials(ostudy), key=lambda t: t.number):
        labels = t.user_attrs.get("hftl_labels") or dict(t.params)
        metrics = t.user_attrs.get("hftl_metrics") or {}
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update({axis.name: labels.get(axis.name) for axis in study.axes})
        row[study.metric] = metrics.get(study.metric, t.value if t.state.name == "COMPLETE" else None)
        row.update(
            {k: v for k, v in sorted(metrics.items()) if k.startswith(("test.", "validation.")) and k != study.metric}
        )
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
        from hftl.analysis.study_engine import _optuna, open_storage
        from hftl.config.errors import HftlError

        optuna = _optuna()
        try:
            ostudy = optuna.load_study(study_name=study.name, storage=open_storage(study))
        except KeyError:
            raise HftlError(
                f"{study.file}: the storage {study.storage_url} has no study '{study.name}' yet; "
                "run `hftl study` first."
            ) from None
    write_results(study, ostudy)
    rows = result_rows(study, ostudy)
    cells = cell_stats(study, rows)
    plots = write_plots(study, cells)
    path = study.folder / "report.md"
    path.write_text(_markdown(study, rows, cells, plots), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- statistics
def cell_axes(study: Study) -> list[str]:
    """The axes that define a cell: all but the seed axes (seeds are what mean ± std is over)."""
    return [a.name for a in study.axes if a.kind != "seed"]


def cell_stats(study: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, std and count of the metric per cell, in the order cells first appear (grid order)."""
    names = cell_axes(study)
    cells: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = tuple(str(row[n]) for n in names)
        cell = cells.setdefault(key, {"labels": {n: row[n] for n in names}, "values": [], "seconds": [], "total": 0})
        cell["total"] += 1
        if row["state"] == "COMPLETE" and row[study.metric] is not None:
            cell["values"].append(float(row[study.metric]))
            if row["train_seconds"] is not None:
                cell["seconds"].append(float(row["train_seconds"]))
    for cell in cells.values():
        values = cell["values"]
        cell["n"] = len(values)
        cell["mean"] = statistics.fmean(values) if values else math.nan
        cell["std"] = statistics.stdev(values) if len(values) > 1 else 0.0 if values else math.nan
        cell["train_seconds"] = statistics.fmean(cell["seconds"]) if cell["seconds"] else math.nan
    return list(cells.values())


def _num(label: Any) -> float | None:
    if isinstance(label, bool):
        return float(label)
    try:
        return float(label)
    except (TypeError, ValueError):
        return None


def _is_pretrained(label: Any) -> bool:
    return label is True or str(label).lower() in ("true", "1", "pretrained", "yes")


# --------------------------------------------------------------------------- plots
def write_plots(study: Study, cells: list[dict[str, Any]]) -> list[str]:
    """The plots the axes call for (data size, LR multiplier, transfer gain vs shift); returns their file names."""
    kinds = {a.kind: a.name for a in study.axes if a.kind}
    made = []
    if "data_size" in kinds:
        made.append(
            _line_plot(
                study, cells, kinds["data_size"], "metric_vs_data_size.png", log_x=True, xlabel="training examples"
            )
        )
    if "lr_multiplier" in kinds:
        made.append(
            _line_plot(
                study,
                cells,
                kinds["lr_multiplier"],
                "metric_vs_lr_multiplier.png",
                log_x=False,
                xlabel="body LR / head LR",
                categorical=True,
            )
        )
    if "pretrained" in kinds and "shift_severity" in kinds:
        made.append(_gain_plot(study, cells, kinds["pretrained"], kinds["shift_severity"]))
    return [m for m in made if m]


def _series(cells: list[dict[str, Any]], x_axis: str, skip: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    """Cells grouped into lines: one line per combination of the other cell axes."""
    lines: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        if cell["n"] == 0 or _num(cell["labels"][x_axis]) is None:
            continue
        name = ", ".join(f"{k}={v}" for k, v in cell["labels"].items() if k != x_axis and k not in skip) or "all"
        lines.setdefault(name, []).append(cell)
    return {k: sorted(v, key=lambda c: _num(c["labels"][x_axis])) for k, v in lines.items()}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    return plt, fig, ax


def _line_plot(
    study: Study,
    cells: list[dict[str, Any]],
    x_axis: str,
    name: str,
    log_x: bool,
    xlabel: str,
    categorical: bool = False,
) -> str | None:
    lines = _series(cells, x_axis)
    if not lines:
        return None
    plt, fig, ax = _figure()
    ticks = sorted({x for line in lines.values() for c in line if (x := _num(c["labels"][x_axis])) is not None})
    for label, line in lines.items():
        xs = [_num(c["labels"][x_axis]) for c in line]
        xs = [ticks.index(x) for x in xs] if categorical else xs
        ax.errorbar(xs, [c["mean"] for c in line], yerr=[c["std"] for c in line], marker="o", capsize=3, label=label)
    if categorical:  # LR multipliers include 0: evenly spaced, labelled ticks
        ax.set_xticks(range(len(ticks)), [f"{t:g}" for t in ticks])
    if log_x:  # ticks at the sizes run, written plainly (not 4x10^1)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(f"{xlabel} ({x_axis})")
    ax.set_ylabel(study.metric)
    ax.set_title(f"{study.name}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(study.folder / name)
    plt.close(fig)
    return name


def _gain_plot(study: Study, cells: list[dict[str, Any]], pretrained: str, severity: str) -> str | None:
    """Pretrained minus scratch per shift severity; error bars sqrt(std_p^2 + std_s^2)."""
    lines: dict[str, dict[float, dict[bool, dict[str, Any]]]] = {}
    for cell in cells:
        s = _num(cell["labels"][severity])
        if cell["n"] == 0 or s is None:
            continue
        name = ", ".join(f"{k}={v}" for k, v in cell["labels"].items() if k not in (pretrained, severity)) or "gain"
        lines.setdefault(name, {}).setdefault(s, {})[_is_pretrained(cell["labels"][pretrained])] = cell
    plt, fig, ax = _figure()
    drawn = False
    for name, by_severity in lines.items():
        pts = sorted((s, pair[True], pair[False]) for s, pair in by_severity.items() if True in pair and False in pair)
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1]["mean"] - p[2]["mean"] for p in pts],
                yerr=[math.hypot(p[1]["std"], p[2]["std"]) for p in pts],
                marker="o",
                capsize=3,
                label=name,
            )
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"shift severity ({severity})")
    ax.set_ylabel(f"transfer gain in {study.metric} (pretrained - scratch)")
    ax.set_title(f"{study.name}: transfer gain vs domain shift")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(study.folder / "transfer_gain_vs_shift.png")
    plt.close(fig)
    return "transfer_gain_vs_shift.png"


# --------------------------------------------------------------------------- markdown
def _markdown(study: Study, rows: list[dict[str, Any]], cells: list[dict[str, Any]], plots: list[str]) -> str:
    states = [r["state"] for r in rows]
    seeds = [a.name for a in study.axes if a.kind == "seed"]
    done = [r for r in rows if r["state"] == "COMPLETE" and r[study.metric] is not None]
    best = (max if study.direction == "maximize" else min)(done, key=lambda r: r[study.metric]) if done else None
    out = [f"# Study `{study.name}`", ""]
    if study.spec.description:
        out += [study.spec.description.strip(), ""]
    out += [
        f"Base recipe `{os.path.relpath(study.recipe_file, study.folder)}`, {study.spec.search} search, metric "
        f"`{study.metric}` ({study.direction}). Trials: {states.count('COMPLETE')} complete, "
        f"{states.count('FAIL')} failed, {states.count('RUNNING')} running, {states.count('WAITING')} waiting.",
        "",
    ]
    if best:
        shown = ", ".join(f"{a.name}={best[a.name]}" for a in study.axes)
        out += [f"Best trial: #{best['trial']} ({shown}): {best[study.metric]:.4f}.", ""]
    if study.spec.search == "grid":
        over = f"over seeds (`{'`, `'.join(seeds)}`)" if seeds else "(no seed axis: one trial per cell)"
        out += [f"Mean ± sample std {over}; n = completed trials / trials of the cell.", ""]
        names = cell_axes(study)
        out += [
            "| " + " | ".join([*names, study.metric, "n", "train s"]) + " |",
            "|" + "---|" * len(names) + "---:|---:|---:|",
        ]
        for c in cells:
            value = f"{c['mean']:.4f} ± {c['std']:.4f}" if c["n"] else "-"
            secs = f"{c['train_seconds']:.1f}" if c["n"] and not math.isnan(c["train_seconds"]) else "-"
            out.append(
                "| " + " | ".join([*(str(c["labels"][n]) for n in names), value, f"{c['n']}/{c['total']}", secs]) + " |"
            )
    else:
        out += [
            "| trial | " + " | ".join(a.name for a in study.axes) + f" | {study.metric} |",
            "|---:|" + "---|" * len(study.axes) + "---:|",
        ]
        for r in sorted(done, key=lambda r: r[study.metric], reverse=study.direction == "maximize")[:20]:
            out.append(
                f"| {r['trial']} | "
                + " | ".join(f"{r[a.name]:.4g}" if isinstance(r[a.name], float) else str(r[a.name]) for a in study.axes)
                + f" | {r[study.metric]:.4f} |"
            )
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
        f"- Rebuild: `hftl study {study.file} --report`. Browse: `optuna-dashboard {study.storage_url}`.",
        "",
    ]
    return "\n".join(out)

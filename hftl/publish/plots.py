"""Training-curve plots from a run folder's ``metrics.jsonl`` (PNG files; no display needed).

Two figures per run, both embedded in the model card:

- ``training_curves.png``: training loss and validation loss (left), validation
  metrics (right), over optimizer steps;
- ``learning_rates.png``: the learning rate of every layer group over steps,
  input groups in light colours and the head in dark, so layer-wise decay (a fan
  of lines) and progressive unfreezing (groups leaving zero one by one) show at
  a glance. LRs spanning more than a factor 5 are drawn on a symmetric-log axis
  (log above the smallest LR, linear down to 0) so every group stays readable.
  LRs are logged every ``train.log_steps``: a smaller value draws sharper steps.

A run with domain adaptation (``strategy.adaptation``) adds ``adaptation.png``: the task loss and the
method's term (CORAL distance, or DANN's domain loss) on the left, DANN's domain-classifier accuracy on
the right (0.5: the classifier cannot tell source from target features).

Dashed vertical lines mark the steps at which the strategy unfreezes groups.
Figures are built with :class:`matplotlib.figure.Figure` directly: no pyplot
state, no GUI backend, safe in worker processes and notebooks alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError
from hftl.config.run_folder import (
    CLASS_REPORT_FILE,
    FINAL_FILE,
    LABELS_FILE,
    PLAN_FILE,
    best_metric,
    read_json,
    read_log,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CURVES_PNG = "training_curves.png"
LR_PNG = "learning_rates.png"
CONFUSION_PNG = "confusion_matrix.png"
ADAPTATION_PNG = "adaptation.png"


def run_metric(run_dir: str | Path) -> str | None:
    """The metric that picked the best model (from ``metrics.json``), e.g. ``accuracy``."""
    return best_metric(read_json(run_dir, FINAL_FILE))


def stage_starts(run_dir: str | Path) -> dict[int, list[str]]:
    """Steps after 0 at which layer groups start training (from ``plan.json``): step -> group names."""
    plan = read_json(run_dir, PLAN_FILE)
    starts: dict[int, list[str]] = {}
    for group in plan.get("groups", []):
        if group.get("start_step"):
            starts.setdefault(group["start_step"], []).append(group["name"])
    return dict(sorted(starts.items()))


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``training_curves.png``, ``learning_rates.png`` and (single-label runs) ``confusion_matrix.png`` into
    the run folder; returns their paths."""
    import json

    run_dir = Path(run_dir)
    records = read_log(run_dir)
    title = run_dir.name
    figures = {
        CURVES_PNG: training_curves(records, run_metric(run_dir), stage_starts(run_dir), title),
        LR_PNG: learning_rates(records, _group_order(run_dir), stage_starts(run_dir), title),
    }
    reports = read_json(run_dir, CLASS_REPORT_FILE)
    split = next((s for s in ("test", "validation") if "confusion_matrix" in reports.get(s, {})), None)
    if split:
        labels = json.loads((run_dir / LABELS_FILE).read_text(encoding="utf-8"))
        figures[CONFUSION_PNG] = confusion_matrix(reports[split]["confusion_matrix"], labels, f"{title} ({split})")
    if any("adaptation" in r for r in records):
        figures[ADAPTATION_PNG] = adaptation_curves(records, title)
    paths = []
    for name, figure in figures.items():
        figure.savefig(run_dir / name, dpi=110)
        paths.append(run_dir / name)
    return paths


def training_curves(
    records: list[dict[str, Any]],
    metric: str | None = None,
    starts: dict[int, list[str]] | None = None,
    title: str = "",
) -> Figure:
    """Training loss + validation loss (left) and validation metrics (right) over optimizer steps."""
    from matplotlib.figure import Figure

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["validation"]) for r in records if "validation" in r]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    if train:
        loss_ax.plot(*zip(*train), label="training loss", color="tab:blue")
    val_loss = [(s, v["loss"]) for s, v in evals if "loss" in v]
    if val_loss:
        loss_ax.plot(*zip(*val_loss), "o-", label="validation loss", color="tab:orange")
    _finish(loss_ax, "loss", starts)
    names = [k for k in (evals[0][1] if evals else {}) if k != "loss"]
    names.sort(key=lambda k: k != metric)  # the selection metric first, in a bold line
    for name in names:
        points = [(s, v[name]) for s, v in evals if isinstance(v.get(name), (int, float))]
        if points:
            metric_ax.plot(
                *zip(*points), "o-", label=name, lw=2.2 if name == metric else 1.0, alpha=1.0 if name == metric else 0.6
            )
    _finish(metric_ax, f"validation {metric or 'metrics'}", starts)
    fig.suptitle(f"{title}: training curves" if title else "training curves")
    return fig


def learning_rates(
    records: list[dict[str, Any]],
    groups: list[str] | None = None,
    starts: dict[int, list[str]] | None = None,
    title: str = "",
) -> Figure:
    """The LR of every layer group over steps (input groups light, head dark)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    logged = [r for r in records if isinstance(r.get("lr"), dict)]
    names = list(groups or [])
    names += [g for r in logged for g in r["lr"] if g not in names]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis_r"]
    for i, name in enumerate(names):
        points = [(r["step"], r["lr"][name]) for r in logged if name in r["lr"]]
        if points:
            ax.plot(*zip(*points), label=name, color=cmap(0.15 + 0.85 * i / max(1, len(names) - 1)))
    _finish(ax, "learning rate", starts)
    positive = [lr for r in logged for lr in r["lr"].values() if lr > 0]
    if positive and max(positive) > 5 * min(positive):  # LRs over decades: log-like, with 0 (frozen) still shown
        ax.set_yscale("symlog", linthresh=min(positive))
        ax.set_ylim(0, 1.6 * max(positive))
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if ax.get_legend() is not None:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small", title="layer group (input → head)")
    fig.suptitle(f"{title}: learning rate per layer group" if title else "learning rate per layer group")
    return fig


def adaptation_curves(records: list[dict[str, Any]], title: str = "") -> Figure:
    """Domain adaptation over steps: task loss and the method's term (left), domain-classifier accuracy (right)."""
    from matplotlib.figure import Figure

    logged = [(r["step"], r["adaptation"]) for r in records if isinstance(r.get("adaptation"), dict)]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    task = [(step, a["task_loss"]) for step, a in logged if "task_loss" in a]
    if task:
        loss_ax.plot(*zip(*task), label="task loss (source)", color="tab:blue")
    domain = [(step, a["domain_loss"]) for step, a in logged if "domain_loss" in a]
    if domain:
        loss_ax.plot(*zip(*domain), label="domain loss (DANN)", color="tab:orange")
    coral = [(step, a["coral_distance"]) for step, a in logged if "coral_distance" in a]
    if coral:  # on its own axis: the distance is orders of magnitude below the task loss
        coral_ax = loss_ax.twinx()
        coral_ax.plot(*zip(*coral), color="tab:red")
        coral_ax.set_ylabel("CORAL distance (red)", color="tab:red")
    _finish(loss_ax, "loss", None)
    accuracy = [(step, a["domain_accuracy"]) for step, a in logged if "domain_accuracy" in a]
    if accuracy:
        acc_ax.plot(*zip(*accuracy), label="domain classifier accuracy", color="tab:purple")
        acc_ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance (domains indistinguishable)")
        acc_ax.set_ylim(0, 1.02)
        _finish(acc_ax, "domain accuracy (DANN)", None)
    else:
        acc_ax.set_axis_off()
    fig.suptitle(f"{title}: domain adaptation" if title else "domain adaptation")
    return fig


def compare_runs(
    run_dirs: dict[str, str | Path] | Iterable[str | Path], metric: str | None = None, path: str | Path | None = None
) -> Figure:
    """Validation ``metric`` over steps for several runs in one figure (saved to ``path`` when given).

    ``run_dirs`` is a list of run folders or a ``{label: run folder}`` mapping.
    """
    from matplotlib.figure import Figure

    labelled = dict(run_dirs) if isinstance(run_dirs, dict) else {Path(d).name: d for d in run_dirs}
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for label, run_dir in labelled.items():
        name = metric or run_metric(run_dir)
        points = [(r["step"], r["validation"][name]) for r in read_log(run_dir) if name in r.get("validation", {})]
        if not points:
            raise HftlError(f"{run_dir}: no validation '{name}' in metrics.jsonl to compare.")
        ax.plot(*zip(*points), "o-", label=label)
        metric = name
    _finish(ax, f"validation {metric}", None)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def confusion_matrix(matrix: list[list[int]], labels: list[str], title: str = "") -> Figure:
    """Counts of true (rows) against predicted (columns) classes, shaded by each true class's share."""
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=float)
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    side = min(12.0, 2.5 + 0.45 * len(labels))
    fig = Figure(figsize=(side, side), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 30:  # numbers stay readable
        for (i, j), n in np.ndenumerate(counts):
            ax.text(
                j,
                i,
                f"{int(n)}",
                ha="center",
                va="center",
                fontsize="small",
                color="white" if share[i, j] > 0.5 else "black",
            )
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(ticks, labels, fontsize="small")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix {title}".strip(), fontsize="medium")
    return fig


# --------------------------------------------------------------------------- helpers
def _finish(ax: Axes, ylabel: str, starts: dict[int, list[str]] | None) -> None:
    for step, names in (starts or {}).items():
        shown = ", ".join(names) if len(names) <= 2 else f"{len(names)} groups"
        ax.axvline(step, color="grey", ls="--", lw=0.8)
        ax.annotate(
            f"+{shown}",
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize="x-small",
            color="grey",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _group_order(run_dir: Path) -> list[str]:
    return [g["name"] for g in read_json(run_dir, PLAN_FILE).get("groups", [])]

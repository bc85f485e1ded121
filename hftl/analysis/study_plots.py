"""A study's plots, from its cells (:func:`hftl.analysis.study_report.cell_stats`): the metric against data size
or LR multiplier, and the transfer gain against domain shift, as the study's axes call for.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hftl.analysis.study import Study


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


def _plotted(study: Study, cells: list[dict[str, Any]]) -> tuple[str, str, str]:
    """(mean key, std key, label) the plots show: the reported metric when the cells have it, else the choosing one."""
    if study.report and any(c.get("reported") for c in cells):
        return "report_mean", "report_std", study.report
    return "mean", "std", study.metric


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
    mean, std, shown = _plotted(study, cells)
    plt, fig, ax = _figure()
    ticks = sorted({x for line in lines.values() for c in line if (x := _num(c["labels"][x_axis])) is not None})
    for label, line in lines.items():
        xs = [_num(c["labels"][x_axis]) for c in line]
        xs = [ticks.index(x) for x in xs] if categorical else xs
        ax.errorbar(xs, [c[mean] for c in line], yerr=[c[std] for c in line], marker="o", capsize=3, label=label)
    if categorical:  # LR multipliers include 0: evenly spaced, labelled ticks
        ax.set_xticks(range(len(ticks)), [f"{t:g}" for t in ticks])
    if log_x:  # ticks at the sizes run, written plainly (not 4x10^1)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel(f"{xlabel} ({x_axis})")
    ax.set_ylabel(shown)
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
    mean, std, shown = _plotted(study, cells)
    plt, fig, ax = _figure()
    drawn = False
    for name, by_severity in lines.items():
        pts = sorted((s, pair[True], pair[False]) for s, pair in by_severity.items() if True in pair and False in pair)
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1][mean] - p[2][mean] for p in pts],
                yerr=[math.hypot(p[1][std], p[2][std]) for p in pts],
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
    ax.set_ylabel(f"transfer gain in {shown} (pretrained - scratch)")
    ax.set_title(f"{study.name}: transfer gain vs domain shift")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(study.folder / "transfer_gain_vs_shift.png")
    plt.close(fig)
    return "transfer_gain_vs_shift.png"


def _num(label: Any) -> float | None:
    if isinstance(label, bool):
        return float(label)
    try:
        return float(label)
    except (TypeError, ValueError):
        return None


def _is_pretrained(label: Any) -> bool:
    return label is True or str(label).lower() in ("true", "1", "pretrained", "yes")

"""``hftl advise``'s printed report: the measurements, the table with the branch taken, the advice."""

from __future__ import annotations

from hftl.analysis.advice_rules import (
    LADDER,
    describe_table,
)
from hftl.analysis.advise.measure import FOLDS, Advice


def format_advice(advice: Advice) -> str:
    """What ``hftl advise`` prints: measurements, the table and the branch taken, the recommendation, times."""
    d, data, f = advice.decision, advice.data, advice.features
    splits = ", ".join(f"{k} {v:,}" for k, v in data["splits"].items())
    top = list(data["per_class"].items())
    classes = ", ".join(f"{k} {v:,}" for k, v in top[:12]) + (f" ... ({len(top)} in all)" if len(top) > 12 else "")
    lines = [
        "== data",
        f"  examples: {splits}",
        f"  per class in train ({data['per_class_unit']}): {classes}",
        f"  majority class {data['majority_class']!r}: {data['majority']:.3f} of train; balance (rarest / "
        f"commonest) {data['balance']:.3f}",
    ]
    if "tokens" in data:
        t = data["tokens"]
        lines.append(
            f"  input tokens: median {t['median']:g}, 95th percentile {t['p95']:g}, max {t['max']} "
            f"({t['cut_at_max_length']:.1%} cut at data.max_length)"
        )
    if "image_sizes" in data:
        lines.append(
            f"  image sizes (w x h, of {data['image_sizes']['checked']} checked): "
            + ", ".join(f"{k} x{v}" for k, v in data["image_sizes"]["common"].items())
        )
    lines += [
        "== frozen checkpoint (linear probe on the head's input; "
        f"{f['sampled']:,} training examples, {FOLDS}-fold cross-validation)",
        f"  LogME {f['logme']:.4f} (same features, labels shuffled: {f['logme_shuffled']:.4f}; higher is better)",
        f"  linear probe accuracy {f['probe_cv_accuracy']:.3f}   majority class {f['majority_cv_accuracy']:.3f}",
        f"  constant over the examples: {f['constant_share']:.1%} of the {f['dim']:,} feature dimensions",
        f"  no-transfer baseline: {f['baseline']}: "
        + (f"{f['baseline_cv_accuracy']:.3f}" if f["baseline_cv_accuracy"] is not None else "-"),
    ]
    if advice.estimates:
        e = advice.estimates
        lines.append(
            f"  step time (forward + backward, batch {advice.batch_size}): full "
            f"{e['step_seconds_full']:.2f} s, bottom half frozen {e['step_seconds_partial']:.2f} s"
        )
    lines += [
        "== decision table (rows: training examples; columns: what the frozen features do)",
        describe_table(),
        f"  branch: {d.branch} -> {d.rung.label} ({d.why})",
        f"  runner-up: {d.runner_up.label}",
    ]
    lines += [f"  warning: {flag}" for flag in d.flags]
    lines += ["== recommended recipe keys", *(f"  {k}: {v}" for k, v in advice.settings.items())]
    if advice.estimates:
        lines.append(
            "== estimated training time on this machine: "
            + ", ".join(f"{r.label} {_duration(advice.estimates[r.label])}" for r in LADDER)
        )
    lines.append(
        f"(measured in {advice.seconds:.0f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in advice.timings.items()) + ")"
    )
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

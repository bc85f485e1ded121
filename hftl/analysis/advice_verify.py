"""``hftl advise --verify``: a small study of the recommended strategy against its neighbours and the
table's runner-up, chosen on validation (the test metric printed beside, never compared).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from hftl.analysis.advice_rules import contenders as verify_contenders
from hftl.analysis.advice_rules import (
    rung_settings,
)
from hftl.analysis.advise.decide import recommended_recipe
from hftl.analysis.advise.measure import Advice


def verify(
    recipe_file: str,
    overrides: list[str],
    advice: Advice,
    folder: Path,
    seeds: int = 1,
    max_steps: int | None = None,
    max_eval: int = 500,
) -> tuple[bool, str]:
    """Run the recommended rung against its ladder neighbours as an hftl study; (advice held, report text).

    Held: the recommended strategy's mean metric is within one standard error of the best mean (or the best).
    """
    import csv

    import yaml

    from hftl.analysis.study import load_study
    from hftl.analysis.study_engine import run_study

    folder.mkdir(parents=True, exist_ok=True)
    base = recommended_recipe(recipe_file, overrides, advice)
    base["output"] = {k: v for k, v in (base.get("output") or {}).items() if k not in ("dir", "overwrite")}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    n, batch = advice.data["n_train"], base.get("train", {}).get("batch_size", 32)
    images = "image_sizes" in advice.data
    pooling = (base.get("model") or {}).get("pooling")
    contenders = verify_contenders(advice.decision)
    fixed: dict[str, Any] = {"data.max_eval_samples": max_eval}
    if max_steps:
        fixed.update({"train.max_steps": max_steps, "train.min_steps": 0})
    study = {
        "description": f"hftl advise --verify: {advice.decision.rung.label} vs its neighbours and runner-up",
        "recipe": "recipe.yaml",
        "overrides": fixed,
        "axes": {
            "strategy": [{"label": r.label, "set": rung_settings(r, n, batch, images, pooling)} for r in contenders],
            "train.seed": list(range(seeds)),
        },
    }
    path = folder / "verify-study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    study_obj = load_study(path)
    run_study(path)
    with open(folder / "verify-study" / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    metric, report = study_obj.metric, study_obj.report  # chosen on validation, test reported beside
    scores: dict[str, list[float]] = {r.label: [] for r in contenders}
    reported: dict[str, list[float]] = {r.label: [] for r in contenders}
    for row in rows:
        if row["state"] == "COMPLETE" and row[metric] not in ("", None):
            scores[row["strategy"]].append(float(row[metric]))
            if report and row.get(report) not in ("", None):
                reported[row["strategy"]].append(float(row[report]))
    means = {k: statistics.mean(v) for k, v in scores.items() if v}
    if advice.decision.rung.label not in means:
        return False, f"the recommended strategy's trials failed; see {folder / 'verify-study' / 'report.md'}"
    mine = scores[advice.decision.rung.label]
    sem = statistics.stdev(mine) / math.sqrt(len(mine)) if len(mine) > 1 else 0.0
    best = max(means, key=means.get)  # type: ignore[arg-type]
    held = means[advice.decision.rung.label] >= means[best] - sem
    lines = [
        f"== verify (chosen on {metric}"
        + (f", {report} reported beside and never used to choose" if report else "")
        + f"; mean over {seeds} seed(s); study in {folder / 'verify-study'})"
    ]
    lines += [
        f"  {label:<20} {metric} {means[label]:.4f}"
        + (f"  {report} {statistics.mean(reported[label]):.4f}" if reported.get(label) else "")
        + ("  (recommended)" if label == advice.decision.rung.label else "")
        + ("  (best on validation)" if label == best else "")
        for label in means
    ]
    lines.append(
        f"  advice {'held' if held else 'did NOT hold'}: recommended {advice.decision.rung.label} "
        f"{means[advice.decision.rung.label]:.4f} vs best {best} {means[best]:.4f} ({metric})"
    )
    return held, "\n".join(lines)

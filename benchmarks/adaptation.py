"""Domain adaptation: source only vs DANN vs CORAL on one shift recipe, mean ± std over seeds.

    python benchmarks/adaptation.py                         # seeds 0,1,2; 1 thread; recipes/mnist-to-digits.yaml
    python benchmarks/adaptation.py --seeds 0 --methods source,dann
    python benchmarks/adaptation.py --recipe recipes/bbc-bodies-to-titles.yaml --threads 2 --methods source
    python benchmarks/adaptation.py --recipe recipes/bbc-bodies-to-titles.yaml --report   # table from the JSON

Two shifts ship: MNIST -> scikit-learn 8x8 digits (a small ResNet from random weights, 3,500 labeled MNIST
digits; target_test 539 of the 1,797 8x8 digits, never seen with labels, the other 1,258 the unlabeled
target) and BBC News article bodies -> headlines of other articles (all-MiniLM-L6-v2; docs/adaptation_text.md).
The seed also re-draws the source splits and the target's labeled / unlabeled halves. Results go to one JSON
per recipe (``docs/adaptation.json`` for MNIST, ``docs/adaptation-<recipe>.json`` otherwise); a run replaces
its (method, seed) row and keeps the others, so a benchmark split over several calls adds up to one file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "mnist-to-digits.yaml"
METHODS = {
    "source": [],
    "dann": ["strategy.adaptation={method: dann}"],
    "coral": ["strategy.adaptation={method: coral}"],
}


def default_out(recipe: Path) -> Path:
    """The results file of a recipe: the MNIST one keeps its first name, docs/adaptation.json."""
    name = "adaptation" if recipe.stem == "mnist-to-digits" else f"adaptation-{recipe.stem}"
    return ROOT / "docs" / f"{name}.json"


def target_majority(recipe: Any) -> float:
    """Share of the most common class in the run's labeled target_test (the carve hftl itself makes)."""
    from hftl.config.registry import TASKS
    from hftl.tasks.common import column
    from hftl.training.adaptation import target_splits

    task = TASKS.get(recipe.task)
    _, test = target_splits(recipe, task)
    labels = test[column(recipe.data, task.roles, "label")]
    return max(Counter(labels).values()) / len(labels)


def adaptation_log(run_dir: Path) -> list[dict[str, Any]]:
    """The run's adaptation terms per log line (task loss, CORAL distance or DANN domain loss and accuracy)."""
    from hftl.config.run_folder import read_log

    return [{"step": r["step"], **r["adaptation"]} for r in read_log(run_dir) if "adaptation" in r]


def measure(recipe_path: Path, seed: int, method: str, threads: int, extra: list[str], tmp: str) -> dict[str, Any]:
    """One run of ``method`` at ``seed``: source and target test accuracy, the baseline, the adaptation log."""
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    recipe = load_recipe(
        recipe_path,
        [
            f"train.seed={seed}",
            f"train.num_threads={threads}",
            f"output.dir={tmp}/run",
            "output.overwrite=true",
            *METHODS[method],
            *extra,
        ],
    )
    started = time.perf_counter()
    m = run(recipe).metrics
    return {
        "method": method,
        "seed": seed,
        "validation": m["validation"]["accuracy"],
        "test": m["test"]["accuracy"],
        "target_test": m["target_test"]["accuracy"],
        "target_test_majority": target_majority(recipe),
        "best_step": m["best_step"],
        "steps": m["steps"],
        "train_seconds": m["train_seconds"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "adaptation_log": adaptation_log(Path(tmp) / "run"),
    }


def report(rows: list[dict[str, Any]]) -> str:
    """The markdown table: per method, source and target test accuracy (mean ± std over seeds), the baseline."""

    def fmt(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}"

    lines = [
        "| method | seeds | source test | target_test | target_test majority class | train s (median) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        cell = sorted((r for r in rows if r["method"] == method), key=lambda r: r["seed"])
        majority = [r["target_test_majority"] for r in cell if "target_test_majority" in r]
        lines.append(
            f"| {method} | {','.join(str(r['seed']) for r in cell)} | {fmt([r['test'] for r in cell])} "
            f"| {fmt([r['target_test'] for r in cell])} | {fmt(majority) if majority else 'n/a'} "
            f"| {statistics.median(r['train_seconds'] for r in cell):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="a recipe with data.target (labeled test part)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="source,dann,coral")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: one per recipe, in docs/)")
    parser.add_argument("--report", action="store_true", help="print the table of the results JSON; run nothing")
    args = parser.parse_args()
    out = args.out or default_out(args.recipe)
    rows: list[dict[str, Any]] = json.loads(out.read_text()) if out.exists() else []
    if not args.report:
        with tempfile.TemporaryDirectory() as tmp:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for method in args.methods.split(","):
                    row = measure(args.recipe, seed, method, args.threads, args.extra, tmp)
                    rows = [r for r in rows if (r["method"], r["seed"]) != (method, seed)] + [row]
                    print(json.dumps({k: v for k, v in row.items() if k != "adaptation_log"}), file=sys.stderr)
                    out.write_text(json.dumps(sorted(rows, key=lambda r: (r["seed"], r["method"])), indent=1))
    print(report(rows))


if __name__ == "__main__":
    main()

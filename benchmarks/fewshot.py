"""Few-shot sentiment on a real checkpoint: prototypes vs the L-BFGS linear probe at K examples per class.

    python benchmarks/fewshot.py                        # K = 8, 16; seeds 0, 1, 2; 1 thread
    python benchmarks/fewshot.py --shots 4,8 --seeds 0,1 --out docs/fewshot.json

all-MiniLM-L6-v2 (offline, mean pooling as the checkpoint was trained) on Rotten Tomatoes
(``recipes/sentiment.yaml``: split by movie, seed = ``train.seed``, so each seed also re-draws the
validation/test split and the K-shot training set). Both strategies keep the body frozen and run on
the feature cache. ``prototypes`` uses no validation data; ``feature_extraction`` picks its L2 on the
full validation split (about 1,200 labeled snippets), an advantage a real few-shot user would not
have. The report is mean ± std over seeds of test accuracy and macro F1, with the test majority rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "sentiment.yaml"
STRATEGIES = {
    "prototypes": ["strategy.name=prototypes"],
    "linear probe (L-BFGS, L2 on validation)": ["strategy.name=feature_extraction"],
}


def measure(shots: int, seed: int, overrides: list[str], threads: int, out: Path) -> dict:
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    recipe = load_recipe(
        RECIPE,
        [
            f"data.shots={shots}",
            f"train.seed={seed}",
            "train.epochs=1",
            "train.min_steps=0",
            f"train.num_threads={threads}",
            f"output.dir={out}",
            "output.overwrite=true",
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = run(recipe)
    test = result.metrics["test"]
    return {
        "accuracy": test["accuracy"],
        "f1_macro": test["f1_macro"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "test_examples": result.metrics["examples"]["test"],
    }


def majority(seed: int) -> float:
    """The test split's majority-class rate for this seed's carve."""
    from collections import Counter

    from hftl.config.recipe import load_recipe
    from hftl.tasks import TASKS

    recipe = load_recipe(RECIPE, [f"train.seed={seed}"])
    labels = TASKS.get(recipe.task).load_splits(recipe)["test"]["label"]
    return max(Counter(labels).values()) / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", default="8,16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "fewshot.json")
    args = parser.parse_args()
    import os
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(s) for s in args.shots.split(",")]:
            for seed in seeds:
                for label, overrides in STRATEGIES.items():
                    row = {
                        "shots": k,
                        "seed": seed,
                        "strategy": label,
                        **measure(k, seed, overrides, args.threads, Path(tmp) / "run"),
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    baseline = {seed: majority(seed) for seed in seeds}
    args.out.write_text(json.dumps({"rows": rows, "majority": baseline}, indent=1))
    print(
        "| K per class | strategy | test accuracy | macro F1 | wall s (one run) |\n| ---: | --- | ---: | ---: | ---: |"
    )
    for k in sorted({r["shots"] for r in rows}):
        for label in STRATEGIES:
            cell = [r for r in rows if r["shots"] == k and r["strategy"] == label]
            acc, f1 = [r["accuracy"] for r in cell], [r["f1_macro"] for r in cell]
            print(
                f"| {k} | {label} | {statistics.mean(acc):.3f} ± {statistics.stdev(acc) if len(acc) > 1 else 0:.3f} "
                f"| {statistics.mean(f1):.3f} ± {statistics.stdev(f1) if len(f1) > 1 else 0:.3f} "
                f"| {statistics.median(r['wall_seconds'] for r in cell):.0f} |"
            )
    print(f"\ntest majority rate per seed: {', '.join(f'{s}: {m:.3f}' for s, m in baseline.items())}")


if __name__ == "__main__":
    main()

"""Domain adaptation MNIST -> scikit-learn digits: source only vs DANN vs CORAL, mean ± std over seeds.

    python benchmarks/adaptation.py                         # seeds 0,1,2; 1 thread; recipes/mnist-to-digits.yaml
    python benchmarks/adaptation.py --seeds 0 --methods source,dann

Each run trains the recipe's small ResNet from random weights on the MNIST source (3,500 labeled digits)
and scores the MNIST test split (1,000) and the labeled target_test (539 of the 1,797 8x8 digits, never
seen with labels; the other 1,258 are the unlabeled target). The seed also re-draws the splits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "mnist-to-digits.yaml"
METHODS = {
    "source": [],
    "dann": ["strategy.adaptation={method: dann}"],
    "coral": ["strategy.adaptation={method: coral}"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="source,dann,coral")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "adaptation.json")
    args = parser.parse_args()
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in args.methods.split(","):
                recipe = load_recipe(
                    RECIPE,
                    [
                        f"train.seed={seed}",
                        f"train.num_threads={args.threads}",
                        f"output.dir={tmp}/run",
                        "output.overwrite=true",
                        *METHODS[method],
                        *args.extra,
                    ],
                )
                started = time.perf_counter()
                m = run(recipe).metrics
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "test": m["test"]["accuracy"],
                        "target_test": m["target_test"]["accuracy"],
                        "train_seconds": m["train_seconds"],
                        "wall_seconds": round(time.perf_counter() - started, 1),
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                args.out.write_text(json.dumps(rows, indent=1))
    print("| method | MNIST test | digits target_test | train s (median) |\n| --- | ---: | ---: | ---: |")
    for method in dict.fromkeys(r["method"] for r in rows):
        cell = [r for r in rows if r["method"] == method]
        fmt = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.3f}"  # noqa: E731
        print(
            f"| {method} | {fmt([r['test'] for r in cell])} | {fmt([r['target_test'] for r in cell])} "
            f"| {statistics.median(r['train_seconds'] for r in cell):.0f} |"
        )


if __name__ == "__main__":
    main()

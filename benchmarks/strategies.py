"""Transfer strategies compared on a real checkpoint and real data, as a markdown table (issue 3).

    python benchmarks/strategies.py                     # 1000 and 4000 training examples, 1 thread
    python benchmarks/strategies.py --sizes 500,2000 --threads 2

all-MiniLM-L6-v2 (offline) on the Rotten Tomatoes snippets (fresh vs rotten, split by movie),
starting from ``recipes/sentiment.yaml``: one epoch, 64 tokens, batch 16, 500 validation and 500
test snippets, seed 42. Every strategy uses body LR 1e-4 and head LR 1e-3 (linear schedule, 6 %
warmup) except feature extraction, whose head alone trains at 1e-2 as linear probes usually do.
(Measured first: 500 examples, one epoch, the recipe's LRs 5e-5 / 5e-4 at batch 32 or 1e-4 / 1e-3
at batch 16 leave every strategy at the majority class, hence 1000 and 4000 by default.) One run
per cell, no repeats: differences of a point or two are noise (500 test examples: standard
error about 2 points).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "sentiment.yaml"
BATCH = 16
LR, HEAD_LR = "1e-4", "1e-3"


def strategies(n_train: int) -> dict[str, list[str]]:
    """Strategy label -> recipe overrides. Progressive unfreezes one group of the 8-group body every
    tenth of the run (one epoch is all there is), so the whole body trains for the last fifth."""
    every = max(1, math.ceil(n_train / BATCH) // 10)
    return {
        "feature extraction (head LR 1e-2)": ["strategy.name=feature_extraction", "optim.head_lr=1e-2"],
        "partial (bottom half frozen)": ["strategy.name=partial", "strategy.partial={freeze_fraction: 0.5}"],
        "full": ["strategy.name=full"],
        "full + LLRD 0.8": ["strategy.name=full", "strategy.llrd={decay: 0.8}"],
        f"progressive (1 group / {every} steps)": [
            "strategy.name=progressive",
            f"strategy.progressive={{unit: step, every: {every}}}",
        ],
    }


def measure(n_train: int, overrides: list[str], threads: int, out: Path) -> dict:
    """Train one recipe in this process; test scores, train seconds and wall seconds (data + model + eval)."""
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    recipe = load_recipe(
        RECIPE,
        [
            f"data.max_train_samples={n_train}",
            "data.max_eval_samples=500",
            "train.epochs=1",
            f"train.batch_size={BATCH}",
            f"optim.lr={LR}",
            f"optim.head_lr={HEAD_LR}",
            f"train.num_threads={threads}",
            f"output.dir={out}",
            "output.overwrite=true",
            *overrides,
        ],
    )  # the strategy's overrides come last and win
    started = time.perf_counter()
    result = run(recipe)
    return {
        "accuracy": result.metrics["test"]["accuracy"],
        "f1_macro": result.metrics["test"]["f1_macro"],
        "train_seconds": result.metrics["train_seconds"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,4000", help="training-set sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hftl-strategies-") as work:
        import hftl.training.feature_cache

        # A cold feature cache for every run: extracting the features is part of feature extraction's cost.
        hftl.training.feature_cache.cache_dir = lambda: Path(tempfile.mkdtemp(dir=work, prefix="features-"))
        for n_train in (int(s) for s in args.sizes.split(",")):
            for label, overrides in strategies(n_train).items():
                scores = measure(n_train, overrides, args.threads, Path(work) / "run")
                rows.append({"train examples": n_train, "strategy": label, **scores})
                print(f"[bench] {n_train} {label}: {scores}", file=sys.stderr, flush=True)
    print(f"\nall-MiniLM-L6-v2 on Rotten Tomatoes, 1 epoch, {args.threads} thread(s); test = 500 snippets\n")
    print("| train examples | strategy | test accuracy | test macro-F1 | train time (s) | wall time (s) |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['train examples']} | {r['strategy']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | "
            f"{r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a study costs beyond its trials' training: validation, storage, bookkeeping, report.

    PYTHONPATH=. python benchmarks/study_overhead.py [--points 8] [--threads 1]

Runs a grid of tiny-BERT trials (2 optimizer steps each, so the numbers are the fixed costs)
in one process and prints, per trial: the study engine's bookkeeping (pop, heartbeat, recipe
build, storage writes, results.csv, pruning the trial folder: everything but ``hftl.training.train.run``),
the run's own fixed costs (``hftl.training.train.run`` minus its training loop), and the training loop.
Also: validating the shipped sentiment study (every trial's recipe), and ``--report`` from storage.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def tiny_setup(folder: Path) -> Path:
    """The tests' tiny random BERT and toy reviews, and a recipe on them."""
    import yaml
    from conftest import save_tiny_bert, write_reviews_csv

    model_dir = save_tiny_bert(folder / "tiny-bert")
    write_reviews_csv(folder / "reviews.csv")
    recipe = {
        "name": "toy",
        "task": "text-classification",
        "model": {"checkpoint": str(model_dir)},
        "data": {
            "source": str(folder / "reviews.csv"),
            "group_column": "movie",
            "max_length": 16,
            "max_eval_samples": 32,
        },
        "optim": {"lr": 2e-3, "warmup_ratio": 0.0},
        "train": {"max_steps": 2, "eval_steps": 2, "batch_size": 8},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=8, help="grid points (seeds x 2 strategies)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.update(
        OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    import yaml

    from hftl.analysis.study import load_study, report_study, run_study

    started = time.perf_counter()
    n_recipes = len(load_study(ROOT / "studies" / "sentiment-strategies.yaml").points)
    validate = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tiny_setup(folder)
        study = folder / "bench.yaml"
        study.write_text(
            yaml.safe_dump(
                {
                    "recipe": "recipe.yaml",
                    "axes": {
                        "strategy.name": ["full", "feature_extraction"],
                        "train.seed": list(range(max(1, args.points // 2))),
                    },
                }
            )
        )
        started = time.perf_counter()
        run_study(study)
        total = time.perf_counter() - started
        started = time.perf_counter()
        report_study(study)
        report = time.perf_counter() - started
        with open(folder / "bench" / "results.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
    col = {k: [float(r[k]) for r in rows] for k in ("overhead_seconds", "run_seconds", "train_seconds")}
    fixed = [r - t for r, t in zip(col["run_seconds"], col["train_seconds"])]
    med = statistics.median
    print(f"\n{len(rows)} trials in {total:.1f} s ({total / len(rows):.2f} s a trial, first one pays the imports)")
    print(
        f"  study bookkeeping per trial (all but hftl.training.train.run): "
        f"median {med(col['overhead_seconds']):.3f} s, "
        f"max {max(col['overhead_seconds']):.3f} s"
    )
    print(f"  hftl.training.train.run fixed costs (run minus training loop):  median {med(fixed):.2f} s")
    print(f"  training loop (2 steps + validation):                   median {med(col['train_seconds']):.2f} s")
    print(f"  validating studies/sentiment-strategies.yaml ({n_recipes} recipes): {validate:.2f} s")
    print(f"  --report from storage (csv, markdown, plots): {report:.2f} s")


if __name__ == "__main__":
    main()

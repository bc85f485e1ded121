"""Few-shot text on a real checkpoint: SetFit vs prototypes vs the L-BFGS probe vs full fine-tuning, K per class.

    python benchmarks/fewshot.py                              # Rotten Tomatoes, K = 8, 16; seeds 0, 1, 2; 2 threads
    python benchmarks/fewshot.py --dataset bbc-news --methods setfit,prototypes
    python benchmarks/fewshot.py --shots 32,64                # adds rows to the same results file
    python benchmarks/fewshot.py --report                     # the markdown table from the results file only

all-MiniLM-L6-v2 (offline, mean pooling as the checkpoint was trained) on Rotten Tomatoes
(``recipes/sentiment.yaml``: split by movie, 64 tokens) or BBC News (the same recipe with ``data.source=bbc-news``,
no groups, 64 tokens: the title and first lines of each article); the seed = ``train.seed`` re-draws the
validation/test split and the K-shot training set. What a few-shot user has is K labeled examples per class and
nothing else, so *no* method uses the validation split for any choice (it is scored, never read): every knob is
fixed beforehand.

- ``setfit``: the strategy's defaults (the setfit paper's 20 iterations of pairs, 1 epoch, body LR 2e-5, batch 16;
  head: setfit's scikit-learn LogisticRegression, C = 1, on the unit-length embeddings the checkpoint's Normalize
  module gives).
- ``prototypes``: cosine nearest class mean of the frozen body's features (no knob).
- ``probe``: ``feature_extraction``, L-BFGS head at the fixed L2 10 (the best fixed value at 100 snippets in
  benchmarks/small_data), head LR 1e-12 in the loop so the L-BFGS head is the model.
- ``full``: full fine-tuning for a fixed 50 steps of batch 16 (LR 5e-5 body, 5e-4 head, linear decay, 6%
  warmup), evaluated once at the end (the last model is the model).

Results: one row per (K, seed, method) in ``--out`` (JSON, rows already there are skipped, so the script is
restartable and extendable), and the table in the markdown file next to it.
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
NOTES = "<!-- notes: written by hand, kept by the script -->"
DATASETS = {
    "rotten-tomatoes": [],
    "bbc-news": ["data.source=bbc-news", "data.group_column=null"],
}
ONCE = ["train.min_steps=0", "train.epochs=1"]
METHODS = {
    "setfit": ["strategy.name=setfit", *ONCE],
    "prototypes": ["strategy.name=prototypes", *ONCE],
    "probe": ["strategy.name=feature_extraction", "strategy.feature_extraction.l2=10", "optim.head_lr=1e-12", *ONCE],
    "full": [
        "strategy.name=full",
        "train.batch_size=16",
        "train.max_steps=50",
        "train.min_steps=0",
        "train.eval_steps=50",
        "optim.lr=5e-5",
        "optim.head_lr=5e-4",
    ],
}


def measure(dataset: str, shots: int, seed: int, overrides: list[str], threads: int, out: Path) -> dict:
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    recipe = load_recipe(
        RECIPE,
        [
            f"data.shots={shots}",
            f"train.seed={seed}",
            f"train.num_threads={threads}",
            f"output.dir={out}",
            "output.overwrite=true",
            *DATASETS[dataset],
            *overrides,
        ],
    )
    started = time.perf_counter()
    result = run(recipe)
    test = result.metrics["test"]
    row = {
        "accuracy": test["accuracy"],
        "f1_macro": test["f1_macro"],
        "validation_accuracy": result.metrics["validation"]["accuracy"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "test_examples": result.metrics["examples"]["test"],
    }
    tuning = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "body_tuning" in line]
    if tuning:
        t = tuning[0]["body_tuning"]
        row["body"] = {k: t[k] for k in ("pairs", "body_steps", "seconds", "first_loss", "last_loss") if k in t}
    return row


def majority(dataset: str, seed: int) -> float:
    """The test split's majority-class rate for this seed's carve."""
    from collections import Counter

    from hftl.config.recipe import load_recipe
    from hftl.tasks import TASKS

    recipe = load_recipe(RECIPE, [f"train.seed={seed}", *DATASETS[dataset]])
    labels = TASKS.get(recipe.task).load_splits(recipe)["test"]["label"]
    return max(Counter(labels).values()) / len(labels)


def _ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def report(results: dict) -> str:
    lines = []
    for dataset in DATASETS:
        rows = [r for r in results["rows"] if r.get("dataset", "rotten-tomatoes") == dataset]
        if not rows:
            continue
        base = {int(k): v for k, v in results["majority"][dataset].items()}
        lines += [
            f"\n### {dataset}\n",
            "| K per class | method | test accuracy | macro F1 | per seed (test accuracy) | min - majority | wall s |",
            "| ---: | --- | ---: | ---: | --- | ---: | ---: |",
        ]
        for k in sorted({r["shots"] for r in rows}):
            for method in METHODS:
                cell = sorted((r for r in rows if r["shots"] == k and r["method"] == method), key=lambda r: r["seed"])
                if not cell:
                    continue
                margin = min(r["accuracy"] - base[r["seed"]] for r in cell)
                lines.append(
                    f"| {k} | {method} | {_ms([r['accuracy'] for r in cell])} | {_ms([r['f1_macro'] for r in cell])} "
                    f"| {' / '.join(format(r['accuracy'], '.3f') for r in cell)} | {margin:+.3f} "
                    f"| {statistics.median(r['wall_seconds'] for r in cell):.0f} |"
                )
        lines.append(
            "\nTest majority-class rate per seed: " + ", ".join(f"{s}: {m:.3f}" for s, m in sorted(base.items()))
        )
    return "\n".join(lines).lstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="rotten-tomatoes", choices=list(DATASETS))
    parser.add_argument("--shots", default="8,16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "studies" / "fewshot_setfit.json")
    parser.add_argument("--report", action="store_true", help="only print the table of the results file")
    args = parser.parse_args()
    import os
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": [], "majority": {}}
    majorities = results["majority"].setdefault(args.dataset, {})
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.report:
        with tempfile.TemporaryDirectory() as tmp:
            for k in [int(s) for s in args.shots.split(",")]:
                for seed in seeds:
                    for method in args.methods.split(","):
                        done = {(r["dataset"], r["shots"], r["seed"], r["method"]) for r in results["rows"]}
                        if (args.dataset, k, seed, method) in done:
                            continue
                        row = {
                            "dataset": args.dataset,
                            "shots": k,
                            "seed": seed,
                            "method": method,
                            **measure(args.dataset, k, seed, METHODS[method], args.threads, Path(tmp) / "run"),
                            "load": Path("/proc/loadavg").read_text().split()[:3],
                        }
                        results["rows"].append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        for s in seeds:
                            if str(s) not in majorities:
                                majorities[str(s)] = majority(args.dataset, s)
                        args.out.parent.mkdir(parents=True, exist_ok=True)
                        args.out.write_text(json.dumps(results, indent=1))
    table = report(results)
    md = args.out.with_suffix(".md")
    notes = md.read_text().partition(NOTES)[2] if md.is_file() else ""  # the hand-written reading below it is kept
    md.write_text(
        "<!-- generated by: python benchmarks/fewshot.py (see its docstring); do not edit above the notes -->\n\n"
        + table
        + "\n\n"
        + NOTES
        + notes
    )
    print(table)


if __name__ == "__main__":
    main()

"""What a study trial pays for writing what it then deletes: resumable states and the model card, side by side.

    PYTHONPATH=. python benchmarks/trial_output.py [--rounds 2] [--size 100] [--strategy full]

One trial of studies/sentiment-strategies.yaml (MiniLM on Rotten Tomatoes; its overrides taken from the study file:
bf16, at least 100 steps, 4 evaluations on 500 validation snippets; seed 0) run as a plain ``hftl run`` writes it (a
resumable state at each evaluation, the card and its plots) and as ``hftl study`` now runs a trial that keeps no
model (``hftl.analysis.study_engine.TRIAL_OUTPUT``: ``output.resumable=false``, ``output.card=false``), alternating
the two in rounds in one process so that a change of machine speed hits both alike. Prints each run's seconds (the
whole ``run()``), the median per variant, the saving, and checks that the two train to the same test accuracy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=100, help="one of the study's sizes (100 / 1000 / 4000 / 10207)")
    parser.add_argument("--strategy", default="full")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hftl.analysis.study import load_study
    from hftl.analysis.study_engine import TRIAL_OUTPUT
    from hftl.config import log
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    study = load_study(ROOT / "studies" / "sentiment-strategies.yaml", check=False)
    point = {"data.max_train_samples": args.size, "strategy.name": args.strategy, "train.seed": 0}
    trial = study.trial_overrides(point)  # as hftl study builds the trial's recipe (hftl/analysis/study_engine.py)

    variants = {"as hftl run writes it": [], "as a study trial (TRIAL_OUTPUT)": TRIAL_OUTPUT}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    accuracy: dict[str, set[float]] = {name: set() for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0 warms the caches (tokenized data, imports) and is not counted
            for name, extra in variants.items():
                overrides = [*trial, f"output.dir={Path(tmp) / 'run'}", "output.overwrite=true", *extra]
                recipe = load_recipe(study.recipe_file, overrides)
                started = time.perf_counter()
                with log.hushed():
                    result = run(recipe)
                took = time.perf_counter() - started
                if r:
                    seconds[name].append(took)
                    accuracy[name].add(result.metrics["test"]["accuracy"])
                print(f"round {r} {name}: {took:.1f} s{'' if r else ' (warm-up, not counted)'}", flush=True)
    print(
        f"\nMiniLM, {args.size} snippets, {args.strategy}, the study's protocol, {args.rounds} rounds, load "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print("| variant | median s per trial | test accuracy |")
    print("| --- | ---: | --- |")
    for name in variants:
        print(f"| {name} | {statistics.median(seconds[name]):.1f} | {sorted(accuracy[name])} |")
    plain, trial = (statistics.median(seconds[name]) for name in variants)
    print(f"\nsaving per trial: {plain - trial:.1f} s ({(plain - trial) / plain:.1%}); ratio {plain / trial:.2f}x")
    same = accuracy["as hftl run writes it"] == accuracy["as a study trial (TRIAL_OUTPUT)"]
    print("same test accuracy:", "yes" if same else "NO")


if __name__ == "__main__":
    main()

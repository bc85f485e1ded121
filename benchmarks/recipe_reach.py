"""How far the recipe travels: the hftl modules whose functions receive the run's recipe from the run entry point.

    PYTHONPATH=. python benchmarks/recipe_reach.py [--entry hftl.training.train.run]

Runs three tiny-BERT runs (2 optimizer steps each) that between them use every run hook: plain full
fine-tuning, ``feature_extraction`` (feature cache + probe head) and ``full`` with DANN domain adaptation.
A ``sys.setprofile`` hook sees every Python call made inside the entry point and notes the module of each
hftl function that is *passed* the recipe: an argument that is the ``Recipe`` itself, or the run's context
object (``RunContext``), which carries it; calls of the carriers' own methods (``self``) are listed apart.
It prints the modules, their count, and the calls per module. The count is dynamic (the calls these runs
make): a module the recipe could reach on another path (``strategy.name: auto``, a Hub push, another task)
is not counted unless a run takes that path. Every hook but the Hub push runs here.
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
CARRIERS = ("Recipe", "RunContext")  # the recipe itself, or the one object that carries it


def tiny_recipes(folder: Path) -> dict[str, Path]:
    """The tests' tiny random BERT and toy reviews, and one recipe per set of hooks."""
    import yaml
    from conftest import make_reviews, save_tiny_bert, write_reviews_csv

    model_dir = save_tiny_bert(folder / "tiny-bert")
    write_reviews_csv(folder / "reviews.csv")
    with open(folder / "target.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["review", "sentiment"])
        writer.writeheader()
        writer.writerows({"review": r["text"], "sentiment": r["label"]} for r in make_reviews(120, 7))
    base = {
        "name": "toy",
        "task": "text-classification",
        "model": {"checkpoint": str(model_dir)},
        "data": {"source": str(folder / "reviews.csv"), "group_column": "movie", "max_length": 16},
        "strategy": {"name": "full"},
        "optim": {"lr": 2e-3, "warmup_ratio": 0.0},
        "train": {"max_steps": 2, "eval_steps": 2, "batch_size": 8, "min_steps": 0},
    }
    target = {"source": str(folder / "target.csv"), "columns": {"text": "review", "label": "sentiment"}}
    variants = {
        "full": {},
        "feature_extraction": {"strategy": {"name": "feature_extraction"}},
        "dann": {
            "strategy": {"name": "full", "adaptation": {"method": "dann"}},
            "data": {**base["data"], "target": {**target, "test_size": 0.25}},
        },
    }
    paths = {}
    for name, change in variants.items():
        doc = {**base, **change, "output": {"dir": str(folder / "runs" / name)}}
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(doc))
    return paths


def carries_recipe(value: Any) -> bool:
    return type(value).__name__ in CARRIERS and type(value).__module__.startswith("hftl.")


def reached_modules(entry: Any, *args: Any) -> collections.Counter:
    """Call ``entry(*args)``; count, per hftl module, the calls that were passed the recipe (or its carrier)."""
    reached: collections.Counter = collections.Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("hftl."):
            return
        code = frame.f_code
        n = code.co_argcount + code.co_kwonlyargcount
        n += bool(code.co_flags & 0x04) + bool(code.co_flags & 0x08)  # *args, **kwargs
        names = code.co_varnames[:n]
        values = [frame.f_locals.get(name) for name in names]
        values += [v for group in values if isinstance(group, (tuple, dict)) for v in _items(group)]
        if names[:1] == ("self",) and carries_recipe(values[0]):  # a method of the carrier itself
            reached[f"{module} (own methods)"] += 1
        elif any(carries_recipe(v) for v in values):
            reached[module] += 1

    sys.setprofile(profile)
    try:
        entry(*args)
    finally:
        sys.setprofile(None)
    return reached


def _items(group: tuple | dict) -> list[Any]:
    return list(group.values()) if isinstance(group, dict) else list(group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entry", default="hftl.training.train.run", help="module.function called with the recipe")
    args = parser.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    from hftl.config import log
    from hftl.config.recipe import load_recipe

    log.configure(quiet=True)
    module, name = args.entry.rsplit(".", 1)
    entry = getattr(importlib.import_module(module), name)
    total: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["HFTL_CACHE_DIR"] = str(Path(tmp) / "cache")
        for variant, path in tiny_recipes(Path(tmp)).items():
            reached = reached_modules(entry, load_recipe(path))
            print(f"{variant}: {len({m.split()[0] for m in reached})} modules")
            total.update(reached)
    passed_on = {m for m in total if not m.endswith("(own methods)")}
    print(
        f"\nFollowing the recipe from {args.entry} (3 tiny runs): {len(passed_on)} hftl modules are passed it; "
        f"{len({m.split()[0] for m in total})} counting the carriers' own methods (Recipe, RunContext)"
    )
    for module, calls in sorted(total.items()):
        print(f"  {module:45s} {calls:6d} calls")


if __name__ == "__main__":
    main()

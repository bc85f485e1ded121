"""Shared fixtures: tiny random models built from configs, and small learnable datasets.

Each test process uses one thread (two processes that each use every core slow
each other down badly on small machines) and never asks the Hugging Face Hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import csv  # noqa: E402
import gc  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from tests.tiny_models import save_bert  # noqa: E402

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun", "warm", "smart"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "weak", "cold", "silly"]
NEUTRAL = ["the", "movie", "plot", "actor", "scene", "film", "story", "was", "a", "very", "and", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def pytest_collection_modifyitems(config, items) -> None:
    """On a pytest-xdist worker (whose collection order the scheduler follows) the long tests go first; the
    loadgroup groups work (:func:`restore_xdist_groups`)."""
    if hasattr(config, "workerinput"):
        slow_first(items)
    restore_xdist_groups(config, items)


def slow_first(items: list) -> None:
    """The test modules holding a test marked ``slow`` or ``integration`` first, each set in its collected order.

    xdist hands a worker its next test when it has two or fewer left, in collection order (a loadgroup group as one
    unit, the largest first), so a long test collected late can leave one worker running it alone at the end
    (test_sentiment, 49 s, or the notebooks' smoke runs); started early, they overlap the other worker's short
    tests. Whole modules move, so that their module-scoped fixtures are still built once per worker.
    """

    def long(item) -> bool:
        return item.get_closest_marker("slow") is not None or item.get_closest_marker("integration") is not None

    files = {item.nodeid.split("::")[0] for item in items if long(item)}
    items[:] = sorted(items, key=lambda item: item.nodeid.split("::")[0] not in files)


def restore_xdist_groups(config, items: list) -> None:
    """Give ``--dist loadgroup`` its groups back: a test marked ``xdist_group(NAME)`` gets ``@NAME`` at the end of
    its node id, which is how pytest-xdist's scheduler keeps a group on one worker.

    pytest-xdist 3.8 writes that suffix into ``item._nodeid``, which pytest 9.2's structured node ids no longer
    read (pytest-xdist issue #1386): the marks were silently ignored, and two multi-process tests of the
    ``distributed`` group could run at once on this 2-core machine. A no-op wherever xdist's own suffix works.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId  # pytest >= 9.2's structured node ids; before it, xdist's suffix works
    except ImportError:
        return

    for item in items:
        marks = item.iter_markers("xdist_group")
        groups = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        if groups and "@" not in item.nodeid.rpartition("]")[2]:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(groups))}")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A random 2-layer BERT (hidden 32) + WordPiece tokenizer saved as a local checkpoint folder."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def save_tiny_bert(folder: Path) -> Path:
    """Write the tiny random BERT and its tokenizer into ``folder`` (tests and benchmarks/study_overhead.py)."""
    return save_bert(folder, SPECIAL + sorted(set(POSITIVE + NEGATIVE + NEUTRAL)), max_position_embeddings=64)


def make_reviews(n: int, seed: int = 0) -> list[dict]:
    """Short 'reviews' whose label is given by their sentiment word (learnable in a few dozen steps)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.random() < 0.5
        words = rng.sample(NEUTRAL, rng.randint(2, 6)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "pos" if label else "neg", "movie": f"m{i % 40}"})
    return rows


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory) -> Path:
    return write_reviews_csv(tmp_path_factory.mktemp("reviews") / "reviews.csv")


def write_reviews_csv(path: Path, n: int = 480) -> Path:
    """Write ``n`` toy reviews (text, label, movie) as a CSV file."""
    rows = make_reviews(n)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def text_recipe(tmp_path, tiny_bert_dir, reviews_csv):
    """Write a text-classification recipe on the tiny BERT; returns a function(overrides dict) -> path."""

    def write(**sections) -> Path:
        doc = {
            "name": "toy",
            "task": "text-classification",
            "model": {"checkpoint": str(tiny_bert_dir)},
            "data": {"source": str(reviews_csv), "group_column": "movie", "max_length": 16},
            "strategy": {"name": "full"},
            "optim": {"lr": 2e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
            "train": {"min_steps": 0, "epochs": 4, "batch_size": 16, "log_steps": 5, "seed": 0},
            "output": {"dir": str(tmp_path / "run")},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(doc.get(key), dict):
                doc[key] = {**doc[key], **value}
            else:
                doc[key] = value
        path = tmp_path / "recipe.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


def write_study_results(path: Path, scores: dict[tuple[str, int], tuple[float, float]], test_spread: float) -> None:
    """A strategy x size study's results.csv: two seeds per (strategy, size) cell at the given (validation, test)
    scores, seed 1's test score ``test_spread`` above seed 0's."""
    fields = ["trial", "state", "data.max_train_samples", "strategy.name", "train.seed"]
    fields += ["validation.accuracy", "test.accuracy", "train_seconds"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for i, ((strategy, size), (val, test)) in enumerate(scores.items()):
            for seed in (0, 1):
                row = {"trial": 2 * i + seed, "state": "COMPLETE", "data.max_train_samples": size}
                row.update({"strategy.name": strategy, "train.seed": seed, "validation.accuracy": val})
                writer.writerow({**row, "test.accuracy": test + seed * test_spread, "train_seconds": ""})


@pytest.fixture(scope="module", autouse=True)
def frozen_heap() -> None:
    """Collect garbage once, then freeze what is alive (``gc.freeze``) at the start of each test module.

    Every hftl run collects garbage twice at its end (accelerate's ``free_memory``, then before the process group
    ends); in a test process holding torch, transformers and the earlier modules' imports (about 600,000 objects)
    each full collection walked them all, about 0.4 s, though nothing among them is garbage. Frozen objects are
    skipped; the run's own garbage is still collected, as is everything created since the freeze.
    """
    gc.collect()
    gc.freeze()

"""Issue 23's defaults check, from the committed results only (no training): docs/studies/defaults.md's tables.

    python benchmarks/defaults_check.py                                   # print both tables (markdown)
    python benchmarks/defaults_check.py --write docs/studies/defaults.md  # replace its marked tables

Goal: "on each dataset, the default recipe within 1 point of the best recipe of its strategy x size grid at the
full size; none worse than the previous release by more than 1 point". Table 1 compares, per dataset, what the
shipped recipe scored at the full training size (each committed measurement of it, with how it was run) against
the grid's best cell at that size, chosen on validation (mean over seeds) and reported on test. Table 2 compares
today's defaults against the previous release's (docs/studies/defaults-*). Every number is read from a committed
``docs/studies/<study>/results.csv`` (or ``docs/adaptation*.json``); the notes beside them are this file's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GOAL = 0.01  # 1 point of the dataset's metric (accuracy; entity F1 on WNUT-16)


@dataclass(frozen=True)
class Scores:
    """One cell's per-seed validation and test scores."""

    validation: tuple[float, ...]
    test: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.test)

    def mean(self, split: str) -> float:
        return statistics.fmean(getattr(self, split))

    def std(self, split: str) -> float:
        values = getattr(self, split)
        return statistics.stdev(values) if len(values) > 1 else math.nan

    def text(self, split: str) -> str:
        mean, std = self.mean(split), self.std(split)
        return f"{mean:.3f}" if math.isnan(std) else f"{mean:.3f} ± {std:.3f}"


@dataclass(frozen=True)
class Source:
    """Where one measurement's rows are: a study's results.csv filtered on columns, or an adaptation JSON."""

    path: str  # relative to docs/: "studies/NAME/results.csv" or "adaptation.json"
    where: dict[str, str] = field(default_factory=dict)  # column -> value (labels as the csv writes them)

    def read(self, docs: Path = DOCS, metric: str = "accuracy") -> Scores:
        """The matching rows' ``validation.<metric>`` / ``test.<metric>`` scores; an error naming the file and the
        filter when nothing matches."""
        file = docs / self.path
        if file.suffix == ".json":
            rows = [{k: str(v) for k, v in r.items()} for r in json.loads(file.read_text(encoding="utf-8"))]
            val_key, test_key = "validation", "test"
        else:
            with open(file, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("state", "COMPLETE") == "COMPLETE"]
            val_key, test_key = f"validation.{metric}", f"test.{metric}"
        picked = [r for r in rows if all(r.get(k) == v for k, v in self.where.items())]
        if not picked:
            raise SystemExit(
                f"defaults_check: no row of {file} matches {self.where}: the committed results changed; "
                "update the check's source in benchmarks/defaults_check.py."
            )
        return Scores(
            tuple(float(r[val_key]) for r in picked),
            tuple(float(r[test_key]) for r in picked),
        )


@dataclass(frozen=True)
class Measurement:
    """One committed measurement of a dataset's default recipe at the full size, and how it was run."""

    label: str
    source: Source
    how: str  # how it differs from the shipped recipe / the grid (precision, LR, cadence, size, tokens)


@dataclass(frozen=True)
class Grid:
    """A strategy x size study's cells at the full training size."""

    results: str  # relative to docs/
    size_column: str | None  # None: the study has no size axis (one size)
    size: str | None
    strategy_column: str = "strategy.name"
    metric: str = "accuracy"  # the csv's columns validation.<metric> / test.<metric>; its measurements' too

    def cells(self, docs: Path = DOCS) -> dict[str, Scores]:
        """Strategy label -> its scores at the full size, in the csv's order of first appearance."""
        with open(docs / self.results, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["state"] == "COMPLETE"]
        if self.size_column is not None:
            rows = [r for r in rows if r[self.size_column] == self.size]
        names = list(dict.fromkeys(r[self.strategy_column] for r in rows))
        return {
            name: Source(self.results, {self.strategy_column: name} | self._size()).read(docs, self.metric)
            for name in names
        }

    def _size(self) -> dict[str, str]:
        return {} if self.size_column is None or self.size is None else {self.size_column: self.size}


def best_on_validation(cells: dict[str, Scores]) -> list[str]:
    """The cells with the highest validation mean (several when they tie exactly: counts of the same split)."""
    top = max(s.mean("validation") for s in cells.values())
    return [name for name, s in cells.items() if math.isclose(s.mean("validation"), top, abs_tol=1e-12)]


@dataclass(frozen=True)
class Check:
    dataset: str
    recipe: str
    grid: Grid
    grid_note: str
    measurements: tuple[Measurement, ...]


@dataclass(frozen=True)
class Row:
    """One line of table 1: a measurement of the default against the grid's best cell."""

    dataset: str
    measurement: Measurement
    scores: Scores
    best: list[str]
    best_scores: Scores

    @property
    def gap_test(self) -> float:
        return self.best_scores.mean("test") - self.scores.mean("test")

    @property
    def gap_validation(self) -> float:
        return self.best_scores.mean("validation") - self.scores.mean("validation")

    @property
    def standard_error(self) -> float:
        """Standard error of the test gap: sqrt(s1^2/n1 + s2^2/n2); nan when either side has one seed."""
        a, b = self.scores, self.best_scores
        if a.n < 2 or b.n < 2:
            return math.nan
        return math.sqrt(a.std("test") ** 2 / a.n + b.std("test") ** 2 / b.n)

    def verdict(self) -> str:
        """The goal on test (the reported split), then on validation, then the test gap in standard errors."""
        test, validation = _against_goal(self.gap_test), _against_goal(self.gap_validation)
        se = self.standard_error
        if math.isnan(se):
            spread = "one seed: no SE"
        elif self.gap_test <= se:
            spread = "within 1 SE"
        elif se == 0:
            spread = "no seed spread: no SE"
        else:
            spread = f"{self.gap_test / se:.1f} SE"
        return f"{test} / {validation}; {spread}"


def _against_goal(gap: float) -> str:
    if gap <= 0:
        return "at or above"
    if gap <= GOAL + 1e-12:
        return "within 1 point"
    return f"**missed by {100 * (gap - GOAL):.2f}**"


# ------------------------------------------------------------------------------------------------ the checks
CHECKS: tuple[Check, ...] = (
    Check(
        "Rotten Tomatoes (10,207 snippets)",
        "recipes/sentiment.yaml",
        Grid("studies/sentiment-strategies/results.csv", "data.max_train_samples", "10207"),
        "body/head LR 1e-4/1e-3, bf16, 319 steps, evaluation every 80 steps on 500 validation snippets",
        (
            Measurement(
                "sentiment-strategies `full` (the recipe since P1)",
                Source(
                    "studies/sentiment-strategies/results.csv",
                    {"data.max_train_samples": "10207", "strategy.name": "full"},
                ),
                "the recipe's LR since P1 (1e-4/1e-3) under the grid's protocol (bf16, evaluation every 80 steps on "
                "500 snippets; the recipe: fp32, evaluation at its default cadence)",
            ),
            Measurement(
                "defaults-sentiment `today`",
                Source(
                    "studies/defaults-sentiment/results.csv", {"data.max_train_samples": "10207", "defaults": "today"}
                ),
                "the grid's protocol (bf16, evaluation every 80 steps on 500 snippets); LR 5e-5/5e-4 (the recipe's "
                "before P1)",
            ),
            Measurement(
                "sentiment-demo `1ep`",
                Source("studies/sentiment-demo/results.csv", {"levers": "1ep"}),
                "the recipe's cadence (full validation every 100 steps) and LR 5e-5/5e-4 (before P1); "
                "bf16 (the recipe: fp32)",
            ),
        ),
    ),
    Check(
        "BBC News (1,781 articles)",
        "recipes/bbc-news.yaml",
        Grid("studies/bbc-strategies/results.csv", "data.max_train_samples", "1781"),
        "LR 1e-4/1e-3, bf16, 64 tokens, 112 steps (min_steps 100), evaluation every 25 steps",
        (
            Measurement(
                "bf16-bbc `no` (fp32)",
                Source("studies/bf16-bbc/results.csv", {"train.mixed_precision": "no"}),
                "the recipe as shipped (fp32, 64 tokens, LR 5e-5/5e-4, 200 steps) but evaluation every 50 steps "
                "(the recipe's default: at 112 and 200)",
            ),
            Measurement(
                "defaults-bbc `today`",
                Source("studies/defaults-bbc/results.csv", {"data.max_train_samples": "1781", "defaults": "today"}),
                "128 tokens (the recipe: 64), bf16, evaluation every 25 steps; LR 5e-5/5e-4, 200 steps",
            ),
        ),
    ),
    Check(
        "8x8 digits (1,257 digits)",
        "none ships; the grid's base, recipes/fashion-mnist-efficientnet.yaml",
        Grid("studies/digits-strategies/results.csv", "data.max_train_samples", "1257"),
        "32 px, 3 epochs (120 steps), fp32; scratch: LR 2e-3, BatchNorm updating",
        (
            Measurement(
                "digits-strategies `full`",
                Source(
                    "studies/digits-strategies/results.csv", {"data.max_train_samples": "1257", "strategy.name": "full"}
                ),
                "the vision recipe's strategy, LR 3e-4/3e-3 and BatchNorm `eval` at the grid's 32 px "
                "(the recipe: 112 px)",
            ),
            Measurement(
                "digits-screen 64 px",
                Source(
                    "studies/digits-screen/results.csv",
                    {"data.image_size": "64", "lr": "3e-4/3e-3", "strategy.batchnorm": "eval"},
                ),
                "the same at 64 px, seed 0 only: evidence for a proposal, not the check (the grid ran at 32 px)",
            ),
        ),
    ),
    Check(
        "8x8 digits at 64 px (1,257 digits; every strategy)",
        "the same vision recipe at 64 px",
        Grid("studies/digits-64/results.csv", None, None),
        "digits-64: the 8 strategies of digits-strategies at 64 px, its budget and split",
        (
            Measurement(
                "digits-64 `full`",
                Source("studies/digits-64/results.csv", {"strategy.name": "full"}),
                "the vision recipe's strategy, LR 3e-4/3e-3 and BatchNorm `eval` at 64 px",
            ),
        ),
    ),
    Check(
        "MNIST-5k (3,500 digits)",
        "recipes/mnist-*.yaml (small ResNet); the grid's base, recipes/fashion-mnist-efficientnet.yaml",
        Grid("studies/mnist-strategies/results.csv", "data.max_train_samples", "3500"),
        "EfficientNet-Lite0 at 64 px, 3 epochs (329 steps), fp32, split_seed 42 (test: 1,000 digits)",
        (
            Measurement(
                "mnist-strategies `full`",
                Source(
                    "studies/mnist-strategies/results.csv", {"data.max_train_samples": "3500", "strategy.name": "full"}
                ),
                "the vision recipe's strategy, LR and BatchNorm `eval` at the grid's 64 px (the recipe: 112 px)",
            ),
            Measurement(
                "mnist-to-digits, source only",
                Source("adaptation.json", {"method": "source"}),
                "small ResNet from scratch, 32 px, 5 epochs (550 steps), target-directed augmentation (zoom, "
                "low_resolution); the split is carved with each seed (other test digits than the grid's)",
            ),
            Measurement(
                "the same, no zoom / low_resolution",
                Source("adaptation-without-augment.json", {"method": "source"}),
                "as above without the target-directed augmentation",
            ),
        ),
    ),
    Check(
        "Fashion-MNIST (1,000 images: the recipe's size)",
        "recipes/fashion-mnist-efficientnet.yaml",
        Grid("studies/fashion-mnist-1k/results.csv", None, None),
        "one size only (1,000 of 57,000 images); the full size: the next check (fashion-mnist-full, 64 px)",
        (
            Measurement(
                "fashion-mnist-1k `full+bn-eval`",
                Source("studies/fashion-mnist-1k/results.csv", {"strategy.name": "full+bn-eval"}),
                "the recipe as shipped (112 px, 6 epochs, BatchNorm `eval`, fp32)",
            ),
        ),
    ),
    Check(
        "Fashion-MNIST at the full size (57,000 images, 64 px)",
        "the vision recipe at 64 px, one epoch",
        Grid("studies/fashion-mnist-full/results.csv", None, None),
        "fashion-mnist-full: the probe, full, LoRA and scratch at all 57,000 training images, 64 px, one epoch "
        "(1,782 steps), fp32, split_seed 42 (validation 3,000, test 10,000)",
        (
            Measurement(
                "fashion-mnist-full `full`",
                Source("studies/fashion-mnist-full/results.csv", {"strategy.name": "full"}),
                "the vision recipe's strategy, LR 3e-4/3e-3, BatchNorm `eval` and augmentation at 64 px for one epoch "
                "(the recipe: 112 px, 6 epochs of 1,000 images)",
            ),
        ),
    ),
    Check(
        "WNUT-16 NER (about 1,915 tweets; entity F1)",
        "recipes/wnut-ner.yaml",
        Grid("studies/wnut-strategies/results.csv", None, None, metric="f1"),
        "wnut-strategies: 6 strategies at the whole training split, the recipe's budget (360 steps), bf16, "
        "split_seed 42; entity-level F1 (seqeval) chooses on validation",
        (
            Measurement(
                "wnut-strategies `full`",
                Source("studies/wnut-strategies/results.csv", {"strategy.name": "full"}),
                "the recipe as shipped (full fine-tuning, LR 1e-4 / head 1e-2, 3 epochs) in bf16 (the recipe: fp32) "
                "with split_seed 42 and seeds 0-2 (the recipe: seed 42)",
            ),
        ),
    ),
)

# Table 2: today's defaults against the previous release's (the studies that measure exactly that).
PREVIOUS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Rotten Tomatoes", "studies/defaults-sentiment/results.csv", ("1000", "10207")),
    ("BBC News (128 tokens)", "studies/defaults-bbc/results.csv", ("800", "1781")),
)


def grid_rows(checks: Sequence[Check] = CHECKS, docs: Path = DOCS) -> list[Row]:
    rows = []
    for check in checks:
        cells = check.grid.cells(docs)
        if not cells:
            raise SystemExit(f"defaults_check: {check.grid.results} has no complete trial at size {check.grid.size}.")
        best = best_on_validation(cells)
        # On a validation tie the gap is taken to the tied cell with the better test mean (the stricter check).
        best_scores = max((cells[b] for b in best), key=lambda s: s.mean("test"))
        for m in check.measurements:
            rows.append(Row(check.dataset, m, m.source.read(docs, check.grid.metric), best, best_scores))
    return rows


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def grid_table(rows: Sequence[Row]) -> str:
    out = [
        "| dataset | default recipe, measured as | n | validation | test | grid's best at the full size "
        "(on validation) | validation | test | gap, validation (points) | gap, test (points) | "
        "check: test / validation; test gap |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        best, b = " = ".join(f"`{name}`" for name in r.best), r.best_scores
        out.append(
            f"| {r.dataset} | {r.measurement.label} | {r.scores.n} | {r.scores.text('validation')} | "
            f"{r.scores.text('test')} | {best} | {b.text('validation')} | {b.text('test')} | "
            f"{_points(r.gap_validation)} | {_points(r.gap_test)} | {r.verdict()} |"
        )
    return "\n".join(out)


def notes(checks: Sequence[Check] = CHECKS) -> str:
    out = []
    for c in checks:
        out.append(f"- {c.dataset}: recipe {c.recipe}; grid: {c.grid_note}.")
        out.extend(f"  - {m.label}: {m.how}." for m in c.measurements)
    return "\n".join(out)


def previous_table(docs: Path = DOCS) -> str:
    out = [
        "| dataset, training examples | today: validation | today: test | previous release: validation | "
        "previous release: test | today - previous, test (points) | check |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, path, sizes in PREVIOUS:
        for size in sizes:
            today = Source(path, {"data.max_train_samples": size, "defaults": "today"}).read(docs)
            before = Source(path, {"data.max_train_samples": size, "defaults": "previous-release"}).read(docs)
            diff = today.mean("test") - before.mean("test")
            ok = "not worse by > 1 point" if diff >= -GOAL else "**worse by > 1 point**"
            out.append(
                f"| {name}, {int(size):,} | {today.text('validation')} | {today.text('test')} | "
                f"{before.text('validation')} | {before.text('test')} | {_points(diff)} | {ok} |"
            )
    return "\n".join(out)


def tables(docs: Path = DOCS) -> dict[str, str]:
    """The marked blocks of docs/studies/defaults.md: table 1 with its notes, table 2."""
    return {
        "grid": grid_table(grid_rows(docs=docs)) + "\n\nHow each was run:\n\n" + notes(),
        "previous": previous_table(docs),
    }


def write(path: Path, blocks: dict[str, str]) -> list[str]:
    """Replace each ``<!-- defaults-check: NAME -->`` ... ``<!-- /defaults-check -->`` block of ``path``."""
    from study_tables import replace_block

    text, done = path.read_text(encoding="utf-8"), []
    for name, body in blocks.items():
        changed = replace_block(text, f"<!-- defaults-check: {name} -->", "<!-- /defaults-check -->", body)
        if changed is not None:
            text, done = changed, [*done, name]
    path.write_text(text, encoding="utf-8")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the marked blocks of this file (docs/studies/defaults.md)")
    args = parser.parse_args(argv)
    blocks = tables()
    if args.write:
        print("written:", ", ".join(write(args.write, blocks)) or "nothing (no marked block)")
        return 0
    print("## 1. The default recipe against its grid's best cell at the full size\n")
    print(blocks["grid"])
    print("\n## 2. Today's defaults against the previous release's\n")
    print(blocks["previous"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

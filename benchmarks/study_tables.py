"""The README's strategy tables, generated from the committed study results (docs/studies/<name>/results.csv).

    PYTHONPATH=. python benchmarks/study_tables.py                 # print every table
    PYTHONPATH=. python benchmarks/study_tables.py --write README.md

One table per study with a strategy axis and a data-size axis: a row per strategy, a column per size,
each cell the test mean ± std over seeds (n seeds), the cell chosen on validation in bold. A study with a
strategy axis and no data-size axis (WNUT-16's whole training split, Fashion-MNIST's 1,000 images) is one
column; a strategy the study file dropped after it ran keeps its row, last, as does one that a study extending it
adds (``extends:``, e.g. SetFit at 100 examples). ``--write`` replaces the text
between ``<!-- study-table: NAME -->`` and ``<!-- /study-table -->`` in the file.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOCS = ROOT / "docs" / "studies"


def _value(text: str) -> object:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_rows(results: Path) -> list[dict[str, object]]:
    """results.csv as the report's rows: numbers as floats, empty cells as None, labels as written."""
    with open(results, newline="", encoding="utf-8") as fh:
        return [{k: (v if k == "state" else _value(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


@dataclass
class StrategySizeStudy:
    """A committed study with a strategy axis and a data-size axis: its cells, labels as the study writes them."""

    name: str
    study: Any  # hftl.analysis.study.Study
    size_axis: Any  # its Axis of kind data_size; None: no size axis (the whole training split)
    strategy_axis: Any  # its Axis of kind strategy
    cells: list[dict[str, Any]]  # hftl.analysis.study_report.cell_stats, one per (strategy, size)
    extensions: tuple[StrategySizeStudy, ...] = ()  # studies that add cells to this one (`extends:`); cells included

    @property
    def strategies(self) -> list[object]:
        """The strategy axis's labels, then those of cells the study file has dropped since they ran (or that an
        extension adds)."""
        return self._labels_with(self.cells)

    def strategies_at(self, size: object) -> list[object]:
        """The same for one size: what the study runs at that size."""
        return self._labels_with(self.at_size(size))

    def _labels_with(self, cells: list[dict[str, Any]]) -> list[object]:
        labels = [v.label for v in self.strategy_axis.values]
        found = dict.fromkeys(c["labels"][self.strategy_axis.name] for c in cells)
        return labels + [x for x in found if x not in labels]

    def at_size(self, size: object) -> list[dict[str, Any]]:
        """The cells of one size, in the strategy axis's order."""
        return [c for c in self.cells if str(c["labels"][self.size_axis.name]) == str(size)]


def strategy_size_study(name: str, studies: Path = ROOT / "studies", docs: Path = DOCS) -> StrategySizeStudy | None:
    """Study ``name`` (studies/NAME.yaml, results in docs/studies/NAME/results.csv) read into its cells, or None
    when it has no results, no strategy or data-size axis, another axis besides seeds, or no reported metric."""
    return _strategy_study(name, studies, docs, sized=True)


def strategy_only_study(name: str, studies: Path = ROOT / "studies", docs: Path = DOCS) -> StrategySizeStudy | None:
    """The same for a study with a strategy axis and no data-size axis (one training size), ``size_axis`` None."""
    return _strategy_study(name, studies, docs, sized=False)


def _strategy_study(
    name: str, studies: Path, docs: Path, sized: bool, extension: bool = False
) -> StrategySizeStudy | None:
    """Study ``name`` read into its cells when its axes are a strategy axis, a data-size axis exactly when ``sized``,
    and seeds; else None. The cells of the studies that extend it (``extends:``) come with its own; a study that
    extends another is read only with it (``extension``)."""
    from hftl.analysis.study import load_study
    from hftl.analysis.study_report import cell_axes, cell_stats

    results = docs / name / "results.csv"
    if not results.exists() or not (studies / f"{name}.yaml").exists():
        return None
    study = load_study(studies / f"{name}.yaml", check=False)
    if (study.spec.extends is not None) != extension:
        return None
    kinds = {a.kind: a for a in study.axes if a.kind}
    if "strategy" not in kinds or ("data_size" in kinds) != sized or not study.report:
        return None
    size_axis, strategy_axis = kinds.get("data_size"), kinds["strategy"]
    axes = [a for a in (size_axis, strategy_axis) if a is not None]
    if set(cell_axes(study)) != {a.name for a in axes}:
        return None  # a third axis would make several cells per (strategy, size)
    rows = read_rows(results)
    for row in rows:  # labels back to the study's own (csv reads 100 as 100.0); a value since removed from the
        for axis in axes:  # study file keeps its measured cells, labelled as written
            row[axis.name] = _own_label(axis, row[axis.name])
    cells = cell_stats(study, rows)
    extensions = () if extension else tuple(_extensions(study.file, studies, docs, sized))
    cells += [c for e in extensions for c in e.cells]
    if size_axis is not None:  # by size, as the study's axis orders them (a stable sort: each size's own order kept)
        order = {str(v.label): i for i, v in enumerate(size_axis.values)}
        cells.sort(key=lambda c: order.get(str(c["labels"][size_axis.name]), len(order)))
    return StrategySizeStudy(name, study, size_axis, strategy_axis, cells, extensions)


def _extensions(file: Path, studies: Path, docs: Path, sized: bool) -> list[StrategySizeStudy]:
    """The studies of ``studies`` whose ``extends:`` names ``file`` and that have results (their own load checks
    that their cells are comparable)."""
    import yaml

    found = []
    for other in sorted(studies.glob("*.yaml")):
        doc = yaml.safe_load(other.read_text(encoding="utf-8"))
        extends = doc.get("extends") if isinstance(doc, dict) else None
        if extends and (other.parent / extends).resolve() == file.resolve():
            if read := _strategy_study(other.stem, studies, docs, sized, extension=True):
                found.append(read)
    return found


def table(name: str, studies: Path = ROOT / "studies", docs: Path = DOCS) -> str | None:
    """The markdown table of study ``name`` (studies/NAME.yaml, results in docs/studies/NAME/), or None."""
    from hftl.analysis.study_report import best_cells

    read = strategy_size_study(name, studies, docs) or strategy_only_study(name, studies, docs)
    if read is None:
        return None
    study, size_axis, strategy_axis, cells = read.study, read.size_axis, read.strategy_axis, read.cells
    if size_axis is None:  # one column: the base recipe's training size
        fixed = study.base.data.max_train_samples
        column = f"{fixed:,}" if fixed else "whole training split"
        sizes, size_of = [column], (lambda c: column)
    else:
        sizes, size_of = [v.label for v in size_axis.values], (lambda c: str(c["labels"][size_axis.name]))
    chosen = {id(c) for c in best_cells(study, cells, size_axis.name if size_axis else None)}
    strategies = read.strategies
    by = {(str(c["labels"][strategy_axis.name]), size_of(c)): c for c in cells}
    seeds = max((c["n"] for c in cells), default=0)
    out = [
        "| strategy \\ training examples | "
        + " | ".join(f"{s:,}" if isinstance(s, int) else str(s) for s in sizes)
        + " |",
        "| --- |" + " ---: |" * len(sizes),
    ]
    for strategy in strategies:
        line = []
        for size in sizes:
            cell = by.get((str(strategy), str(size)))
            if cell is None or not cell["reported"]:
                line.append("-")
                continue
            text = f"{cell['report_mean']:.3f} ± {cell['report_std']:.3f}"
            text += f" ({cell['n']})" if cell["n"] != seeds else ""
            line.append(f"**{text}**" if id(cell) in chosen else text)
        out.append(f"| {strategy} | " + " | ".join(line) + " |")
    out.append("")
    at_size = " at that size" if size_axis is not None else ""
    sources = [name, *(e.name for e in read.extensions)]
    out.append(
        f"`{study.report}`, mean ± std over {seeds} seeds (fewer in parentheses); bold: the strategy chosen on "
        f"`{study.metric}`{at_size}. From "
        + " and ".join(f"`docs/studies/{n}/results.csv` (`hftl study studies/{n}.yaml`)" for n in sources)
        + "; regenerate with `python benchmarks/study_tables.py --write README.md`."
    )
    return "\n".join(out)


def _own_label(axis: Any, value: object) -> object:
    """A results.csv value as the axis labels it; a value no longer on the axis (a cell the study file dropped
    after it ran) as written."""
    return next((v.label for v in axis.values if str(v.label) == _label(value)), _label(value))


def _label(value: object) -> str:
    if isinstance(value, float) and not math.isnan(value) and value.is_integer():
        return str(int(value))
    return str(value)


def replace_block(text: str, start: str, end: str, body: str) -> str | None:
    """``text`` with the lines between the marker lines ``start`` and ``end`` replaced by ``body``; None when
    ``text`` has no such block."""
    pattern = re.compile(rf"({re.escape(start)}\n).*?({re.escape(end)})", re.S)
    if not pattern.search(text):
        return None
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def write(path: Path, tables: dict[str, str]) -> list[str]:
    """Replace each marked block of ``path`` with its table; returns the names written."""
    text = path.read_text(encoding="utf-8")
    done = []
    for name, body in tables.items():
        if (changed := replace_block(text, f"<!-- study-table: {name} -->", "<!-- /study-table -->", body)) is not None:
            text = changed
            done.append(name)
    path.write_text(text, encoding="utf-8")
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, help="replace the marked blocks of this file (e.g. README.md)")
    args = parser.parse_args()
    tables = {p.name: t for p in sorted(DOCS.iterdir()) if p.is_dir() and (t := table(p.name))}
    if args.write:
        print("written:", ", ".join(write(args.write, tables)) or "nothing (no marked block)")
    else:
        for name, body in tables.items():
            print(f"## {name}\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every notebook runs top to bottom with tiny settings, uses only hftl's public API, and is committed executed.

The committed notebooks carry the outputs of `make notebooks` (benchmarks/execute_notebooks.py: real settings,
one notebook at a time), so a reader on GitHub or the Hub sees numbers and plots. That the outputs come from the
committed code is checked twice: the digest of the code cells recorded at execution matches the cells (fast), and
executing each notebook with ``HFTL_NOTEBOOK_SMOKE=1`` (tiny subsets, a few steps; ``HFTL_NOTEBOOK_RUNS`` says
where run folders go) gives the same cells, with outputs wherever the committed notebook has them (integration).
The kernel inherits the offline / one-thread settings of conftest.py from this process.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import execute_notebooks  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RICH = ("image/png", "text/markdown", "text/html")  # what a cell shows beside text


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def shown(cell) -> set[str]:
    """The rich kinds of output a code cell shows (a plot, a markdown card, a table)."""
    return {kind for output in cell.outputs for kind in RICH if kind in output.get("data", {})}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, NOTEBOOKS


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_small_settings_like_its_committed_outputs(path, tmp_path):
    """The smoke execution runs without error, trains (a run folder, with its card unless a study's trial), plots,
    and has the committed notebook's shape: the same cells, and the committed outputs wherever the smoke run shows
    something."""
    executed = execute_notebooks.execute(path, smoke=True, runs=tmp_path, timeout=600)  # raises on any cell error
    committed = nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in executed.cells] == [(c.cell_type, c.source) for c in committed.cells]
    assert any("image/png" in shown(c) for c in executed.cells if c.cell_type == "code"), "no plot shown"
    runs = [metrics.parent for metrics in tmp_path.rglob("metrics.json")]
    assert runs, "no run folder was written"
    # a run writes its model card; a study's trials do not (output.card: false, the study's report sums them up)
    assert all((run / "README.md").exists() for run in runs if run.parent.name != "trials"), runs
    for number, (ran, kept) in enumerate(zip(executed.cells, committed.cells)):
        if ran.cell_type != "code" or not ran.outputs:
            continue
        assert kept.outputs, f"{path.name}: cell {number} shows output when executed, none is committed"
        assert shown(ran) <= shown(kept), f"{path.name}: cell {number} shows {shown(ran) - shown(kept)}, not committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_executed_from_its_code(path):
    """Outputs of one top-to-bottom run of the committed code cells (`make notebooks`), clean and small."""
    notebook = nbformat.read(path, as_version=4)
    recorded = notebook.metadata.get("hftl", {}).get("code_digest")
    assert recorded == execute_notebooks.code_digest(notebook), (
        f"{path.name}: its code cells changed since it was executed; run `make notebooks` (or "
        f"python benchmarks/execute_notebooks.py {path.stem}) and commit the result"
    )
    cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), "not one run, top to bottom"
    errors = [i for i, c in enumerate(cells) if any(o.output_type == "error" for o in c.outputs)]
    assert not errors, f"{path.name}: code cells {errors} hold errors"
    assert any("image/png" in shown(c) for c in cells), f"{path.name}: no plot committed"
    streams = [o.text for c in cells for o in c.outputs if o.output_type == "stream"]
    assert all(execute_notebooks.clean_text(s) == s for s in streams), "progress bars in the outputs"
    assert path.stat().st_size < execute_notebooks.MAX_BYTES, f"{path.name}: too large to render on GitHub"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_uses_only_the_public_api(path):
    import hftl

    source = "\n".join(c.source for c in code_cells(path))
    assert not re.search(r"^\s*(from|import) hftl\.", source, re.M), "import hftl, not its modules"
    used = set(re.findall(r"\bhftl\.(\w+)", source))
    assert used <= set(hftl.__all__), used - set(hftl.__all__)
    for recipe in re.findall(r'RECIPES / "([^"]+)"', source):
        assert (path.parents[1] / "recipes" / recipe).is_file(), recipe


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_what_a_notebook_says_of_its_recipe_strategy_is_true(path):
    """A sentence "The recipe's own strategy is `X`" must name the strategy the recipe it loads ships."""
    from hftl.config.recipe import load_recipe

    notebook = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in notebook.cells)
    claims = re.findall(r"recipe's own strategy is `(\w+)`", text)
    recipes = set(re.findall(r"recipes/[\w.-]+\.yaml", text))
    for claim in claims:
        assert len(recipes) == 1, (path.name, recipes)
        shipped = load_recipe(Path(__file__).parents[1] / recipes.pop()).strategy.name
        assert claim == shipped, f"{path.name} says the strategy is {claim}; the recipe ships {shipped}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_quotes_no_scores(path):
    """Scores live in the outputs, which `make notebooks` regenerates; a score copied into the prose goes stale."""
    prose = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")
    assert not re.findall(r"\b0\.\d\d+", prose), f"{path.name}: print scores from a code cell instead"

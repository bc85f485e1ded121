"""Every notebook runs top to bottom with tiny settings, uses only hftl's public API, and is committed clean.

The notebooks read ``HFTL_NOTEBOOK_SMOKE=1`` (tiny subsets, a few steps) and
``HFTL_NOTEBOOK_RUNS`` (where run folders go); the kernel inherits them, and the
offline / one-thread settings of conftest.py, from this process.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_small_settings(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("HFTL_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("HFTL_NOTEBOOK_RUNS", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()  # raises on any cell error
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook showed no plot"
    assert list(tmp_path.rglob("README.md")), "no run folder (with its model card) was written"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    dirty = [i for i, c in enumerate(code_cells(path)) if c.outputs or c.execution_count is not None]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; strip them before committing"


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

"""Recipes ship inside the package: ``hftl recipes`` lists them, ``hftl recipes cp`` copies one, ``hftl run NAME``
runs one; and an installed hftl (not this checkout) does all three from an empty folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hftl.cli import main
from hftl.config.recipe import load_recipe
from hftl.config.shipped_recipes import RECIPES_DIR, shipped_recipes
from hftl.data.sources import DATASETS, FILE_BUILDERS

ROOT = Path(__file__).resolve().parents[1]


def test_the_checkout_recipes_folder_is_the_package_one():
    assert (ROOT / "recipes").resolve() == RECIPES_DIR
    shipped = sorted(p.name for p in shipped_recipes().values())
    assert sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")) == shipped
    assert "recipes/*.yaml" in (ROOT / "pyproject.toml").read_text()


def test_ls_lists_every_shipped_recipe_with_its_description(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name, path in shipped_recipes().items():
        description = yaml.safe_load(path.read_text())["description"]
        assert any(line.startswith(name + " ") and description in line for line in out.splitlines()), name


def test_cp_copies_and_never_overwrites(tmp_path, capsys):
    assert main(["recipes", "cp", "sentiment", str(tmp_path / "mine.yaml")]) == 0
    assert (tmp_path / "mine.yaml").read_text() == shipped_recipes()["sentiment"].read_text()
    assert main(["recipes", "cp", "wnut-ner", str(tmp_path)]) == 0 and (tmp_path / "wnut-ner.yaml").is_file()
    assert main(["recipes", "cp", "sentiment", str(tmp_path / "mine.yaml")]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["recipes", "cp", "sentimnt", str(tmp_path / "x.yaml")]) == 2
    assert "Did you mean 'sentiment'?" in capsys.readouterr().err


def test_a_bare_name_that_is_no_file_means_the_shipped_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("sentiment").source_file == str(shipped_recipes()["sentiment"])
    (tmp_path / "sentiment").write_text(
        "name: mine\ntask: text-classification\nmodel: {checkpoint: x}\ndata: {source: y}\n"
    )
    assert load_recipe("sentiment").name == "mine"  # an existing file always wins


@pytest.mark.parametrize("name", list(shipped_recipes()))
def test_shipped_recipes_name_no_path_next_to_themselves(name):
    """A copied recipe must run from anywhere: data and checkpoints are catalog names or Hub ids."""
    recipe = load_recipe(name)
    files = (recipe.data.files or {}).values()
    sources = [recipe.data.source, *[f for v in files for f in ([v] if isinstance(v, str) else v)]]
    for source in filter(None, sources):
        assert source in DATASETS or (
            not source.startswith((".", "/", "~"))
            and source.count("/") <= 1
            and Path(source).suffix.lower() not in FILE_BUILDERS
        ), source
    towers = (recipe.model.towers or {}).values()
    for checkpoint in filter(None, [recipe.model.checkpoint, *[t.checkpoint for t in towers]]):
        assert not checkpoint.startswith((".", "/", "~")), checkpoint


@pytest.mark.integration
def test_installed_package_lists_copies_and_validates_from_an_empty_folder(tmp_path):
    """``pip install`` (no deps, no build isolation: torch & co. come from this venv) into a target folder outside
    the checkout; then the installed ``hftl`` script, with only that folder on the path, in an empty folder."""
    src, target, empty = tmp_path / "src", tmp_path / "site", tmp_path / "empty"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "runs", "__pycache__", "*.egg-info", "build", "notebooks", ".pytest_cache"
        ),
    )
    empty.mkdir()
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert sorted(p.name for p in (target / "hftl" / "recipes").glob("*.yaml")) == sorted(
        p.name for p in shipped_recipes().values()
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    hftl = [sys.executable, str(target / "bin" / "hftl")]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*hftl, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run(
        [sys.executable, "-c", "import hftl; print(hftl.__file__)"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(str(target)), where  # the installed copy, not the checkout
    listed = run("recipes")
    assert listed.returncode == 0 and "sentiment " in listed.stdout, listed.stderr
    assert run("recipes", "cp", "sentiment", "x.yaml").returncode == 0
    validated = run("validate", "x.yaml")
    assert validated.returncode == 0 and "x.yaml: ok (text-classification" in validated.stdout, validated.stderr
    by_name = run("validate", "wnut-ner")
    assert by_name.returncode == 0 and "ok (token-classification" in by_name.stdout, by_name.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["x.yaml"]

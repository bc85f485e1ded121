"""The recipes that ship inside the package (``hftl/recipes/*.yaml``): list, find by name, copy.

``hftl run sentiment`` runs the shipped ``sentiment.yaml`` when no file of that
name exists; ``hftl recipes`` lists them and ``hftl recipes cp NAME DEST`` copies
one to edit. In a checkout, the top-level ``recipes/`` folder is a link to the
same files. Shipped recipes name catalog or Hub data and checkpoints, never a
path next to themselves (``tests/test_shipped_recipes.py`` checks it), so a copy
runs from anywhere.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from hftl.config.errors import HftlError
from hftl.config.registry import did_you_mean

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


def shipped_recipes() -> dict[str, Path]:
    """Name (file stem) -> path of every shipped recipe, sorted by name."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def describe(path: Path) -> str:
    """A recipe's one-line description (its ``description:``, else its task)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "(unreadable)"
    return str(doc.get("description") or doc.get("task") or "").strip()


def find_shipped(name: str) -> Path | None:
    """The shipped recipe a bare name (``sentiment`` or ``sentiment.yaml``) means; None for anything else."""
    if "/" in name or "\\" in name:
        return None
    return shipped_recipes().get(name.removesuffix(".yaml").removesuffix(".yml"))


def resolve_recipe_path(given: str) -> str:
    """``given`` when it is a file (or looks like a path); else the shipped recipe of that name, if any."""
    if Path(given).exists():
        return given
    found = find_shipped(given)
    return str(found) if found else given


def copy_shipped(name: str, dest: str | Path) -> Path:
    """Copy shipped recipe ``name`` to ``dest`` (a file, or a folder to copy into); never overwrites."""
    found = find_shipped(name)
    if found is None:
        names = list(shipped_recipes())
        raise HftlError(f"No shipped recipe named '{name}'.{did_you_mean(name, names)} Shipped: {', '.join(names)}.")
    target = Path(dest)
    if target.is_dir():
        target = target / found.name
    if target.exists():
        raise HftlError(f"{target} exists already; hftl recipes cp never overwrites. Choose another name.")
    if not target.parent.is_dir():
        raise HftlError(f"Cannot copy to {target}: the folder {target.parent} does not exist.")
    shutil.copyfile(found, target)
    return target


def format_list() -> str:
    recipes = shipped_recipes()
    width = max((len(n) for n in recipes), default=0)
    lines = [f"{name:<{width}}  {describe(path)}" for name, path in recipes.items()]
    return "\n".join(lines + ["", "Run one with `hftl run NAME`, or copy it to edit: `hftl recipes cp NAME my.yaml`."])

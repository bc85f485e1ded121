"""hftl's small Python API, for notebooks and scripts (``import hftl`` exposes these lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hftl.config.recipe import Recipe
    from hftl.training.train import RunResult


def run_recipe(
    recipe: str | Path | Recipe, overrides: list[str] | tuple[str, ...] = (), resume: bool | None = None
) -> RunResult:
    """Validate a recipe (a YAML path plus ``key.path=value`` overrides, or a Recipe) and train it."""
    from hftl.config.recipe import Recipe, load_recipe
    from hftl.training.train import run

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    elif overrides:
        from hftl.config.recipe import apply_overrides, validate_recipe

        recipe = validate_recipe(apply_overrides(recipe.model_dump(mode="json"), overrides), recipe.source_file)
    return run(recipe, resume=resume)


def predict_run(run_dir: str | Path, inputs: list[Any], top_k: int = 1) -> list[list[dict[str, Any]]]:
    """Labels with scores for each input (texts or image paths), best first, from a trained run folder."""
    from hftl.cli.predict import predict

    return predict(run_dir, inputs, top_k=top_k)

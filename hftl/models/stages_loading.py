"""``model.pooling: stages``: the all-stages image classifier (:mod:`hftl.models.stages_model`) from a recipe.

The body comes from the ``model`` section as any timm checkpoint's does (``checkpoint`` or ``init_from``, pretrained
or not); an ``init_from`` run that was itself trained with ``stages`` is loaded whole, its head kept for the same
labels. A checkpoint that is not a timm model, or whose stages timm cannot hand over as maps, is a recipe error
naming the key (exit 2, before the run folder is written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hftl.config.errors import RecipeError

if TYPE_CHECKING:
    from hftl.config.schema import LayerGroupPattern, ModelSection

FIX = "Use a timm checkpoint (e.g. efficientnet-lite0, or a Hub 'timm/...' model), or remove model.pooling."


def load_stages_classifier(
    section: ModelSection,
    labels: list[str],
    problem_type: str,
    layer_groups: list[LayerGroupPattern] | None,
    recipe_file: str | None,
) -> Any:
    """The ``model`` section's timm body with a linear head on all its stages, for ``labels``."""
    from transformers import AutoConfig, AutoModelForImageClassification

    from hftl.models.pretrained import label_config, load_body, load_model_for_labels, load_pretrained, model_source
    from hftl.models.stages_model import StagesClassifierConfig, StagesModelForImageClassification

    source = model_source(section, recipe_file)
    remote = {"revision": section.revision, "trust_remote_code": section.trust_remote_code}
    model_type = load_pretrained(AutoConfig, source, what="config", **remote).model_type
    if model_type == StagesClassifierConfig.model_type:  # init_from an earlier stages run
        return load_model_for_labels(
            AutoModelForImageClassification, section, labels, problem_type, layer_groups, recipe_file
        )
    if model_type != "timm_wrapper":
        raise RecipeError(
            recipe_file,
            "model.pooling",
            f"'stages' reads the stages of a timm model (timm's forward_intermediates); {source} is a "
            f"'{model_type}' checkpoint",
            "stages",
            hint=FIX,
        )
    body = load_body(section, source, section.revision)
    try:
        config = StagesClassifierConfig.for_timm(body.timm_model, body.config, **label_config(labels, problem_type))
    except ValueError as exc:
        problem = f"'stages' does not suit this checkpoint: {exc}"
        raise RecipeError(recipe_file, "model.pooling", problem, hint=FIX) from None
    return StagesModelForImageClassification(config, timm_model=body.timm_model)

"""LoRA (Hu et al. 2021) through peft: low-rank adapters train, the pretrained weights stay frozen."""

from __future__ import annotations

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy


class LoraOptions(Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="Module names to adapt; peft's default for the model type when omitted."
    )


def wrap_lora(model, recipe, options: LoraOptions):
    """Wrap the model with peft LoRA adapters; the new head trains fully and is saved with the adapter."""
    from peft import LoraConfig, get_peft_model

    from hftl.models.layers import map_layer_groups
    from hftl.tasks import TASKS

    custom = [(g.name, g.patterns) for g in recipe.strategy.layer_groups or []] or None
    # the head group's modules, e.g. `classifier`, or `timm_model.classifier` inside a timm wrapper
    head = [
        m
        for g in map_layer_groups(model, custom=custom)
        if g.is_head
        for m in g.modules
        if any(True for _ in model.get_submodule(m).parameters())
    ]  # not `dropout`: peft would match lora_dropout
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        task_type=TASKS.get(recipe.task).peft_task_type,
        target_modules=options.target_modules,
        modules_to_save=head or None,
    )
    check_target_modules(model, options.target_modules, recipe.source_file)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. no default target modules for this model type
        raise _target_error(model, recipe.source_file, str(exc).splitlines()[0]) from None


def check_target_modules(model, targets: list[str] | None, file: str | None) -> None:
    """Every name in ``strategy.lora.target_modules`` must name a module (peft matches whole name parts)."""
    if targets is None:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise _target_error(model, file, f"names no module of this model: {', '.join(missing)}", missing)


def _target_error(model, file: str | None, problem: str, value=...):
    import torch

    from hftl.config.errors import RecipeError

    short = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        }
    )
    return RecipeError(
        file,
        "strategy.lora.target_modules",
        problem,
        value,
        hint=f"This model's Linear/Conv2d layers are named: {', '.join(short)}.",
    )


@strategy("lora", options=LoraOptions, wrap_model=wrap_lora)
def lora(groups, options: LoraOptions, steps_per_epoch, total_steps, where):
    """LoRA adapters (and the head, saved with them) train from the start; peft froze the rest."""
    return [0 for _ in groups]

"""LoRA (Hu et al. 2021) through peft: low-rank adapters train, the pretrained weights stay frozen.

Which layers get adapters when ``strategy.lora.target_modules`` is left out, in order:

1. peft's own table for the model type (BERT ``query``/``value``, Llama ``q_proj``/``v_proj``,
   GPT-2 ``c_attn``...), when those layers exist in the body;
2. else the body's attention query and value projections, found by their usual names
   (ViT/DINOv2 ``query``/``value``, ``q_proj``/``v_proj``, fused ``qkv`` / ``Wqkv`` / ``query_key_value``);
3. else (CNNs) every ``Linear`` and plain ``Conv2d`` of the body: peft adapts ``Conv2d`` with a
   kxk ``lora_A`` conv and a 1x1 ``lora_B``, but only where the rank divides the conv's groups, so
   depthwise convolutions (groups = channels) are left out, and not under MobileNet's TF-style
   padding (it reads ``conv.stride``, which peft's wrapper does not have);
4. else (I-BERT, whose ``QuantLinear`` is no ``nn.Linear`` and returns a tuple) the query/value
   weights themselves, through peft's ``target_parameters`` (a parametrisation of the weight:
   no wrapper, so it reloads with plain peft; it takes no dropout, so dropout is 0 there).

A body with nothing to adapt (MobileNet v1/v2: depthwise convolutions, and pointwise ones
under TF-style padding) is refused with the layer names it has. An hftl-side Conv2d wrapper
that exposes ``stride`` would train there, but the saved adapter would not load in plain peft.

``target_modules: all-linear`` adapts every ``Linear`` (and GPT-2's ``Conv1D``) of the body,
as peft's shorthand does. The head is never adapted: it trains whole and is saved with the
adapter (peft's ``modules_to_save``), on every architecture.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy

# q_proj, v_lin, query, qkv, DeepSeek's q_a_proj / kv_b_proj, GPT-2's c_attn, ...
_ATTENTION_QV = re.compile(r"(q|v|kv|qkv|query|value|query_key_value|Wqkv|c_attn)(_\w+)?")


class LoraOptions(Section):
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Module names to adapt (a name matches every module called so, or ending in '.' + it), or "
        "'all-linear' (every Linear layer of the body). Default: the attention query/value projections "
        "(peft's table for the model type, else found by name), or every Linear/Conv2d layer of a CNN's body.",
    )


def wrap_lora(model, recipe, options: LoraOptions):
    """Wrap the model with peft LoRA adapters; the new head trains fully and is saved with the adapter."""
    from peft import LoraConfig, get_peft_model

    from hftl.config.log import say
    from hftl.config.registry import TASKS
    from hftl.models.layers import map_layer_groups

    custom = [(g.name, g.patterns) for g in recipe.strategy.layer_groups or []] or None
    # the head group's modules, e.g. `classifier`, or `timm_model.classifier` inside a timm wrapper
    head = [
        m
        for g in map_layer_groups(model, custom=custom)
        if g.is_head
        for m in g.modules
        if any(True for _ in model.get_submodule(m).parameters())
    ]  # not `dropout`: peft would match lora_dropout
    weights: list[str] = []  # parameters adapted in place, for layers peft cannot wrap (I-BERT's QuantLinear)
    dropout = options.dropout
    if isinstance(options.target_modules, list):
        check_target_modules(model, options.target_modules, recipe.source_file)
        targets, how = options.target_modules, "strategy.lora.target_modules"
    else:
        targets, how = lora_targets(model, head, options.target_modules, options.r)
        if not targets and options.target_modules is None:
            weights, how = weight_targets(model, head)
        if not targets and not weights:
            raise _target_error(
                model,
                recipe.source_file,
                f"finds no layer peft's LoRA can adapt in the body of this '{model.config.model_type}' model "
                "(nn.Linear, or nn.Conv2d outside TF-style padding)",
                options.target_modules,
                hint="Use another strategy (full, partial, progressive), or name the layers to adapt.",
            )
    if weights and dropout:
        if "dropout" in options.model_fields_set:
            from hftl.config.errors import RecipeError

            raise RecipeError(
                recipe.source_file,
                "strategy.lora.dropout",
                f"must be 0 for this '{model.config.model_type}' model: its attention layers are no nn.Linear, so "
                "LoRA adapts their weights in place (peft's target_parameters), which takes no dropout",
                dropout,
                hint="Leave it out or set 0.",
            )
        dropout, how = 0.0, f"{how}; dropout 0, as peft adapts weights in place without it"
    config = LoraConfig(
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=dropout,
        task_type=TASKS.get(recipe.task).peft_task_type,
        target_modules=targets,
        target_parameters=weights or None,
        modules_to_save=head or None,
    )
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:  # e.g. a named module peft cannot adapt
        raise _target_error(model, recipe.source_file, str(exc).splitlines()[0]) from None
    summary = describe_adapters(wrapped)
    say(
        f"[lora] adapters on {summary['adapted_layers']} layers ({_counts(summary['modules'])}; {how}); "
        f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters train"
    )
    return wrapped


def lora_targets(model, head: list[str], choice: str | None, r: int) -> tuple[list[str], str]:
    """Full names of the body layers to adapt by default (or for 'all-linear'), and how they were chosen."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    # MobileNet's TF-style padding reads `conv.stride` at every forward, which peft's Conv2d wrapper lacks
    convs = not getattr(getattr(model, "config", None), "tf_padding", False)
    linear = [
        (name, module)
        for name, module in model.named_modules()
        if (
            isinstance(module, (nn.Linear, Conv1D))
            # peft builds lora_A with the conv's own class (EfficientNet's depthwise one takes no `groups`);
            # the rank must divide the conv's groups
            or (convs and isinstance(module, nn.Conv2d) and _plain_conv(type(module)) and r % module.groups == 0)
        )
        and not any(name == h or name.startswith(h + ".") for h in head)
    ]
    if choice == "all-linear":
        return [n for n, m in linear if not isinstance(m, nn.Conv2d)], "all-linear"
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    leaf = {n: n.rpartition(".")[2] for n, _ in linear}
    if names := [n for n, _ in linear if leaf[n] in PEFT_DEFAULTS.get(model_type, ())]:
        return names, f"peft's default for '{model_type}'"
    if names := [n for n, m in linear if not isinstance(m, nn.Conv2d) and _ATTENTION_QV.fullmatch(leaf[n])]:
        return names, "the attention query/value projections"
    return [n for n, _ in linear], "every Linear and Conv2d layer of the body"


def weight_targets(model, head: list[str]) -> tuple[list[str], str]:
    """The 2-D weights of the body's attention query/value layers that are no nn.Linear (I-BERT's QuantLinear
    returns a tuple, so peft cannot wrap it). peft's ``target_parameters`` adapts such a weight in place (a
    parametrisation), which works for any layer that reads its own ``weight`` and reloads with plain peft."""
    from torch import nn

    names = [
        f"{name}.weight"
        for name, module in model.named_modules()
        if _ATTENTION_QV.fullmatch(name.rpartition(".")[2])
        and not isinstance(module, nn.Linear)
        and isinstance(getattr(module, "weight", None), nn.Parameter)
        and module.weight.ndim == 2
        and not any(name == h or name.startswith(h + ".") for h in head)
    ]
    return names, "the attention query/value weights, adapted in place"


def _plain_conv(cls: type) -> bool:
    """A Conv2d class whose constructor takes 5 positional arguments and `groups` and `bias` by keyword, as peft
    builds lora_A and lora_B with it (BiT's weight-standardised conv does; EfficientNet's depthwise one does not)."""
    import inspect

    parameters = inspect.signature(cls).parameters
    return len(parameters) >= 5 and {"groups", "bias"} <= set(parameters)


def describe_adapters(model) -> dict:
    """Which layers carry LoRA adapters (count per layer name) and how many parameters train, for the plan."""
    from peft.tuners.lora import LoraLayer

    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    return {
        "modules": dict(Counter(name.rpartition(".")[2] for name in adapted)),
        "adapted_layers": len(adapted),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
    }


def _counts(modules: dict) -> str:
    return ", ".join(f"{name} x{n}" for name, n in modules.items())


def check_target_modules(model, targets: list[str] | None, file: str | None) -> None:
    """Every name in ``strategy.lora.target_modules`` must name a module (peft matches whole name parts)."""
    if targets is None:
        return
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise _target_error(model, file, f"names no module of this model: {', '.join(missing)}", missing)


def _target_error(model, file: str | None, problem: str, value=..., hint: str = ""):
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
        hint=f"{hint + ' ' if hint else ''}This model's Linear/Conv2d layers are named: {', '.join(short) or 'none'}.",
    )


@strategy("lora", options=LoraOptions, wrap_model=wrap_lora)
def lora(groups, options: LoraOptions, steps_per_epoch, total_steps, where):
    """LoRA adapters (and the head, saved with them) train from the start; peft froze the rest."""
    return [0 for _ in groups]

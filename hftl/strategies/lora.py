"""LoRA (Hu et al. 2021) through peft: low-rank adapters train, the pretrained weights stay frozen.

Which layers get adapters when ``strategy.lora.target_modules`` is left out, in order:

1. peft's own table for the model type (BERT ``query``/``value``, Llama ``q_proj``/``v_proj``,
   GPT-2 ``c_attn``...), when those layers exist in the body;
2. else the body's attention query and value projections, found by their usual names
   (ViT/DINOv2 ``query``/``value``, ``q_proj``/``v_proj``, fused ``qkv`` / ``Wqkv`` / ``query_key_value``);
3. else (CNNs) every ``Linear`` and plain ``Conv2d`` of the body: peft adapts ``Conv2d`` with a
   kxk ``lora_A`` conv and a 1x1 ``lora_B``. The run publishes the model with its adapters merged,
   so only convolutions an adapter merges into exactly are adapted: not grouped or depthwise ones
   (peft cannot merge them), not ``Conv2d`` subclasses (BiT's standardises its weight at every
   forward, which a merged weight would not match), not dilated ones or ones with a padding mode
   other than zeros (peft's ``lora_A`` copies neither);
4. else (I-BERT, whose ``QuantLinear`` is no ``nn.Linear`` and returns a tuple) the query/value
   weights themselves, through peft's ``target_parameters`` (a parametrisation of the weight:
   no wrapper, so it reloads with plain peft; it takes no dropout, so dropout is 0 there).

Model types where the query/value projections may not reach the loss (MRA without its CUDA kernel)
get every Linear of the body
(:data:`ALL_LINEAR`). peft's conv wrapper hides its base conv's ``stride``, ``kernel_size`` and
``dilation``, which MobileNet's TF-style padding reads at every forward: :func:`expose_conv_geometry`
shows them on the wrapper again (the merged model needs nothing; plain peft needs the same call).

``target_modules: all-linear`` adapts every ``Linear`` (and GPT-2's ``Conv1D``) of the body,
as peft's shorthand does. The head is never adapted: it trains whole and is saved with the
adapter (peft's ``modules_to_save``), on every architecture.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Literal

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy

# q_proj, v_lin, query, qkv, DeepSeek's q_a_proj / kv_b_proj, GPT-2's c_attn, ...
_ATTENTION_QV = re.compile(r"(q|v|kv|qkv|query|value|query_key_value|Wqkv|c_attn)(_\w+)?")
ALL_LINEAR = {
    # transformers' MRA attention needs the kernels-community/mra CUDA kernel; without it (on CPU, or offline) it
    # returns zeros, so the query/value projections are off the forward path and only the feed-forward layers learn
    "mra": "every Linear of the body: MRA's attention returns zeros without its CUDA kernel, the feed-forward "
    "layers learn either way",
}
"""Model types whose default LoRA targets are every Linear of the body, and why."""
_CONV_GEOMETRY = ("stride", "kernel_size", "dilation", "padding")


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
        targets, how = lora_targets(model, head, options.target_modules)
        if not targets and options.target_modules is None:
            weights, how = weight_targets(model, head)
        if not targets and not weights:
            raise _target_error(
                model,
                recipe.source_file,
                f"finds no layer peft's LoRA can adapt in the body of this '{model.config.model_type}' model "
                "(nn.Linear, or a plain nn.Conv2d an adapter merges into: not grouped, dilated or subclassed, "
                "as BiT's weight-standardised conv is; the run publishes the adapters merged into the weights)",
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
        fan_in_fan_out=_conv1d_only(model, targets),
    )
    try:
        with warnings.catch_warnings():
            # peft's PeftModel reads transformers' deprecated `is_gradient_checkpointing` alias (peft 0.21,
            # transformers 5.x): a FutureWarning on stderr at every LoRA run that the user can do nothing about
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            wrapped = get_peft_model(model, config)
    except ValueError as exc:  # e.g. a named module peft cannot adapt
        raise _target_error(model, recipe.source_file, str(exc).splitlines()[0]) from None
    expose_conv_geometry(wrapped)
    summary = describe_adapters(wrapped)
    say(
        f"[lora] adapters on {summary['adapted_layers']} layers ({_counts(summary['modules'])}; {how}); "
        f"{summary['trainable_params']:,} of {summary['total_params']:,} parameters train"
    )
    return wrapped


def _conv1d_only(model, targets: list[str]) -> bool:
    """Whether every layer ``targets`` names is transformers' Conv1D (GPT-2 and kin store weights (in, out)): peft's
    ``fan_in_fan_out``, which peft would otherwise switch on itself with a warning at every run."""
    from transformers.pytorch_utils import Conv1D

    named = [m for n, m in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
    return bool(named) and all(isinstance(m, Conv1D) for m in named)


def lora_targets(model, head: list[str], choice: str | None) -> tuple[list[str], str]:
    """Full names of the body layers to adapt by default (or for 'all-linear'), and how they were chosen."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    linear = [
        (name, module)
        for name, module in model.named_modules()
        if (isinstance(module, (nn.Linear, Conv1D)) or (isinstance(module, nn.Conv2d) and _adaptable_conv(module)))
        and not any(name == h or name.startswith(h + ".") for h in head)
    ]
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if choice == "all-linear" or (choice is None and model_type in ALL_LINEAR):
        names = [n for n, m in linear if not isinstance(m, nn.Conv2d)]
        return names, "all-linear" if choice else ALL_LINEAR[model_type]
    leaf = {n: n.rpartition(".")[2] for n, _ in linear}
    if names := [n for n, _ in linear if leaf[n] in PEFT_DEFAULTS.get(model_type, ())]:
        return names, f"peft's default for '{model_type}'"
    if names := [n for n, m in linear if not isinstance(m, nn.Conv2d) and _ATTENTION_QV.fullmatch(leaf[n])]:
        return names, "the attention query/value projections"
    return [n for n, _ in linear], "every Linear and ungrouped Conv2d layer of the body"


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


def _adaptable_conv(conv) -> bool:
    """A Conv2d whose LoRA adapter computes what it should and merges into it (the run publishes the merged model).

    Only plain ``nn.Conv2d``: a subclass may transform its weight in ``forward`` (BiT standardises it), which peft's
    merge cannot follow. peft cannot merge into a grouped conv, and its lora_A copies the stride and padding but not
    the dilation or the padding mode."""
    from torch import nn

    return type(conv) is nn.Conv2d and conv.groups == 1 and set(conv.dilation) == {1} and conv.padding_mode == "zeros"


def expose_conv_geometry(model) -> None:
    """Show each LoRA conv wrapper's base ``stride``, ``kernel_size``, ``dilation`` and ``padding`` on the wrapper.

    peft's wrapper is no nn.Conv2d and does not forward them; MobileNet v1/v2 read them at every forward (their
    TF-style padding). Plain attributes copied from the frozen conv (they never change); merging drops the wrapper."""
    from peft.tuners.lora.layer import _ConvNd

    for module in model.modules():
        if isinstance(module, _ConvNd):
            base = module.get_base_layer()
            for attribute in _CONV_GEOMETRY:
                setattr(module, attribute, getattr(base, attribute))


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
    from torch import nn

    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise _target_error(model, file, f"names no module of this model: {', '.join(missing)}", missing)
    convs = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv2d)
        and not _adaptable_conv(module)
        and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if convs:
        raise _target_error(
            model,
            file,
            f"names convolutions peft's LoRA cannot adapt and merge (grouped or depthwise, dilated, a padding mode "
            f"other than zeros, or a Conv2d subclass that may change its weight in forward): {', '.join(convs[:5])}"
            f"{' ...' if len(convs) > 5 else ''}",
            targets,
            hint="Name only plain Linear and ungrouped Conv2d layers.",
        )


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

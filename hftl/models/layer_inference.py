r"""The generic layer-group mapper: input-to-head order read from the module tree of any model.

Used for every model type without a family mapper in :data:`hftl.models.layers.LAYER_MAPPERS`.
transformers models share one shape, and this mapper reads it:

- the **backbone** is the submodule named by ``base_model_prefix`` (``bert``, ``model``,
  ``deberta``, ...); whatever sits beside it in a task model is the new **head**
  (``classifier``, ``score``, ``pre_classifier``, ``classification_head``...), except
  normalisation layers and a few pretrained modules named in :data:`PRETRAINED_BESIDE`
  (ModernBERT's ``head``), which join the neck. A model without that attribute (CLIP's
  and SigLIP's vision classifiers, HGNet) is its own backbone and its last module with
  parameters after the blocks is the head; a bare ``AutoModel`` has no head;
- the **blocks** are the largest ``ModuleList`` / ``Sequential`` of numbered children in
  the backbone (``encoder.layer``, ``layers``, ``h``, ``encoder.stages``...), one group
  per element, in index order. When its elements hold lists of their own (Swin's
  stages of blocks, RegNet's, MobileViT's) the groups are stages (``stage.N``), else
  layers (``layer.N``). Lists of the same length beside it in the same parent are the
  same stages or layers cut another way (XLM's ``attentions`` / ``ffns``, PVT's
  ``patch_embeddings`` / ``block``) and join them element by element;
- the rest of the backbone goes **before** the blocks (``embeddings``, or ``stem`` for
  a convolutional input without token or position parameters) or **after** them
  (``pooler`` when that is all there is, else ``neck``): by the position of its
  parameters relative to the blocks, except that embeddings and position biases shared by
  every block (DeBERTa's ``rel_embeddings``, MPNet's ``relative_attention_bias``) are
  inputs, and a ``pooler`` is an output wherever it is registered (GTE registers it first).

Inference gives up, rather than guess, when it finds no list of blocks, when two
unrelated stacks of blocks compete (encoder-decoders such as T5 and BART), or when a
task model has nothing beside its backbone to call a head (Perceiver keeps its
classifier inside). The error then names the model's own top-level modules and prints
a ``strategy.layer_groups`` block for this model that works as written.
"""

from __future__ import annotations

import re

from torch import nn

from hftl.config.errors import HftlError

PRETRAINED_BESIDE = {"modernbert": ("head",), "modernbert-decoder": ("head",)}
"""Per model type, modules beside the backbone that a base checkpoint fills (neck, not head)."""
INPUT_SIDE = {"deberta-v2": (r"encoder\.LayerNorm\.", r"encoder\.conv\.")}
"""Per model type, backbone modules registered after the blocks that act on the input side:
DeBERTa-v2/v3 normalises its shared relative embeddings with ``encoder.LayerNorm`` and adds
``encoder.conv`` (computed from the embeddings) to the first layer's output."""
_SHARED_INPUT = re.compile(r"(^|\.)(\w*embed\w*|\w*position\w*|rel_pos\w*|relative_attention_bias)(\.|$)")
_PEFT_SEGMENTS = re.compile(r"\.(?:base_layer|original_module|(?:lora_\w+|modules_to_save)\.[^.]+)(?=\.|$)")
_COMPETING_SHARE = 0.1  # a second stack of blocks this large (vs the main one) makes the order uncertain
_OUTPUT_SIDE = re.compile(r"(^|\.)(pooler|final_\w+|ln_f|norm_f)(\.|$)")  # OPT registers its final norm first


class UncertainLayout(HftlError):
    """The module tree does not say for sure which part runs before which."""


def infer_layer_groups(model: nn.Module) -> dict[str, str]:
    """Map every parameter name of ``model`` (bare names, PEFT segments removed) to its group name.

    Groups come back in input-to-head order (dict order). Raises :class:`UncertainLayout`
    with a working ``strategy.layer_groups`` block when the layout is ambiguous.
    """
    names = [_bare(n) for n, _ in model.named_parameters()]
    model_type = str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)
    backbone = _backbone_path(model)
    is_task_model = "For" in type(model).__name__
    body = model.get_submodule(backbone) if backbone else model
    from transformers import PreTrainedModel

    towers = [n for n, c in body.named_children() if isinstance(c, PreTrainedModel)]
    if len(towers) > 1:
        why = f"it joins several models ({', '.join(towers)}) and their order is not clear"
        raise _uncertain(model, model_type, why)
    lists = _block_lists(body, backbone)
    if not any(count for _, _, count in lists):
        raise _uncertain(model, model_type, "it has no list of repeated blocks (a ModuleList of layers or stages)")
    trunk = max(lists, key=lambda item: item[2])
    parent = trunk[0].rpartition(".")[0]
    zipped = [lst for lst in lists if lst[0].rpartition(".")[0] == parent and lst[1] == trunk[1]]
    competing = [lst for lst in lists if lst not in zipped and lst[2] >= _COMPETING_SHARE * trunk[2]]
    if competing:
        stacks = ", ".join(lst[0] for lst in [trunk, *competing])
        raise _uncertain(model, model_type, f"it has several stacks of blocks ({stacks}) and their order is not clear")

    nested = all(_is_stage(child) for _, child in model.get_submodule(trunk[0]).named_children())
    block_word = "stage" if nested else "layer"
    heads, necks = _beside_backbone(model, backbone, is_task_model, model_type, trunk[0])
    if is_task_model and not heads:
        raise _uncertain(model, model_type, "nothing beside its backbone looks like the new task head")

    first_block = next(i for i, n in enumerate(names) if _under_any(n, [p for p, _, _ in zipped]))
    input_side = [re.compile(re.escape(backbone + ".") + p if backbone else p) for p in INPUT_SIDE.get(model_type, ())]
    group_of: dict[str, str] = {}
    for index, name in enumerate(names):
        if (element := _element(name, zipped)) is not None:
            group_of[name] = f"{block_word}.{element}"
        elif _under_any(name, necks):
            group_of[name] = "after"
        elif _under_any(name, heads) or (is_task_model and backbone and not name.startswith(backbone + ".")):
            group_of[name] = "head"  # beside the backbone: new in the task model
        else:
            inner = name.removeprefix(backbone + ".") if backbone else name
            module_path = inner.rpartition(".")[0]
            if _OUTPUT_SIDE.search(module_path):
                group_of[name] = "after"
            elif _SHARED_INPUT.search(module_path) or any(r.match(name) for r in input_side):
                group_of[name] = "before"
            else:
                group_of[name] = "before" if index < first_block else "after"

    before = [n for n in names if group_of[n] == "before"]
    after = [n for n in names if group_of[n] == "after"]
    before_name = "stem" if before and _is_conv_stem(model, before) else "embeddings"
    after_name = "pooler" if after and all(re.search(r"(^|\.)pooler\.", n) for n in after) else "neck"
    rename = {"before": before_name, "after": after_name}
    group_of = {n: rename.get(g, g) for n, g in group_of.items()}
    order = [before_name, *(f"{block_word}.{i}" for i in range(trunk[1])), after_name, "head"]
    return {n: group_of[n] for g in order for n in names if group_of[n] == g}


def suggest_layer_groups(model: nn.Module) -> str:
    """A ``strategy.layer_groups`` YAML block that covers every parameter of this model: one group per
    top-level module of its backbone, in parameter order, then everything beside the backbone as the head."""
    backbone = _backbone_path(model)
    dot = f"{backbone}." if backbone else ""
    rows: dict[str, list[str]] = {}
    for name in dict.fromkeys(_bare(n) for n, _ in model.named_parameters()):
        if backbone and not name.startswith(dot):
            top = name.split(".")[0]
            rows.setdefault("head", []).append(re.escape(top) + ("\\." if "." in name else "$"))
            continue
        inner = name.removeprefix(dot)
        top = inner.split(".")[0]
        rows.setdefault(top, []).append(re.escape(dot + top) + ("\\." if "." in inner else "$"))
    lines = ["  strategy:", "    layer_groups:"]
    for group, patterns in rows.items():
        unique = list(dict.fromkeys(patterns))
        pattern = f"^{unique[0]}" if len(unique) == 1 else f"^({'|'.join(unique)})"
        lines.append(f"      - {{name: {group}, patterns: ['{pattern}']}}")
    return "\n".join(lines)


def top_level_modules(model: nn.Module) -> str:
    """'bert.embeddings (20,608), bert.encoder (17,088), ..., classifier (99)': the model's top-level modules."""
    backbone = _backbone_path(model)
    body = model.get_submodule(backbone) if backbone else model
    dot = f"{backbone}." if backbone else ""

    def size(module: nn.Module) -> str:
        return f"{sum(p.numel() for p in module.parameters()):,}"

    parts = [f"{dot}{n} ({size(c)})" for n, c in body.named_children()]
    if backbone:
        parts += [f"{n} ({size(c)})" for n, c in model.named_children() if n != backbone]
    return ", ".join(parts)


# --------------------------------------------------------------------------- helpers
def _bare(name: str) -> str:
    return _PEFT_SEGMENTS.sub("", name)


def _backbone_path(model: nn.Module) -> str:
    """'bert' for a BertFor... model, '' when the model is its own backbone."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    child = getattr(model, prefix, None) if prefix else None
    return prefix if isinstance(child, nn.Module) and child is not model else ""


def _block_lists(body: nn.Module, backbone: str) -> list[tuple[str, int, int]]:
    """Outermost lists of numbered modules in the backbone (full path, length, parameter count, 0 when its
    elements are single layers, such as XLM's per-layer norms); none inside an embeddings module (MarkupLM's
    per-depth xpath embeddings are not blocks)."""
    found: list[tuple[str, int, int]] = []
    prefix = backbone + "." if backbone else ""

    def walk(module: nn.Module, path: str) -> None:
        for name, child in module.named_children():
            full = f"{path}{name}"
            kids = list(child.named_children())
            if (
                isinstance(child, (nn.ModuleList, nn.Sequential))
                and kids
                and all(k.isdigit() for k, _ in kids)
                and (count := sum(p.numel() for p in child.parameters()))
            ):
                found.append((prefix + full, len(kids), count if _holds_blocks(child) else 0))
            elif "embed" not in name.lower() and type(child).__name__ != "ModuleDict":
                walk(child, full + ".")

    walk(body, "")
    return found


def _holds_blocks(module: nn.Module) -> bool:
    """A list whose elements are blocks (modules made of modules), not a Sequential of single layers."""
    weighted = [child for child in module.children() if any(True for _ in child.parameters())]
    return bool(weighted) and all(any(True for _ in child.children()) for child in weighted)


def _is_stage(element: nn.Module) -> bool:
    """A stage: itself a list of blocks, or holding one with at least half of its parameters (Swin, RegNet)."""
    if isinstance(element, (nn.ModuleList, nn.Sequential)) and _holds_blocks(element):
        return True
    total = sum(p.numel() for p in element.parameters())
    return any(
        isinstance(m, (nn.ModuleList, nn.Sequential))
        and all(k.isdigit() for k, _ in m.named_children())
        and _holds_blocks(m)
        and 2 * sum(p.numel() for p in m.parameters()) >= total
        for m in element.modules()
        if m is not element
    )


def _element(name: str, zipped: list[tuple[str, int, int]]) -> int | None:
    for path, _, _ in zipped:
        if name.startswith(path + "."):
            return int(name[len(path) + 1 :].split(".", 1)[0])
    return None


def _under_any(name: str, paths: list[str]) -> bool:
    return any(name.startswith(p + ".") for p in paths)


def _beside_backbone(
    model: nn.Module, backbone: str, is_task_model: bool, model_type: str, trunk: str
) -> tuple[list[str], list[str]]:
    """(head modules, pretrained neck modules) among the model's top-level modules outside the backbone."""
    if not is_task_model:
        return [], []
    with_params = [(n, c) for n, c in model.named_children() if any(True for _ in c.parameters())]
    if backbone:
        beside = [(n, c) for n, c in with_params if n != backbone]
        keep = PRETRAINED_BESIDE.get(model_type, ())
        necks = [n for n, c in beside if n in keep or type(c).__name__.endswith("Norm")]
        return [n for n, _ in beside if n not in necks], necks
    # its own backbone: the last top-level module with parameters after the blocks is the head
    top = trunk.split(".")[0]
    after = [n for n, _ in with_params[[n for n, _ in with_params].index(top) + 1 :]]
    return after[-1:], after[:-1]


def _is_conv_stem(model: nn.Module, before: list[str]) -> bool:
    """True for a convolutional stem: a conv layer before the blocks, and no token or position table."""
    modules = {n: getattr(m, "base_layer", m) for n, m in model.named_modules()}  # a LoRA layer's own layer
    owners = {_bare(n).rpartition(".")[0] for n in before}
    has_conv = any(isinstance(modules.get(o), nn.modules.conv._ConvNd) for o in owners)
    has_table = any(isinstance(modules.get(o), nn.Embedding) for o in owners) or any(
        not isinstance(modules.get(_bare(n).rpartition(".")[0]), (nn.modules.conv._ConvNd, nn.Linear))
        and n.rpartition(".")[2] not in ("weight", "bias", "running_mean", "running_var")
        for n in before
    )
    return has_conv and not has_table


def _uncertain(model: nn.Module, model_type: str, why: str) -> UncertainLayout:
    return UncertainLayout(
        f"hftl cannot tell the input-to-head order of this '{model_type}' model's layers for sure: {why}. "
        f"Its top-level modules: {top_level_modules(model)}. Describe the groups in the recipe, input first and "
        f"head last (regexes searched in parameter names); this block works for this model as written, split "
        f"it further where you want finer groups:\n{suggest_layer_groups(model)}"
    )

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
  inputs, and a ``pooler`` is an output wherever it is registered (GTE registers it first);
- a backbone with **two stacks** of blocks is read as a chain where the module tree says how
  data flows (see :func:`_ordered_stacks`): an encoder-decoder (BART, T5...) is
  ``embeddings`` (the shared token table, counted once, and every position table) ->
  ``encoder.layer.N`` -> ``encoder.neck`` (its final norm) -> ``decoder.layer.N`` -> ``neck``
  -> ``head``; a vision- or audio-language model is ``embeddings`` -> ``vision_tower.layer.N``
  -> ``vision_tower.neck`` (its last norm and the projector) -> ``language_model.layer.N`` ->
  ``neck`` -> ``head``. A classifier that its model keeps inside the backbone is the head
  when its class says so (Perceiver's ``PerceiverClassificationDecoder``).

Inference gives up, rather than guess, when it finds no list of blocks, when stacks of
blocks compete with no relation the module tree shows (CANINE's three encoders), or when a
task model has no new head (ShieldGemma 2 reads its language model's own output layer).
The error then names the model's own top-level modules and prints a
``strategy.layer_groups`` block for this model that works as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from hftl.config.errors import HftlError

PRETRAINED_BESIDE = {"modernbert": ("head",), "modernbert-decoder": ("head",)}
"""Per model type, modules beside the backbone that a base checkpoint fills (neck, not head)."""
INPUT_SIDE = {"deberta-v2": (r"encoder\.LayerNorm\.", r"encoder\.conv\."), "qwen3_asr": (r"audio_tower\.conv",)}
"""Per model type, backbone modules registered after the blocks that act on the input side:
DeBERTa-v2/v3 normalises its shared relative embeddings with ``encoder.LayerNorm`` and adds
``encoder.conv`` (computed from the embeddings) to the first layer's output; Qwen3-ASR's audio
tower registers its input convolutions (``conv2d1..3``, ``conv_out``) after its layers."""
_SHARED_INPUT = re.compile(r"(^|\.)(\w*embed\w*|\w*position\w*|rel_pos\w*|relative_attention_bias)(\.|$)")
_PEFT_SEGMENTS = re.compile(r"\.(?:base_layer|original_module|(?:lora_\w+|modules_to_save)\.[^.]+)(?=\.|$)")
_COMPETING_SHARE = 0.1  # a second stack of blocks this large (vs the main one) makes the order uncertain
_OUTPUT_SIDE = re.compile(r"(^|\.)(pooler|final_\w+|ln_f|norm_f)(\.|$)")  # OPT registers its final norm first


class UncertainLayout(HftlError):
    """The module tree does not say for sure which part runs before which."""


@dataclass(frozen=True)
class _Stack:
    """One stack of blocks: its lists (the trunk and the lists zipped with it), where it lives, what to call it."""

    owner: str  # full path of the module holding this stack alone ('' for a single-stack model: the whole body)
    lists: list[tuple[str, int, int]]
    word: str  # "layer" or "stage"
    label: str  # group name prefix: '' for a single stack, else the owner's own name ("encoder.", "vision_tower.")


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
    lists = _block_lists(body, backbone)
    if not any(count for _, _, count in lists):
        raise _uncertain(model, model_type, "it has no list of repeated blocks (a ModuleList of layers or stages)")
    stacks = _ordered_stacks(model, model_type, backbone, lists)
    heads, necks = _beside_backbone(model, backbone, is_task_model, model_type, stacks[-1].lists[0][0])
    if is_task_model and not heads:
        raise _uncertain(model, model_type, "nothing beside its backbone looks like the new task head")

    first = [next(i for i, n in enumerate(names) if _under_any(n, [p for p, _, _ in s.lists])) for s in stacks]
    input_side = [re.compile(re.escape(backbone + ".") + p if backbone else p) for p in INPUT_SIDE.get(model_type, ())]
    towers = len(stacks) > 1 and not getattr(getattr(model, "config", None), "is_encoder_decoder", False)
    last = len(stacks) - 1
    group_of: dict[str, str] = {}
    for index, name in enumerate(names):
        owner = next((k for k, s in enumerate(stacks) if not s.owner or name.startswith(s.owner + ".")), None)
        if owner is not None and (element := _element(name, stacks[owner].lists)) is not None:
            group_of[name] = f"{stacks[owner].label}{stacks[owner].word}.{element}"
        elif _under_any(name, necks):
            group_of[name] = "after"
        elif _under_any(name, heads) or (is_task_model and backbone and not name.startswith(backbone + ".")):
            group_of[name] = "head"  # beside the backbone: new in the task model
        else:
            inner = name.removeprefix(backbone + ".") if backbone else name
            module_path = inner.rpartition(".")[0]
            if _OUTPUT_SIDE.search(module_path):
                group_of[name] = _after(stacks, last if owner is None else owner)
            elif _SHARED_INPUT.search(module_path) or any(r.match(name) for r in input_side):
                group_of[name] = "before"
            elif owner is None and towers:
                group_of[name] = _after(stacks, last - 1)  # a projector between the towers, wherever registered
            elif owner is not None:
                group_of[name] = "before" if index < first[owner] else _after(stacks, owner)
            else:
                group_of[name] = "before" if index < first[0] else _after(stacks, sum(index > f for f in first) - 1)

    before = [n for n in names if group_of[n] == "before"]
    after = [n for n in names if group_of[n] == "after"]
    before_name = "stem" if before and _is_conv_stem(model, before) else "embeddings"
    after_name = "pooler" if after and all(re.search(r"(^|\.)pooler\.", n) for n in after) else "neck"
    rename = {"before": before_name, "after": after_name}
    group_of = {n: rename.get(g, g) for n, g in group_of.items()}
    order = [before_name]
    for k, stack in enumerate(stacks):
        count = stack.lists[0][1]
        order += [f"{stack.label}{stack.word}.{i}" for i in range(count)] + [_after(stacks, k)]
    order = [rename.get(g, g) for g in [*order, "head"]]
    return {n: group_of[n] for g in order for n in names if group_of[n] == g}


def _after(stacks: list[_Stack], k: int) -> str:
    """The group of what runs after stack ``k``'s blocks: between two stacks it is named for the first
    (``encoder.neck``: T5's final encoder norm; ``vision_tower.neck``: its last norm and the projector)."""
    return "after" if k == len(stacks) - 1 else f"{stacks[k].label}neck"


def _ordered_stacks(
    model: nn.Module, model_type: str, backbone: str, lists: list[tuple[str, int, int]]
) -> list[_Stack]:
    """The backbone's stacks of blocks, input first; one stack for most models.

    Two stacks are ordered only where the module tree says how data flows between them, by the
    stack the new head reads:

    - an encoder-decoder (``config.is_encoder_decoder``, stacks under ``encoder`` and ``decoder``):
      the encoder, then the decoder. Its classification head (BART's ``classification_head``,
      T5ForSequenceClassification's) reads the decoder's hidden state at the last EOS token, and the
      decoder reads the encoder's output through cross-attention, so the decoder is nearer the head;
    - a vision- or audio-language model: the other tower, then the language model (the tower holding
      the token embeddings, ``get_input_embeddings()``). The head reads the language model's hidden
      states, and the other tower's output enters the language model as input tokens, through the
      projector between them.

    Anything else (several stacks with no such relation, as CANINE's character / molecule / character
    encoders, or more than one tower feeding the language model) is refused rather than guessed.
    """
    trunk = max(lists, key=lambda item: item[2])
    zipped = _zipped(trunk, lists)
    # a stack in another pretrained model (a tower) competes whatever its size: Qwen3.5's vision tower is small
    competing = [
        lst
        for lst in lists
        if lst not in zipped
        and lst[2]
        and (
            lst[2] >= _COMPETING_SHARE * trunk[2]
            or _tower(model, backbone, lst[0]) != _tower(model, backbone, trunk[0])
        )
    ]
    if not competing:
        return [_Stack("", zipped, _block_word(model, trunk), "")]
    prefix = backbone + "." if backbone else ""
    candidates = [trunk, *competing]
    paths = [lst[0].removeprefix(prefix).split(".") for lst in candidates]
    common = 0
    while all(len(p) > common + 1 and p[common] == paths[0][common] for p in paths):
        common += 1
    owners = [prefix + ".".join(p[: common + 1]) for p in paths]
    stacks_text = ", ".join(lst[0] for lst in candidates)
    if len(set(owners)) < len(owners):
        raise _uncertain(model, model_type, f"it has several stacks of blocks ({stacks_text}) in one module")
    found = {o.rpartition(".")[2]: (o, lst) for o, lst in zip(owners, candidates, strict=True)}
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False) and set(found) == {"encoder", "decoder"}:
        order = ["encoder", "decoder"]
    else:
        try:
            embedding = model.get_input_embeddings()
        except (AttributeError, NotImplementedError):  # CANINE hashes characters: no token table
            embedding = None
        text = [o for o in found if isinstance(embedding, nn.Module) and _contains(model, found[o][0], embedding)]
        if len(found) != 2 or len(text) != 1:
            why = f"it has several stacks of blocks ({stacks_text}) and the module tree does not say which feeds which"
            raise _uncertain(model, model_type, why)
        order = [o for o in found if o != text[0]] + text
    return [_Stack(found[o][0], _zipped(found[o][1], lists), _block_word(model, found[o][1]), o + ".") for o in order]


def _tower(model: nn.Module, backbone: str, path: str) -> str:
    """The shallowest pretrained model inside the backbone that holds ``path`` ('' when none does)."""
    from transformers import PreTrainedModel

    parts = path.split(".")
    start = len(backbone.split(".")) if backbone else 0
    for end in range(start + 1, len(parts)):
        if isinstance(model.get_submodule(".".join(parts[:end])), PreTrainedModel):
            return ".".join(parts[:end])
    return ""


def _zipped(trunk: tuple[str, int, int], lists: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The trunk and the lists of the same length beside it in the same parent, trunk first."""
    parent = trunk[0].rpartition(".")[0]
    beside = [lst for lst in lists if lst[0].rpartition(".")[0] == parent and lst[1] == trunk[1] and lst != trunk]
    return [trunk, *beside]


def _block_word(model: nn.Module, trunk: tuple[str, int, int]) -> str:
    nested = all(_is_stage(child) for _, child in model.get_submodule(trunk[0]).named_children())
    return "stage" if nested else "layer"


def _contains(model: nn.Module, path: str, module: nn.Module) -> bool:
    return any(m is module for m in model.get_submodule(path).modules())


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
    """A stage: itself a list of blocks, or holding one with at least half of its parameters (Swin, RegNet).
    Its blocks repeat: a T5 block's list of distinct sublayers (attention, cross-attention, feed-forward) is no
    stage, while LeViT's stages (residual blocks of one class around a subsampling one) are."""
    if isinstance(element, (nn.ModuleList, nn.Sequential)) and _holds_blocks(element):
        return True
    total = sum(p.numel() for p in element.parameters())
    return any(
        isinstance(m, (nn.ModuleList, nn.Sequential))
        and all(k.isdigit() for k, _ in m.named_children())
        and _holds_blocks(m)
        and (len(m) == 1 or len({type(c) for c in m.children()}) < len(m))
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
        if heads := [n for n, _ in beside if n not in necks]:
            return heads, necks
        # a classifier kept inside the backbone, named so by its class (Perceiver's PerceiverClassificationDecoder)
        inside = model.get_submodule(backbone).named_children()
        own = {n: getattr(c, "original_module", c) for n, c in inside}  # under peft: a ModulesToSaveWrapper
        return [f"{backbone}.{n}" for n, c in own.items() if "Classification" in type(c).__name__], necks
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

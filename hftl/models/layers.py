r"""Layer groups: a model as ordered groups of parameters, from input to head.

Transfer strategies (freeze the first N groups, layer-wise LR decay, progressive
unfreezing) are computed from these groups, so every parameter lands in exactly
one group and a group's depth is its index in the list:

- depth 0 is the embeddings / stem. Class and distillation tokens, position
  embeddings, mask tokens and shared relative position biases (BEiT, DeBERTa, MPNet)
  belong here, as in timm: they are inputs to the first block.
- then one group per block (``layer.N``) or stage of blocks (``stage.N``), in index order; a model
  with two stacks has them one after the other, named for their stack, with what runs between
  them in ``<stack>.neck`` (``encoder.layer.N``, ``encoder.neck``, ``decoder.layer.N``; or a vision
  tower's blocks, its neck and projector, then ``language_model.layer.N``);
- then what sits after the last block: BERT's ``pooler``, or a ``neck`` holding the
  final norm (ViT, ConvNeXt, Llama) or pretrained parts beside the backbone (ModernBERT's ``head``);
- last, the newly initialised task ``head`` (``classifier``, ``score``, ``qa_outputs``, ...).
  A bare backbone (``AutoModel``) has no head group; groups with no parameter are dropped.

Any transformers model is mapped by the generic mapper (:mod:`hftl.models.layer_inference`),
which reads this order from the module tree and refuses, with a working example, when the
tree leaves it unsure. A family mapper, registered in :data:`LAYER_MAPPERS` under
``config.model_type``, is kept only where it knows more: timm models (timm's own group
matcher), hftl's pooled and all-stages classifiers, and CANINE (whose head reads one of two branches).
A mapper returns ``(group name, [regex patterns])`` pairs; a recipe's ``strategy.layer_groups``
gives the same pairs and wins over them (its last group is the head). Patterns are searched
(``re.search``) in each parameter name as the bare model spells it: a ``PeftModel``'s
``base_model.model.`` prefix and PEFT's own segments (``base_layer``, ``lora_A.<adapter>``,
``modules_to_save.<adapter>``, ``original_module``)
are removed first, so LoRA weights join the group of the module they adapt and the trainable
copy of a head stays in the head. The first matching group wins; the mappers never rely on
that (a test checks that their patterns do not overlap). Returned names are always the real
ones, and every group records which mapper made it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from hftl.config.errors import HftlError
from hftl.config.registry import Registry
from hftl.models.layer_inference import infer_layer_groups, suggest_layer_groups

GroupPatterns = list[tuple[str, list[str]]]
"""``(group name, [regex patterns])`` pairs, input first, head last."""
CustomGroups = Sequence[tuple[str, Sequence[str]]] | Mapping[str, Sequence[str]]
"""A recipe's ``strategy.layer_groups``: pairs as above, or a name -> patterns mapping."""

LAYER_MAPPERS: Registry[Callable[[nn.Module], GroupPatterns]] = Registry("layer-group mapper")

_PEFT_SEGMENTS = re.compile(r"\.(?:base_layer|original_module|(?:lora_\w+|modules_to_save)\.[^.]+)(?=\.|$)")


@dataclass(frozen=True)
class LayerGroup:
    """One group of a model, at depth = its index in :func:`map_layer_groups`' list."""

    name: str  # e.g. "embeddings", "layer.0", ..., "pooler", "head"
    params: tuple[str, ...]  # full names as in model.named_parameters(), in model order
    modules: tuple[str, ...]  # shallowest modules holding the group: .eval() on them reaches its Dropout/BatchNorm
    is_head: bool = False
    mapper: str = ""  # which mapper made it: a family's model type, "generic" or the recipe's groups


# --------------------------------------------------------------------------- mappers
@LAYER_MAPPERS.register("hftl-pooled-classifier")
def _pooled_classifier(model: nn.Module) -> GroupPatterns:
    """hftl's pooled text classifier (hftl/models/pooled_model.py): its body's groups, then its linear head."""
    _, groups = mapper_spec(model.body)
    return [
        (name, [r"^body\." + p.removeprefix("^") for p in patterns]) for name, patterns in groups if name != "head"
    ] + [("head", [r"^classifier\."])]


@LAYER_MAPPERS.register("timm_wrapper")
def _timm_wrapper(model: nn.Module) -> GroupPatterns:
    """Any timm model, grouped by timm's own `group_matcher(coarse=True)`.

    timm folds post-block norms (its 99999 "previous group" marker) into the last
    block and leaves the rest (head, head norms) unmatched; here both become the
    neck, except the classifier named by `pretrained_cfg['classifier']`, the head.
    A group is named by the text its timm regex matched ("blocks.3", "layer2") or
    by timm's key when that regex captures nothing ("stem").
    """
    timm_model = model.timm_model
    heads = timm_model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    matcher = timm_model.group_matcher(coarse=True)
    if not isinstance(matcher, Mapping):
        raise HftlError(
            f"timm model '{model.config.architecture}' groups its layers with a function hftl cannot "
            f"read; describe the groups in the recipe instead, e.g.:\n{suggest_layer_groups(model)}"
        )
    keys: dict[str, tuple[float, ...]] = {}
    group_of: dict[str, str] = {}
    for name, _ in timm_model.named_parameters():
        name = _PEFT_SEGMENTS.sub("", name)
        if any(name == h or name.startswith(h + ".") for h in heads):
            group = "head"
        else:
            key, group = _timm_key(matcher, name)
            keys.setdefault(group, key)
        group_of["timm_model." + name] = group
    order = sorted((g for g in keys if g != "neck"), key=keys.__getitem__) + ["neck", "head"]
    patterns = _prefix_patterns(group_of)
    return [(g, patterns.get(g, [])) for g in order]


@LAYER_MAPPERS.register("hftl-stages-classifier")
def _stages_classifier(model: nn.Module) -> GroupPatterns:
    """hftl's all-stages image classifier (hftl/models/stages_model.py): timm's groups of its body, then its linear
    head (the timm model is built without a classifier, so timm's own head group is empty)."""
    return [(g, p) for g, p in _timm_wrapper(model) if g != "head"] + [("head", [r"^classifier\."])]


@LAYER_MAPPERS.register("canine")
def _canine(model: nn.Module) -> GroupPatterns:
    """CANINE: characters -> a shallow character encoder -> downsampled to molecules -> the deep encoder -> then
    either the pooler (read by the sequence and multiple-choice heads) or the molecules upsampled, joined with the
    characters (``projection``) and a shallow final character encoder (read by the token head).

    Groups follow the path the model's head reads; the branch it does not read runs but gets no gradient, and
    joins the group where the two branches part (``pooler`` for a sequence head, ``neck`` for a token head),
    so no schedule spends a stage on it."""
    base = "canine." if hasattr(model, "canine") else ""

    def at(*names: str) -> list[str]:
        return [rf"^{re.escape(base + name)}\." for name in names]

    blocks = [(f"encoder.layer.{i}", at(f"encoder.layer.{i}")) for i in range(model.config.num_hidden_layers)]
    start = [("embeddings", at("char_embeddings")), ("initial_char_encoder", at("initial_char_encoder"))]
    start += [("chars_to_molecules", at("chars_to_molecules")), *blocks]
    head = [("head", [r"^classifier\."])] if hasattr(model, "classifier") else []
    if type(model).__name__.endswith(("ForSequenceClassification", "ForMultipleChoice")):
        return [*start, ("pooler", at("pooler", "projection", "final_char_encoder")), *head]
    return [*start, ("neck", at("pooler", "projection")), ("final_char_encoder", at("final_char_encoder")), *head]


def _timm_key(matcher: Mapping[str, Any], name: str) -> tuple[tuple[float, ...], str]:
    """Sort key and group name of one timm parameter, replaying timm's `group_with_matcher`."""
    for ordinal, (key, spec) in enumerate(matcher.items()):
        for regex, suffix in [(spec, None)] if isinstance(spec, str) else spec or []:
            if found := re.match(regex, name):
                if suffix == (99999,):
                    return (float("inf"),), "neck"  # a norm timm folds into the last block
                captured = [float(c) for c in found.groups() if c is not None]
                return (ordinal, *captured, *(suffix or ())), (found.group(0) if captured else key)
    return (float("inf"),), "neck"


# --------------------------------------------------------------------------- mapping
def mapper_spec(model: nn.Module) -> tuple[str, GroupPatterns]:
    """(mapper name, group patterns) for a bare transformers model: its family's mapper when one is
    registered under its model type, else the generic one (:mod:`hftl.models.layer_inference`)."""
    model_type = str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)
    if model_type in LAYER_MAPPERS:
        return model_type, LAYER_MAPPERS.get(model_type)(model)
    group_of = infer_layer_groups(model)
    patterns = _prefix_patterns(group_of)
    return "generic", [(g, patterns[g]) for g in dict.fromkeys(group_of.values())]


def map_layer_groups(model: nn.Module, custom: CustomGroups | None = None, prefix: str = "") -> list[LayerGroup]:
    """Split `model` (a transformers model, maybe a `PeftModel`) into layer groups, input first, head last.

    `custom` is a recipe's `strategy.layer_groups` as (name, patterns) pairs, used instead of
    the model type's mapper; its last group is the head. `prefix` (e.g. "vision.") is put in
    front of every returned name (patterns still see the tower's own names), for a fusion
    tower mapped on its own and concatenated with the others by the caller.
    """
    inner, strip = _unwrap_peft(model)
    model_type = str(getattr(getattr(inner, "config", None), "model_type", None) or type(inner).__name__)
    names = [name for name, _ in model.named_parameters()]
    if not names:
        raise HftlError(f"This '{model_type}' model has no parameters to put in layer groups.")
    bare = {name: _PEFT_SEGMENTS.sub("", name.removeprefix(strip)) for name in names}
    if custom is not None:
        spec, head, mapper = _custom_spec(custom, list(bare.values())), None, "recipe (strategy.layer_groups)"
        head = spec[-1][0]
    else:
        mapper, spec = mapper_spec(inner)
        head = "head"

    compiled = [(group, [re.compile(p) for p in patterns]) for group, patterns in spec]
    group_of: dict[str, str] = {}
    for name in names:
        group = next((g for g, regexes in compiled if any(r.search(bare[name]) for r in regexes)), None)
        if group is not None:
            group_of[name] = group
    if missing := [name for name in names if name not in group_of]:
        shown = ", ".join(missing[:8]) + (f" (and {len(missing) - 8} more)" if len(missing) > 8 else "")
        where = "strategy.layer_groups" if custom is not None else f"the {mapper} mapper"
        raise HftlError(
            f"{len(missing)} parameter(s) of this '{model_type}' model belong to no layer group in "
            f"{where}: {shown}. Add patterns for them to strategy.layer_groups; this block covers every "
            f"parameter of this model:\n{suggest_layer_groups(inner)}"
        )

    order = [group for group, _ in spec if group in group_of.values()]
    if custom is not None and (empty := [g for g, _ in spec if g not in order]):
        raise HftlError(
            f"strategy.layer_groups: group(s) {', '.join(empty)} get no parameter: every parameter "
            "their patterns match is claimed by an earlier group (the first matching group wins)."
        )
    members: dict[str, list[str]] = defaultdict(list)
    for name in names:
        members[group_of[name]].append(name)
    cover = _cover_modules(model, group_of, order)

    def full(name: str) -> str:
        return prefix + name if name else prefix.rstrip(".")

    return [
        LayerGroup(
            name=prefix + group,
            params=tuple(full(n) for n in members[group]),
            modules=tuple(full(m) for m in cover[group]),
            is_head=group == head,
            mapper=mapper,
        )
        for group in order
    ]


def describe_groups(groups: Sequence[LayerGroup], model: nn.Module) -> list[dict[str, Any]]:
    """One row per group (name, depth, n_params, is_head) for a plan table; `model` is the one the
    groups' parameter names come from (for prefixed towers, the whole fusion model)."""
    numel = {name: p.numel() for name, p in model.named_parameters()}
    return [
        {"name": g.name, "depth": depth, "n_params": sum(numel[n] for n in g.params), "is_head": g.is_head}
        for depth, g in enumerate(groups)
    ]


# --------------------------------------------------------------------------- helpers
def _unwrap_peft(model: nn.Module) -> tuple[nn.Module, str]:
    """The transformers model inside a `PeftModel` and the name prefix to strip ('base_model.model.')."""
    get_base_model = getattr(model, "get_base_model", None)
    if not callable(get_base_model):
        return model, ""
    inner = get_base_model()
    path = next(name for name, module in model.named_modules() if module is inner)
    return inner, (path + "." if path else "")


def _custom_spec(custom: CustomGroups, bare_names: list[str]) -> GroupPatterns:
    """Recipe groups as (name, [patterns]), each regex valid and matching some parameter."""
    pairs = list(custom.items()) if isinstance(custom, Mapping) else list(custom)
    if not pairs:
        raise HftlError("strategy.layer_groups is empty: give at least one group (the last one is the head).")
    spec: GroupPatterns = []
    for group, patterns in pairs:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        if any(group == seen for seen, _ in spec):
            raise HftlError(f"strategy.layer_groups: group '{group}' is given twice; group names must be unique.")
        for pattern in patterns:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise HftlError(
                    f"strategy.layer_groups: pattern {pattern!r} of group '{group}' is not a valid regex ({exc})."
                ) from None
            if not any(regex.search(name) for name in bare_names):
                raise HftlError(
                    f"strategy.layer_groups: pattern {pattern!r} of group '{group}' matches no "
                    f"parameter. Parameter names look like: {', '.join(bare_names[:3])} ... "
                    f"{bare_names[-1]}."
                )
        spec.append((group, patterns))
    return spec


def _groups_under(group_of: Mapping[str, str]) -> dict[str, set[str]]:
    """Groups found under every dotted prefix of the parameter names ('' is the root)."""
    under: dict[str, set[str]] = defaultdict(set)
    for name, group in group_of.items():
        parts = name.split(".")
        for i in range(len(parts) + 1):
            under[".".join(parts[:i])].add(group)
    return under


def _prefix_patterns(group_of: Mapping[str, str]) -> dict[str, list[str]]:
    """Per group, the shortest dotted prefixes that hold only that group, as anchored regexes."""
    under, patterns = _groups_under(group_of), defaultdict(list)
    for name, group in group_of.items():
        parts = name.split(".")
        owner = next(p for i in range(1, len(parts) + 1) if under[p := ".".join(parts[:i])] == {group})
        if (pattern := rf"^{re.escape(owner)}(\.|$)") not in patterns[group]:
            patterns[group].append(pattern)
    return patterns


def _cover_modules(model: nn.Module, group_of: Mapping[str, str], order: list[str]) -> dict[str, list[str]]:
    """Per group, the shallowest modules whose parameters all belong to it.

    A parameter-free module whose parent spans several groups (BERT's top-level
    `dropout`, timm's `pos_drop`) feeds the next module, so it joins the group of the
    next module that has parameters, or the last group when none follows.
    """
    under = _groups_under(group_of)
    owner: dict[str, str] = {}
    cover: dict[str, list[str]] = {group: [] for group in order}
    orphans: list[str] = []
    for name, _ in model.named_modules():
        parent = name.rpartition(".")[0]
        if name and parent in owner:
            owner[name] = owner[parent]
        elif any(name.startswith(orphan + ".") for orphan in orphans):
            continue  # inside a parameter-free module already waiting for its group
        elif len(groups := under.get(name, set())) == 1:
            owner[name] = group = next(iter(groups))
            cover[group] += [*orphans, name]
            orphans = []
        elif not groups:
            orphans.append(name)
    cover[order[-1]] += orphans
    return cover

"""The architecture table: every classification architecture transformers ships, on a tiny random model.

For each model type of ``MODEL_FOR_{SEQUENCE,TOKEN,IMAGE}_CLASSIFICATION_MAPPING_NAMES``
that builds here (tiny configs and the exclusions in ``tests/tiny_architectures.py``):

- its layer groups cover every parameter exactly once, numbered blocks run 0..n-1, and the
  new head is the last group; where a forward pass on random inputs runs, the groups' first
  modules run in group order (an oracle from execution, independent of the module tree;
  Gemma 3, ModernVBERT and UltraVBERT get an image with their text, so their vision tower runs);
- ``plan`` succeeds for full, feature_extraction, partial, LLRD and progressive, and each
  plan trains what its strategy says;
- LoRA with its default options puts adapters in the body and trains the whole head.

Encoder-decoders (BART, T5...) and vision/audio-language models map as chains of their two stacks.
Model types whose layout the generic mapper refuses to guess (:data:`REFUSED`, with the cause)
are checked to get an error that names their modules and a ``strategy.layer_groups`` block
that works as written. A few representative architectures
train some steps with progressive unfreezing, checking which weights change at each stage.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable

import pytest
import torch
import yaml
from torch import nn

from hftl.config.errors import RecipeError
from hftl.models.layer_inference import UncertainLayout
from hftl.models.layers import map_layer_groups
from hftl.strategies import wrap_model
from hftl.training.build import plan_for
from tests.test_strategies import calibrate_batchnorm, make_recipe, train_and_watch, updating_norms
from tests.tiny_architectures import EXCLUDED, model_types, task_class, tiny_batch, tiny_config, tiny_model

REFUSED = {
    "shieldgemma2": "no new head: it classifies by its language model's output layer (tied to the token embeddings) "
    "read at the yes/no tokens",
}
"""Model types the generic mapper refuses to guess, and why."""
NO_FORWARD = {
    "axk1": "attention shape error on tiny configs",
    "axk2": "attention shape error on tiny configs",
    "deepseek_v2": "MoE router needs topk settings the default config leaves empty",
    "deepseek_v3": "attention shape error on tiny configs",
    "jamba": "its cache refuses a training forward with linear-attention layers only",
    "qwen3_5_text": "its cache refuses a training forward with linear-attention layers only",
    "qwen3_next": "its cache refuses a training forward with linear-attention layers only",
    "qwen3_5": "its cache refuses a training forward with linear-attention layers only",
    "bros": "needs 8-value boxes",
    "layoutlmv3": "needs image patches",
    "lilt": "needs layout boxes matching its channel shrink",
    "markuplm": "needs xpath ids",
    "mobilevitv2": "32-pixel images are too small for its unfolding",
    "pvt": "position embeddings sized for another image size",
    "siglip2": "needs patchified inputs with spatial shapes",
    "pp_lcnet": "returns no loss",
}
"""Model types whose forward pass on random tiny inputs fails in transformers: the execution-order check
and the LoRA backward pass are not run for them (their groups, plans and adapters still are)."""
LORA_REFUSED = {
    "bit": "every conv of its body standardises its weight at each forward (weight standardisation), so an adapter "
    "merged into the weight would not compute what was trained, and the run publishes the merged model",
}
"""Model types whose body has no layer a LoRA adapter can be merged into exactly: LoRA is refused, naming the key."""
FLOAT32_ONLY = {
    "mra": "its attention builds float32 tensors whatever the model's dtype",
    "canine": "its outputs are NaN in float64",
    **dict.fromkeys(
        ["gpt_oss", "hunyuan_v1_moe", "minimax", "mistral4", "mixtral", "phimoe", "qwen2_moe", "qwen3_moe"],
        "its experts' grouped matmul takes no float64",
    ),
}
"""Model types whose merged-adapter check runs in float32 (the others: float64, free of round-off)."""
ARCHS = [(t, kind) for t, kind in model_types() if t not in EXCLUDED and t not in REFUSED]
TASK = {"sequence": "text-classification", "token": "token-classification", "image": "image-classification"}
STRATEGIES = {
    "full": {"name": "full"},
    "feature_extraction": {"name": "feature_extraction"},
    "partial": {"name": "partial", "partial": {"freeze_groups": 1}},
    "llrd": {"name": "full", "llrd": {"decay": 0.8}},
    "progressive": {"name": "progressive", "progressive": {"unit": "step", "every": 1}},
}
TOTAL_STEPS = 1000  # long enough for one group per step (MobileNet-v1 has 29)


def params(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def first_calls(model: nn.Module, batch: dict) -> dict[str, int]:
    """For each module that holds parameters of its own: when its forward first ran (0, 1, 2...)."""
    order: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:  # returns None: a pre-hook's return value would replace the input
            order.setdefault(name, len(order))

        return hook

    hooks = [
        module.register_forward_pre_hook(record(name))
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            model.eval()(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def test_the_table_is_large_and_names_every_architecture() -> None:
    """At least 25 architectures, and every model type of the three mappings is built, refused or excluded."""
    assert len(ARCHS) >= 25
    named = {"albert", "deberta-v2", "modernbert", "mpnet", "swin", "regnet", "mobilevit", "efficientnet"}
    named |= {"bert", "distilbert", "roberta", "vit", "deit", "beit", "dinov2", "convnext", "convnextv2", "resnet"}
    assert named | {"timm_wrapper", "llama"} <= {t for t, _ in ARCHS}
    assert {t for t, _ in model_types()} == {t for t, _ in ARCHS} | set(REFUSED) | set(EXCLUDED)


@pytest.mark.parametrize("model_type, kind", ARCHS, ids=[t for t, _ in ARCHS])
def test_groups_cover_every_parameter_once_from_input_to_head(model_type: str, kind: str) -> None:
    model = tiny_model(model_type, kind)
    groups = map_layer_groups(model)
    assert sorted(p for g in groups for p in g.params) == sorted(params(model))
    assert [g.is_head for g in groups] == [False] * (len(groups) - 1) + [True]
    numbered: dict[str, list[int]] = {}  # per stack ('' or 'encoder.', 'decoder.', 'vision_tower.'...)
    for g in groups:
        if m := re.fullmatch(r"((?:\w+\.)?)(layer|stage)\.(\d+)", g.name):
            numbered.setdefault(m.group(1), []).append(int(m.group(3)))
    assert all(n == list(range(len(n))) for n in numbered.values())  # timm names its own groups (blocks.N)
    if model_type in NO_FORWARD:
        return
    called = first_calls(model, {k: v for k, v in tiny_batch(model_type, kind).items() if k != "labels"})
    starts = []
    for group in groups:
        owners = {p.rpartition(".")[0] for p in group.params}
        if times := [called[o] for o in owners if o in called]:
            starts.append((min(times), group.name))
    assert starts == sorted(starts), f"groups whose first module runs out of order: {starts}"
    assert starts[-1][1] == "head"


@pytest.mark.parametrize("model_type, kind", ARCHS, ids=[t for t, _ in ARCHS])
def test_every_strategy_plans_what_it_says(model_type: str, kind: str) -> None:
    model = tiny_model(model_type, kind)
    n = len(map_layer_groups(model))
    plans = {s: plan_for(model, make_recipe(section, TASK[kind]), 1, TOTAL_STEPS) for s, section in STRATEGIES.items()}
    everything = {n for n, p in model.named_parameters() if p.requires_grad}  # RoFormer's sinusoids are frozen
    head = set(plans["full"].groups[-1].params)
    assert all(len(plan.groups) == n for plan in plans.values())
    assert plans["full"].ever_trainable() == everything and plans["full"].mapper
    assert plans["feature_extraction"].ever_trainable() == head
    assert plans["partial"].ever_trainable() == everything - set(plans["partial"].groups[0].params)
    lrs = [g.lr for g in plans["llrd"].groups[:-1]]
    assert lrs == sorted(lrs) and len(set(lrs)) == n - 1  # decaying away from the head, one LR per body group
    assert [g.start_step for g in plans["progressive"].groups] == [n - 1 - d for d in range(n - 1)] + [0]


@pytest.mark.parametrize("model_type, kind", ARCHS, ids=[t for t, _ in ARCHS])
def test_lora_default_adapts_the_body_and_trains_the_head(model_type: str, kind: str) -> None:
    torch.manual_seed(0)
    model = task_class(model_type, kind)(tiny_config(model_type))  # a fresh one: peft edits it in place
    recipe = make_recipe({"name": "lora"}, TASK[kind])
    if model_type in LORA_REFUSED:
        with pytest.raises(RecipeError, match=r"'strategy\.lora\.target_modules': finds no layer peft's LoRA can"):
            wrap_model(model, recipe)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = wrap_model(model, recipe)
    assert not [w for w in caught if "fan_in_fan_out" in str(w.message)]  # set for GPT-2's Conv1D layers, no warning
    plan = plan_for(wrapped, recipe, 1, 10)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert plan.adapters["adapted_layers"] > 0 and plan.ever_trainable() == trainable
    assert plan.adapters["trainable_params"] == sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    head = plan.groups[-1]
    assert head.is_head and {n for n in head.params if ".modules_to_save." in n} == set(head.params) & trainable
    assert any(".modules_to_save." in n for n in head.params) and any(".lora_A." in n for n in trainable)
    if model_type in NO_FORWARD:
        copy.deepcopy(wrapped).merge_and_unload()  # the run publishes the merged model
        return
    batch = tiny_batch(model_type, kind)
    wrapped.train()(**batch).loss.backward()
    grads = {n for n, p in wrapped.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".lora_B." in n for n in grads) and {n for n in head.params if n in trainable and "weight" in n} <= grads
    dtype = torch.float32 if model_type in FLOAT32_ONLY else torch.float64
    with torch.no_grad():  # adapters that change the output, merged into the weights: the same model
        wrapped.to(dtype)
        for name, p in wrapped.named_parameters():
            if ".lora_B." in name:
                p.add_(0.1 * torch.randn_like(p))
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items() if k != "labels"}
        outputs = []
        for model in (wrapped.eval(), copy.deepcopy(wrapped).merge_and_unload().eval(), None):
            torch.manual_seed(1)  # Reformer's LSH attention hashes with random rotations drawn at each forward
            if model is None:
                with wrapped.disable_adapter():
                    outputs.append(wrapped(**inputs).logits)
            else:
                outputs.append(model(**inputs).logits)
        adapted, merged, base = outputs
        tolerance = 1e-5 if dtype == torch.float32 else 1e-9
        assert (merged - adapted).abs().max() < tolerance and (adapted - base).abs().max() > 0


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_layouts_name_their_modules_and_print_a_working_block(model_type: str) -> None:
    kind = dict(model_types())[model_type]
    model = tiny_model(model_type, kind)
    with pytest.raises(UncertainLayout) as err:
        map_layer_groups(model)
    text = str(err.value)
    assert f"'{model_type}'" in text and all(name in text for name, _ in model.named_children())
    block = yaml.safe_load(text[text.index("  strategy:") :])["strategy"]["layer_groups"]
    recipe = make_recipe({**STRATEGIES["progressive"], "layer_groups": block}, TASK[kind])
    plan = plan_for(model, recipe, 1, TOTAL_STEPS)
    assert sorted(p for g in plan.groups for p in g.params + g.frozen_params) == sorted(params(model))
    assert plan.mapper == "recipe (strategy.layer_groups)"


# --------------------------------------------------------------------------- short runs
# Not a vision-language model: Gemma 3 leaves SigLIP's pooling head unused and zero-initialises its projection,
# so due weights get no gradient; its group order is checked against a forward pass with an image instead.
RUNS = ["regnet", "swin", "deberta-v2", "modernbert", "llama", "mbart", "t5"]


@pytest.mark.parametrize("model_type", RUNS)
def test_progressive_unfreezing_trains_only_the_groups_due(model_type: str) -> None:
    """One group joins per step, from the head down; at every step exactly the due groups' weights change."""
    kind = dict(model_types())[model_type]
    torch.manual_seed(0)
    model = task_class(model_type, kind)(tiny_config(model_type))
    calibrate_batchnorm(model, tiny_batch(model_type, kind, seed=1))
    recipe = make_recipe(STRATEGIES["progressive"], TASK[kind])
    n = len(map_layer_groups(model))
    plan = plan_for(model, recipe, 1, n + 1)
    groups = [set(g.params) for g in map_layer_groups(model)]
    batch = tiny_batch(model_type, kind)
    params = {n for n, _ in model.named_parameters()}
    # tied copies (BART's and T5's encoder/decoder embed_tokens share model.shared) are parameters, not statistics
    tied = {k for k, v in model.state_dict(keep_vars=True).items() if isinstance(v, nn.Parameter)} - params
    for step, changed, _, _, _ in train_and_watch(model, plan, recipe, batch, steps=n + 1):
        due = set().union(groups[-1], *(groups[i] for i in range(n - 1) if n - 1 - i <= step))
        assert changed & params == due, (
            f"step {step}: changed but not due {sorted((changed & params) - due)[:4]}, "
            f"due but unchanged {sorted(due - changed)[:4]}"
        )
        moved = {name.rsplit(".", 1)[0] for name in changed - params - tied}  # BatchNorm statistics
        assert moved == updating_norms(model, due, recipe.strategy.batchnorm), step


def test_lora_wrapping_shows_no_deprecation_warning_of_peft_s_making() -> None:
    """peft reads transformers' deprecated ``is_gradient_checkpointing``: hftl hides that one warning, no other."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrap_model(task_class("bert", "sequence")(tiny_config("bert")), make_recipe({"name": "lora"}, TASK["sequence"]))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_lora_on_weights_in_place_refuses_a_dropout_it_cannot_apply() -> None:
    """I-BERT's QuantLinear is adapted in place (peft's target_parameters), which has no dropout: a recipe
    that asks for one is refused, naming the key; the default runs without."""
    model = task_class("ibert", "sequence")(tiny_config("ibert"))
    with pytest.raises(RecipeError, match=r"'strategy\.lora\.dropout'.*no dropout"):
        wrap_model(model, make_recipe({"name": "lora", "lora": {"dropout": 0.1}}, "text-classification"))


def test_reformer_layers_get_gradient_under_frozen_embeddings() -> None:
    """Reformer's reversible layers run inside one autograd Function that takes no parameter as input: with the
    embeddings frozen (partial here; LoRA and progressive alike) its layers learn only if the embeddings' output
    requires grad, which wrap_model arranges for every strategy."""
    torch.manual_seed(0)
    model = task_class("reformer", "sequence")(tiny_config("reformer"))
    recipe = make_recipe(STRATEGIES["partial"], "text-classification")
    model = wrap_model(model, recipe)
    trains = plan_for(model, recipe, 1, 10).ever_trainable()
    for name, p in model.named_parameters():
        p.requires_grad_(name in trains)
    model.train()(**tiny_batch("reformer", "sequence")).loss.backward()
    layers = {n for n in trains if ".encoder.layers." in n}
    learning = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert layers and learning >= layers


def test_lora_refuses_named_convolutions_it_cannot_merge() -> None:
    """ConvNeXt's depthwise conv (groups = channels): peft trains an adapter there but cannot merge it, and the run
    publishes the merged model, so naming it is refused up front; the default leaves it out."""
    model = task_class("convnext", "image")(tiny_config("convnext"))
    recipe = make_recipe({"name": "lora", "lora": {"target_modules": ["dwconv"]}}, "image-classification")
    with pytest.raises(RecipeError, match=r"'strategy\.lora\.target_modules'.*cannot adapt and merge.*dwconv"):
        wrap_model(model, recipe)
    wrapped = wrap_model(model, make_recipe({"name": "lora"}, "image-classification"))
    assert not any("dwconv.lora_" in n for n, _ in wrapped.named_parameters())


def test_mobilenet_lora_adapter_runs_with_the_card_snippet(tmp_path) -> None:
    """The card's peft snippet for a MobileNet adapter runs as written: it shows peft's conv wrappers the stride
    that MobileNet's TF-style padding reads (without it, the forward fails with an AttributeError), and loads
    with peft's AutoPeftModel (peft has no image-classification class; the adapter names its base class)."""
    from hftl.config.run_folder import RunFiles
    from hftl.publish.usage import usage_section

    torch.manual_seed(0)
    base = task_class("mobilenet_v2", "image")(tiny_config("mobilenet_v2"))
    base.save_pretrained(tmp_path / "base")
    base.name_or_path = str(tmp_path / "base")  # as if loaded from there: the adapter names its base model
    wrapped = wrap_model(base, make_recipe({"name": "lora"}, "image-classification"))
    wrapped.save_pretrained(tmp_path / "run" / "adapter")
    copy.deepcopy(wrapped).merge_and_unload().save_pretrained(tmp_path / "run")
    recipe = {"task": "image-classification", "data": {}}
    text = usage_section(RunFiles(tmp_path / "run", recipe, "", {}, {}, ["a", "b", "c"]), None)
    snippet = re.findall(r"```python\n(.*?)```", text, re.S)[-1]
    assert "expose_conv_geometry(model)" in snippet
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the card's own code, as a reader would run it
    with torch.no_grad():
        assert scope["model"](pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)

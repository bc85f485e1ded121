"""Tiny random models of every classification architecture in transformers' Auto mappings (the architecture table).

One place for the small configs: :func:`tiny_config` shrinks a model type's default
config (hidden size 32, 2 layers, 2 heads, 32-pixel images...) with the few per-type
fixes in :data:`OVERRIDES`; :data:`EXCLUDED` lists the model types that cannot be built
here, with the reason. ``tests/test_architectures.py`` builds every other one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig
from transformers.models.auto import modeling_auto

MAPPINGS = {
    "sequence": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "token": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    "image": modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
}
NUM_LABELS = 3
IMAGE_SIZE = 32

# Applied to every config that has the attribute (sub-configs of composite models too).
SMALL: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    intermediate_size=64,
    vocab_size=512,
    max_position_embeddings=128,
    head_dim=16,
    embedding_size=16,
    pooler_hidden_size=32,
    d_model=32,
    d_kv=16,
    d_ff=64,
    n_embd=32,
    n_layer=2,
    n_head=2,
    n_positions=128,
    num_layers=2,
    num_heads=2,
    ffn_dim=64,
    encoder_layers=2,
    decoder_layers=2,
    num_decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    image_size=IMAGE_SIZE,
    patch_size=8,
    dim=32,
    n_layers=2,
    n_heads=2,
    hidden_dim=64,
    depth=2,
    emb_dim=32,
    n_words=512,
    d_inner=64,
    dff=64,
    entity_vocab_size=16,
    entity_emb_size=16,
    pronunciation_vocab_size=32,
    pronunciation_embed_dim=16,
    shape_vocab_size=32,
    shape_embed_dim=16,
    max_depth=4,
    max_xpath_tag_unit_embeddings=16,
    max_xpath_subs_unit_embeddings=16,
)
_CNN = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])
_SWIN = dict(patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4)
_SEGFORMER = dict(
    num_encoder_blocks=2,
    depths=[1, 1],
    hidden_sizes=[8, 16],
    sr_ratios=[2, 1],
    patch_sizes=[3, 3],
    strides=[2, 2],
    num_attention_heads=[1, 2],
    mlp_ratios=[2, 2],
)
OVERRIDES: dict[str, dict[str, Any]] = {
    "bit": {**_CNN, "num_groups": 2},
    "regnet": {**_CNN, "groups_width": 8},
    "resnet": {**_CNN, "layer_type": "basic"},
    "convnext": {**_CNN, "num_stages": 2},
    "convnextv2": {**_CNN, "num_stages": 2},
    "swin": _SWIN,
    "swinv2": {**_SWIN, "pretrained_window_sizes": [0, 0]},
    "donut-swin": _SWIN,
    "focalnet": {**_SWIN, "hidden_sizes": [8, 16], "focal_levels": [1, 1], "focal_windows": [3, 3]},
    "efficientnet": dict(
        width_coefficient=0.25,
        depth_coefficient=0.25,
        hidden_dim=320,  # the top conv's width: round_filters(1280) at width 0.25
        kernel_sizes=[3, 3],
        in_channels=[32, 16],
        out_channels=[16, 24],
        strides=[1, 2],
        num_block_repeats=[1, 2],
        expand_ratios=[1, 2],
    ),
    "mobilenet_v1": dict(depth_multiplier=0.25, classifier_dropout_prob=0.0),  # its default, 0.999, zeroes a batch of 2
    "mobilenet_v2": dict(depth_multiplier=0.25),
    "mobilevit": dict(patch_size=2, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 8, 8, 8, 8, 16]),
    "mobilevitv2": dict(patch_size=2, width_multiplier=0.25, n_attn_blocks=[1, 1, 1], base_attn_unit_dims=[8, 8, 8]),
    # depth[i] > i: CvtStage indexes its drop-path rates by stage
    "cvt": dict(
        embed_dim=[8, 16],
        num_heads=[1, 2],
        depth=[1, 2],
        patch_sizes=[7, 3],
        patch_stride=[4, 2],
        patch_padding=[2, 1],
        mlp_ratio=[2.0, 2.0],
        attention_drop_rate=[0.0, 0.0],
        drop_rate=[0.0, 0.0],
        drop_path_rate=[0.0, 0.0],
        qkv_bias=[True, True],
        cls_token=[False, True],
        qkv_projection_method=["dw_bn", "dw_bn"],
        kernel_qkv=[3, 3],
        padding_q=[1, 1],
        padding_kv=[1, 1],
        stride_kv=[2, 2],
        stride_q=[1, 1],
    ),
    "levit": dict(
        patch_size=16,
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        depths=[1, 1],
        key_dim=[8, 8],
        mlp_ratio=[2, 2],
        attention_ratio=[2, 2],
        down_ops=[["Subsample", 8, 1, 4, 2, 2]],
    ),
    "poolformer": dict(depths=[1, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_encoder_blocks=2),
    "pvt": {**_SEGFORMER, "sequence_reduction_ratios": [2, 1]},
    "pvt_v2": _SEGFORMER,
    "segformer": _SEGFORMER,
    "hiera": dict(
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 2],
        patch_size=[3, 3],
        patch_stride=[2, 2],
        patch_padding=[1, 1],
        masked_unit_size=[4, 4],
        masked_unit_attention=[True, False],
        num_query_pool=1,
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
    ),
    "textnet": dict(
        stem_out_channels=8,
        hidden_sizes=[8, 8, 16],
        depths=[1, 1],
        conv_layer_kernel_sizes=[[[3, 3]], [[3, 3]]],
        conv_layer_strides=[[1], [2]],
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
    ),
    "hgnet_v2": dict(
        embedding_size=8,
        depths=[1, 1],
        hidden_sizes=[16, 32],
        stem_channels=[3, 8, 8],
        stage_in_channels=[8, 16],
        stage_mid_channels=[8, 8],
        stage_out_channels=[16, 32],
        stage_num_blocks=[1, 1],
        stage_downsample=[False, True],
        stage_light_block=[False, True],
        stage_kernel_size=[3, 3],
        stage_numb_of_layers=[1, 1],
        stage_downsample_strides=[2, 2],
    ),
    "swiftformer": dict(depths=[1, 1], embed_dims=[8, 16], downsamples=[True, True]),
    "pp_lcnet": dict(scale=0.25, class_expand=32),
    "deberta": dict(pooler_hidden_size=32),
    # as DeBERTa-v3 (shared relative embeddings, normalised) plus v2-xlarge's convolution after the first layer
    "deberta-v2": dict(
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        position_buckets=16,
        max_relative_positions=-1,
        share_att_key=True,
        position_biased_input=False,
        conv_kernel_size=3,
    ),
    "funnel": dict(block_sizes=[1, 1], num_decoder_layers=1),
    "squeezebert": dict(embedding_size=32),
    "diffllama": dict(num_key_value_heads=2),
    "esmc": dict(num_key_value_heads=2),
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"]),  # as the real one, every 4th
    "nemotron": dict(head_dim=16, num_key_value_heads=1),
    "hunyuan_v1_dense": dict(head_dim=16),
    "hunyuan_v1_moe": dict(head_dim=16),
    "ministral": dict(head_dim=16),
    "esm": dict(vocab_size=33, pad_token_id=1, mask_token_id=32),
    "reformer": dict(
        axial_pos_embds_dim=[16, 16],
        axial_pos_shape=[2, 4],
        attn_layers=["local", "lsh"],
        local_attn_chunk_length=4,
        lsh_attn_chunk_length=4,
    ),
    "gptj": dict(rotary_dim=8),
    "gemma3": dict(mm_tokens_per_image=4),  # 4x4 patches pooled to 2x2 image tokens
    "modernvbert": dict(image_token_id=4),  # inside the tiny vocabulary
    "ultravbert": dict(image_token_id=4),
    **{t: dict(decoder_start_token_id=0) for t in ("t5", "mt5", "umt5")},  # sequence classification shifts
    "perceiver": dict(
        num_latents=8,
        d_latents=32,
        num_self_attends_per_block=2,
        num_self_attention_heads=2,
        num_cross_attention_heads=2,
    ),
}
EXCLUDED: dict[str, str] = {
    "dinat": "needs the natten package (neighbourhood attention kernels)",
    "layoutlmv2": "needs detectron2 (its visual backbone)",
    "cohere_compass_text": "its default config does not build in transformers 5.24 (KeyError 'full_attention')",
    "zamba": "hybrid Mamba/attention LLM whose layer schedule does not shrink to 2 layers",
    "zamba2": "hybrid Mamba/attention LLM whose layer schedule does not shrink to 2 layers",
    "t5gemma": "encoder-decoder LLM; its sub-configs do not shrink (a build takes over 20 s)",
    "t5gemma2": "encoder-decoder LLM; its sub-configs do not shrink (a build takes over 20 s)",
}


def model_types() -> list[tuple[str, str]]:
    """(model type, mapping) for every architecture to test: the first mapping that has it."""
    seen: dict[str, str] = {}
    for kind, mapping in MAPPINGS.items():
        for model_type in mapping:
            seen.setdefault(model_type, kind)
    return sorted(seen.items())


def _small(model_type: str) -> dict[str, Any]:
    defaults = AutoConfig.for_model(model_type).to_dict()
    kwargs: dict[str, Any] = {}
    for key, value in defaults.items():
        if key in SMALL and isinstance(value, int) and not isinstance(value, bool):
            kwargs[key] = SMALL[key]
        elif isinstance(value, dict) and value.get("model_type") and key.endswith("config"):
            kwargs[key] = {**value, **_small(value["model_type"])}  # a sub-config (vision_config, text_config)
    for key in ("layer_types", "attention_layers"):  # one entry per layer
        if isinstance(defaults.get(key), list):
            kwargs[key] = defaults[key][: SMALL["num_hidden_layers"]]
    if "pad_token_id" in defaults and defaults["pad_token_id"] is None:
        kwargs["pad_token_id"] = 0  # decoder LLMs: sequence classification needs one to find the last token
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        if isinstance(defaults.get(key), int) and defaults[key] >= SMALL["vocab_size"]:
            kwargs[key] = 1
    return {**kwargs, **OVERRIDES.get(model_type, {})}


def tiny_config(model_type: str) -> Any:
    """The model type's default config, shrunk."""
    config = AutoConfig.for_model(model_type, **_small(model_type))
    config.num_labels = NUM_LABELS
    return config


def task_class(model_type: str, kind: str) -> type[nn.Module]:
    name = MAPPINGS[kind][model_type]
    return getattr(transformers, name[0] if isinstance(name, tuple) else name)


@cache
def tiny_model(model_type: str, kind: str) -> nn.Module:
    """A tiny random task model of this type (built once per test session; do not train it in place)."""
    torch.manual_seed(0)
    return task_class(model_type, kind)(tiny_config(model_type))


def tiny_batch(model_type: str, kind: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Two random examples with labels, as the model's forward takes them."""
    g = torch.Generator().manual_seed(seed)
    if kind == "image" and model_type != "imagegpt":  # ImageGPT reads colour-cluster ids
        channels = getattr(tiny_config(model_type), "num_channels", 3)
        pixels = torch.randn(2, channels, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        return {"pixel_values": pixels, "labels": torch.randint(0, NUM_LABELS, (2,), generator=g)}
    length = SEQUENCE_LENGTH.get(model_type, 8)
    batch = {
        "input_ids": torch.randint(
            5, min(100, getattr(tiny_config(model_type).get_text_config(), "vocab_size", 100)), (2, length), generator=g
        ),
        "attention_mask": torch.ones(2, length, dtype=torch.long),
    }
    config = tiny_config(model_type)
    if getattr(config, "is_encoder_decoder", False) and isinstance(config.eos_token_id, int):
        batch["input_ids"][:, -1] = config.eos_token_id  # BART's and T5's heads read the last EOS state
    if model_type in WITH_IMAGE_TOKENS:  # a vision-language model: an image, and its tokens in the text
        tokens, pixels = WITH_IMAGE_TOKENS[model_type](config)
        batch["input_ids"][:, 1 : 1 + tokens] = config.image_token_id
        batch["pixel_values"] = torch.randn(2, *pixels, generator=g)
        if model_type == "gemma3":  # its image tokens attend to each other both ways
            batch["token_type_ids"] = (batch["input_ids"] == config.image_token_id).long()
    if model_type in WITH_BOXES:
        batch["bbox"] = torch.zeros(2, length, 4, dtype=torch.long)
    if model_type == "xmod":
        batch["lang_ids"] = torch.zeros(2, dtype=torch.long)
    shape = (2, length) if kind == "token" else (2,)
    batch["labels"] = torch.randint(0, NUM_LABELS, shape, generator=g)
    return batch


SEQUENCE_LENGTH: dict[str, int] = {}
WITH_BOXES = {"layoutlm", "layoutlmv3", "lilt", "bros"}
_IMAGE = (3, IMAGE_SIZE, IMAGE_SIZE)


def _shuffled(config: Any) -> tuple[int, tuple[int, ...]]:
    """One image per example, its patches pixel-shuffled into fewer tokens (ModernVBERT, UltraVBERT)."""
    return (IMAGE_SIZE // config.vision_config.patch_size) ** 2 // config.pixel_shuffle_factor**2, (1, *_IMAGE)


WITH_IMAGE_TOKENS: dict[str, Callable[[Any], tuple[int, tuple[int, ...]]]] = {
    "gemma3": lambda c: (c.mm_tokens_per_image, _IMAGE),
    "modernvbert": _shuffled,
    "ultravbert": _shuffled,
}
"""Vision-language models given an image with their text: (image tokens in the text, pixel shape per example)."""

"""Tiny random models for the tests: one place for their configs, so every test builds the same few shapes.

Transformers are 2 layers, 2 heads, hidden 32 (feed-forward 37, a size no real model has, so a shape bug
shows); CNNs are 2 stages of widths 8 and 16. Builders return configs with keyword overrides for what a test
needs (its vocabulary, image size, number of labels); the (strategy x architecture) tables, which train every
case, use the narrower ``SMALL`` widths. ``conftest.py`` holds the fixtures that save them as checkpoints.
transformers is imported inside the builders, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TRANSFORMER: dict[str, Any] = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
SMALL: dict[str, Any] = dict(hidden_size=16, intermediate_size=20)  # narrower, for tables that train every case
TEXT: dict[str, Any] = {**TRANSFORMER, "vocab_size": 100}
VISION: dict[str, Any] = {**TRANSFORMER, "image_size": 32, "patch_size": 8}
CNN: dict[str, Any] = dict(hidden_sizes=[8, 16], depths=[1, 1])
RESNET: dict[str, Any] = {**CNN, "embedding_size": 8, "layer_type": "basic"}


def bert_config(**overrides: Any):
    from transformers import BertConfig

    return BertConfig(**{**TEXT, **overrides})


def distilbert_config(**overrides: Any):
    from transformers import DistilBertConfig

    sizes = dict(dim=TEXT["hidden_size"], n_layers=2, n_heads=2, hidden_dim=TEXT["intermediate_size"], vocab_size=100)
    return DistilBertConfig(**{**sizes, **overrides})


def vit_config(**overrides: Any):
    from transformers import ViTConfig

    return ViTConfig(**{**VISION, **overrides})


def deit_config(**overrides: Any):
    from transformers import DeiTConfig

    return DeiTConfig(**{**VISION, **overrides})


def resnet_config(**overrides: Any):
    from transformers import ResNetConfig

    return ResNetConfig(**{**RESNET, **overrides})


def convnext_config(**overrides: Any):
    from transformers import ConvNextConfig

    return ConvNextConfig(**{**CNN, "num_channels": 3, "num_stages": 2, "patch_size": 2, **overrides})


def timm_config(architecture: str = "test_efficientnet", **overrides: Any):
    """A timm model through transformers' wrapper (``test_efficientnet`` is timm's own tiny test model)."""
    from transformers import TimmWrapperConfig

    return TimmWrapperConfig(**{"architecture": architecture, "num_labels": 3, **overrides})


def save_bert(folder: Path, vocab: list[str], seed: int = 0, **overrides: Any) -> Path:
    """A tiny random BERT and its WordPiece tokenizer (over ``vocab``) saved as a local checkpoint folder."""
    import torch
    from transformers import BertModel, BertTokenizer

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    BertModel(bert_config(vocab_size=len(vocab), **overrides)).save_pretrained(folder)
    return folder

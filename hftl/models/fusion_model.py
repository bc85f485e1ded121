"""The image + text fusion model, its processor pair, and hftl's own save / load for them.

Kept apart from :mod:`hftl.tasks.fusion` because it imports torch, and the task registry must stay
light (``hftl validate`` answers without loading torch).

A vision tower and a text tower (any two ``AutoModel`` checkpoints) give pooled features: the
vision pooler output, or the mean over patches / feature-map pixels; for text, the mean over real
tokens. That needs no pooler weights (sentence-transformers checkpoints such as all-MiniLM-L6-v2
were trained for mean pooling), so a text tower's pooler is removed: left unused, DDP would wait
for its gradients. Both features are layer-normed (towers put them on different scales), fused,
and classified:

- ``concat``: [vision; text] -> MLP;
- ``gated``: both projected to ``hidden_size`` and mixed per feature, ``g * v + (1 - g) * t`` with
  ``g = sigmoid(W [v; t])``, -> MLP.

A saved model is a folder with ``config.json`` (tower checkpoints and architectures, fusion
options, label names), ``model.safetensors`` and both towers' processor files side by side;
:func:`load_fusion` rebuilds it from that folder alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from hftl.config.errors import HftlError

TOWERS = ("vision", "text")
CONFIG_NAME, WEIGHTS_NAME, PROCESSOR_NAME = "config.json", "model.safetensors", "preprocessor_config.json"


@dataclass(frozen=True)
class FusionConfig:
    """What rebuilds a fusion model: towers ({checkpoint, revision, config}), labels, fusion options."""

    towers: dict[str, dict[str, Any]]
    labels: list[str]
    method: str = "concat"
    hidden_size: int = 256
    dropout: float = 0.1

    def save(self, folder: Path) -> None:
        doc = {
            "hftl_task": "fusion",
            **dataclasses.asdict(self),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {n: i for i, n in enumerate(self.labels)},
        }
        (folder / CONFIG_NAME).write_text(json.dumps(doc, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> FusionConfig:
        doc = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        if doc.get("hftl_task") != "fusion":
            raise HftlError(f"{folder / CONFIG_NAME} is not an hftl fusion model config.")
        return cls(**{f.name: doc[f.name] for f in dataclasses.fields(cls)})


def feature_size(tower: nn.Module) -> int:
    """Width of a tower's pooled features (timm models, CNNs with per-stage widths, transformers)."""
    if hasattr(tower, "timm_model"):
        return int(tower.timm_model.num_features)
    sizes = getattr(tower.config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(tower.config.hidden_size)


class FusionHead(nn.Module):
    """Normalise both pooled features, fuse them (concat or gated), classify with a one-hidden-layer MLP."""

    def __init__(
        self,
        vision_size: int,
        text_size: int,
        n_labels: int,
        method: str = "concat",
        hidden_size: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.method = method
        self.norm_vision, self.norm_text = nn.LayerNorm(vision_size), nn.LayerNorm(text_size)
        if method == "gated":
            self.project_vision = nn.Linear(vision_size, hidden_size)
            self.project_text = nn.Linear(text_size, hidden_size)
            self.gate = nn.Linear(vision_size + text_size, hidden_size)
        width = hidden_size if method == "gated" else vision_size + text_size
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(width, hidden_size),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, n_labels),
        )

    def forward(self, vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        vision, text = self.norm_vision(vision), self.norm_text(text)
        if self.method == "gated":
            gate = torch.sigmoid(self.gate(torch.cat([vision, text], dim=-1)))
            fused = gate * self.project_vision(vision) + (1 - gate) * self.project_text(text)
        else:
            fused = torch.cat([vision, text], dim=-1)
        return self.mlp(fused)


class FusionModel(nn.Module):
    """Vision tower + text tower + :class:`FusionHead`; ``forward`` returns ``.loss`` (given labels) and ``.logits``."""

    def __init__(self, vision: nn.Module, text: nn.Module, config: FusionConfig) -> None:
        super().__init__()
        if getattr(text, "pooler", None) is not None:
            text.pooler = None  # mean pooling is used instead; an unused pooler would stall DDP
        self.vision, self.text, self.fusion_config = vision, text, config
        self.head = FusionHead(
            feature_size(vision),
            feature_size(text),
            len(config.labels),
            config.method,
            config.hidden_size,
            config.dropout,
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        seen = self.vision(pixel_values=pixel_values)
        vision = seen.pooler_output if getattr(seen, "pooler_output", None) is not None else seen.last_hidden_state
        if vision.dim() == 3:  # patch tokens [B, T, C]
            vision = vision.mean(dim=1)
        vision = vision.flatten(2).mean(dim=-1) if vision.dim() > 2 else vision  # feature maps [B, C, H, W]
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        text = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.head(vision, text)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, folder: str | Path, **_: Any) -> None:
        """config.json + model.safetensors (the processors are saved by :class:`FusionProcessor`)."""
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.fusion_config.save(folder)
        save_model(self, str(folder / WEIGHTS_NAME))


class FusionProcessor:
    """The towers' own processors (image processor, tokenizer), used together and saved side by side."""

    def __init__(self, image_processor: Any, tokenizer: Any, max_length: int = 128) -> None:
        self.image_processor, self.tokenizer, self.max_length = image_processor, tokenizer, max_length

    def images(self, images: list[Any]) -> torch.Tensor:
        """Pixel values; grey or RGBA images become RGB first."""
        rgb = [image.convert("RGB") for image in images]
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    def __call__(self, images: list[Any], texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        return {"pixel_values": self.images(images), **batch}

    def save_pretrained(self, folder: str | Path) -> None:
        """Tokenizer files + preprocessor_config.json, side by side (their file names never clash)."""
        self.tokenizer.save_pretrained(folder)
        config = json.loads(self.image_processor.to_json_string())
        if "data_config" in config:  # timm keeps its processor in its model's config.json; write it out like any other
            config["pretrained_cfg"] = config.pop("data_config")
        (Path(folder) / PROCESSOR_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FusionProcessor:
        import transformers

        # Built from preprocessor_config.json directly: timm's processor would read config.json, the fusion config here.
        config = json.loads((Path(folder) / PROCESSOR_NAME).read_text(encoding="utf-8"))
        images = getattr(transformers, config["image_processor_type"]).from_dict(config)
        return cls(images, transformers.AutoTokenizer.from_pretrained(str(folder)))


def load_fusion(folder: str | Path) -> tuple[FusionModel, FusionProcessor]:
    """Rebuild a saved fusion model from its folder alone (tower architectures from config.json), in eval mode."""
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModel

    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise HftlError(f"{folder} has no {WEIGHTS_NAME}: it is not a saved fusion model (or its run did not finish).")
    config = FusionConfig.load(folder)
    towers = {name: AutoModel.from_config(AutoConfig.for_model(**config.towers[name]["config"])) for name in TOWERS}
    model = FusionModel(towers["vision"], towers["text"], config)
    load_model(model, str(folder / WEIGHTS_NAME))
    return model.eval(), FusionProcessor.from_pretrained(folder)

"""An image classifier whose head reads every stage of a timm body (``model.pooling: stages``).

transformers' ``TimmWrapperForImageClassification`` puts timm's classifier on the pooled last map only (on
EfficientNet-Lite0, the 1x1 ``conv_head`` to 1,280 channels after the last stage). On 1,000 Fashion-MNIST images a
linear probe on that vector reached 0.806 test, and one on the average-pooled output of every stage concatenated
with it 0.833 (``docs/studies/fashion-mnist-probe/benchmark.md``): small grey clothes are told apart by the
shallower, less ImageNet-specific stages as well. This class is that head: one linear layer on
``[avgpool(stage 1), ..., avgpool(stage n), pre-classifier vector]``.

The stages are timm's own: ``forward_intermediates`` returns each feature level of ``feature_info`` (a ResNet's
stem and four stages; a ViT's blocks, as maps of their patch tokens), and on the EfficientNet / MobileNet families,
whose ``feature_info`` keeps only the stages that downsample, every block stage (``extra_blocks``, the stem left
out: on EfficientNet-Lite0 the 7 stages of 16 ... 320 channels). The pre-classifier vector is timm's
``forward_head(pre_logits=True)``. Which indices are read and the width of each is worked out once, on the fresh
body (:meth:`StagesClassifierConfig.for_timm`), and saved in the config, so a saved run rebuilds the same head
without running anything.

The concatenation happens in the forward pass before the one ``classifier`` module, so the feature cache (which
records the head's input), the L-BFGS probe, full fine-tuning, the saved run and ``pipeline`` all see the same
features. Saving follows hftl's pooled text classifier: ``model_type: hftl-stages-classifier`` with an ``auto_map``
to this file (``pipeline("image-classification", model=RUN, trust_remote_code=True)`` loads a run anywhere; after
``import hftl``, which registers the classes, without ``trust_remote_code``). The config also carries the timm
fields the image processor reads (``architecture``, ``pretrained_cfg``, ``image_processor_type``), so
``AutoImageProcessor`` loads the run's processor from ``config.json`` as it does for a timm checkpoint. This module
imports only torch, transformers, (when a model is built) timm and its neighbour ``head_common.py`` (relatively:
``save_pretrained`` copies both): the two files are the remote code itself.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForImageClassification, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

from .head_common import head_loss, register_auto  # relative: save_pretrained copies it beside this file


class StagesClassifierConfig(PretrainedConfig):
    model_type = "hftl-stages-classifier"
    sub_configs = {}

    def __init__(
        self,
        architecture: str = "",
        pretrained_cfg: dict[str, Any] | None = None,
        model_args: dict[str, Any] | None = None,
        indices: list[int] | None = None,
        extra_blocks: bool = False,
        widths: list[int] | None = None,
        initializer_range: float = 0.02,
        image_processor_type: str = "TimmWrapperImageProcessor",
        **kwargs: Any,
    ) -> None:
        self.architecture = architecture  # timm.create_model's name, as in a TimmWrapperConfig
        self.pretrained_cfg = dict(pretrained_cfg or {})  # input size, mean, std: what the image processor reads
        self.model_args = dict(model_args or {})
        self.indices = list(indices or [])  # forward_intermediates' indices of the stages read
        self.extra_blocks = extra_blocks  # EfficientNet / MobileNet: every block stage, not only feature_info's
        self.widths = list(widths or [])  # channels of each pooled stage, then of the pre-classifier vector
        self.initializer_range = initializer_range
        self.image_processor_type = image_processor_type
        super().__init__(**kwargs)

    @classmethod
    def for_timm(cls, timm_model: nn.Module, wrapper: PretrainedConfig, **kwargs: Any) -> StagesClassifierConfig:
        """The config of a stages head on ``timm_model`` (built with ``num_classes=0``, as ``TimmWrapperModel``
        builds it; ``wrapper`` is that model's ``TimmWrapperConfig``). Raises ValueError, saying why, for a model
        whose stages cannot be read this way."""
        arch = wrapper.architecture
        if not hasattr(timm_model, "forward_intermediates"):
            raise ValueError(f"timm's '{arch}' has no forward_intermediates (timm >= 1.0 gives most models one)")
        extra = "extra_blocks" in inspect.signature(timm_model.forward_intermediates).parameters
        if extra:  # index 0 is the stem, then one per block stage
            indices = list(range(1, len(timm_model.blocks) + 1))
        else:
            indices = list(range(len(timm_model.feature_info)))
        pretrained_cfg = dict(getattr(wrapper, "pretrained_cfg", None) or getattr(timm_model, "pretrained_cfg", {}))
        side = tuple(pretrained_cfg.get("input_size", (3, 224, 224))[1:])
        training = timm_model.training
        try:  # eval: a forward in training mode would move the BatchNorm statistics
            with torch.no_grad():
                maps, pre = _stage_outputs(timm_model.eval(), torch.zeros(1, 3, *side), indices, extra)
        except (RuntimeError, ValueError, AssertionError, TypeError) as exc:
            raise ValueError(f"timm's '{arch}' forward_intermediates failed ({exc})") from None
        finally:
            timm_model.train(training)
        if any(m.dim() != 4 for m in maps) or pre.dim() != 2:
            shapes = ", ".join(str(tuple(m.shape)) for m in maps)
            raise ValueError(f"timm's '{arch}' stages are not (batch, channels, height, width) maps ({shapes})")
        return cls(
            architecture=arch,
            pretrained_cfg=pretrained_cfg,
            model_args=wrapper.model_args,
            indices=indices,
            extra_blocks=extra,
            widths=[m.shape[1] for m in maps] + [pre.shape[1]],
            initializer_range=getattr(wrapper, "initializer_range", 0.02),
            **kwargs,
        )


def _stage_outputs(
    timm_model: nn.Module, pixels: torch.Tensor, indices: list[int], extra_blocks: bool
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each stage's output map and the pre-classifier vector, from timm's own feature API."""
    extra = {"extra_blocks": True} if extra_blocks else {}
    final, maps = timm_model.forward_intermediates(pixels, indices=indices, **extra)
    return maps, timm_model.forward_head(final, pre_logits=True)


def _tail_before_last_weights(timm_model: nn.Module) -> nn.Module:
    """``timm_model`` with its trailing parameter-free children (``global_pool`` and, built with ``num_classes=0``,
    the ``Identity`` classifier) registered just before its last child with parameters (EfficientNet's ``bn2``).

    Why: hftl's layer groups give a parameter-free module to the group of the next module with parameters
    (hftl/models/layers.py). Left last, timm's pooling would join this model's new head, whose modules must be the
    one linear layer reading the concatenation (the feature cache replays them; domain adaptation taps the first
    one's input). timm's forward calls its modules by name, so only the registration order changes: no output,
    parameter or state-dict key does.
    """
    children = list(timm_model.named_children())
    weighted = [i for i, (_, child) in enumerate(children) if any(True for _ in child.parameters())]
    if weighted and weighted[-1] < len(children) - 1:
        last = weighted[-1]
        order = children[:last] + children[last + 1 :] + [children[last]]
        timm_model._modules.clear()
        timm_model._modules.update(order)
    return timm_model


class StagesModelForImageClassification(PreTrainedModel):
    config_class = StagesClassifierConfig
    base_model_prefix = "timm_model"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False

    def __init__(self, config: StagesClassifierConfig, timm_model: nn.Module | None = None) -> None:
        super().__init__(config)
        if timm_model is None:
            import timm

            timm_model = timm.create_model(config.architecture, pretrained=False, num_classes=0, **config.model_args)
        self.timm_model = _tail_before_last_weights(timm_model)
        self.classifier = nn.Linear(sum(config.widths), config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.classifier:  # the body is timm's (pretrained, or timm's own init): never redrawn here
            module.weight.data.normal_(mean=0.0, std=self.config.initializer_range)
            module.bias.data.zero_()

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """What the head reads: every stage's output average-pooled, then the pre-classifier vector, concatenated."""
        maps, pre = _stage_outputs(self.timm_model, pixel_values, self.config.indices, self.config.extra_blocks)
        return torch.cat([m.mean(dim=(2, 3)) for m in maps] + [pre], dim=1)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **_: Any
    ) -> ImageClassifierOutput:
        logits = self.classifier(self.features(pixel_values.to(self.device, self.dtype)))
        loss = None if labels is None else head_loss(self.config.problem_type, logits, labels)
        return ImageClassifierOutput(loss=loss, logits=logits)


register_auto(StagesClassifierConfig, StagesModelForImageClassification, AutoModelForImageClassification)

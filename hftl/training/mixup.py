"""Mixup / CutMix of the training batch (``train.mixup``), with timm's :class:`timm.data.Mixup`.

Each training micro-batch's images are blended (mixup) or pasted into each other (cutmix) with their reversed
batch, and the one-class targets become the matching class probabilities, smoothed by ``train.label_smoothing``
(timm's way: the smoothing goes into the mixed targets, and :class:`hftl.training.losses.TaskLoss` takes them as
they are). Mixup draws from NumPy's global random stream, which accelerate seeds and saves with each resumable
state: a run repeats itself, and a resumed one continues the same draws.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hftl.config.schema import MixupSection


class BatchMixer:
    """Mixes a batch's ``pixel_values`` and turns its ``labels`` into class probabilities."""

    def __init__(self, section: MixupSection, label_smoothing: float, num_classes: int) -> None:
        from timm.data import Mixup

        self.mixup = Mixup(
            mixup_alpha=section.mixup_alpha,
            cutmix_alpha=section.cutmix_alpha,
            prob=section.prob,
            switch_prob=section.switch_prob,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self.smoothing, self.num_classes = label_smoothing, num_classes

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with mixed images and soft targets.

        timm mixes a batch with itself reversed and asks for an even size; an odd batch (the end of an epoch)
        mixes its first n - 1 examples and keeps the last as it is, with a smoothed one-hot target.
        """
        import torch
        from timm.data.mixup import mixup_target

        pixels, labels = batch["pixel_values"], batch["labels"]
        even = len(labels) - len(labels) % 2
        if even == 0:
            return {**batch, "labels": mixup_target(labels, self.num_classes, 1.0, self.smoothing)}
        mixed, soft = self.mixup(pixels[:even].clone(), labels[:even])
        if even < len(labels):
            mixed = torch.cat([mixed, pixels[even:]])
            soft = torch.cat([soft, mixup_target(labels[even:], self.num_classes, 1.0, self.smoothing)])
        return {**batch, "pixel_values": mixed, "labels": soft}

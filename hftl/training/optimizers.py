"""The optimizers ``optim.name`` picks: one class over the param groups the strategy's plan builds.

Only the class changes: every group keeps its LR (discriminative / layer-wise / head LR), its weight decay (none
for biases and norm weights) and its LR schedule, and the optimizer's whole state (moments, momentum buffers,
LAMB's step count, kept in its param groups) is saved and restored with each resumable state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from hftl.config.schema import OptimSection


def adamw(groups: list[dict[str, Any]], optim: OptimSection) -> torch.optim.Optimizer:
    """torch AdamW, the fused kernel (CPU and GPUs; transformers.Trainer's default too): on CPU a MiniLM step's
    update takes about 1/7 of the default per-tensor loop's time."""
    import torch

    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=True)


def sgd(groups: list[dict[str, Any]], optim: OptimSection) -> torch.optim.Optimizer:
    """torch SGD with momentum (Nesterov's by default): the usual optimizer of CNNs trained from ImageNet; its
    weight decay is L2 added to the gradient (coupled), as in torchvision's recipes."""
    import torch

    return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov)


def lamb(groups: list[dict[str, Any]], optim: OptimSection) -> torch.optim.Optimizer:
    """timm's LAMB: AdamW's step scaled per tensor by ||w|| / ||step|| (the trust ratio; tensors without weight
    decay are not scaled, timm's default). Its own gradient clipping is off: the loop clips (optim.max_grad_norm)."""
    from timm.optim import Lamb

    return Lamb(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, max_grad_norm=None)


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], OptimSection], torch.optim.Optimizer]] = {
    "adamw": adamw,
    "sgd": sgd,
    "lamb": lamb,
}


def make_optimizer(groups: list[dict[str, Any]], optim: OptimSection) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` names, over ``groups`` (each with its own lr and weight_decay)."""
    return OPTIMIZERS[optim.name](groups, optim)

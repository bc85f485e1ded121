"""Domain adaptation's methods (:mod:`hftl.training.adaptation` says when and why): the DANN and CORAL losses,
the domain classifier, the target batch stream, and :class:`Adaptation`, what the ``adaptation`` run hook
drives at each step (target batches beside the source ones, the feature tap on the head, the method's loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hftl.training.hooks import ExtraGroup

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hftl.config.schema import OptimSection
    from hftl.strategies.plan import Plan

METHODS = {  # method -> one line for the card and `hftl plan`
    "dann": "a domain classifier on the pooled features behind gradient reversal (Ganin & Lempitsky 2015), "
    "reversal coefficient ramped 2/(1+exp(-10p))-1",
    "coral": "source and target feature covariances matched, ||C_s - C_t||_F^2 / 4d^2 (Sun & Saenko 2016)",
}


# --------------------------------------------------------------------------- the methods
def dann_coefficient(progress: float) -> float:
    """Ganin & Lempitsky's ramp of the gradient-reversal coefficient: 0 at the start, toward 1 at the end."""
    return 2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: squared Frobenius distance of the two feature covariances, / 4 d^2."""
    import torch

    d = source.shape[1]
    return (torch.cov(source.float().T) - torch.cov(target.float().T)).pow(2).sum() / (4 * d * d)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every process's rows of ``x`` (any count per process), in rank order, with gradients flowing back.

    Autograd-aware all_gather (``torch.distributed.nn``): its backward sums, over the processes, the gradient
    each computed for this process's rows. A loss computed identically on every process from gathered rows
    therefore gives each process ``W x`` its rows' gradient, and DDP's mean over the ``W`` processes makes
    the parameter gradient exactly the one-process gradient on the global batch. One process: ``x`` itself.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([len(x)], device=x.device))
    most = int(max(c.item() for c in counts))
    padded = torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1) + (0, most - len(x)))
    parts = all_gather(padded)
    return torch.cat([part[: int(c.item())] for part, c in zip(parts, counts)])


def _reverse_gradient() -> Callable:
    import torch

    class GradientReversal(torch.autograd.Function):
        """Identity forward; the gradient times -coefficient backward."""

        @staticmethod
        def forward(ctx, x, coefficient):
            ctx.coefficient = coefficient
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return -ctx.coefficient * grad, None

    return GradientReversal.apply


def domain_classifier(width: int, hidden: int) -> nn.Module:
    """Source (0) vs target (1) logit from a feature vector: the DANN discriminator, two hidden layers."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


# --------------------------------------------------------------------------- the loop's side
@dataclass
class Adaptation:
    """What the loop needs: the target stream, the feature tap, and the method's loss (see the module docstring)."""

    method: str
    weight: float
    total_steps: int
    grad_accum: int
    target_dl: Any
    features: list  # filled by the head's forward pre-hook: the head's input of the last forward
    pad_id: int
    modules: dict  # trained beside the model and saved in checkpoints (DANN's domain classifier)
    _batches: Any = None
    _sums: dict = field(default_factory=dict)  # per-step values summed since the last log line (see stats)

    def param_groups(self, optim: OptimSection, plan: Plan) -> list[ExtraGroup]:
        """DANN's domain classifier: one more param group of the run's optimizer, at ``optim.head_lr`` on the
        plan's shared schedule (warmup, decay), as the head's."""
        lr = optim.head_lr or optim.lr
        return [
            ExtraGroup(name, list(module.parameters()), lr, optim.weight_decay, plan.schedule)
            for name, module in self.modules.items()
        ]

    def prepare(self, accelerator: Any) -> dict[str, Any]:
        """Prepare the extra modules and the target loader; returns the modules (saved in each checkpoint)."""
        self.modules = {name: accelerator.prepare(module) for name, module in self.modules.items()}
        self.target_dl = accelerator.prepare(self.target_dl)
        return self.modules

    def loss(self, model: Any, batch: dict[str, Any], step: int, accelerator: Any) -> torch.Tensor:
        """Task loss on the source rows + weight x the method's loss on source and target features."""
        import torch

        if self._batches is None:  # first call, or first after resuming at `step`: the stream's position
            skip = step * self.grad_accum
            self._batches = iter(accelerator.skip_first_batches(self.target_dl, skip) if skip else self.target_dl)
        target = next(self._batches)
        n = len(batch["labels"])
        self.features.clear()
        out = model(**merge_batches(batch, target, self.pad_id))
        feats = self.features[0].flatten(1)
        source, target_feats = feats[:n], feats[n:]
        seen = {"task_loss": out.loss.detach()}
        if self.method == "coral":  # covariances of the global batch: every process's rows
            extra = coral_loss(gather_rows(source), gather_rows(target_feats))
            seen["coral_distance"] = extra.detach()
        else:
            reversed_ = _reverse_gradient()(feats, dann_coefficient(step / max(1, self.total_steps)))
            domains = torch.cat([torch.zeros(n), torch.ones(len(feats) - n)]).to(feats.device)
            logits = self.modules["domain_classifier"](reversed_).squeeze(-1)
            extra = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), domains)
            seen["domain_loss"] = extra.detach()
            seen["domain_accuracy"] = ((logits.detach() > 0).float() == domains).float().mean()
        for key, value in seen.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.float()
        self._sums["n"] = self._sums.get("n", 0) + 1
        return out.loss + self.weight * extra

    def stats(self, accelerator: Any) -> dict[str, float]:
        """Means since the last call, over the processes (every process must call it): the task loss alone,
        and CORAL's distance or DANN's domain loss and domain-classifier accuracy (0.5: domains indistinguishable).
        """
        import torch

        n = self._sums.pop("n", 0)
        names = sorted(self._sums)
        if not n or not names:
            return {}
        local = torch.stack([self._sums.pop(k) / n for k in names])
        values = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
        return {k: round(float(v), 6) for k, v in zip(names, values.tolist())}


def merge_batches(source: dict[str, Any], target: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """One batch of source rows then target rows; target labels -100 (ignored by the task loss); texts padded."""
    import torch

    merged = {}
    for key, value in source.items():
        if key == "labels":
            merged[key] = torch.cat(
                [value, torch.full((len(target[key]),), -100, dtype=value.dtype, device=value.device)]
            )
            continue
        other = target[key]
        if value.dim() >= 2 and value.shape[1] != other.shape[1]:  # token sequences of different lengths
            width = max(value.shape[1], other.shape[1])
            fill = pad_id if key == "input_ids" else 0
            value, other = (torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill) for t in (value, other))
        merged[key] = torch.cat([value, other])
    return merged


class TargetBatches:
    """Target batches for the whole run: batch ``i`` comes from a permutation seeded by (seed, i // per_epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, total: int) -> None:
        self.n, self.batch_size, self.seed, self.total = n, min(batch_size, n), seed, total
        self.per_epoch = max(1, n // self.batch_size)  # full batches only: every step sees batch_size target rows

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        import numpy as np

        order = None
        for i in range(self.total):
            epoch, k = divmod(i, self.per_epoch)
            if k == 0 or order is None:
                order = np.random.default_rng([self.seed, 0xDA, epoch]).permutation(self.n)
            yield order[k * self.batch_size : (k + 1) * self.batch_size].tolist()

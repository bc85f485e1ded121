"""An exponential moving average of the weights (``train.ema``), with timm's :class:`timm.utils.ModelEmaV3`.

Why ModelEmaV3 rather than ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``: its decay
warm-up (``1 - (1 + step)^(-2/3)``, capped at ``decay``) is what short fine-tuning runs need, and its decay is a
function of the step passed in, so the average holds no counter of its own: the averaged weights (saved with each
resumable state) and the loop's step are all a resumed run needs. AveragedModel has no warm-up and counts its
updates in a buffer. ModelEmaV3 also averages the buffers (BatchNorm statistics) with one foreach lerp.

The average is a copy of the model made once its head is set (after the probe fit, on cached features when the
feature cache is on), placed on the device but never wrapped for DDP: every process updates its own copy from
the same synchronised weights, so the copies stay equal across processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    from torch import nn

    from hftl.config.schema import EmaSection


def build_ema(model: nn.Module, section: EmaSection, head_chain: list[nn.Module]) -> Any:
    """A ModelEmaV3 over ``model`` (the bare model, not yet prepared). On cached features (``head_chain``), the
    copy's head-only forward is rebuilt over the copy's own head modules (a deep copy would keep the model's)."""
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=section.decay, use_warmup=section.warmup)
    ema.module.requires_grad_(False)
    if head_chain:
        from hftl.training.feature_cache import install_head_forward

        names = {id(module): name for name, module in model.named_modules()}
        copies = dict(ema.module.named_modules())
        install_head_forward(ema.module, [copies[names[id(module)]] for module in head_chain])
    return ema


def update_ema(ema: Any, model: nn.Module, step: int, num_processes: int) -> None:
    """Average the weights after optimizer step ``step``, the model's buffers first made rank 0's.

    Under DDP each process's BatchNorm statistics move with its own batch; DDP makes them rank 0's again at the
    next forward (``broadcast_buffers``), which is what the trained model is evaluated and saved with. The
    average must see those, or each process would average its own and the copies would drift apart (and a
    resumed run, whose copies all start from rank 0's save, would not repeat an uninterrupted one). Taking rank
    0's now changes nothing for training: the next forward would have.
    """
    if num_processes > 1:
        import torch.distributed as dist

        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    ema.update(model, step=step)


def check_ema_launch(accelerator: Any) -> None:
    """The average is a whole copy of the model on each process: refused when the model is sharded (FSDP)."""
    from hftl.training.training_state import is_sharded

    if is_sharded(accelerator):
        raise HftlError(
            "train.ema keeps a whole copy of the model on each process, which a sharded (FSDP) launch cannot "
            "update from its shards. Remove train.ema, or launch without FSDP (one process or DDP)."
        )

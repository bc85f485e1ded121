"""Evaluation: the task's metrics on one split, gathered across processes, and which score is better."""

from __future__ import annotations

from typing import Any


def evaluate(model: Any, dataloader: Any, task: Any, labels: list[str], accelerator: Any) -> dict[str, float]:
    """Loss and task metrics on one split, gathered across processes (no duplicated tail examples).

    The task turns each batch's outputs into (predictions, references); per-token
    predictions (2-d) are padded with -100 to a common length before gathering.
    """
    import torch

    model.eval()
    preds, refs, losses, count = [], [], 0.0, 0
    with torch.inference_mode():
        for batch in dataloader:
            out = model(**batch)
            pred, ref = task.predictions(out, batch)
            if pred.dim() > 1:  # per token: pad to a common length before gathering
                pred = accelerator.pad_across_processes(pred, dim=1, pad_index=-100)
                ref = accelerator.pad_across_processes(ref, dim=1, pad_index=-100)
            pred, ref = accelerator.gather_for_metrics((pred, ref))
            preds.append(pred.cpu())
            refs.append(ref.cpu())
            losses += out.loss.float().item() * batch["labels"].shape[0]
            count += batch["labels"].shape[0]
    if preds[0].dim() > 1:  # batches differ in length: pad each to the widest
        width = max(p.shape[-1] for p in preds)
        preds, refs = [_pad_to(p, width) for p in preds], [_pad_to(r, width) for r in refs]
    scores = task.compute_metrics(torch.cat(preds), torch.cat(refs), labels)
    total = accelerator.reduce(torch.tensor([losses, count], dtype=torch.float64, device=accelerator.device), "sum")
    scores["loss"] = float(total[0] / max(1.0, float(total[1])))
    return scores


def is_better(value: float, best: float | None, metric: str) -> bool:
    """Whether ``value`` beats ``best`` (lower is better for losses, higher for everything else)."""
    lower_is_better = metric.endswith("loss")
    return best is None or (value < best if lower_is_better else value > best)


def _pad_to(t: Any, width: int) -> Any:
    import torch

    return torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=-100)

"""Small building blocks of the training loop: sampler, optimizer, evaluation, threads, precision, LoRA."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    import torch

    from hftl.recipe import OptimSection, Recipe
    from hftl.strategies import Plan


class LengthGroupedBatchSampler:
    """Batches of similar-length examples in a seeded random order, the same on every process.

    Each "megabatch" of 50 batches is sorted by length and cut into batches, so a
    batch of short reviews does not pay for long ones; batch order is then
    shuffled. The order depends only on (seed, epoch), so a resumed run replays it.
    """

    def __init__(self, lengths: Sequence[int] | None, batch_size: int, seed: int, group_by_length: bool = True,
                 n: int | None = None) -> None:
        self.lengths = list(lengths) if lengths is not None else None
        self.n = len(self.lengths) if self.lengths is not None else int(n or 0)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.group = group_by_length and self.lengths is not None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.group:
            mega = self.batch_size * 50
            order = [i for k in range(0, self.n, mega)
                     for i in sorted(order[k:k + mega], key=lambda j: -self.lengths[j])]
        batches = [order[k:k + self.batch_size] for k in range(0, self.n, self.batch_size)]
        if self.group:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return iter(batches)


def build_optimizer(model: "torch.nn.Module", plan: "Plan", optim: "OptimSection") -> tuple[Any, list[str]]:
    """AdamW over every parameter that will ever train: one param group per (layer group, decay or not).

    Biases and normalisation weights (1-d tensors) get no weight decay. Returns the
    optimizer and the layer-group name of each param group (for the LR lambdas).
    """
    import torch

    params = dict(model.named_parameters())
    groups, names = [], []
    for group in plan.groups:
        if group.start_step is None:
            continue
        decay = [params[p] for p in group.params if params[p].ndim > 1]
        no_decay = [params[p] for p in group.params if params[p].ndim <= 1]
        for chunk, wd, suffix in ((decay, group.weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if chunk:
                groups.append({"params": chunk, "lr": group.lr, "weight_decay": wd, "name": group.name + suffix})
                names.append(group.name)
    # The fused kernel (CPU and GPUs; transformers.Trainer's default too): on CPU a MiniLM step's AdamW update
    # takes about 1/7 of the default per-tensor loop's time.
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, fused=True), names


def evaluate(model, dataloader, task, labels: list[str], accelerator) -> dict[str, float]:
    """Loss and task metrics on one split, gathered across processes (no duplicated tail examples)."""
    import torch

    model.eval()
    preds, refs, losses, count = [], [], 0.0, 0
    with torch.inference_mode():
        for batch in dataloader:
            out = model(**batch)
            pred = out.logits.argmax(-1)
            ref = batch["labels"]
            if pred.dim() > 1:  # token-level: pad to a common length before gathering
                pred = accelerator.pad_across_processes(pred, dim=1, pad_index=-100)
                ref = accelerator.pad_across_processes(ref, dim=1, pad_index=-100)
            pred, ref = accelerator.gather_for_metrics((pred, ref))
            preds.append(pred.cpu())
            refs.append(ref.cpu())
            losses += out.loss.float().item() * batch["labels"].shape[0]
            count += batch["labels"].shape[0]
    width = max(p.shape[-1] for p in preds) if preds[0].dim() > 1 else None
    if width is not None:  # batches differ in length: pad each to the widest
        pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=-100)  # noqa: E731
        preds, refs = [pad(p) for p in preds], [pad(r) for r in refs]
    scores = task.compute_metrics(torch.cat(preds), torch.cat(refs), labels)
    total = accelerator.reduce(torch.tensor([losses, count], dtype=torch.float64, device=accelerator.device), "sum")
    scores["loss"] = float(total[0] / max(1.0, float(total[1])))
    return scores


def set_threads(requested: int | None) -> int:
    """Give each local process its share of the cores (two processes each using all cores thrash)."""
    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    n = requested or int(os.environ.get("OMP_NUM_THREADS", "0")) or max(1, (os.cpu_count() or 1) // local)
    torch.set_num_threads(n)
    return n


def default_mixed_precision(choice: str) -> str:
    """'auto' means bf16 on GPUs that support it, fp16 on other GPUs, and full precision on CPU."""
    if choice != "auto":
        return choice
    import torch

    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def wrap_lora(model, recipe: "Recipe"):
    """Wrap the model with peft LoRA when the strategy asks; the new head is saved with the adapter."""
    if recipe.strategy.name != "lora":
        return model
    from peft import LoraConfig, TaskType, get_peft_model

    opts = recipe.strategy.lora
    task_type = {"text-classification": TaskType.SEQ_CLS, "token-classification": TaskType.TOKEN_CLS}.get(recipe.task)
    from hftl.layers import map_layer_groups

    # the head group's modules, e.g. `classifier`, or `timm_model.classifier` inside a timm wrapper
    custom = [(g.name, g.patterns) for g in recipe.strategy.layer_groups or []] or None
    head = [m for g in map_layer_groups(model, custom=custom) if g.is_head for m in g.modules
            if any(True for _ in model.get_submodule(m).parameters())]  # not `dropout`: peft would match lora_dropout
    config = LoraConfig(r=opts.r, lora_alpha=opts.alpha, lora_dropout=opts.dropout, task_type=task_type,
                        target_modules=opts.target_modules, modules_to_save=head or None)
    return get_peft_model(model, config)

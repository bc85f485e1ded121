"""Benchmark workloads. :mod:`benchmarks.run` starts each in a fresh process:

    python benchmarks/workloads.py NAME '{"variant": ..., ...}'

and reads the last line it prints, ``RESULT {json}``. Every variant of a
comparison uses the same model, rows, tokenization, batch size and steps; only
the thing compared differs. Step times come from a global optimizer-step hook
(the same clock for hftl, a plain loop and the Trainer), skipping warm-up steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKLOADS: dict[str, Callable[..., dict[str, Any]]] = {}
WARMUP_STEPS = 3


def workload(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    WORKLOADS[fn.__name__] = fn
    return fn


# --------------------------------------------------------------------------- shared pieces
def text_recipe(name: str, checkpoint: str, out: Path, **sections: dict[str, Any]):
    """A validated text-classification recipe on Rotten Tomatoes (split by movie), no test split unless asked."""
    from hftl.config.recipe import validate_recipe

    doc: dict[str, Any] = {
        "name": name,
        "task": "text-classification",
        "model": {"checkpoint": checkpoint},
        "data": {"source": "rotten-tomatoes", "group_column": "movie_name", "max_length": 64, "splits": {"test": None}},
        "optim": {"lr": 5e-5, "head_lr": 5e-4, "warmup_ratio": 0.06},
        "train": {"batch_size": 16, "seed": 42, "log_steps": 10, "group_by_length": False},
        "output": {"dir": str(out), "overwrite": True},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    return validate_recipe(doc, None)


def encoded_data(recipe) -> tuple[Any, Any, Any, list[str]]:
    """(task, processor, encoded splits, labels) exactly as hftl's run prepares them."""
    from hftl.tasks import TASKS, prepare_data

    processor, labels, encoded, _ = prepare_data(recipe)
    return TASKS.get(recipe.task), processor, encoded, labels


def fixed_padding(tokenizer, max_length: int) -> Callable[[list[dict]], dict]:
    """A collator padding every batch to ``max_length`` (the naive baseline)."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    return lambda rows: collate([{k: v for k, v in r.items() if k != "length"} for r in rows])


def use_fixed_padding(max_length: int) -> None:
    """Make hftl's text task pad every batch to ``max_length`` (in this process only)."""
    from hftl.tasks import TASKS

    task = TASKS.get("text-classification")
    task.collator = lambda processor, recipe, train: fixed_padding(processor, max_length)


class StepClock:
    """Times every optimizer step of any torch optimizer (hftl, plain loop, Trainer alike)."""

    def __init__(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.times: list[float] = []
        self.handle = register_optimizer_step_post_hook(lambda *_: self.times.append(time.perf_counter()))

    def per_step(self, median: bool = False) -> float:
        """Seconds per step after the warm-up steps: the mean, or the median (for equal-shape steps: a busy
        neighbour's burst then moves it less)."""
        t = self.times[WARMUP_STEPS:]
        if median:
            return statistics.median(b - a for a, b in zip(t, t[1:]))
        return (t[-1] - t[0]) / (len(t) - 1)


class PeakRSS:
    """Peak resident memory above a baseline, sampled every millisecond by a thread."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self.now()
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def now(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _poll(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.001)

    def stop(self) -> float:
        """MB above the baseline at the peak."""
        self.running = False
        self.thread.join()
        return (self.peak - self.base) / 2**20


def trainer_args(out: Path, **kwargs: Any):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out),
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=42,
        **kwargs,
    )


# --------------------------------------------------------------------------- 1. full fine-tuning loops
@workload
def finetune(variant: str, steps: int, batch_size: int, max_length: int, tmp: str) -> dict[str, Any]:
    """MiniLM full fine-tuning for ``steps`` steps, every batch padded to ``max_length``: mean step time."""
    import torch

    out = Path(tmp) / variant
    recipe = text_recipe(
        "bench-finetune",
        "all-MiniLM-L6-v2",
        out,
        data={"max_length": max_length, "max_train_samples": steps * batch_size, "max_eval_samples": 32},
        train={"max_steps": steps, "batch_size": batch_size, "eval_steps": 10_000},
    )
    clock = StepClock()
    if variant == "hftl":
        from hftl.training.train import run

        use_fixed_padding(max_length)
        run(recipe)
        return {"step_s": clock.per_step(median=True), "steps": len(clock.times)}

    from transformers import get_linear_schedule_with_warmup

    task, processor, encoded, labels = encoded_data(recipe)
    torch.manual_seed(42)
    model = task.build_model(recipe, labels)
    collate = fixed_padding(processor, max_length)
    train = encoded["train"].remove_columns("length")
    if variant == "plain":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, weight_decay=0.01)
        scheduler = get_linear_schedule_with_warmup(optimizer, round(0.06 * steps), steps)
        loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate)
        for _, batch in zip(range(steps), loader):
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        from transformers import Trainer

        args = trainer_args(
            out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=recipe.optim.lr,
            warmup_steps=round(0.06 * steps),
            weight_decay=0.01,
            logging_steps=10,
        )
        Trainer(model=model, args=args, train_dataset=train, data_collator=collate).train()
    return {"step_s": clock.per_step(median=True), "steps": len(clock.times)}


# --------------------------------------------------------------------------- 2. frozen body: cache vs Trainer
@workload
def frozen_body(variant: str, model: str, epochs: int, n_train: int, n_eval: int, tmp: str) -> dict[str, Any]:
    """Feature extraction end to end (data, model, training, per-epoch validation, test, save): wall seconds.

    Both variants import torch, transformers' Trainer and hftl before the clock starts.
    """
    import torch
    from transformers import Trainer

    from hftl.training import feature_cache
    from hftl.training.train import run

    out = Path(tmp) / f"{model}-{variant}"
    started = time.perf_counter()
    recipe = frozen_recipe(model, out, epochs, n_train, n_eval)
    if variant == "hftl":
        shutil.rmtree(Path(os.environ["HFTL_CACHE_DIR"]) / "features", ignore_errors=True)  # extraction included
        extracting, spent = feature_cache.maybe_use_cache, {}

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return extracting(*args, **kwargs)
            finally:
                spent["extraction"] = time.perf_counter() - began

        feature_cache.maybe_use_cache = timed
        metrics = run(recipe).metrics
        return {
            "seconds": time.perf_counter() - started,
            "test_accuracy": metrics["test"]["accuracy"],
            "training_s": spent["extraction"] + metrics["train_seconds"],
        }

    task, processor, encoded, labels = encoded_data(recipe)
    torch.manual_seed(42)
    net = task.build_model(recipe, labels)
    head = {"classifier", "timm_model.classifier"}
    for name, param in net.named_parameters():
        param.requires_grad_(name.rpartition(".")[0] in head)
    collate = task.collator(processor, recipe, train=False)
    args = trainer_args(
        out,
        per_device_train_batch_size=recipe.train.batch_size,
        num_train_epochs=epochs,
        learning_rate=recipe.optim.lr,
        warmup_steps=recipe.optim.warmup_ratio,
        eval_strategy="epoch",
        per_device_eval_batch_size=recipe.train.batch_size * 2,
        remove_unused_columns=False,
    )
    columns = [c for c in encoded["train"].column_names if c not in ("length", "split", "index")]
    data = {split: encoded[split].select_columns(columns) for split in encoded}
    trainer = Trainer(
        model=net,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collate,
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    began = time.perf_counter()
    trainer.train()
    training = time.perf_counter() - began
    accuracy = trainer.evaluate(data["test"], metric_key_prefix="test")["test_accuracy"]
    trainer.save_model(str(out / "model"))
    return {"seconds": time.perf_counter() - started, "test_accuracy": accuracy, "training_s": training}


def frozen_recipe(model: str, out: Path, epochs: int, n_train: int, n_eval: int):
    from hftl.config.recipe import validate_recipe

    if model == "efficientnet-lite0":
        doc = {
            "name": "bench-frozen-image",
            "task": "image-classification",
            "model": {"checkpoint": model},
            "data": {
                "source": "fashion-mnist",
                "image_size": 112,
                "augment": {"random_resized_crop": False, "hflip": False},
            },
        }
    else:
        checkpoint = tiny_bert(out.parent) if model == "tiny-bert" else model
        doc = {
            "name": "bench-frozen-text",
            "task": "text-classification",
            "model": {"checkpoint": checkpoint},
            "data": {"source": "rotten-tomatoes", "group_column": "movie_name", "max_length": 64},
        }
    doc["data"].update(max_train_samples=n_train, max_eval_samples=n_eval)
    lr = 1e-3 if model == "efficientnet-lite0" else 1e-2  # a linear probe on pooled BERT features needs more
    doc.update(
        strategy={"name": "feature_extraction"},
        optim={"lr": lr, "warmup_ratio": 0.06},
        train={"epochs": epochs, "batch_size": 32, "seed": 42, "group_by_length": False},
        output={"dir": str(out), "overwrite": True},
    )
    return validate_recipe(doc, None)


def tiny_bert(folder: Path) -> str:
    """A random 2-layer BERT (hidden 64) with MiniLM's tokenizer, saved once under ``folder``."""
    target = folder / "tiny-bert"
    if not (target / "config.json").exists():
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        from hftl.models.pretrained import resolve_checkpoint

        tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint("all-MiniLM-L6-v2"))
        torch.manual_seed(0)
        BertModel(
            BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
            )
        ).save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


# --------------------------------------------------------------------------- 3. bottom half frozen vs full
@workload
def freeze_half(variant: str, steps: int, batch_size: int, max_length: int, tmp: str) -> dict[str, Any]:
    """MiniLM training steps with hftl's plan applied (full, or the bottom half of the body frozen).

    Returns the mean step time, the peak RSS above the pre-training baseline, and the bytes
    autograd saved for backward in one step.
    """
    import torch

    from hftl.strategies.plan import apply_plan
    from hftl.training.build import build_optimizer, plan_for

    strategy = {"name": "full"} if variant == "full" else {"name": "partial", "partial": {"freeze_fraction": 0.5}}
    recipe = text_recipe(
        "bench-freeze",
        "all-MiniLM-L6-v2",
        Path(tmp) / variant,
        strategy=strategy,
        data={"max_length": max_length, "max_train_samples": batch_size * 4},
    )
    task, processor, encoded, labels = encoded_data(recipe)
    torch.manual_seed(42)
    model = task.build_model(recipe, labels)
    plan = plan_for(model, recipe, steps, steps)
    for name, param in model.named_parameters():
        param.requires_grad_(name in plan.ever_trainable())
    optimizer, _ = build_optimizer(model, plan, recipe.optim)
    batch = fixed_padding(processor, max_length)([encoded["train"][i] for i in range(batch_size)])
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    clock, memory = StepClock(), PeakRSS()
    model.train()
    apply_plan(model, plan, 0)
    for step in range(steps):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if step == 0 else contextlib.nullcontext():
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "step_s": clock.per_step(median=True),
        "peak_mb": memory.stop(),
        "saved_mb": saved / 2**20,
        "trainable": trainable,
    }


# --------------------------------------------------------------------------- 4. dynamic padding
@workload
def padding(variant: str, n_train: int, tmp: str) -> dict[str, Any]:
    """One epoch of the sentiment recipe (MiniLM, batch 32, max 128 tokens) on ``n_train`` rows: train seconds."""
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    root = Path(__file__).resolve().parent.parent
    overrides = [
        f"data.max_train_samples={n_train}",
        "data.max_eval_samples=64",
        "data.max_length=128",
        "train.eval_steps=100000",
        f"output.dir={Path(tmp) / variant}",
        "output.overwrite=true",
        f"train.group_by_length={variant == 'dynamic'}",
    ]
    if variant == "pad128":
        use_fixed_padding(128)
    clock = StepClock()
    run(load_recipe(root / "recipes" / "sentiment.yaml", overrides))
    return {"step_s": clock.per_step(), "steps": len(clock.times)}


# --------------------------------------------------------------------------- prepare
@workload
def prepare(tmp: str) -> dict[str, Any]:
    """Fill the dataset / checkpoint caches once, so no timed run pays for building them."""
    from hftl.data import sources as data
    from hftl.models.pretrained import resolve_checkpoint

    for name in ("rotten-tomatoes", "fashion-mnist"):
        data.load_source(name)
    for name in ("all-MiniLM-L6-v2", "efficientnet-lite0"):
        resolve_checkpoint(name)
    tiny_bert(Path(tmp))
    return {"cache": os.environ.get("HFTL_CACHE_DIR")}


if __name__ == "__main__":
    name, params = sys.argv[1], json.loads(sys.argv[2])
    result = WORKLOADS[name](**params)
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.flush()
    print("RESULT " + json.dumps(result), flush=True)

"""SetFit: few-shot text classification by contrastive tuning of the body, then a linear head on its features.

With K labeled examples per class (``data.shots``), a frozen body's features
limit what any head can do (prototypes and the L-BFGS probe on frozen
all-MiniLM-L6-v2 stay near the majority class at K = 8). SetFit (Tunstall et al.
2022) first tunes the sentence-transformer body on *pairs* drawn from the K
shots (same class: cosine 1, different classes: cosine 0; ``CosineSimilarityLoss``),
which turns 2K examples into thousands of training signals, then fits a
classifier head on the tuned body's pooled features.

How it runs here (the ``tune_body`` hook of :class:`hftl.strategies.Strategy`,
called by :func:`hftl.training.train.run` before the feature cache):

1. the model is hftl's pooled classifier (``model.pooling`` mean / max / cls;
   ``auto`` gives mean for sentence-transformers checkpoints such as
   all-MiniLM-L6-v2, and any BERT-like checkpoint takes ``model.pooling: mean``);
2. its body is wrapped, *shared, not copied*, as a sentence-transformers model
   (``Transformer`` + ``Pooling`` with the same pooling), and the ``setfit``
   library's ``Trainer.train_embeddings`` tunes it on the pairs it draws from
   the training split (the K shots, as the texts the model sees: decoded from
   the encoded rows, so truncation and filtering are the run's own);
3. the body is then frozen: the feature cache holds the *tuned* body's pooled
   features (its key digests the weights), and the linear head is fitted on them
   by hftl's L-BFGS probe, with a fixed L2 (``head_l2``: no validation data, as
   a few-shot user has none) or the probe's validation pick (``head_l2: null``).

The saved run is hftl's pooled classifier (tuned body + linear head), so it loads
with ``hftl predict`` and ``transformers.pipeline`` like every other run.

Resuming: the tuned body is stored in the hftl cache (``<cache>/setfit``, keyed
by the starting weights, the texts and labels, these options and the seed), so a
resumed or repeated run loads it instead of tuning again; the loop's own state
(the head) resumes as in any run. Without the cache entry (deleted), a resumed
run tunes again, from the same seed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy

if TYPE_CHECKING:
    from hftl.config.schema import Recipe


class SetFitOptions(Section):
    num_iterations: int = Field(
        20,
        ge=1,
        description="Pairs drawn per training example and iteration: setfit makes 2 x num_iterations x N pairs "
        "(half same-class, half different-class) from the N training examples.",
    )
    body_epochs: int = Field(1, ge=1, description="Epochs of contrastive body training over the pairs.")
    body_lr: float = Field(2e-5, gt=0.0, description="Body learning rate of the contrastive phase (AdamW, warmup 10%).")
    body_batch_size: int = Field(16, ge=2, description="Pairs per step of the contrastive phase.")
    max_body_steps: int | None = Field(
        None, ge=1, description="Cap on contrastive steps (fewer pairs are drawn); null: all the pairs."
    )
    head_l2: float | None = Field(
        1.0,
        gt=0.0,
        description="L2 of the linear head's L-BFGS fit on the tuned body's standardised features; null: pick it on "
        "the validation split (the probe's grid).",
    )
    finetune_head: bool = Field(
        False,
        description="false: the head keeps the L-BFGS fit (LR 0 in the loop); true: the loop's AdamW epochs "
        "then train the head from it (optim.head_lr).",
    )


def tune_body(model: Any, recipe: Recipe, data: Any, options: SetFitOptions, accelerator: Any) -> dict[str, Any]:
    """Contrastive tuning of ``model.body`` in place with the setfit library (or from the cache); what was done."""
    from safetensors.torch import load_file, save_file

    from hftl.config import log
    from hftl.config.errors import RecipeError
    from hftl.models.random_state import rng_untouched

    body, pooling = getattr(model, "body", None), getattr(getattr(model, "config", None), "pooling", None)
    if body is None or pooling not in ("mean", "max", "cls"):
        raise RecipeError(
            recipe.source_file,
            "model.pooling",
            "strategy 'setfit' tunes a sentence-embedding body, but this model's head reads the checkpoint's "
            "own pooler",
            recipe.model.pooling,
            hint="Set model.pooling: mean (what sentence-transformers checkpoints use; auto picks it for them).",
        )
    train = data.encoded["train"]
    texts = [data.processor.decode(list(ids), skip_special_tokens=True) for ids in train["input_ids"]]
    labels = [int(x) for x in train["labels"]]
    file = _cache_file(body, recipe, options, pooling, texts, labels)
    summary: dict[str, Any] = {
        "examples": len(texts),
        "classes": len(set(labels)),
        "processes": accelerator.num_processes,  # the transformers Trainer inside runs DDP over them
        **options.model_dump(),
    }
    if file.is_file():
        body.load_state_dict(load_file(str(file)), strict=False)
        summary.update(json.loads(file.with_suffix(".json").read_text(encoding="utf-8")), cached=True)
        log.say(f"[setfit] tuned body loaded from the cache ({_describe(summary)}) {file}")
        return summary
    started = time.time()
    frozen = {name for name, p in body.named_parameters() if not p.requires_grad}  # by the plan: frozen in the loop
    body.requires_grad_(True)
    try:
        with rng_untouched():
            summary.update(_train_embeddings(body, data.processor, recipe, options, pooling, texts, labels))
    finally:
        for name, p in body.named_parameters():
            p.requires_grad_(name not in frozen)
    summary["seconds"] = round(time.time() - started, 1)
    if accelerator.is_main_process:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in body.state_dict().items()}, str(tmp))
        file.with_suffix(".json").write_text(json.dumps({k: summary[k] for k in _DONE}), encoding="utf-8")
        tmp.replace(file)
    accelerator.wait_for_everyone()
    log.say(f"[setfit] body tuned in {summary['seconds']:.0f} s: {_describe(summary)}")
    return summary


_WEIGHTS = "model.safetensors"
_DONE = ("pairs", "body_steps", "first_loss", "last_loss", "seconds")


def _describe(s: dict[str, Any]) -> str:
    return (
        f"{s['pairs']} pairs from {s['examples']} examples of {s['classes']} classes, "
        f"{s['body_steps']} contrastive steps (batch {s['body_batch_size']} x {s['processes']} process(es), "
        f"LR {s['body_lr']:g}, "
        f"{s['body_epochs']} epoch(s)); pair loss {s['first_loss']:.4f} -> {s['last_loss']:.4f}"
    )


def _train_embeddings(
    body: Any, processor: Any, recipe: Recipe, options: SetFitOptions, pooling: str, texts: list, labels: list
) -> dict[str, Any]:
    """setfit's contrastive phase on a sentence-transformers view of ``body`` (its parameters, shared)."""
    import transformers
    from datasets import Dataset

    from hftl.config.errors import HftlError

    try:
        import setfit  # noqa: F401
    except ImportError:
        raise HftlError(
            "strategy 'setfit' needs the setfit library: pip install 'hftl[fewshot]' (setfit, sentence-transformers)."
        ) from None
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.linear_model import LogisticRegression

    with tempfile.TemporaryDirectory(prefix="hftl-setfit-") as tmp:
        # The Transformer module loads from a folder: the body and tokenizer are written there once, then the
        # module's own copy is replaced by the body itself, so training updates the run's model in place.
        # (written by hand: under several processes transformers' save_pretrained writes on rank 0 only)
        body.config.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in body.state_dict().items()}, str(Path(tmp) / _WEIGHTS))
        processor.save_pretrained(tmp)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the unused BERT pooler's 'newly initialized' warning
        try:
            module = Transformer(tmp, max_seq_length=recipe.data.max_length)
        finally:
            transformers.logging.set_verbosity(verbosity)
        module.model = body
        st = SentenceTransformer(
            modules=[module, Pooling(body.config.hidden_size, pooling_mode=pooling)], device=str(body.device)
        )
        args = TrainingArguments(
            output_dir=str(Path(tmp) / "out"),
            batch_size=options.body_batch_size,
            num_epochs=options.body_epochs,
            num_iterations=options.num_iterations,
            body_learning_rate=options.body_lr,
            max_steps=options.max_body_steps or -1,
            seed=recipe.train.seed,
            report_to="none",
            save_strategy="no",
            eval_strategy="no",
            logging_steps=1,
            show_progress_bar=False,
        )
        trainer = Trainer(
            model=SetFitModel(model_body=st, model_head=LogisticRegression()),
            args=args,
            train_dataset=Dataset.from_dict({"text": texts, "label": labels}),
        )
        _quiet(trainer.st_trainer)
        trainer.train_embeddings(texts, labels, args=args)
        state = trainer.st_trainer.state
        losses = [r["embedding_loss"] for r in state.log_history if "embedding_loss" in r]
    body.eval()
    return {
        "pairs": len(trainer.st_trainer.train_dataset),
        "body_steps": state.global_step,
        "first_loss": float(losses[0]) if losses else float("nan"),
        "last_loss": float(sum(losses[-10:]) / len(losses[-10:])) if losses else float("nan"),
    }


def _quiet(trainer: Any) -> None:
    """No progress bar or printed log dicts from the transformers Trainer (hftl logs one summary line)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    trainer.args.disable_tqdm = True


def _cache_file(body: Any, recipe: Recipe, options: SetFitOptions, pooling: str, texts: list, labels: list) -> Path:
    """Where the tuned body of these starting weights, examples, options and seed is kept."""
    import sentence_transformers
    import setfit
    import torch
    import transformers

    from hftl.data.cache import cache_dir
    from hftl.models.random_state import tensor_bytes

    digest = hashlib.sha256()
    fields = {
        "options": options.model_dump(),
        "pooling": pooling,
        "seed": recipe.train.seed,
        "max_length": recipe.data.max_length,
        "texts": texts,
        "labels": labels,
        "config": body.config.to_dict(),
        "versions": [
            setfit.__version__,
            sentence_transformers.__version__,
            transformers.__version__,
            torch.__version__,
        ],
    }
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, tensor in body.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor_bytes(tensor))
    return cache_dir() / "setfit" / f"{digest.hexdigest()[:32]}.safetensors"


def fit_head(options: SetFitOptions) -> Any:
    """The head's fit on the tuned body's cached features: the L-BFGS probe at the fixed L2 ``head_l2``."""
    from functools import partial

    from hftl.models.probe import fit_probe

    return partial(fit_probe, grid=(options.head_l2,))


@strategy(
    "setfit",
    options=SetFitOptions,
    tune_body=tune_body,
    frozen_body=True,  # in the loop: tuned before it, then frozen (its features cached, not adapted)
    fit_head_first=lambda options: True,
    fit_head=lambda options: fit_head(options) if options.head_l2 is not None else None,
    lr_scale=lambda group, options: 1.0 if options.finetune_head or not group.is_head else 0.0,
)
def setfit(groups, options: SetFitOptions, steps_per_epoch, total_steps, where):
    """SetFit: the body is tuned on same/other-class pairs of the shots (setfit), then frozen under a fitted head."""
    return [0 if g.is_head else None for g in groups]

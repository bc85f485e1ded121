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
   as setfit fits its own: scikit-learn's ``LogisticRegression`` (``head_c``,
   default C = 1; no validation data, as a few-shot user has none; ``head_c:
   null`` picks C on the validation split), on *unit-length* features when the
   checkpoint's ``modules.json`` ends with ``Normalize`` (``normalize``, default
   true: the pooled model's ``normalize`` flag, so training, the cache, the saved
   run and ``pipeline`` all see normalised features, as setfit's head does).

Defaults are the setfit paper's and library's (20 iterations of pairs, 1 epoch,
body LR 2e-5, batch 16, head C = 1; the iterations chosen over setfit 1.2's
``oversampling`` draw on validation, see ``NUM_ITERATIONS``);
``benchmarks/setfit_library.py`` runs the library itself on the same shots, and
``docs/studies/fewshot_setfit.md`` has the measurements.

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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from hftl.config.schema import Section
from hftl.strategies import strategy

if TYPE_CHECKING:
    from hftl.config.schema import Recipe

# The setfit paper's 20 iterations of pairs, not setfit 1.2's default (oversampling): chosen on the *validation*
# split of Rotten Tomatoes at K = 16 (3 seeds, the library itself, benchmarks/setfit_library.py): 0.661 vs 0.650.
NUM_ITERATIONS = 20
# The head's C when it is picked on validation (head_c: null); setfit's default C = 1 is in the middle.
HEAD_C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


class SetFitOptions(Section):
    num_iterations: int | None = Field(
        NUM_ITERATIONS,
        ge=1,
        description="2 x num_iterations x N pairs (half same-class, half different-class) from the N training "
        "examples (the setfit paper's setting); null: setfit 1.2's own default, pairs by sampling_strategy.",
    )
    sampling_strategy: Literal["oversampling", "undersampling", "unique"] = Field(
        "oversampling",
        description="setfit's pair draw when num_iterations is null: oversampling = every pair at least once, the "
        "rarer kind (same / other class) repeated to balance them (setfit's default).",
    )
    body_epochs: int = Field(1, ge=1, description="Epochs of contrastive body training over the pairs.")
    body_lr: float = Field(2e-5, gt=0.0, description="Body learning rate of the contrastive phase (AdamW, warmup 10%).")
    body_batch_size: int = Field(16, ge=2, description="Pairs per step of the contrastive phase.")
    max_body_steps: int | None = Field(
        None, ge=1, description="Cap on contrastive steps (fewer pairs are drawn); null: all the pairs."
    )
    normalize: bool = Field(
        True,
        description="The head reads unit-length pooled features when the checkpoint's sentence-transformers "
        "modules.json ends with Normalize (all-MiniLM-L6-v2), as setfit's head does; false: the raw pooled features.",
    )
    head_c: float | None = Field(
        1.0,
        gt=0.0,
        description="Inverse L2 strength C of the head, scikit-learn's LogisticRegression on the tuned body's "
        "features (setfit's head, default C = 1); null: C picked on the validation split from "
        + str(HEAD_C_GRID)
        + ".",
    )
    finetune_head: bool = Field(
        False,
        description="false: the head keeps the logistic-regression fit (LR 0 in the loop); true: the loop's AdamW "
        "epochs then train the head from it (optim.head_lr).",
    )


def tune_body(model: Any, recipe: Recipe, data: Any, options: SetFitOptions, accelerator: Any) -> dict[str, Any]:
    """Contrastive tuning of ``model.body`` in place with the setfit library (or from the cache); what was done."""
    from safetensors.torch import load_file

    from hftl.config import log
    from hftl.config.errors import RecipeError
    from hftl.models.caching import rng_untouched, save_tensors_atomic

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
        file.with_suffix(".json").write_text(json.dumps({k: summary[k] for k in _DONE}), encoding="utf-8")
        save_tensors_atomic(file, body.state_dict())  # last: the weights file marks the entry complete
    accelerator.wait_for_everyone()
    log.say(f"[setfit] body tuned in {summary['seconds']:.0f} s: {_describe(summary)}")
    return summary


_WEIGHTS = "model.safetensors"
_BODY_OPTIONS = {"num_iterations", "sampling_strategy", "body_epochs", "body_lr", "body_batch_size", "max_body_steps"}
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
            sampling_strategy=options.sampling_strategy,
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
        # the transformers Trainer pins batches by default; on the CPU that does nothing but warn at every run
        trainer.st_trainer.args.dataloader_pin_memory = body.device.type == "cuda"
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
    from hftl.models.caching import tensor_bytes

    digest = hashlib.sha256()
    fields = {
        "options": options.model_dump(include=_BODY_OPTIONS),  # the head's options do not change the tuned body
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


@dataclass(frozen=True)
class LogisticHead:
    c: float
    examples: int
    validation_accuracy: float
    scores: dict[float, float]  # validation accuracy per C tried

    def __str__(self) -> str:
        tried = (
            "" if len(self.scores) == 1 else "; tried " + ", ".join(f"{k:g}: {v:.3f}" for k, v in self.scores.items())
        )
        return (
            f"head fitted as setfit's: scikit-learn LogisticRegression(C={self.c:g}"
            f"{' fixed' if len(self.scores) == 1 else ''}) on {self.examples} tuned-body features "
            f"(validation accuracy {self.validation_accuracy:.4f}{tried})"
        )


def fit_logistic_head(chain, train_rows, train_labels, val_rows, val_labels, grid=(1.0,)) -> LogisticHead | None:
    """Set the chain's linear layer to scikit-learn's LogisticRegression on the head's inputs, as setfit fits its
    head (no standardisation: the features are the body's, unit length when ``normalize``); C from ``grid``, one
    value: fixed (validation only scored). scikit-learn rather than hftl's L-BFGS probe so the head is setfit's."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from hftl.models.probe import head_inputs, linear_head

    linear = linear_head(chain)
    x, x_val = head_inputs(chain, train_rows), head_inputs(chain, val_rows)
    if linear is None or x is None or x_val is None or not isinstance(train_labels[0], int):
        return None
    xs, ys, xv, yv = x.double().numpy(), np.array(train_labels), x_val.double().numpy(), np.array(val_labels)
    scores, best = {}, None
    for c in grid:
        head = LogisticRegression(C=c, max_iter=1000).fit(xs, ys)
        scores[c] = float((head.predict(xv) == yv).mean()) if len(yv) else float("nan")
        if best is None or scores[c] > scores[best[0]]:
            best = (c, head)
    c, head = best
    weight, bias = np.zeros((linear.out_features, x.shape[1])), np.zeros(linear.out_features)
    classes = head.classes_.astype(int)
    if len(classes) == 2:  # one logit (class 1 vs 0): split as +/- half, the same softmax as sklearn's sigmoid
        weight[classes[1]], weight[classes[0]] = head.coef_[0] / 2, -head.coef_[0] / 2
        bias[classes[1]], bias[classes[0]] = head.intercept_[0] / 2, -head.intercept_[0] / 2
    else:  # a class without shots keeps a zero row and a very low bias: never predicted, as sklearn never does
        bias[:] = -1e4
        weight[classes], bias[classes] = head.coef_, head.intercept_
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight).to(linear.weight.dtype))
        linear.bias.copy_(torch.from_numpy(bias).to(linear.bias.dtype))
    return LogisticHead(c, len(ys), scores[c], scores)


def fit_head(options: SetFitOptions) -> Any:
    """The head's fit on the tuned body's cached features: setfit's logistic regression at ``head_c``."""
    from functools import partial

    return partial(fit_logistic_head, grid=HEAD_C_GRID if options.head_c is None else (options.head_c,))


@strategy(
    "setfit",
    options=SetFitOptions,
    tune_body=tune_body,
    frozen_body=True,  # in the loop: tuned before it, then frozen (its features cached, not adapted)
    fit_head_first=lambda options: True,
    fit_head=fit_head,
    unit_features=lambda options: options.normalize,
    lr_scale=lambda group, options: 1.0 if options.finetune_head or not group.is_head else 0.0,
)
def setfit(groups, options: SetFitOptions, steps_per_epoch, total_steps, where):
    """SetFit: the body is tuned on same/other-class pairs of the shots (setfit), then frozen under a fitted head."""
    return [0 if g.is_head else None for g in groups]

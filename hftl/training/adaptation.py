"""Domain adaptation: train on labeled source data while unlabeled target-domain data shapes the features.

The decision tree's branch "little labeled data, different domain": a recipe names the target
domain's inputs (``data.target``; their labels are never read) and a method
(``strategy.adaptation: {method, weight}``). Each training step then runs one source batch and one
target batch through the model *together* (one forward, target rows labeled -100 so the task loss
ignores them), reads the pooled features the head receives (a forward pre-hook on the head) and adds
the method's loss on the source and target features:

- ``dann`` (Ganin & Lempitsky 2015): a small domain classifier (MLP) learns source vs target on the
  features behind a gradient-reversal layer, so the body learns features it cannot tell apart. The
  reversal coefficient ramps as ``2 / (1 + exp(-10 p)) - 1`` over the run's progress ``p``.
- ``coral`` (Sun & Saenko 2016, Deep CORAL): the squared Frobenius distance between the source and
  target feature covariances, divided by ``4 d^2``; no extra parameters.

Why a modifier of the strategy section and not strategies of their own: adaptation changes the
*loss*, not what trains when, so it combines with any strategy that trains the body (full, partial,
progressive, two-stage, LoRA), as ``llrd`` combines with them; with the body frozen for the whole run
the features cannot move, and that is refused. Why not a library: pytorch-adapt (last release
0.0.83, January 2023) and dalib 0.2 (2020, superseded by the Transfer-Learning-Library, which is not
on PyPI) bring their own training frameworks and models; each method here is a few lines on the
features the loop already has. A labeled target split (``test_split`` or a carved ``test_size``) is
scored as ``target_test`` beside ``test``, with or without adaptation (the source-only baseline).

Resume and DDP: the target loader is prepared by accelerate (each process gets its own shard of the
target batches, as of the source batches); its batch order is a function of ``train.seed`` and the
batch index alone, so a resumed run at step ``s`` skips exactly ``s * grad_accum`` target batches
and sees the same ones. The domain classifier's parameters are an extra param group of the run's
optimizer (its AdamW state is checkpointed with the rest) at ``optim.head_lr`` on the shared schedule; its
weights are saved in each checkpoint beside the model; it is not part of the published model.
Under several processes CORAL's covariances are those of the global batch (features gathered with
gradients: :func:`gather_rows`), so 2 processes compute what 1 process computes on the same rows; DANN's
loss is a mean over rows, which DDP's gradient mean already makes global.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hftl.config import log
from hftl.config.errors import RecipeError
from hftl.training.hooks import ExtraGroup

if TYPE_CHECKING:
    import datasets
    import torch
    from torch import nn

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan
    from hftl.tasks import PreparedData, Task
    from hftl.training.context import RunContext

METHODS = {  # method -> one line for the card and `hftl plan`
    "dann": "a domain classifier on the pooled features behind gradient reversal (Ganin & Lempitsky 2015), "
    "reversal coefficient ramped 2/(1+exp(-10p))-1",
    "coral": "source and target feature covariances matched, ||C_s - C_t||_F^2 / 4d^2 (Sun & Saenko 2016)",
}
TARGET_TEST = "target_test"


# --------------------------------------------------------------------------- the target data
# (the recipe-time checks are hftl.config.recipe.check_adaptation)
def load_target(recipe: Recipe, task: Task, data: PreparedData, accelerator: Any) -> datasets.Dataset | None:
    """Encode the target data like the source; the labeled part goes into ``data.encoded['target_test']``.

    Returns the unlabeled target examples (encoded; a placeholder label the loop never reads), or None
    without ``data.target`` or without ``strategy.adaptation``.
    """
    target = recipe.data.target
    if target is None:
        return None
    with accelerator.main_process_first():
        unlabeled, test = target_splits(recipe, task)
        if test is not None:
            data.encoded[TARGET_TEST] = _encode(recipe, task, data, test, labeled=True)
        encoded = _encode(recipe, task, data, unlabeled, labeled=False) if recipe.strategy.adaptation else None
    log.say(
        f"[adaptation] target {target.source}: {len(unlabeled)} unlabeled examples"
        + (f", {len(test)} labeled ({TARGET_TEST})" if test is not None else "")
    )
    return encoded


def target_splits(recipe: Recipe, task: Task) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The target's (unlabeled, labeled test) rows, columns renamed to the source's, input types checked."""
    import datasets

    from hftl.data import sources as data
    from hftl.data import splits
    from hftl.tasks.common import column

    d, t = recipe.data, recipe.data.target
    file = recipe.source_file
    source = data.load_source(d.source, config_name=d.config_name, revision=d.revision, recipe_file=file)
    raw = data.load_source(t.source, config_name=t.config_name, revision=t.revision, recipe_file=file)
    for key, name in (("split", t.split), ("test_split", t.test_split)):
        if name is not None and name not in raw:
            raise RecipeError(
                file,
                f"data.target.{key}",
                f"split '{name}' is not in {t.source}",
                name,
                hint=f"Available splits: {', '.join(raw)}.",
            )
    source_features = source[d.splits.train if d.splits.train in source else next(iter(source))].features
    renamed = {}
    for role in task.roles:
        mine = column(recipe, task.roles, role)
        theirs = t.columns.get(role, mine)
        if mine is None or mine not in source_features:
            continue
        if theirs not in raw[t.split].column_names:
            if role == "label" and t.test_split is None and t.test_size is None:
                continue  # unlabeled target data and no target test: no label column needed
            raise RecipeError(
                file,
                f"data.target.columns.{role}",
                f"column '{theirs}' is not in {t.source}",
                hint=f"Columns: {', '.join(raw[t.split].column_names)}.",
            )
        if role != "label" and _kind(raw[t.split].features[theirs]) != _kind(source_features[mine]):
            raise RecipeError(
                file,
                f"data.target.columns.{role}",
                f"column '{theirs}' of {t.source} holds "
                f"{_kind(raw[t.split].features[theirs])}, but the source's '{mine}' holds "
                f"{_kind(source_features[mine])}: the target must be the same kind of input",
                theirs,
            )
        renamed[theirs] = mine
    raw = datasets.DatasetDict(
        {
            k: v.select_columns(list(renamed)).rename_columns({a: b for a, b in renamed.items() if a != b})
            for k, v in raw.items()
        }
    )
    unlabeled, test = raw[t.split], raw[t.test_split] if t.test_split else None
    if t.test_size:
        carved = splits.ensure_splits(
            datasets.DatasetDict(train=unlabeled), validation=0.0, test=t.test_size, seed=recipe.train.seed
        )
        unlabeled, test = carved["train"], carved["test"]
    return splits.subsample(unlabeled, t.max_samples, recipe.train.seed), test


def _kind(feature: Any) -> str:
    """What kind of input a column holds: 'image', 'text', or the feature's own description."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    return type(feature).__name__ if not isinstance(feature, datasets.Value) else f"{feature.dtype} values"


def _encode(recipe: Recipe, task: Task, data: PreparedData, ds: datasets.Dataset, labeled: bool) -> datasets.Dataset:
    """Encode target rows with the source's processor and label set (unlabeled: the first label as placeholder)."""
    import datasets

    from hftl.tasks.common import column

    label_col = column(recipe, task.roles, "label")
    if not labeled:
        ds = (ds.remove_columns(label_col) if label_col in ds.column_names else ds).add_column(
            label_col, [data.labels[0]] * len(ds)
        )
    encoded, reports = task.encode(datasets.DatasetDict(train=ds), data.processor, recipe, data.labels)
    for report in reports:
        log.say(f"[adaptation] target: {report}", logging.WARNING)
    return encoded["train"]


def check_adaptation_plan(recipe: Recipe, plan: Plan) -> None:
    """Adaptation moves the body's features: refuse a plan whose body is frozen for the whole run."""
    from hftl.strategies import names_where

    body = [g for g in plan.groups if not g.is_head]
    frozen = {g.name for g in plan.frozen_for_whole_run()}
    if recipe.strategy.adaptation is not None and body and all(g.name in frozen for g in body):
        raise RecipeError(
            recipe.source_file,
            "strategy.adaptation",
            f"needs a body group that trains: with "
            f"strategy '{plan.strategy}' the whole body is frozen, so the features cannot adapt",
            hint=f"Use a strategy that trains the body: strategy.name: {' / '.join(names_where(frozen_body=False))}.",
        )


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

    def param_groups(self, recipe: Recipe, plan: Plan) -> list[ExtraGroup]:
        """DANN's domain classifier: one more param group of the run's optimizer, at ``optim.head_lr`` on the
        plan's shared schedule (warmup, decay), as the head's."""
        lr = recipe.optim.head_lr or recipe.optim.lr
        return [
            ExtraGroup(name, list(module.parameters()), lr, recipe.optim.weight_decay, plan.schedule)
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


def build_adaptation(ctx: RunContext, unlabeled: datasets.Dataset | None) -> Adaptation | None:
    """The run's :class:`Adaptation` (feature tap on the head, DANN's domain classifier, target loader), or None.

    Nothing is prepared yet: :meth:`Adaptation.param_groups` gives the classifier's optimizer group and
    :meth:`Adaptation.prepare` prepares the classifier and the target loader (the run hook calls both).
    """
    import torch

    recipe, model, plan = ctx.recipe, ctx.model, ctx.plan
    options = recipe.strategy.adaptation
    if options is None or unlabeled is None:
        return None
    head = next(g for g in plan.groups if g.is_head)
    modules = dict(model.named_modules())
    features: list = []

    def tap(module, args):
        if not features:  # the first head module called in this forward: the pooled features
            features.append(args[0])

    for name in head.modules:
        modules[name].register_forward_pre_hook(tap)
    extra: dict[str, Any] = {}
    if options.method == "dann":
        width = next(m for name in head.modules for m in modules[name].modules() if isinstance(m, torch.nn.Linear))
        with torch.random.fork_rng():  # the model's random stream stays as without adaptation
            torch.manual_seed(recipe.train.seed)
            extra["domain_classifier"] = domain_classifier(width.in_features, options.hidden_size)
    per_process = plan.total_steps * recipe.train.grad_accum
    sampler = TargetBatches(
        len(unlabeled), recipe.train.batch_size, recipe.train.seed, per_process * ctx.accelerator.num_processes
    )
    loader = torch.utils.data.DataLoader(
        unlabeled,
        batch_sampler=sampler,
        generator=torch.Generator(),
        collate_fn=ctx.task.collator(ctx.data.processor, recipe, train=True),
    )
    pad_id = getattr(ctx.data.processor, "pad_token_id", None) or 0
    log.say(f"[adaptation] {options.method} (weight {options.weight:g}): {METHODS[options.method]}")
    return Adaptation(
        options.method, options.weight, plan.total_steps, recipe.train.grad_accum, loader, features, pad_id, extra
    )


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


def describe_adaptation(recipe: dict[str, Any]) -> str:
    """One line for ``hftl plan`` and the model card, from the recipe as a dict (empty without data.target)."""
    options, target = recipe["strategy"].get("adaptation"), recipe["data"].get("target")
    if not target:
        return ""
    if not options:
        return f"target data {target['source']}: scored as {TARGET_TEST}, no adaptation (source only)"
    return (
        f"domain adaptation {options['method']} (weight {options['weight']:g}) toward the unlabeled "
        f"{target['source']} inputs: {METHODS[options['method']]}"
    )

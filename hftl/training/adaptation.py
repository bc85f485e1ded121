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

This module holds the target data and the run's set-up; the methods (losses, domain classifier, target stream,
the per-step :class:`~hftl.training.adaptation_methods.Adaptation`) are in :mod:`hftl.training.adaptation_methods`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hftl.config import log
from hftl.config.errors import RecipeError
from hftl.training.adaptation_methods import METHODS, Adaptation, TargetBatches, domain_classifier

if TYPE_CHECKING:
    import datasets

    from hftl.config.schema import Recipe
    from hftl.strategies.plan import Plan
    from hftl.tasks import PreparedData, Task
    from hftl.training.context import RunContext

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
        mine = column(recipe.data, task.roles, role)
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

    label_col = column(recipe.data, task.roles, "label")
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
        collate_fn=ctx.task.collator(ctx.data.processor, target_side(recipe), train=True),
    )
    pad_id = getattr(ctx.data.processor, "pad_token_id", None) or 0
    log.say(f"[adaptation] {options.method} (weight {options.weight:g}): {METHODS[options.method]}")
    return Adaptation(
        options.method, options.weight, plan.total_steps, recipe.train.grad_accum, loader, features, pad_id, extra
    )


def target_side(recipe: Recipe) -> Recipe:
    """The recipe the target batches are collated with: ``data.augment.zoom`` and ``low_resolution`` make the
    source look like the target (a frame-filling, low-resolution digit), so the target keeps its own framing and
    resolution; the crop, flip and policy apply to both domains."""
    augment = recipe.data.augment
    if augment.zoom is None and augment.low_resolution is None:
        return recipe
    return recipe.with_augment(zoom=None, low_resolution=None)


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

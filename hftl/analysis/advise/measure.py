"""What ``hftl advise`` measures: the frozen checkpoint's features on a sample of the training split, and
the step times of the strategies that train the body; the result is an :class:`Advice`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hftl.analysis.advice_rules import (
    FE,
    FEW_EXAMPLES,
    FULL,
    LADDER,
    PARTIAL,
    Decision,
    Measurements,
    decide,
    rung,
    rung_settings,
)
from hftl.analysis.advise.baselines import _folds, constant_share, probe_cv, profile_data, raw_baseline, transferability
from hftl.config import log
from hftl.config.errors import HftlError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from hftl.config.schema import Recipe

# Training examples whose frozen features are extracted (all of them when fewer): MiniLM on 2 idle cores extracts a
# few hundred snippets a second (README, benchmark 2b), so seconds, not minutes. Equal to FEW_EXAMPLES: when the advice
# is the probe because the data is small, the whole training split is already in the feature cache for the run.
SAMPLE = FEW_EXAMPLES
FOLDS = 3
TIMED_STEPS = 2  # forward+backward steps timed (after one untimed warm-up step)


@dataclass
class Advice:
    """Everything ``hftl advise`` measured and decided (JSON-able through :meth:`record`)."""

    recipe_name: str
    data: dict[str, Any]
    features: dict[str, Any]
    decision: Decision
    settings: dict[str, Any]  # recipe keys of the recommended rung
    runner_up_settings: dict[str, Any]
    batch_size: int = 32
    estimates: dict[str, float] = field(default_factory=dict)  # rung label -> estimated training seconds
    timings: dict[str, float] = field(default_factory=dict)  # what the measuring itself cost
    seconds: float = 0.0
    measurements: Measurements | None = None  # what the table read (benchmarks/advisor_agreement.py caches it)

    def record(self) -> dict[str, Any]:
        """The compact record kept in a resolved recipe (strategy.advice), plan.json and the model card."""
        d = self.decision
        return {
            "by": "hftl advise",
            "branch": d.branch,
            "strategy": d.rung.label,
            "runner_up": d.runner_up.label,
            "because": d.why,
            "flags": list(d.flags),
            "measurements": {
                **_round(self.features),
                "n_train": self.data["n_train"],
                "majority": round(self.data["majority"], 4),
            },
        }


def advise(recipe: Recipe, *, step_times: bool = True, sample: int = SAMPLE, say: Any = log.say) -> Advice:
    """Measure the recipe's data and checkpoint and decide (``step_times=False``: the cheap path of ``auto``)."""
    import torch

    from hftl.tasks import TASKS, prepare_data
    from hftl.training.build import build_model
    from hftl.training.launch import set_threads

    started = time.time()
    timings: dict[str, float] = {}
    task = TASKS.get(recipe.task)
    if task.towers:
        raise HftlError(
            f"{recipe.source_file}: hftl advise measures one checkpoint; task '{recipe.task}' is made of "
            f"the towers {', '.join(task.towers)}. Name a strategy per tower instead."
        )
    set_threads(recipe.train.num_threads)
    torch.manual_seed(recipe.train.seed)
    probe_recipe = on_rung(recipe, FE, n_train=1, images="image" in task.roles)  # n only sets epochs here
    clock = time.time()
    data = prepare_data(probe_recipe)
    for report in data.reports:
        say(f"[data] {report}")
    train = data.encoded["train"]
    profile = profile_data(data, "image" in task.roles, recipe)
    timings["data"] = time.time() - clock

    clock = time.time()
    model = build_model(probe_recipe, task, data.labels)
    timings["model"] = time.time() - clock
    rows_idx = _sample_rows(len(train), sample, recipe.train.seed)
    subset = train.select(rows_idx) if len(rows_idx) < len(train) else train
    clock = time.time()
    x, y, cached = frozen_features(model, probe_recipe, task, data.processor, subset)
    timings["features"] = time.time() - clock
    say(
        f"[advise] frozen features of {len(subset)} training examples ({'reused from' if cached else 'stored in'} "
        f"the feature cache): {x.shape[0]} rows x {x.shape[1]} in {timings['features']:.1f} s"
    )

    import numpy as np

    clock = time.time()
    folds = _folds(y, FOLDS, recipe.train.seed)
    with one_thread():
        features = {
            "sampled": len(subset),
            "rows": int(x.shape[0]),
            "dim": int(x.shape[1]),
            "constant_share": constant_share(x),
            **transferability(x, y, recipe.train.seed),
            "probe_cv_accuracy": probe_cv(x, y, folds),
        }
        timings["probe"] = time.time() - clock
        clock = time.time()
        features["baseline"], features["baseline_cv_accuracy"] = raw_baseline(
            subset, data.processor, task, probe_recipe, y, folds
        )
    timings["baseline"] = time.time() - clock
    commonest = [Counter(y[fit].tolist()).most_common(1)[0][0] for fit, _ in folds]
    features["majority_cv_accuracy"] = float(np.mean([np.mean(y[test] == c) for (_, test), c in zip(folds, commonest)]))
    # The few-shot rows (SetFit) are for single-label text: one sentence-embedding vector per example.
    single_text = (
        "text" in task.roles
        and "image" not in task.roles
        and not profile["token_level"]
        and recipe.data.problem_type == "single_label"
    )
    measured = Measurements(
        profile["n_train"],
        features["majority_cv_accuracy"],
        features["probe_cv_accuracy"],
        features["baseline_cv_accuracy"],
        n_classes=len(data.labels),
        text=single_text,
        constant_share=features["constant_share"],
    )
    decision = decide(measured)
    images, pooling = "image" in task.roles, _pooling(recipe)
    batch = recipe.train.batch_size
    advice = Advice(
        recipe.name,
        profile,
        features,
        decision,
        rung_settings(decision.rung, profile["n_train"], batch, images, pooling),
        rung_settings(decision.runner_up, profile["n_train"], batch, images, pooling),
        batch,
        timings=timings,
        measurements=measured,
    )
    if step_times:
        clock = time.time()
        advice.estimates = estimate_times(model, recipe, task, data, subset, features, timings, images, pooling)
        timings["step_times"] = time.time() - clock
    advice.seconds = time.time() - started
    return advice


def on_rung(recipe: Recipe, label: str, n_train: int, images: bool) -> Recipe:
    """The recipe moved to a rung of the ladder (its strategy section replaced, LRs and budget set)."""
    from hftl.config.recipe import apply_overrides, as_overrides, validate_recipe

    doc = recipe.model_dump(mode="json")
    doc["strategy"] = _plain_strategy(doc.get("strategy") or {})
    sets = rung_settings(rung(label), n_train, recipe.train.batch_size, images, _pooling(recipe))
    return validate_recipe(apply_overrides(doc, as_overrides(sets), recipe.source_file), recipe.source_file)


def frozen_features(
    model: torch.nn.Module, recipe: Recipe, task: Any, processor: Any, subset: Any
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(head-input features, labels, reused from cache) for ``subset``, through the feature cache's own key and hook.

    Token tasks give one row per labelled token.
    """
    import numpy as np
    import torch

    from hftl.models.caching import rng_untouched
    from hftl.models.probe import head_inputs
    from hftl.training.build import plan_for
    from hftl.training.feature_eligibility import skip_reason, trace_head
    from hftl.training.feature_extraction import extract
    from hftl.training.feature_extraction import rows_of as _rows
    from hftl.training.feature_key import cache_file, cache_key
    from hftl.training.feature_store import read_rows, write_rows

    plan = plan_for(model, recipe, 1, 1)
    reason = skip_reason(model, plan, task, {"train": subset}, recipe.train.cache_features, recipe.data.augment)
    collate = task.collator(processor, recipe, train=False)
    with rng_untouched():
        if reason is None:
            chain, reason = trace_head(model, plan, collate(_rows(subset, range(min(8, len(subset))))))
    if reason is not None:
        raise HftlError(f"{recipe.source_file}: cannot measure the frozen checkpoint's features: {reason}.")
    modules = dict(model.named_modules())
    path = cache_file(cache_key(model, plan, recipe.model, recipe.data, processor, chain[0]), subset)
    rows = read_rows(path) if path.is_file() else None
    cached = rows is not None and len(rows) == len(subset)
    if not cached:
        with rng_untouched():
            rows = extract(
                model,
                modules[chain[0]],
                subset,
                list(range(len(subset))),
                collate,
                recipe.train.eval_batch_size or recipe.train.batch_size * 2,
                torch.device("cpu"),
            )
        write_rows(path, rows)
    labels = list(subset["labels"])
    if isinstance(labels[0], list):  # one row per labelled token
        x = torch.cat([row.reshape(len(tags), -1) for row, tags in zip(rows, labels)])
        y = torch.tensor([t for seq in labels for t in seq])
        keep = y >= 0
        return x[keep].numpy(), y[keep].numpy(), cached
    x = head_inputs([modules[name] for name in chain], rows)
    if x is None and all(r.shape == rows[0].shape for r in rows):  # e.g. ResNet's pooled (C, 1, 1) maps
        x = torch.stack(list(rows)).flatten(1).float()
    if x is None:
        raise HftlError(f"{recipe.source_file}: the head's input is not one tensor shape per example; cannot probe it.")
    return x.numpy(), np.asarray(labels), cached


def estimate_times(
    model: torch.nn.Module,
    recipe: Recipe,
    task: Any,
    data: Any,
    subset: Any,
    features: dict[str, Any],
    timings: dict[str, float],
    images: bool,
    pooling: str | None,
) -> dict[str, float]:
    """Estimated training seconds of each rung: its optimizer steps x the measured step time, plus evaluations.

    Step times are forward + backward of one training batch (optimizer update excluded), with everything
    training (full) and with the partial rung's plan applied (its frozen groups in eval mode, no gradient),
    measured in alternation (so a change in the machine's load hits both alike), the first round dropped.
    Feature extraction: one inference pass over every split at the measured rate, plus the probe.
    """
    import torch

    from hftl.strategies.plan import apply_plan, count_steps
    from hftl.training.build import is_convolutional, plan_for
    from hftl.training.feature_extraction import rows_of as _rows

    n_train = data.encoded["train"].num_rows
    n_val, n_test = (len(data.encoded[s]) if s in data.encoded else 0 for s in ("validation", "test"))
    batch = recipe.train.batch_size
    rows = _rows(subset, typical_batch(subset, batch))
    inputs = task.collator(data.processor, recipe, train=True)(rows)
    # The model was built on the probe's rung: its body is frozen, and a plan keeps frozen weights frozen (as it
    # keeps peft's), so without this the full and partial steps would time the head alone (4-5x too fast: an
    # EfficientNet-Lite0 step at 64 px, 0.05 s timed vs 0.19 s trained, measured 2026-12-04).
    for p in model.parameters():
        p.requires_grad_(True)
    if is_convolutional(model):  # laid out as a CPU training run lays it out (1.7x faster steps for a CNN)
        model.to(memory_format=torch.channels_last)
    plans = {label: plan_for(model, on_rung(recipe, label, n_train, images), 1, 1) for label in (FULL, PARTIAL)}
    times: dict[str, list[float]] = {label: [] for label in plans}
    for _ in range(TIMED_STEPS + 1):
        for label, plan in plans.items():
            model.train()
            apply_plan(model, plan, 0)
            clock = time.perf_counter()
            model(**inputs).loss.backward()
            times[label].append(time.perf_counter() - clock)
            model.zero_grad(set_to_none=True)
    step = {label: statistics.median(t[1:]) for label, t in times.items()}
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    eval_inputs = task.collator(data.processor, recipe, train=False)(rows)
    clock = time.perf_counter()
    with torch.inference_mode():
        model(**{k: v for k, v in eval_inputs.items() if k != "labels"})
    forward_per_example = (time.perf_counter() - clock) / len(rows)
    estimates = {}
    for r in LADDER:
        on = on_rung(recipe, r.label, n_train, images)
        steps_per_epoch, total = count_steps(on, math.ceil(n_train / batch), 1)
        evals = math.ceil(total / (on.train.eval_steps or max(steps_per_epoch, math.ceil(total / 10))))
        if r.lr is None:  # extract every split once, then the head alone
            estimates[r.label] = (n_train + n_val + n_test) * forward_per_example + timings.get("probe", 0.0)
        else:  # the steps, an evaluation of validation every eval_steps, and the test split once
            estimates[r.label] = total * step[r.label] + (evals * n_val + n_test) * forward_per_example
    estimates["step_seconds_full"], estimates["step_seconds_partial"] = step[FULL], step[PARTIAL]
    estimates["forward_seconds_per_example"] = forward_per_example
    return estimates


def typical_batch(subset: Any, batch: int) -> list[int]:
    """Rows for a timed step: a batch as training draws it. Training batches are grouped by length
    (:class:`hftl.training.batching.LengthGroupedBatchSampler`), so a typical one holds rows of about the median
    length, padded little: the ``batch`` rows around the median length. Rows without a length (images): the first."""
    n = min(batch, len(subset))
    if "length" not in subset.column_names:
        return list(range(n))
    lengths = subset["length"]
    order = sorted(range(len(subset)), key=lambda i: lengths[i])
    start = max(0, min(len(order) - n, len(order) // 2 - n // 2))
    return sorted(order[start : start + n])


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch and BLAS on one thread: the probe's and LogME's matrices are small, and on a shared 2-core machine a
    second thread only adds waiting (measured: 3-fold probe on 2,000 x 384, 3.0 CPU-s on 1 thread, 13.4 on 2)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _plain_strategy(section: dict[str, Any]) -> dict[str, Any]:
    """The strategy section without its name, options and LR shape (the rung sets them)."""
    return {k: v for k, v in section.items() if k in ("batchnorm", "layer_groups")}


def _pooling(recipe: Recipe) -> str | None:
    """The text classifier's pooling once ``auto`` is resolved (None for other inputs)."""
    from hftl.tasks import TASKS

    if "text" not in TASKS.get(recipe.task).roles or recipe.model.pooling != "auto":
        return None if "text" not in TASKS.get(recipe.task).roles else recipe.model.pooling
    if recipe.model.init_from:
        return "pooler"
    from hftl.models.pretrained import checkpoint_pooling

    return checkpoint_pooling(recipe.model.checkpoint, recipe.model.revision) or "pooler"


def _sample_rows(n: int, cap: int, seed: int) -> list[int]:
    import numpy as np

    if n <= cap:
        return list(range(n))
    return sorted(np.random.default_rng(seed).permutation(n)[:cap].tolist())


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}

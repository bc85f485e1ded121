"""``hftl advise``: measure the data and the checkpoint, then recommend a strategy from one table.

What is measured, on the recipe's own data and checkpoint, in about a minute on 2 cores:

- the data: examples per split, per class (per entity type for BIO tags), class balance,
  token lengths (and the share cut at ``data.max_length``) or image sizes;
- the frozen checkpoint: the model is built as a ``feature_extraction`` run would build it, the
  head's input is extracted with :func:`hftl.training.feature_cache.extract` on a seeded sub-sample of the
  training split (at most ``SAMPLE`` examples) and stored in the feature cache under the key the
  run uses (so a following probe run on the same rows reuses it); on it, LogME
  (:mod:`hftl.analysis.transferability`, also with shuffled labels as the no-information reference) and a
  3-fold linear probe (:func:`hftl.training.probe.fit_logistic`);
- a no-transfer baseline on the same folds: TF-IDF + logistic regression for text (on the texts
  as tokenized, so the same truncation), pooled raw pixels + logistic regression for images, token
  identity + logistic regression for token tags (scikit-learn);
- the step time of the body (forward + backward of one training batch) with everything training and
  with the bottom half frozen, which with the step counts gives each strategy's training time.

The decision is :func:`hftl.analysis.advice_rules.decide` (the table lives there). ``strategy.name: auto``
in a recipe runs the same measurements without the step times (:func:`resolve_strategy`, called at
the start of ``hftl run`` and ``hftl plan``); ``--verify`` runs a small study of the recommended
strategy against its neighbours on the ladder (:func:`verify`).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.analysis.advice_rules import (
    ADVICE_KEY,
    AUTO,
    FE,
    FEW_EXAMPLES,
    FULL,
    LADDER,
    PARTIAL,
    Decision,
    Measurements,
    decide,
    describe_table,
    neighbours,
    rung,
    rung_settings,
)
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


# --------------------------------------------------------------------------- measuring
def advise(recipe: Recipe, *, step_times: bool = True, sample: int = SAMPLE, say: Any = print) -> Advice:
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
    measured = Measurements(
        profile["n_train"],
        features["majority_cv_accuracy"],
        features["probe_cv_accuracy"],
        features["baseline_cv_accuracy"],
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
    )
    if step_times:
        clock = time.time()
        advice.estimates = estimate_times(model, recipe, task, data, subset, features, timings, images, pooling)
        timings["step_times"] = time.time() - clock
    advice.seconds = time.time() - started
    return advice


def on_rung(recipe: Recipe, label: str, n_train: int, images: bool) -> Recipe:
    """The recipe moved to a rung of the ladder (its strategy section replaced, LRs and budget set)."""
    from hftl.config.recipe import apply_overrides, validate_recipe

    doc = recipe.model_dump(mode="json")
    doc["strategy"] = _plain_strategy(doc.get("strategy") or {})
    sets = rung_settings(rung(label), n_train, recipe.train.batch_size, images, _pooling(recipe))
    return validate_recipe(apply_overrides(doc, _overrides(sets), recipe.source_file), recipe.source_file)


def profile_data(data: Any, images: bool, recipe: Recipe) -> dict[str, Any]:
    """Examples per split, per class (or entity type), balance, and input lengths or image sizes."""
    import numpy as np

    train = data.encoded["train"]
    if len(train) == 0:
        raise HftlError(
            f"{recipe.source_file}: the training split is empty; hftl advise needs labelled examples "
            "(check data.source, data.splits.train and data.max_train_samples)."
        )
    labels = list(train["labels"])
    token_level = isinstance(labels[0], list)
    if token_level:
        flat = [t for seq in labels for t in seq if t >= 0]
        counts = Counter(data.labels[t] for t in flat)
        entities = Counter(data.labels[t][2:] for t in flat if data.labels[t].startswith("B-"))
        per_class = dict(entities.most_common()) or dict(counts.most_common())
        unit = "labelled tokens"
    else:
        counts = Counter(data.labels[t] for t in labels)
        per_class = {name: counts.get(name, 0) for name in data.labels}
        unit = "examples"
    present = [c for c in counts.values() if c > 0]
    if len(present) < 2:
        only = next(iter(counts), "none")
        raise HftlError(
            f"{recipe.source_file}: the training split has one class only ({only!r}, {sum(present)} "
            f"{unit}); classification needs at least 2. Check data.columns and the label column."
        )
    total = sum(counts.values())
    profile: dict[str, Any] = {
        "n_train": len(train),
        "splits": {s: len(ds) for s, ds in data.encoded.items()},
        "per_class": per_class,
        "per_class_unit": "entities" if token_level and entities else unit,
        "majority": max(counts.values()) / total,
        "majority_class": counts.most_common(1)[0][0],
        "balance": min(present) / max(present),
        "token_level": token_level,
    }
    if "length" in train.column_names:
        lengths = np.asarray(list(train["length"]))
        profile["tokens"] = {
            "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)),
            "max": int(lengths.max()),
            "cut_at_max_length": float(np.mean(lengths >= recipe.data.max_length)),
        }
    if images:
        profile["image_sizes"] = _image_sizes(train)
    return profile


def frozen_features(
    model: torch.nn.Module, recipe: Recipe, task: Any, processor: Any, subset: Any
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(head-input features, labels, reused from cache) for ``subset``, through the feature cache's own key and hook.

    Token tasks give one row per labelled token.
    """
    import numpy as np
    import torch

    from hftl.training.build import plan_for
    from hftl.training.feature_cache import (
        _rows,
        cache_file,
        cache_key,
        extract,
        read_rows,
        rng_untouched,
        skip_reason,
        trace_head,
        write_rows,
    )
    from hftl.training.probe import head_inputs

    plan = plan_for(model, recipe, 1, 1)
    reason = skip_reason(model, plan, recipe, task, {"train": subset})
    collate = task.collator(processor, recipe, train=False)
    with rng_untouched():
        if reason is None:
            chain, reason = trace_head(model, plan, collate(_rows(subset, range(min(8, len(subset))))))
    if reason is not None:
        raise HftlError(f"{recipe.source_file}: cannot measure the frozen checkpoint's features: {reason}.")
    modules = dict(model.named_modules())
    path = cache_file(cache_key(model, plan, recipe, processor, chain[0]), subset)
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


def transferability(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """LogME of the features, and of the same features against shuffled labels (the no-information value)."""
    from hftl.analysis.transferability import logme

    return {"logme": logme(x, y), "logme_shuffled": logme(x, y, shuffled_seed=seed)}


def probe_cv(x: np.ndarray, y: np.ndarray, folds: list) -> float:
    """Mean accuracy over the folds of a multinomial logistic regression on standardised features (L-BFGS).

    The L2 strength is scikit-learn's default C=1 (l2 = 1 / n), as in the measurements the table cites.
    """
    import numpy as np
    import torch

    from hftl.training.probe import fit_logistic

    n_classes = int(y.max()) + 1
    scores = []
    with torch.enable_grad():
        for train, test in folds:
            xt = torch.tensor(x[train], dtype=torch.float32)
            mean, std = xt.mean(0), xt.std(0).clamp(min=1e-6)
            weight, bias = fit_logistic((xt - mean) / std, torch.tensor(y[train]), n_classes, l2=1.0 / len(train))
            pred = (((torch.tensor(x[test], dtype=torch.float32) - mean) / std) @ weight.T + bias).argmax(-1)
            scores.append(float((pred.numpy() == y[test]).mean()))
    return float(np.mean(scores))


def raw_baseline(
    subset: Any, processor: Any, task: Any, recipe: Recipe, y: np.ndarray, folds: list
) -> tuple[str, float | None]:
    """A no-transfer model of the raw inputs, scored on the same folds: (what it is, mean accuracy)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    if "image" in task.roles:
        x, name = _pixels(subset, processor, task, recipe), "pooled raw pixels (16x16) + logistic regression"
        make = lambda: LogisticRegression(max_iter=300)  # noqa: E731
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    elif "input_ids" in subset.column_names and isinstance(subset[0]["labels"], list):
        ids = [i for seq, lab in zip(subset["input_ids"], subset["labels"]) for i, t in zip(seq, lab) if t >= 0]
        x, name = _one_hot(ids), "token identity + logistic regression"
        make = lambda: LogisticRegression(max_iter=300)  # noqa: E731
    elif "input_ids" in subset.column_names:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = processor.batch_decode([list(ids) for ids in subset["input_ids"]], skip_special_tokens=True)
        name = "TF-IDF (words, 1-2 grams) + logistic regression"
        scores = []
        for train, test in folds:
            vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
            xt = vectorizer.fit_transform([texts[i] for i in train])
            model = LogisticRegression(max_iter=1000).fit(xt, y[train])
            scores.append(float((model.predict(vectorizer.transform([texts[i] for i in test])) == y[test]).mean()))
        return name, float(np.mean(scores))
    else:
        return "none for these inputs", None
    scores = [float((make().fit(x[train], y[train]).predict(x[test]) == y[test]).mean()) for train, test in folds]
    return name, float(np.mean(scores))


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
    from hftl.training.build import plan_for
    from hftl.training.feature_cache import _rows

    n_train = data.encoded["train"].num_rows
    n_val, n_test = (len(data.encoded[s]) if s in data.encoded else 0 for s in ("validation", "test"))
    batch = recipe.train.batch_size
    rows = _rows(subset, range(min(batch, len(subset))))
    inputs = task.collator(data.processor, recipe, train=True)(rows)
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


# --------------------------------------------------------------------------- reporting and writing
def format_advice(advice: Advice) -> str:
    """What ``hftl advise`` prints: measurements, the table and the branch taken, the recommendation, times."""
    d, data, f = advice.decision, advice.data, advice.features
    splits = ", ".join(f"{k} {v:,}" for k, v in data["splits"].items())
    top = list(data["per_class"].items())
    classes = ", ".join(f"{k} {v:,}" for k, v in top[:12]) + (f" ... ({len(top)} in all)" if len(top) > 12 else "")
    lines = [
        "== data",
        f"  examples: {splits}",
        f"  per class in train ({data['per_class_unit']}): {classes}",
        f"  majority class {data['majority_class']!r}: {data['majority']:.3f} of train; balance (rarest / "
        f"commonest) {data['balance']:.3f}",
    ]
    if "tokens" in data:
        t = data["tokens"]
        lines.append(
            f"  input tokens: median {t['median']:g}, 95th percentile {t['p95']:g}, max {t['max']} "
            f"({t['cut_at_max_length']:.1%} cut at data.max_length)"
        )
    if "image_sizes" in data:
        lines.append(
            f"  image sizes (w x h, of {data['image_sizes']['checked']} checked): "
            + ", ".join(f"{k} x{v}" for k, v in data["image_sizes"]["common"].items())
        )
    lines += [
        "== frozen checkpoint (linear probe on the head's input; "
        f"{f['sampled']:,} training examples, {FOLDS}-fold cross-validation)",
        f"  LogME {f['logme']:.4f} (same features, labels shuffled: {f['logme_shuffled']:.4f}; higher is better)",
        f"  linear probe accuracy {f['probe_cv_accuracy']:.3f}   majority class {f['majority_cv_accuracy']:.3f}",
        f"  no-transfer baseline: {f['baseline']}: "
        + (f"{f['baseline_cv_accuracy']:.3f}" if f["baseline_cv_accuracy"] is not None else "-"),
    ]
    if advice.estimates:
        e = advice.estimates
        lines.append(
            f"  step time (forward + backward, batch {advice.batch_size}): full "
            f"{e['step_seconds_full']:.2f} s, bottom half frozen {e['step_seconds_partial']:.2f} s"
        )
    lines += [
        "== decision table (rows: training examples; columns: what the frozen features do)",
        describe_table(),
        f"  branch: {d.branch} -> {d.rung.label} ({d.why})",
        f"  runner-up: {d.runner_up.label}",
    ]
    lines += [f"  warning: {flag}" for flag in d.flags]
    lines += ["== recommended recipe keys", *(f"  {k}: {v}" for k, v in advice.settings.items())]
    if advice.estimates:
        lines.append(
            "== estimated training time on this machine: "
            + ", ".join(f"{r.label} {_duration(advice.estimates[r.label])}" for r in LADDER)
        )
    lines.append(
        f"(measured in {advice.seconds:.0f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in advice.timings.items()) + ")"
    )
    return "\n".join(lines)


def recommended_recipe(recipe_file: str, overrides: list[str], advice: Advice) -> dict[str, Any]:
    """The input recipe as written (with the command-line overrides) plus the recommended keys."""
    import yaml

    from hftl.config.recipe import apply_overrides, validate_recipe

    doc = apply_overrides(yaml.safe_load(Path(recipe_file).read_text(encoding="utf-8")), overrides, recipe_file)
    doc["strategy"] = _plain_strategy(doc.get("strategy") or {})
    doc = apply_overrides(doc, _overrides(advice.settings), recipe_file)
    validate_recipe(doc, recipe_file)  # what we write must load
    return doc


def resolve_strategy(recipe: Recipe) -> Recipe:
    """``strategy.name: auto`` -> the advisor's choice (cheap path: no step times); other recipes unchanged.

    The chosen recipe keeps the advice under ``strategy.advice`` (so it reaches recipe.yaml, plan.json and
    the model card). Every process of a launch measures the same rows with the same seed, so all choose alike.
    """
    if recipe.strategy.name != AUTO:
        return recipe
    from hftl.config.recipe import apply_overrides, validate_recipe

    advice = advise(recipe, step_times=False, say=lambda *a: None)
    d = advice.decision
    print(
        f"[advise] strategy.name: auto -> {d.rung.label} (branch {d.branch}: {d.why}; probe "
        f"{advice.features['probe_cv_accuracy']:.3f}, baseline {_fmt(advice.features['baseline_cv_accuracy'])}, "
        f"majority {advice.data['majority']:.3f}, {advice.data['n_train']:,} training examples; "
        f"{advice.seconds:.0f} s)"
    )
    for flag in d.flags:
        print(f"[advise] warning: {flag}")
    doc = recipe.model_dump(mode="json")
    doc["strategy"] = _plain_strategy(doc["strategy"])
    doc = apply_overrides(doc, _overrides(advice.settings), recipe.source_file)
    doc["strategy"][ADVICE_KEY] = advice.record()
    return validate_recipe(doc, recipe.source_file)


# --------------------------------------------------------------------------- verifying
def verify(
    recipe_file: str,
    overrides: list[str],
    advice: Advice,
    folder: Path,
    seeds: int = 1,
    max_steps: int | None = None,
    max_eval: int = 500,
) -> tuple[bool, str]:
    """Run the recommended rung against its ladder neighbours as an hftl study; (advice held, report text).

    Held: the recommended strategy's mean metric is within one standard error of the best mean (or the best).
    """
    import csv

    import yaml

    from hftl.analysis.study import run_study

    folder.mkdir(parents=True, exist_ok=True)
    base = recommended_recipe(recipe_file, overrides, advice)
    base["output"] = {k: v for k, v in (base.get("output") or {}).items() if k not in ("dir", "overwrite")}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    n, batch = advice.data["n_train"], base.get("train", {}).get("batch_size", 32)
    images = "image_sizes" in advice.data
    pooling = (base.get("model") or {}).get("pooling")
    contenders = [advice.decision.rung, *neighbours(advice.decision.rung.label)]
    fixed: dict[str, Any] = {"data.max_eval_samples": max_eval}
    if max_steps:
        fixed.update({"train.max_steps": max_steps, "train.min_steps": 0})
    study = {
        "description": f"hftl advise --verify: {advice.decision.rung.label} vs its neighbours",
        "recipe": "recipe.yaml",
        "overrides": fixed,
        "axes": {
            "strategy": [{"label": r.label, "set": rung_settings(r, n, batch, images, pooling)} for r in contenders],
            "train.seed": list(range(seeds)),
        },
    }
    path = folder / "verify-study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False), encoding="utf-8")
    run_study(path)
    with open(folder / "verify-study" / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    metric = next(k for k in rows[0] if k.startswith(("test.", "validation.")))
    scores: dict[str, list[float]] = {r.label: [] for r in contenders}
    for row in rows:
        if row["state"] == "COMPLETE" and row[metric] not in ("", None):
            scores[row["strategy"]].append(float(row[metric]))
    means = {k: statistics.mean(v) for k, v in scores.items() if v}
    if advice.decision.rung.label not in means:
        return False, f"the recommended strategy's trials failed; see {folder / 'verify-study' / 'report.md'}"
    mine = scores[advice.decision.rung.label]
    sem = statistics.stdev(mine) / math.sqrt(len(mine)) if len(mine) > 1 else 0.0
    best = max(means, key=means.get)
    held = means[advice.decision.rung.label] >= means[best] - sem
    lines = [f"== verify ({metric}, mean over {seeds} seed(s); study in {folder / 'verify-study'})"]
    lines += [
        f"  {label:<20} {means[label]:.4f}"
        + ("  (recommended)" if label == advice.decision.rung.label else "")
        + ("  (best)" if label == best else "")
        for label in means
    ]
    lines.append(
        f"  advice {'held' if held else 'did NOT hold'}: recommended {advice.decision.rung.label} "
        f"{means[advice.decision.rung.label]:.4f} vs best {best} {means[best]:.4f}"
    )
    return held, "\n".join(lines)


# --------------------------------------------------------------------------- the command
def run_advise(
    recipe_file: str,
    overrides: list[str],
    write: str | None = None,
    verify_study: bool = False,
    seeds: int = 1,
    verify_steps: int | None = None,
    sample: int = SAMPLE,
) -> int:
    """``hftl advise``: print the measurements and advice; optionally write the recipe and verify it."""
    import yaml

    from hftl.config.recipe import load_recipe

    recipe = load_recipe(recipe_file, overrides)
    advice = advise(recipe, sample=sample)
    print(format_advice(advice))
    if write:
        doc = recommended_recipe(recipe_file, overrides, advice)
        header = (
            f"# {Path(recipe_file).name} with the strategy recommended by `hftl advise` "
            f"(branch {advice.decision.branch}: {advice.decision.why})\n"
        )
        Path(write).write_text(header + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        print(f"[advise] wrote {write}")
    if verify_study:
        folder = Path(write).with_suffix("") if write else recipe.run_dir.with_name(recipe.name + "-advice")
        held, text = verify(recipe_file, overrides, advice, Path(str(folder) + "-verify"), seeds, verify_steps)
        print(text)
        return 0 if held else 1
    return 0


# --------------------------------------------------------------------------- helpers
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


def _overrides(sets: dict[str, Any]) -> list[str]:
    from hftl.analysis.study import to_yaml_text

    return [f"{k}={to_yaml_text(v)}" for k, v in sets.items()]


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


def _folds(y: np.ndarray, k: int, seed: int) -> list:
    """Stratified k folds: each class's examples, shuffled (seeded), dealt round-robin to the folds."""
    import numpy as np

    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = np.arange(len(idx)) % k
    if len(y) < 2 * k:
        raise HftlError(
            f"too few examples ({len(y)}) for {k}-fold cross-validation; hftl advise needs at least {2 * k}."
        )
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


def _pixels(subset: Any, processor: Any, task: Any, recipe: Recipe) -> np.ndarray:
    """Each image as the model's processor gives it, average-pooled to 16 x 16 per channel."""
    import torch

    collate = task.collator(processor, recipe, train=False)
    out = []
    for start in range(0, len(subset), 64):
        rows = subset.select(range(start, min(len(subset), start + 64)))
        batch = collate([dict(zip(rows.column_names, v)) for v in zip(*rows[:].values())])
        out.append(torch.nn.functional.adaptive_avg_pool2d(batch["pixel_values"].float(), 16).flatten(1))
    return torch.cat(out).numpy()


def _one_hot(ids: list[int]) -> Any:
    import numpy as np
    from scipy.sparse import csr_matrix

    return csr_matrix((np.ones(len(ids)), (np.arange(len(ids)), ids)), shape=(len(ids), max(ids) + 1))


def _image_sizes(train: Any, limit: int = 200) -> dict[str, Any]:
    """The commonest image sizes among the first ``limit`` training images (header reads only)."""
    import io

    from PIL import Image

    sizes = Counter()
    for value in train.select(range(min(limit, len(train))))["image"]:
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        with Image.open(source) as image:
            sizes[f"{image.size[0]}x{image.size[1]}"] += 1
    return {"checked": sum(sizes.values()), "common": dict(sizes.most_common(5))}


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"

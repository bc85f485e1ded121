"""Model card (:mod:`hftl.publish.card`): the sections of its text, in order, each from the run folder alone."""

from __future__ import annotations

from importlib import metadata

from hftl.config.errors import HftlError
from hftl.config.run_folder import RunFiles, domain_gap, read_json, read_run
from hftl.metrics import lower_is_better
from hftl.models.pretrained import describe_head_input
from hftl.publish.card_facts import (
    adapter_settings,
    kv,
    loss_text,
    num,
    optimizer_text,
    param_size,
    param_sizes,
    short_source,
    source_name,
    strategy_doc,
    table,
    task_of,
    weights_kept_text,
)
from hftl.publish.card_metadata import base_checkpoints
from hftl.publish.plots import ADAPTATION_PNG, CONFUSION_PNG, CURVES_PNG, LR_PNG
from hftl.publish.usage import usage_section
from hftl.training.adaptation import describe_adaptation


def sections(run: RunFiles, repo_id: str | None) -> list[str]:
    """The card's text sections, in order (empty ones left out)."""
    parts = [
        _summary(run, repo_id),
        _results(run),
        _per_class(run),
        _stages(run),
        _plots(run),
        usage_section(run, repo_id),
        _strategy(run),
        _hyperparameters(run),
        _data(run),
        _chain(run),
        _versions(run),
        _recipe(run),
    ]
    return [s for s in parts if s]


def _summary(run: RunFiles, repo_id: str | None) -> str:
    r = run.recipe
    bases = ", ".join(f"`{c}`" for c in base_checkpoints(r)) or "a local checkpoint"
    via = f" (continuing from the earlier run `{r['model']['init_from']}`)" if r["model"].get("init_from") else ""
    lines = [f"# {(repo_id or r['name']).split('/')[-1]}", ""]
    if r.get("description"):
        lines += [r["description"], ""]
    lines.append(
        f"A **{r['task']}** model transferred from {bases}{via} to `{short_source(r['data']['source'])}` "
        f"with the **{r['strategy']['name']}** strategy, trained with "
        f"hftl from the recipe at the end of this card."
    )
    if run.labels:
        shown = ", ".join(f"`{x}`" for x in run.labels[:30]) + (" ..." if len(run.labels) > 30 else "")
        lines += ["", f"Labels ({len(run.labels)}): {shown}."]
    return "\n".join(lines)


def _results(run: RunFiles) -> str:
    splits = [s for s in ("validation", "test", "target_test") if isinstance(run.final.get(s), dict)]
    if not splits:
        return ""
    names = list(dict.fromkeys(k for s in splits for k in run.final[s]))
    rows = [[s, *(num(run.final[s].get(k)) for k in names)] for s in splits]
    lines = ["## Results", "", table(["split", *names], rows), ""]
    metric = run.metric
    if metric and run.final.get("best_step") is not None:
        lines.append(
            f"The model is the one with the best validation {metric} "
            f"({num(run.final.get(f'best_validation_{metric}'))}), from step {run.final['best_step']} "
            f"of {run.final.get('steps', '?')}; the test split was evaluated once, at the end."
        )
    return "\n".join(lines)


def _per_class(run: RunFiles) -> str:
    """Precision / recall / F1 / support per class (entity type, label) of the final model, and its confusion
    matrix (single-label)."""
    reports = run.class_report
    split = next((s for s in ("test", "validation") if reports.get(s, {}).get("per_class")), None)
    if split is None:
        return ""
    per_class = reports[split]["per_class"]
    rows = [
        [name, num(c["precision"]), num(c["recall"]), num(c["f1"]), str(c["support"])] for name, c in per_class.items()
    ]
    lines = [
        "### Per class",
        "",
        f"On the {split} split:",
        "",
        table(["class", "precision", "recall", "F1", "support"], rows),
    ]
    if (run.run_dir / CONFUSION_PNG).is_file():
        lines += ["", f"![confusion matrix, {split} split]({CONFUSION_PNG})"]
    return "\n".join(lines)


def _stages(run: RunFiles) -> str:
    """Validation per stage of a staged strategy (progressive, two-stage): what each stage bought."""
    starts = sorted({g["start_step"] for g in run.plan.get("groups", []) if g.get("start_step") is not None})
    total = run.plan.get("total_steps") or run.final.get("steps") or 0
    if len(starts) < 2 or not run.metric:
        return ""
    evals = [(r["step"], r["validation"]) for r in run.log if "validation" in r]
    rows = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else total
        training = [
            g["name"] for g in run.plan["groups"] if g.get("start_step") is not None and g["start_step"] <= start
        ]
        inside = [v.get(run.metric) for s, v in evals if start < s <= end and v.get(run.metric) is not None]
        best = (min if lower_is_better(run.metric) else max)(inside) if inside else None
        rows.append([str(i + 1), f"{start}–{end}", ", ".join(training), num(best), num(inside[-1] if inside else None)])
    return "\n".join(
        [
            "### Per stage",
            "",
            f"Validation {run.metric} within each stage of the schedule:",
            "",
            table(["stage", "steps", "groups training", f"best {run.metric}", f"last {run.metric}"], rows),
        ]
    )


def _plots(run: RunFiles) -> str:
    shown = [
        (f, alt)
        for f, alt in (
            (CURVES_PNG, "training and validation curves"),
            (LR_PNG, "learning rate of every layer group"),
            (ADAPTATION_PNG, "domain adaptation: task loss, adaptation term, domain-classifier accuracy"),
        )
        if (run.run_dir / f).is_file()
    ]
    if not shown:
        return ""
    lines = ["## Training curves", ""]
    lines += [f"![{alt}]({f})\n" for f, alt in shown]
    lines.append(
        "Dashed lines mark the steps at which the strategy unfroze layer groups; the LR plot shows "
        "each group's learning rate (input groups light, head dark)."
    )
    return "\n".join(lines)


def _strategy(run: RunFiles) -> str:
    s, plan = run.recipe["strategy"], run.plan
    lines = ["## Transfer strategy", "", f"**{s['name']}**: {strategy_doc(s['name'])}", ""]
    if advice := s.get("advice"):  # strategy.name: auto, resolved by hftl advise at the start of the run
        m = advice.get("measurements", {})
        lines += [
            f"Chosen by `hftl advise` (`strategy.name: auto`), branch *{advice.get('branch')}*: "
            f"{advice.get('because')}. Measured: {kv(m)}; runner-up {advice.get('runner_up')}."
            + "".join(f" Warning: {flag}." for flag in advice.get("flags", [])),
            "",
        ]
    optim = run.recipe["optim"]
    if s.get("llrd"):
        lines.append(
            f"- Layer-wise LR decay {s['llrd']['decay']:g}: a group k groups below the head trains at "
            f"{optim['lr']:g} × {s['llrd']['decay']:g}^k; the head at {optim.get('head_lr') or optim['lr']:g}."
        )
    elif s.get("discriminative"):
        d = s["discriminative"]
        spread = d["lrs"] if d.get("lrs") else f"from {d['range'][0]:g} to {d['range'][1]:g}, geometric"
        lines.append(f"- Discriminative LRs per group: {spread}.")
    else:
        lines.append(
            f"- One LR for the body ({optim['lr']:g}) and one for the head ({optim.get('head_lr') or optim['lr']:g})."
        )
    frozen = [
        g["name"]
        for g in plan.get("groups", [])
        if g.get("start_step") is None or g["start_step"] >= plan.get("total_steps", float("inf"))
    ]
    lines.append(f"- Frozen for the whole run: {', '.join(frozen) if frozen else 'none'}.")
    if mapper := plan.get("mapper"):
        lines.append(
            f"- Layer groups ({', '.join(g['name'] for g in plan.get('groups', []))}) from the "
            + ("generic mapper (inferred from the module tree)." if mapper == "generic" else f"{mapper} mapper.")
        )
    if adapters := plan.get("adapters"):
        lines.append(
            f"- LoRA adapters on {adapters['adapted_layers']} layers ("
            + ", ".join(f"`{name}` x{n}" for name, n in adapters["modules"].items())
            + f"); {adapters['trainable_params']:,} of {adapters['total_params']:,} parameters trained."
        )
    config = read_json(run.run_dir, "config.json")
    if config:
        lines.append(f"- Head input: {describe_head_input(config)}.")
    if run.recipe["model"].get("pretrained") is False:
        lines.append("- Not pretrained: the architecture started from random weights (`model.pretrained: false`).")
    staged = sorted({g["start_step"] for g in plan.get("groups", []) if g.get("start_step")})
    if staged:
        spe = plan.get("steps_per_epoch") or 1
        joins = "; ".join(
            f"step {st} (epoch {st / spe:g}): "
            + ", ".join(g["name"] for g in plan["groups"] if g.get("start_step") == st)
            for st in staged
        )
        lines.append(f"- Unfreezing schedule: {joins}.")
    if tuning := next((r["body_tuning"] for r in run.log if "body_tuning" in r), None):  # setfit
        lines.append(
            f"- Body tuned first (SetFit, contrastive): {tuning['pairs']} sentence pairs drawn from "
            f"{tuning['examples']} training examples of {tuning['classes']} classes ("
            + (
                f"{tuning['num_iterations']} iterations"
                if tuning.get("num_iterations")
                else f"{tuning.get('sampling_strategy', 'oversampling')} sampling"
            )
            + f"), {tuning['body_steps']} steps of batch {tuning['body_batch_size']}"
            + (f" on each of {tuning['processes']} processes" if tuning.get("processes", 1) > 1 else "")
            + f" at LR {tuning['body_lr']:g}; pair loss {tuning['first_loss']:.4f} -> {tuning['last_loss']:.4f}. "
            "The head was then fitted on the tuned body's pooled features."
        )
    if s.get(s["name"]):  # the strategy's own options section, as applied
        lines.append(f"- Options (`strategy.{s['name']}`): {kv(s[s['name']])}.")
    policy = plan.get("batchnorm", s.get("batchnorm"))
    lines.append(
        f"- BatchNorm in frozen groups: **{policy}** ("
        + (
            "eval mode, pretrained running statistics kept"
            if policy == "frozen"
            else "statistics keep updating while the weights stay frozen"
        )
        + ")."
    )
    if adaptation := describe_adaptation(run.recipe):
        lines.append(f"- Target domain: {adaptation}.")
        if seen := _adaptation_seen(run):
            lines.append(f"- Over the run: {seen}.")
    if run.adapter_dir is not None:
        lines.append(f"- peft adapter: {kv(adapter_settings(run.adapter_dir))}.")
    for tower, sub in (s.get("towers") or {}).items():
        lines.append(f"- Tower `{tower}`: strategy {sub['name']}.")
    lines += ["", _groups_table(run)]
    return "\n".join(lines)


def _adaptation_seen(run: RunFiles) -> str:
    """What adaptation did, from metrics.jsonl: the method's term first -> last, and the source/target gap."""
    logged = [r["adaptation"] for r in run.log if isinstance(r.get("adaptation"), dict)]
    parts = []
    for key, what in (
        ("coral_distance", "CORAL distance"),
        ("domain_accuracy", "domain-classifier accuracy (0.5: source and target features indistinguishable)"),
    ):
        values = [a[key] for a in logged if key in a]
        if values:
            parts.append(f"{what} {num(values[0])} (first log) -> {num(values[-1])} (last)")
    if pair := domain_gap(run.final, run.metric):
        source, target = pair
        parts.append(
            f"test {run.metric} {num(source)} on the source domain, {num(target)} on the target "
            f"(gap {source - target:+.4f})"
        )
    return "; ".join(parts)


def _groups_table(run: RunFiles) -> str:
    sizes = param_sizes(run.run_dir)
    spe = run.plan.get("steps_per_epoch") or 1
    rows, n_train, n_all = [], 0, 0
    for g in run.plan.get("groups", []):
        trained = sum(param_size(sizes, p) for p in g.get("params", []))
        total = trained + sum(param_size(sizes, p) for p in g.get("frozen_params", []))
        start = g.get("start_step")
        n_all += total
        n_train += trained if start is not None else 0
        when = (
            "never (frozen)" if start is None else "step 0" if start == 0 else f"step {start} (epoch {start / spe:g})"
        )
        if start and g.get("warmup_steps"):
            when += f", {g['warmup_steps']}-step LR warmup"
        rows.append(
            [
                g["name"] + (" (head)" if g.get("is_head") else ""),
                f"{total:,}" if sizes else "-",
                f"{g['lr']:.2e}" if start is not None else "-",
                when,
            ]
        )
    text = table(["layer group (input → head)", "parameters", "peak LR", "trains from"], rows)
    if sizes and n_all:
        text += f"\n\nTrained parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.1f}%)."
    return text


def _hyperparameters(run: RunFiles) -> str:
    o, t, f = run.recipe["optim"], run.recipe["train"], run.final
    procs = f.get("num_processes", 1)
    warmup = (
        f"{o['warmup_steps']} steps" if o.get("warmup_steps") is not None else f"{o['warmup_ratio']:.0%} of the steps"
    )
    rows = [
        ("optimizer", optimizer_text(o)),
        ("learning rate", f"body {o['lr']:g}, head {o.get('head_lr') or o['lr']:g}"),
        ("schedule", f"{o['scheduler']}, warmup {warmup}"),
        ("gradient clipping", f"{o['max_grad_norm']:g}" if o.get("max_grad_norm") else "off"),
        ("length", f"{t['max_steps']} steps" if t.get("max_steps") else f"{t['epochs']:g} epochs"),
        ("steps done", f"{f.get('steps', '?')} ({run.plan.get('steps_per_epoch', '?')} per epoch)"),
        (
            "batch size",
            f"{t['batch_size']} × {t['grad_accum']} accumulation × {procs} process(es) = "
            f"{t['batch_size'] * t['grad_accum'] * procs}",
        ),
        ("mixed precision", t["mixed_precision"]),
        ("problem type", str(run.recipe["data"].get("problem_type", "single_label"))),
        ("loss", loss_text(t)),
        ("weights kept", weights_kept_text(t)),
        ("evaluation", f"every {t['eval_steps']} steps" if t.get("eval_steps") else "every epoch"),
        ("early stopping", f"patience {t['early_stopping_patience']}" if t.get("early_stopping_patience") else "off"),
        ("seed", str(t["seed"])),
        ("training time", f"{f['train_seconds']:g} s" if "train_seconds" in f else "?"),
    ]
    return "\n".join(["## Training hyper-parameters", "", table(["", ""], [list(r) for r in rows])])


def _data(run: RunFiles) -> str:
    d = run.recipe["data"]
    counts = run.final.get("examples", {})
    splits = d.get("splits", {})
    lines = [
        "## Data",
        "",
        f"- Source: `{short_source(source_name(d))}`"
        + (f" (config `{d['config_name']}`)" if d.get("config_name") else "")
        + (f" at revision `{d['revision']}`" if d.get("revision") else "")
        + ".",
    ]
    parts = []
    for role in ("train", "validation", "test"):
        name = splits.get(role, role)
        if name is None:
            continue
        n = f": {counts[role]:,} examples" if role in counts else ""
        parts.append(f"{role} = split `{name}`{n}")
    lines.append("- Splits: " + "; ".join(parts) + ".")
    lines.append(
        f"- Splits missing from the source are carved from train (validation {d['validation_size']:g}, "
        f"test {d['test_size']:g})"
        + (f", keeping each `{d['group_column']}` inside one split" if d.get("group_column") else "")
        + ", with the recipe's seed."
    )
    limits = [f"{k} {d[k]}" for k in ("max_train_samples", "max_eval_samples") if d.get(k)]
    if limits:
        lines.append(f"- Subsampled: {', '.join(limits)}.")
    if any(role in task_of(run).roles for role in ("text", "tokens")):  # the task reads text
        lines.append(f"- Inputs truncated to {d['max_length']} tokens.")
    if d.get("columns"):
        lines.append(f"- Columns: {kv(d['columns'])}.")
    return "\n".join(lines)


def _chain(run: RunFiles) -> str:
    """Earlier hftl runs this one started from (multi-stage transfer), with their test results."""
    lines, seen, source = [], set(), run.recipe["model"].get("init_from")
    while source and source not in seen and len(seen) < 5:
        seen.add(source)
        try:
            earlier = read_run(source)
        except HftlError:
            lines.append(f"- `{source}` (not available here)")
            break
        test = ", ".join(f"{k} {num(v)}" for k, v in earlier.final.get("test", {}).items() if k != "loss")
        lines.append(
            f"- `{earlier.recipe['name']}`: {earlier.recipe['task']} from "
            f"`{earlier.recipe['model'].get('checkpoint')}` on `{short_source(earlier.recipe['data']['source'])}`, "
            f"strategy {earlier.recipe['strategy']['name']}" + (f"; test {test}" if test else "")
        )
        source = earlier.recipe["model"].get("init_from")
    return "\n".join(["## Earlier stages", "", "This run started from the weights of:", *lines]) if lines else ""


def _versions(run: RunFiles) -> str:
    names = ["hftl", "transformers", "torch", "accelerate", "huggingface_hub", *(["peft"] if run.adapter_dir else [])]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return "## Framework versions\n\n" + ", ".join(found) + "."


def _recipe(run: RunFiles) -> str:
    return (
        "## Recipe\n\nThe resolved recipe (every default spelled out); "
        "`hftl run recipe.yaml` trains this model again.\n\n```yaml\n" + run.recipe_text.rstrip() + "\n```"
    )

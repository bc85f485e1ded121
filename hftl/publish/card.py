"""The model card: a README.md with Hub metadata, written into every run folder and pushed with it.

It says what a reader of a transfer-learning model needs, read from the run
folder alone (``recipe.yaml``, ``plan.json``, ``metrics.json``,
``metrics.jsonl``, ``labels.json``): the base checkpoint, task, data and
splits, the strategy actually applied (per-group LRs and start steps from the
plan, not just the recipe's intent), hyper-parameters, validation and test
metrics (per stage when the strategy is staged), the training-curve plots, how
to load it, and the hftl version and full recipe. Nothing from the environment
(tokens, user names, hosts) goes into it.
"""

from __future__ import annotations

import json
import math
import re
import struct
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError
from hftl.models.pretrained import describe_head_input
from hftl.publish.plots import ADAPTATION_PNG, CURVES_PNG, LR_PNG, plot_run
from hftl.training.adaptation import describe_adaptation
from hftl.training.run_folder import RunFiles, read_json, read_run

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

CARD_FILE = "README.md"
# Catalog datasets that are the same data as a Hub dataset (for the `datasets:` metadata).
DATASET_HUB_IDS = {"fashion-mnist": "zalando-datasets/fashion_mnist"}
# A Hub model id: NAMESPACE/NAME, or a bare NAME (canonical repos such as bert-base-uncased). Data sources need the
# namespace: a bare name may be an offline catalog entry registered only when its task loads data.
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def write_report(run_dir: str | Path, repo_id: str | None = None) -> list[Path]:
    """Write the plots and the README.md model card into a finished run folder; returns the files."""
    plots = plot_run(run_dir)
    return [*plots, write_card(run_dir, repo_id)]


def write_card(run_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write README.md (the model card) into the run folder; returns its path."""
    path = Path(run_dir) / CARD_FILE
    build_card(run_dir, repo_id).save(path)
    return path


def build_card(run_dir: str | Path, repo_id: str | None = None) -> ModelCard:
    """The model card of a finished run; ``repo_id`` names the Hub repo in the usage snippets."""
    from huggingface_hub import ModelCard

    run = read_run(run_dir)
    repo_id = repo_id or run.recipe.get("hub", {}).get("repo_id")
    sections = [
        _summary(run, repo_id),
        _results(run),
        _stages(run),
        _plots(run),
        _usage(run, repo_id),
        _strategy(run),
        _hyperparameters(run),
        _data(run),
        _chain(run),
        _versions(run),
        _recipe(run),
    ]
    body = "\n\n".join(s for s in sections if s)
    return ModelCard(f"---\n{card_data(run, repo_id).to_yaml()}\n---\n\n{body}\n")


def card_data(run: RunFiles, repo_id: str | None = None) -> Any:
    """Hub metadata: library, base model, datasets, pipeline tag, tags and model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    task, source = run.recipe["task"], _source_name(run.recipe["data"])
    pipeline_tag = _task(run).card.pipeline_tag
    dataset = _dataset_hub_id(source)
    results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset or _short_source(source),
            dataset_name=_short_source(source),
            dataset_split=split,
            metric_type=name,
            metric_value=round(float(value), 4),
        )
        for split in ("test", "validation")
        for name, value in run.final.get(split, {}).items()
        if name != "loss" and isinstance(value, (int, float))
    ]
    strategy = run.recipe["strategy"]["name"]
    tags = [
        "hftl",
        "transfer-learning",
        f"strategy:{strategy}",
        *([str(_adapter_settings(run.adapter_dir)["peft_type"] or "peft").lower()] if run.adapter_dir else []),
    ]
    library = (
        "transformers" if run.has_full_model and pipeline_tag else "peft" if run.adapter_dir else None
    )  # None: hftl's own loader (fusion)
    bases = [b for b in (_checkpoint_hub_id(c) for c in _base_checkpoints(run.recipe)) if b]
    return ModelCardData(
        library_name=library,
        base_model=(bases[0] if len(bases) == 1 else bases) or None,
        datasets=[dataset] if dataset else None,
        pipeline_tag=pipeline_tag,
        tags=tags,
        model_name=(repo_id or run.recipe["name"]).split("/")[-1],
        eval_results=results or None,
    )


# --------------------------------------------------------------------------- sections
def _summary(run: RunFiles, repo_id: str | None) -> str:
    r = run.recipe
    bases = ", ".join(f"`{c}`" for c in _base_checkpoints(r)) or "a local checkpoint"
    via = f" (continuing from the earlier run `{r['model']['init_from']}`)" if r["model"].get("init_from") else ""
    lines = [f"# {(repo_id or r['name']).split('/')[-1]}", ""]
    if r.get("description"):
        lines += [r["description"], ""]
    lines.append(
        f"A **{r['task']}** model transferred from {bases}{via} to `{_short_source(r['data']['source'])}` "
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
    rows = [[s, *(_num(run.final[s].get(k)) for k in names)] for s in splits]
    lines = ["## Results", "", _table(["split", *names], rows), ""]
    metric = run.metric
    if metric and run.final.get("best_step") is not None:
        lines.append(
            f"The model is the one with the best validation {metric} "
            f"({_num(run.final.get(f'best_validation_{metric}'))}), from step {run.final['best_step']} "
            f"of {run.final.get('steps', '?')}; the test split was evaluated once, at the end."
        )
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
        best = (min if run.metric.endswith("loss") else max)(inside) if inside else None
        rows.append(
            [str(i + 1), f"{start}–{end}", ", ".join(training), _num(best), _num(inside[-1] if inside else None)]
        )
    return "\n".join(
        [
            "### Per stage",
            "",
            f"Validation {run.metric} within each stage of the schedule:",
            "",
            _table(["stage", "steps", "groups training", f"best {run.metric}", f"last {run.metric}"], rows),
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


def _usage(run: RunFiles, repo_id: str | None) -> str:
    card = _task(run).card
    ref = repo_id or str(run.run_dir)
    blocks = []
    if card.pipeline_tag and run.has_full_model:
        blocks += [
            f'```python\nfrom transformers import pipeline\n\npredict = pipeline("{card.pipeline_tag}", '
            f'model="{ref}"{card.pipeline_kwargs})\nprint(predict({card.example_input}))\n```',
            "The plain `transformers` Auto classes load it too (the label names are in `config.json`).",
        ]
    if run.adapter_dir is not None and card.peft_class:
        cls, sub = card.peft_class, run.adapter_dir.relative_to(run.run_dir).as_posix()
        where = (
            f'snapshot_download("{repo_id}", allow_patterns="{sub}/*") + "/{sub}"'
            if repo_id and sub != "."
            else f'snapshot_download("{repo_id}")'
            if repo_id
            else f'"{run.adapter_dir}"'
        )
        fetch = "from huggingface_hub import snapshot_download\n" if repo_id else ""
        merged = " (the root holds the same model with the adapter merged in)" if run.has_full_model else ""
        blocks += [
            f"The LoRA adapter, with its trained head, is in `{sub}/`{merged}. With peft, on top of the base model:"
            if sub != "."
            else "This repo holds a LoRA adapter with its trained head. With peft:",
            f"```python\n{fetch}from peft import {cls}\n\nmodel = {cls}.from_pretrained({where})\n```",
        ]
    if not blocks:
        fetch = (
            f'from huggingface_hub import snapshot_download\n\nrun_dir = snapshot_download("{repo_id}")\n'
            if repo_id
            else f'run_dir = "{ref}"\n'
        )
        blocks += [
            f"```python\nimport hftl\n{fetch}print(hftl.predict_run(run_dir, [...]))\n```",
            "This model loads with hftl's own loader (`hftl.predict_run`, or `hftl predict RUN_DIR`).",
        ]
    return "\n\n".join(["## How to use", *blocks])


def _strategy(run: RunFiles) -> str:
    s, plan = run.recipe["strategy"], run.plan
    lines = ["## Transfer strategy", "", f"**{s['name']}**: {_strategy_doc(s['name'])}", ""]
    if advice := s.get("advice"):  # strategy.name: auto, resolved by hftl advise at the start of the run
        m = advice.get("measurements", {})
        lines += [
            f"Chosen by `hftl advise` (`strategy.name: auto`), branch *{advice.get('branch')}*: "
            f"{advice.get('because')}. Measured: {_kv(m)}; runner-up {advice.get('runner_up')}."
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
            f"{tuning['examples']} training examples of {tuning['classes']} classes, {tuning['num_iterations']} "
            f"iterations, {tuning['body_steps']} steps of batch {tuning['body_batch_size']}"
            + (f" on each of {tuning['processes']} processes" if tuning.get("processes", 1) > 1 else "")
            + f" at LR {tuning['body_lr']:g}; pair loss {tuning['first_loss']:.4f} -> {tuning['last_loss']:.4f}. "
            "The head was then fitted on the tuned body's pooled features."
        )
    if s.get(s["name"]):  # the strategy's own options section, as applied
        lines.append(f"- Options (`strategy.{s['name']}`): {_kv(s[s['name']])}.")
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
        lines.append(f"- peft adapter: {_kv(_adapter_settings(run.adapter_dir))}.")
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
            parts.append(f"{what} {_num(values[0])} (first log) -> {_num(values[-1])} (last)")
    metric = run.metric
    test, target = run.final.get("test", {}), run.final.get("target_test", {})
    if metric and metric in test and metric in target:
        parts.append(
            f"test {metric} {_num(test[metric])} on the source domain, {_num(target[metric])} on the target "
            f"(gap {test[metric] - target[metric]:+.4f})"
        )
    return "; ".join(parts)


def _groups_table(run: RunFiles) -> str:
    sizes = _param_sizes(run.run_dir)
    spe = run.plan.get("steps_per_epoch") or 1
    rows, n_train, n_all = [], 0, 0
    for g in run.plan.get("groups", []):
        trained = sum(_size(sizes, p) for p in g.get("params", []))
        total = trained + sum(_size(sizes, p) for p in g.get("frozen_params", []))
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
    table = _table(["layer group (input → head)", "parameters", "peak LR", "trains from"], rows)
    if sizes and n_all:
        table += f"\n\nTrained parameters: {n_train:,} of {n_all:,} ({100 * n_train / n_all:.1f}%)."
    return table


def _hyperparameters(run: RunFiles) -> str:
    o, t, f = run.recipe["optim"], run.recipe["train"], run.final
    procs = f.get("num_processes", 1)
    warmup = (
        f"{o['warmup_steps']} steps" if o.get("warmup_steps") is not None else f"{o['warmup_ratio']:.0%} of the steps"
    )
    rows = [
        ("optimizer", f"AdamW (betas {tuple(o['betas'])}, eps {o['eps']:g}), weight decay {o['weight_decay']:g}"),
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
        ("evaluation", f"every {t['eval_steps']} steps" if t.get("eval_steps") else "every epoch"),
        ("early stopping", f"patience {t['early_stopping_patience']}" if t.get("early_stopping_patience") else "off"),
        ("seed", str(t["seed"])),
        ("training time", f"{f['train_seconds']:g} s" if "train_seconds" in f else "?"),
    ]
    return "\n".join(["## Training hyper-parameters", "", _table(["", ""], [list(r) for r in rows])])


def _data(run: RunFiles) -> str:
    d = run.recipe["data"]
    counts = run.final.get("examples", {})
    splits = d.get("splits", {})
    lines = [
        "## Data",
        "",
        f"- Source: `{_short_source(_source_name(d))}`"
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
    if any(role in _task(run).roles for role in ("text", "tokens")):  # the task reads text
        lines.append(f"- Inputs truncated to {d['max_length']} tokens.")
    if d.get("columns"):
        lines.append(f"- Columns: {_kv(d['columns'])}.")
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
        test = ", ".join(f"{k} {_num(v)}" for k, v in earlier.final.get("test", {}).items() if k != "loss")
        lines.append(
            f"- `{earlier.recipe['name']}`: {earlier.recipe['task']} from "
            f"`{earlier.recipe['model'].get('checkpoint')}` on `{_short_source(earlier.recipe['data']['source'])}`, "
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


# --------------------------------------------------------------------------- helpers
def _base_checkpoints(recipe: dict[str, Any]) -> list[str]:
    """The pretrained checkpoint(s) at the root of this run (following init_from chains)."""
    model = recipe["model"]
    if model.get("init_from"):
        try:
            return _base_checkpoints(read_run(model["init_from"]).recipe)
        except (HftlError, RecursionError):
            pass
    if model.get("towers"):
        return [t["checkpoint"] for t in model["towers"].values()]
    return [model["checkpoint"]] if model.get("checkpoint") else []


def _checkpoint_hub_id(checkpoint: str) -> str | None:
    """The Hub id of a checkpoint: catalog names map to their Hub alias; local folders have none."""
    from hftl.models.pretrained import CHECKPOINTS

    if checkpoint in CHECKPOINTS:
        entry = CHECKPOINTS.get(checkpoint)
        # the alias with a namespace: the catalog's own short name is not a Hub repo
        return next(
            (name for name, fn in CHECKPOINTS.items() if fn is entry and "/" in name and _HUB_ID.match(name)), None
        )
    return checkpoint if _HUB_ID.match(checkpoint) and not Path(checkpoint).exists() else None


def _dataset_hub_id(source: str) -> str | None:
    """The Hub id of a data source: catalog names map through DATASET_HUB_IDS; builders, files and folders have none."""
    from hftl.data.sources import DATASETS, FILE_BUILDERS, PACKAGED_BUILDERS

    if source in DATASET_HUB_IDS:
        return DATASET_HUB_IDS[source]
    if source in DATASETS or source in PACKAGED_BUILDERS or Path(source).suffix.lower() in FILE_BUILDERS:
        return None
    return source if _HUB_DATASET_ID.match(source) and not Path(source).exists() else None


def _source_name(data: dict[str, Any]) -> str:
    """``data.source``, or for ``data.files`` alone the training files (the recipe at the end lists them all)."""
    if data.get("source"):
        return data["source"]
    train = (data.get("files") or {}).get("train", "local files")
    return train if isinstance(train, str) else ", ".join(train)


def _short_source(source: str) -> str:
    """Local data files are named by their file name in the text (the recipe at the end has the full path)."""
    return Path(source).name if Path(source).exists() or source.startswith(("/", ".", "~")) else source


def _adapter_settings(adapter_dir: Path) -> dict[str, Any]:
    """The saved peft adapter's settings (what peft actually applied, e.g. its default target modules)."""
    wanted = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save")
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return {k: (sorted(set(config[k])) if isinstance(config.get(k), list) else config.get(k)) for k in wanted}


def _param_sizes(run_dir: Path) -> dict[str, int]:
    """Parameter name -> element count, from safetensors headers (no weights read, no torch).

    A LoRA run has the merged model at the root and the adapter (LoRA matrices, head) in ``adapter/``.
    """
    out: dict[str, int] = {}
    for path in (
        run_dir / "model.safetensors",
        run_dir / "adapter" / "adapter_model.safetensors",
        run_dir / "adapter_model.safetensors",
    ):
        if path.is_file():
            with open(path, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
            out.update({name: math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__"})
    return out


def _size(sizes: dict[str, int], param: str) -> int:
    """Element count of a parameter named as in the plan (peft names: adapter name, wrapper prefix)."""
    if ".original_module." in param:  # peft's untrained copy of the head: not part of the saved model
        return 0
    saved = re.sub(r"\.(modules_to_save\.)?default(?=\.)|\.base_layer(?=\.)", "", param)
    return sizes.get(param) or sizes.get(saved) or sizes.get(saved.removeprefix("base_model.model."), 0)


def _strategy_doc(name: str) -> str:
    from hftl.strategies import STRATEGIES

    return STRATEGIES.get(name).summary.replace("``", "`") if name in STRATEGIES else "(strategy not registered here)"


def _task(run: RunFiles) -> Any:
    from hftl.tasks import TASKS

    return TASKS.get(run.recipe["task"])


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None) or "defaults"


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)

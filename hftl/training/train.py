"""The training run: recipe -> data + model -> strategy plan -> Accelerate loop -> evaluation -> saved run.

:func:`run` reads top to bottom, like accelerate's complete example: set-up
(:mod:`hftl.training.build`, :mod:`hftl.training.launch`), then the loop over a small typed
:class:`LoopState`, then :func:`finish`. The same code runs on CPU, one GPU, or
N processes under ``accelerate launch`` / ``torchrun``; only the main process
prints, writes logs and saves models.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hftl.config import log
from hftl.config.schema import Recipe
from hftl.training import run_folder
from hftl.training.build import (
    build_loaders,
    build_model,
    build_optimizer,
    build_plan,
    build_scheduler,
    describe_model,
    load_data,
    set_step_lrs,
)
from hftl.training.evaluation import evaluate, is_better
from hftl.training.launch import Interrupted, StopFlag, build_accelerator, end_processes, set_threads
from hftl.training.training_state import (
    complete_checkpoints,
    kill_point,
    load_checkpoint,
    load_saved_weights,
    publish_model,
    save_checkpoint,
    save_model_atomic,
    tidy_completed,
)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


@dataclass
class LoopState:
    """Everything the loop carries from step to step; saved with each resumable state."""

    step: int = 0
    epoch: float = 0.0
    best_metric: float | None = None
    best_step: int | None = None
    best_scores: dict[str, float] | None = None
    bad_evals: int = 0
    done: bool = False
    loss_sum: float = 0.0


def run(recipe: Recipe, resume: bool | None = None) -> RunResult:
    """Train, evaluate and save one recipe; returns the final metrics."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from hftl.analysis.advise import resolve_strategy
    from hftl.config.errors import RecipeError
    from hftl.publish.hub import check_can_push
    from hftl.strategies import changes_mid_run, fit_head_first, head_fitter, tune_body
    from hftl.strategies.plan import format_plan
    from hftl.tasks import TASKS
    from hftl.training import feature_cache
    from hftl.training.adaptation import build_adaptation, load_target
    from hftl.training.trackers import check_trackers

    recipe = resolve_strategy(recipe)  # strategy.name: auto -> measured and chosen now (hftl/analysis/advise.py)
    resume = recipe.train.resume if resume is None else resume
    set_threads(recipe.train.num_threads)
    task, run_dir = TASKS.get(recipe.task), recipe.run_dir
    check_trackers(recipe.train.trackers)
    run_folder.check_run_dir(recipe, run_dir, resume, bool(complete_checkpoints(run_dir)))  # before any work
    if recipe.hub.push:  # fail now, not after hours of training
        check_can_push()

    # -- set-up: accelerator, run folder, data, model, loaders, plan, optimizer and scheduler from the plan
    accelerator = build_accelerator(recipe, find_unused_parameters=changes_mid_run(recipe.strategy))
    say = log.say  # main process only; hidden by --quiet
    set_seed(recipe.train.seed)
    data = load_data(recipe, accelerator)
    unlabeled_target = load_target(
        recipe, task, data, accelerator
    )  # [adaptation] data.target (hftl/training/adaptation.py)
    model = build_model(recipe, task, data.labels)
    train_dl, eval_dls = build_loaders(recipe, task, data)
    plan = build_plan(model, recipe, task, len(train_dl.batch_sampler), accelerator.num_processes)
    say(format_plan(plan, model) + "\n" + describe_model(model))
    tuned = tune_body(model, recipe, data, accelerator)  # [setfit] the body tuned before it is frozen and cached
    # [feature cache] body frozen for the whole run, nothing random feeding it: the loaders yield the head's
    # inputs, computed once and cached on disk, and model.forward runs only the head (hftl/training/feature_cache.py).
    train_dl, eval_dls, head_chain = feature_cache.maybe_use_cache(
        model, plan, recipe, task, data.processor, data.encoded, train_dl, eval_dls, accelerator
    )
    fitter = head_fitter(recipe)  # [probe] a strategy's own closed-form head (prototypes) instead of L-BFGS
    if fitter and not head_chain:
        raise RecipeError(
            recipe.source_file,
            "strategy.name",
            "sets the head from cached frozen features, which this run cannot use",
            recipe.strategy.name,
            hint="The [cache] line above says why.",
        )
    probed = (
        head_chain and fit_head_first(recipe) and fit_probe_head(head_chain, train_dl, eval_dls, accelerator, fitter)
    )
    optimizer, group_names = build_optimizer(model, plan, recipe.optim)
    scheduler = build_scheduler(optimizer, plan, group_names)  # not prepared: stepped once per optimizer step
    # [adaptation] target batches beside the source ones and the method's extra loss (None without it)
    adaptation = build_adaptation(recipe, task, data, unlabeled_target, model, plan, optimizer, scheduler, accelerator)
    extra_modules = adaptation.modules if adaptation else {}
    model, optimizer, train_dl, *eval_list = accelerator.prepare(model, optimizer, train_dl, *eval_dls.values())
    eval_dls = dict(zip(eval_dls, eval_list))
    if accelerator.is_main_process:  # the inputs all loaded: only now is the run folder created or cleared
        run_folder.prepare(recipe, run_dir, resume, bool(complete_checkpoints(run_dir)))
        run_folder.write_start(run_dir, recipe, plan, data.labels)
    accelerator.wait_for_everyone()
    accelerator.init_trackers(recipe.name, config=_flat(recipe.model_dump(mode="json")))
    state = restore(accelerator, model, optimizer, run_dir, resume, extra_modules)
    set_step_lrs(optimizer, scheduler, state.step)
    if tuned and state.step == 0:
        log_record(run_dir, {"step": 0, "body_tuning": tuned}, accelerator)
    metric = recipe.train.metric or task.metric
    if probed and state.step == 0:  # the fitted probe is the first candidate for the best model
        evaluate_and_keep_best(
            state, model, eval_dls["validation"], task, data, metric, plan.total_steps, recipe, accelerator
        )

    # -- the loop
    train, grad_accum = recipe.train, recipe.train.grad_accum
    eval_steps = train.eval_steps or max(plan.steps_per_epoch, math.ceil(plan.total_steps / 10))
    save_steps = train.save_steps or eval_steps
    stop = StopFlag()
    bar = tqdm(
        total=plan.total_steps,
        initial=state.step,
        desc=recipe.name,
        dynamic_ncols=True,
        disable=not accelerator.is_local_main_process or not log.shows(),
    )
    started = time.time()
    while state.step < plan.total_steps and not state.done:
        epoch = state.step // plan.steps_per_epoch
        train_dl.set_epoch(epoch)
        skip = (state.step - epoch * plan.steps_per_epoch) * grad_accum  # resumed mid-epoch
        batches = accelerator.skip_first_batches(train_dl, skip) if skip else train_dl
        apply_plan(model, plan, state.step, accelerator, train_mode=True)
        for batch in batches:
            with accelerator.accumulate(model):
                loss = adaptation.loss(model, batch, state.step, accelerator) if adaptation else model(**batch).loss
                accelerator.backward(loss)
                kill_point("step", state.step + 1)  # test hook (inert unless HFTL_TEST_KILL_AT is set)
                if accelerator.sync_gradients and recipe.optim.max_grad_norm:
                    accelerator.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], recipe.optim.max_grad_norm
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.loss_sum += loss.detach().float().item() / grad_accum
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.epoch = state.step / plan.steps_per_epoch
            scheduler.step()
            bar.update(1)
            if state.step in plan.stage_starts:
                joined = ", ".join(g.name for g in plan.trainable_at(state.step))
                say(f"[strategy] step {state.step}: now training {joined}")
            apply_plan(model, plan, state.step, accelerator)
            end = state.step == plan.total_steps
            if state.step % train.log_steps == 0 or end:
                extra = {"adaptation": adaptation.stats(accelerator)} if adaptation else {}
                log_training(state, optimizer, group_names, train.log_steps, run_dir, accelerator, bar, extra)
            if state.step % eval_steps == 0 or end:
                evaluate_and_keep_best(
                    state, model, eval_dls["validation"], task, data, metric, plan.total_steps, recipe, accelerator
                )
                apply_plan(model, plan, state.step, accelerator, train_mode=True)
            stopping = stop.agreed(accelerator)  # all processes stop at the same step, or the save deadlocks
            if state.step % save_steps == 0 or state.done or end or stopping:
                save_checkpoint(
                    accelerator, model, optimizer, run_dir, asdict(state), train.save_total_limit, extra_modules
                )
            if stopping:
                if accelerator.is_main_process:
                    run_folder.set_status(run_dir, "interrupted", step=state.step)
                stop.restore()
                # The run folder's recipe.yaml is the recipe as resolved, command-line overrides included.
                raise Interrupted(
                    f"Interrupted at step {state.step}; the state is saved. Resume with: "
                    f"hftl run {run_dir / run_folder.RECIPE_FILE} --resume"
                )
            if end or state.done:
                break
    bar.close()
    stop.restore()

    final = finish(state, model, eval_dls, task, data, metric, time.time() - started, run_dir, accelerator)
    # Release the prepared model and optimizer before the process group ends: DDP objects destroyed
    # after it make 2-process CPU runs abort at exit (SIGABRT) about a third of the time.
    accelerator.free_memory()
    del model, optimizer, train_dl, eval_dls, eval_list, scheduler
    end_processes(accelerator)
    if recipe.hub.push and accelerator.is_main_process:  # after the process group ends: others need not wait
        from hftl.publish.hub import push_run

        log.summary(f"[hub] pushed: {push_run(run_dir, recipe.hub.repo_id, recipe.hub.private, recipe.hub.revision)}")
    return RunResult(run_dir, final)


# --------------------------------------------------------------------------- the loop's named steps
def fit_probe_head(
    chain: list[Any], train_dl: Any, eval_dls: dict[str, Any], accelerator: Any, fitter: Any = None
) -> bool:
    """[probe] Fit a linear head on the cached features by L-BFGS (L2 picked on validation), or by the
    strategy's own ``fitter``, before the loop."""
    from hftl.training.probe import ProbeFit, fit_probe

    started = time.time()
    train, val = train_dl.dataset, eval_dls["validation"].dataset
    fit = (fitter or fit_probe)(chain, train.rows, train.labels, val.rows, val.labels)
    if fit is None:
        log.say("[probe] skipped: the head is not one linear layer on per-example features")
        return False
    if not isinstance(fit, ProbeFit):
        log.say(f"[probe] {fit} ({time.time() - started:.1f} s)")
        return True
    log.say(
        f"[probe] head fitted by L-BFGS in {time.time() - started:.1f} s: L2 {fit.l2:g}"
        + (" (fixed) " if len(fit.scores) == 1 else " ")
        + f"(validation accuracy {fit.validation_accuracy:.4f}; tried "
        + ", ".join(f"{k:g}: {v:.3f}" for k, v in fit.scores.items())
        + ")"
    )
    return True


def restore(
    accelerator: Any,
    model: Any,
    optimizer: Any,
    run_dir: Path,
    resume: bool,
    extra_modules: dict[str, Any] | None = None,
) -> LoopState:
    """The loop state to start from: the last complete saved state when resuming, else a fresh one."""
    state = LoopState()
    last = complete_checkpoints(run_dir)
    if resume and last:
        state = LoopState(**load_checkpoint(accelerator, model, optimizer, last[-1], extra_modules))
        log.say(f"[resume] continuing from {last[-1]} (step {state.step})")
    if resume and accelerator.is_main_process:  # lines logged after the state we start from are written again
        run_folder.truncate_log(run_dir, state.step)
    return state


def log_training(
    state: LoopState,
    optimizer: Any,
    group_names: list[str],
    log_steps: int,
    run_dir: Path,
    accelerator: Any,
    bar: Any,
    extra: dict[str, Any] | None = None,
) -> None:
    """The mean training loss since the last log line, every group's LR, and ``extra`` (adaptation's terms)."""
    n = log_steps if state.step % log_steps == 0 else state.step % log_steps
    record = {
        "step": state.step,
        "epoch": round(state.epoch, 4),
        "loss": state.loss_sum / max(1, n),
        "lr": {g: optimizer.param_groups[i]["lr"] for i, g in enumerate(group_names)},
        **{k: v for k, v in (extra or {}).items() if v},
    }
    log_record(run_dir, record, accelerator)
    bar.set_postfix(loss=f"{record['loss']:.4f}")
    state.loss_sum = 0.0


def apply_plan(model: Any, plan: Any, step: int, accelerator: Any, train_mode: bool = False) -> None:
    """The plan's trainable set and train/eval modes at ``step`` (``train_mode``: after an epoch start or eval)."""
    from hftl.strategies.plan import apply_plan as apply

    if train_mode:
        model.train()
    apply(accelerator.unwrap_model(model), plan, step)


def evaluate_and_keep_best(
    state: LoopState,
    model: Any,
    dataloader: Any,
    task: Any,
    data: Any,
    metric: str,
    total_steps: int,
    recipe: Recipe,
    accelerator: Any,
) -> None:
    """Score the validation split; save the model when it is the best so far; stop early when patience runs out."""
    scores = evaluate(model, dataloader, task, data.labels, accelerator)
    log_record(recipe.run_dir, {"step": state.step, "epoch": round(state.epoch, 4), "validation": scores}, accelerator)
    kill_point("eval", state.step)  # test hook
    improved = is_better(scores[metric], state.best_metric, metric)
    if improved:
        state.best_metric, state.best_step, state.best_scores, state.bad_evals = scores[metric], state.step, scores, 0
        save_model_atomic(accelerator, model, data.processor, recipe.run_dir / "best")
    else:
        state.bad_evals += 1
    log.say(
        f"[eval] step {state.step}/{total_steps} epoch {state.epoch:.2f}  "
        + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
        + ("  (best)" if improved else f"  (best {state.best_metric:.4f} at step {state.best_step})")
    )
    patience = recipe.train.early_stopping_patience
    if patience and state.bad_evals >= patience:
        log.say(f"[early stop] no improvement in {metric} for {patience} evaluations")
        state.done = True


def finish(
    state: LoopState,
    model: Any,
    eval_dls: dict[str, Any],
    task: Any,
    data: Any,
    metric: str,
    train_seconds: float,
    run_dir: Path,
    accelerator: Any,
) -> dict[str, Any]:
    """The best model becomes the run's model; test it, write the final metrics, the card and the plots."""
    from hftl.publish.card import write_report

    accelerator.wait_for_everyone()
    best = run_dir / "best"
    if best.is_dir():
        load_saved_weights(accelerator.unwrap_model(model), best)
    final: dict[str, Any] = {
        "best_step": state.best_step,
        f"best_validation_{metric}": state.best_metric,
        "train_seconds": round(train_seconds, 1),
        "steps": state.step,
        "num_processes": accelerator.num_processes,
        "examples": {split: len(ds) for split, ds in data.encoded.items()},
    }
    for split, dl in eval_dls.items():  # the best model's validation scores are known already
        known = state.best_scores if split == "validation" else None
        final[split] = known or evaluate(model, dl, task, data.labels, accelerator)
    if accelerator.is_main_process:
        if best.is_dir():
            publish_model(best, run_dir, accelerator.unwrap_model(model))
        run_folder.write_final(run_dir, final)
        log_record(run_dir, {"step": state.step, "final": final}, accelerator)
        run_folder.set_status(run_dir, "completed", steps=state.step)
        write_report(run_dir)  # plots + README.md model card
        tidy_completed(run_dir)  # best/ and the resumable states (output.keep_checkpoints) go
    log.summary(
        "[done] "
        + "  ".join(f"{s} {k} {v:.4f}" for s in ("validation", "test") if s in final for k, v in final[s].items())
        + _domain_gap(final, metric)
        + f"  -> {run_dir}"
    )
    return final


def _domain_gap(final: dict[str, Any], metric: str) -> str:
    """Source test, target test and their gap side by side (runs with a labeled data.target), else ''."""
    source, target = final.get("test", {}).get(metric), final.get("target_test", {}).get(metric)
    if source is None or target is None:
        return ""
    return f"  | {metric}: source test {source:.4f}  target test {target:.4f}  gap {source - target:+.4f}"


def log_record(run_dir: Path, record: dict[str, Any], accelerator: Any) -> None:
    """Append one line to metrics.jsonl (main process) and send its scalars to the trackers."""
    if accelerator.is_main_process:
        run_folder.append_log(run_dir, record)
    flat = {k: v for k, v in _flat(record).items() if isinstance(v, (int, float)) and k != "step"}
    if flat:
        accelerator.log(flat, step=record["step"])


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out

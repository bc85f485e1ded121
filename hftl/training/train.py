"""The training run: recipe -> data + model -> strategy plan -> Accelerate loop -> evaluation -> saved run.

:func:`run` reads top to bottom, like accelerate's complete example: set-up
(:mod:`hftl.training.build`, :mod:`hftl.training.launch`), then the loop, then :func:`finish`. What the run
has built travels as one :class:`~hftl.training.context.RunContext`; features (domain adaptation, the feature
cache, the probe head, the Hub push) plug in through the run hooks of :mod:`hftl.training.hooks` at a few fixed
events, so the loop names none of them. The same code runs on CPU, one GPU, or N processes under
``accelerate launch`` / ``torchrun``; only the main process prints, writes logs and saves models.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hftl.config import log, run_folder
from hftl.config.schema import Recipe
from hftl.training.build import (
    VALIDATION_SAMPLE,
    build_loaders,
    build_model,
    build_optimizer,
    build_plan,
    build_scheduler,
    describe_model,
    load_data,
    set_step_lrs,
    use_channels_last,
)
from hftl.training.context import LoopState, RunContext
from hftl.training.evaluation import evaluate, is_better, score
from hftl.training.hooks import Hooks, hooks_for
from hftl.training.launch import (
    Interrupted,
    StopFlag,
    bare_model,
    build_accelerator,
    check_shared_run_dir,
    end_processes,
    resolve_launch,
    set_threads,
)
from hftl.training.training_state import (
    check_resumable,
    complete_checkpoints,
    init_optimizer_state,
    is_sharded,
    kill_point,
    load_best,
    load_checkpoint,
    publish_model,
    save_checkpoint,
    save_model_atomic,
    tidy_completed,
)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def run(recipe: Recipe, resume: bool | None = None, on_evaluate: Callable | None = None) -> RunResult:
    """Train, evaluate and save one recipe; returns the final metrics. ``on_evaluate(step, validation scores)`` runs
    after each evaluation (a study's pruner: what it raises ends the run there). ``strategy.name: auto`` is resolved
    where the recipe is loaded for a run (:func:`hftl.analysis.advise.resolve_strategy`)."""
    from accelerate.utils import set_seed

    from hftl.strategies import changes_mid_run
    from hftl.strategies.plan import format_plan
    from hftl.tasks import TASKS

    train, backend = resolve_launch(recipe.train, recipe.strategy, recipe.source_file)
    recipe = recipe.model_copy(update={"train": train})  # as the accelerate config / launch flags run it
    resume = recipe.train.resume if resume is None else resume
    ctx = RunContext(recipe, TASKS.get(recipe.task), recipe.run_dir, resume, on_evaluate=on_evaluate)
    hooks = ctx.hooks = hooks_for(recipe)  # the features this recipe uses, in order (hftl/training/run_hooks.py)
    check_before_work(ctx, hooks)

    # -- set-up: accelerator, data, model, loaders, plan, optimizer and scheduler from the plan, run folder
    ctx.accelerator = build_accelerator(recipe.train, ctx.run_dir, backend, changes_mid_run(recipe.strategy))
    set_seed(recipe.train.seed)
    ctx.data = load_data(recipe, ctx.accelerator)
    hooks.on_data(ctx)
    with ctx.costs.timed("model"):
        ctx.model = build_model(recipe, ctx.task, ctx.data.labels)
    ctx.train_dl, ctx.eval_dls = build_loaders(recipe, ctx.task, ctx.data)
    ctx.plan = build_plan(ctx.model, recipe, ctx.task, len(ctx.train_dl.batch_sampler), ctx.accelerator.num_processes)
    log.say(format_plan(ctx.plan, ctx.model) + "\n" + describe_model(ctx.model))
    hooks.on_plan(ctx)
    extra_groups = hooks.param_groups(ctx)
    ctx.optimizer, ctx.group_names = build_optimizer(ctx.model, ctx.plan, recipe.optim, extra_groups)
    ctx.scheduler = build_scheduler(ctx.optimizer, ctx.plan, ctx.group_names, extra_groups)  # stepped per update
    ctx.extra_modules = hooks.before_prepare(ctx)
    prepare(ctx)
    hooks.on_start(ctx)
    state, plan, accelerator, train = ctx.state, ctx.plan, ctx.accelerator, recipe.train
    if ctx.evaluate_first and state.step == 0:  # a head set before the loop is the first candidate for the best
        evaluate_and_keep_best(ctx)

    # -- the loop
    eval_steps = train.eval_steps or max(plan.steps_per_epoch, math.ceil(plan.total_steps / 10))
    save_steps = train.save_steps or eval_steps
    stop, bar = StopFlag(accelerator), progress_bar(ctx)
    try:  # the bar closed and the signal handlers given back however the loop ends
        while state.step < plan.total_steps and not state.done:
            epoch = state.step // plan.steps_per_epoch
            ctx.train_dl.set_epoch(epoch)
            skip = (state.step - epoch * plan.steps_per_epoch) * train.grad_accum  # resumed mid-epoch
            batches = accelerator.skip_first_batches(ctx.train_dl, skip) if skip else ctx.train_dl
            apply_plan(ctx, train_mode=True)
            for batch in batches:
                with accelerator.accumulate(ctx.model):
                    loss = hooks.loss(ctx, batch)
                    accelerator.backward(loss)
                    kill_point("step", state.step + 1)  # test hook (inert unless HFTL_TEST_KILL_AT is set)
                    optimizer_step(ctx)
                ctx.add_loss(loss, train.grad_accum)  # stays on the device until a log line
                if not accelerator.sync_gradients:
                    continue
                next_step(ctx, bar)
                end = state.step == plan.total_steps
                if state.step % train.log_steps == 0 or end:
                    log_training(ctx, bar, hooks.log_fields(ctx))
                if state.step % eval_steps == 0 or end:
                    evaluate_and_keep_best(ctx)
                    apply_plan(ctx, train_mode=True)
                stopping = stop.agreed()  # all processes stop at the same step, or the save deadlocks
                if state.step % save_steps == 0 or state.done or end or stopping:
                    save(ctx)
                if stopping:
                    interrupt(ctx, stop)
                if end or state.done:
                    break
    finally:
        bar.close()
        stop.restore()

    final = finish(ctx, ctx.costs.end_loop())
    release(ctx)
    hooks.on_finish(ctx, final)
    return RunResult(ctx.run_dir, final)


# --------------------------------------------------------------------------- the loop's named steps
def check_before_work(ctx: RunContext, hooks: Hooks) -> None:
    """What would fail later, checked first: the trackers, the run folder, the state to resume from, and what
    each hook checks (a Hub push's token, ...)."""
    from hftl.training.trackers import check_trackers

    set_threads(ctx.recipe.train.num_threads)
    check_trackers(ctx.recipe.train.trackers)
    overwrite, has_checkpoints = ctx.recipe.output.overwrite, bool(complete_checkpoints(ctx.run_dir))
    run_folder.check_run_dir(ctx.run_dir, overwrite, ctx.resume, has_checkpoints)
    check_resumable(ctx.run_dir, ctx.resume)
    hooks.check(ctx)


def prepare(ctx: RunContext) -> None:
    """Lay out (channels-last for a CNN on CPU) and wrap model, optimizer and loaders for the launch; create (or
    clear) the run folder; restore the state."""
    accelerator, run_dir, recipe = ctx.accelerator, ctx.run_dir, ctx.recipe
    use_channels_last(ctx.model, accelerator)  # a CNN on CPU: oneDNN's fast layout (values unchanged)
    ctx.model, ctx.optimizer, ctx.train_dl, *eval_list = accelerator.prepare(
        ctx.model, ctx.optimizer, ctx.train_dl, *ctx.eval_dls.values()
    )
    ctx.eval_dls = dict(zip(ctx.eval_dls, eval_list))
    if is_sharded(accelerator):  # [FSDP] sharded states are saved and loaded by key: every key from the start
        init_optimizer_state(ctx.optimizer)
    if accelerator.is_main_process:  # the inputs all loaded: only now is the run folder created or cleared
        run_folder.prepare(run_dir, recipe.output.overwrite, ctx.resume, bool(complete_checkpoints(run_dir)))
        run_folder.write_start(run_dir, recipe.to_yaml(), ctx.plan, ctx.data.labels)
    accelerator.wait_for_everyone()
    check_shared_run_dir(run_dir, accelerator)  # several machines: one run folder that every one of them sees
    accelerator.init_trackers(recipe.name, config=_flat(recipe.model_dump(mode="json")))
    ctx.state = restore(ctx)
    set_step_lrs(ctx.optimizer, ctx.scheduler, ctx.state.step)
    ctx.costs.start_loop()  # from here, time not spent validating is training


def progress_bar(ctx: RunContext) -> Any:
    """A tqdm bar over the run's optimizer steps (local main process; hidden by --quiet)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=ctx.plan.total_steps,
        initial=ctx.state.step,
        desc=ctx.recipe.name,
        dynamic_ncols=True,
        disable=not ctx.accelerator.is_local_main_process or not log.shows(),
    )


def optimizer_step(ctx: RunContext) -> None:
    """Clip (at the end of an accumulation), step and clear the gradients (accelerate skips the step mid-way)."""
    max_norm = ctx.recipe.optim.max_grad_norm
    if ctx.accelerator.sync_gradients and max_norm:
        # over the model's own parameters, so FSDP clips its shards (frozen ones hold no gradient)
        ctx.accelerator.clip_grad_norm_(ctx.model.parameters(), max_norm)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)


def next_step(ctx: RunContext, bar: Any) -> None:
    """One optimizer step done: count it, move the LRs on, tell the hooks (the EMA), and, where a stage of the plan
    starts, apply its trainable set and modes for the next."""
    state, plan = ctx.state, ctx.plan
    state.step += 1
    state.epoch = state.step / plan.steps_per_epoch
    ctx.scheduler.step()
    bar.update(1)
    if ctx.hooks is not None:
        ctx.hooks.on_step(ctx)
    # Only here does the trainable set change (Plan.stage_starts); between stages the model's modes change only at
    # an evaluation or an epoch start, which apply the plan again. Applying it at every step scanned every
    # parameter of every module: 24 s of a 1,782-step EfficientNet run (13 ms a step; cProfile, 2026-12-04).
    # train_mode: the joining groups train from this step (dropout on), not from the next evaluation.
    if state.step in plan.stage_starts:
        joined = ", ".join(g.name for g in plan.trainable_at(state.step))
        log.say(f"[strategy] step {state.step}: now training {joined}")
        apply_plan(ctx, train_mode=True)


def save(ctx: RunContext) -> None:
    """A resumable state of this step: model, optimizer, RNG, loop state and the hooks' extra modules (none when
    ``output.resumable`` is false)."""
    if not ctx.recipe.output.resumable:
        return
    state = asdict(ctx.synced_state())
    args = (ctx.accelerator, ctx.model, ctx.optimizer, ctx.run_dir, state, ctx.recipe.train.save_total_limit)
    save_checkpoint(*args, ctx.extra_modules)


def interrupt(ctx: RunContext, stop: StopFlag) -> None:
    """Stopped by a signal after the state was saved: mark the run folder and exit with the resume command."""
    if ctx.accelerator.is_main_process:
        run_folder.set_status(ctx.run_dir, "interrupted", step=ctx.state.step)
    stop.restore()
    # The run folder's recipe.yaml is the recipe as resolved, command-line overrides included.
    again = f"hftl run {ctx.run_dir / run_folder.RECIPE_FILE}"
    if not ctx.recipe.output.resumable:
        raise Interrupted(
            f"Interrupted at step {ctx.state.step} (output.resumable: false, no state saved). Start it again: {again}"
        )
    raise Interrupted(f"Interrupted at step {ctx.state.step}; the state is saved. Resume with: {again} --resume")


def restore(ctx: RunContext) -> LoopState:
    """The loop state to start from: the last complete saved state when resuming, else a fresh one."""
    state, last = LoopState(), complete_checkpoints(ctx.run_dir)
    if ctx.resume and last:
        saved = load_checkpoint(ctx.accelerator, ctx.model, ctx.optimizer, last[-1], ctx.extra_modules)
        state = LoopState(**saved)
        log.say(f"[resume] continuing from {last[-1]} (step {state.step})")
    if ctx.resume and ctx.accelerator.is_main_process:  # lines logged after the state we start from are written again
        run_folder.truncate_log(ctx.run_dir, state.step)
    return state


def log_training(ctx: RunContext, bar: Any, fields: dict[str, Any]) -> None:
    """The mean training loss since the last log line, every group's LR, and the hooks' ``fields``
    (adaptation's terms)."""
    state, log_steps = ctx.synced_state(), ctx.recipe.train.log_steps
    n = log_steps if state.step % log_steps == 0 else state.step % log_steps
    record = {
        "step": state.step,
        "epoch": round(state.epoch, 4),
        "loss": state.loss_sum / max(1, n),
        "lr": {g: ctx.optimizer.param_groups[i]["lr"] for i, g in enumerate(ctx.group_names)},
        **fields,
    }
    log_record(ctx.run_dir, record, ctx.accelerator)
    bar.set_postfix(loss=f"{record['loss']:.4f}")
    ctx.reset_loss()


def apply_plan(ctx: RunContext, train_mode: bool = False) -> None:
    """The plan's trainable set and train/eval modes at this step (``train_mode``: after an epoch start or eval)."""
    from hftl.strategies.plan import apply_plan as apply

    if train_mode:
        ctx.model.train()
    apply(bare_model(ctx.accelerator, ctx.model), ctx.plan, ctx.state.step)


def evaluate_and_keep_best(ctx: RunContext) -> None:
    """Score the validation split; save the model when it is the best so far; stop early when patience runs out."""
    state, recipe, accelerator, metric = ctx.state, ctx.recipe, ctx.accelerator, ctx.metric
    scored = ctx.eval_dls.get(VALIDATION_SAMPLE, ctx.eval_dls["validation"])  # train.eval_sample, else all of it
    with ctx.costs.timed("validate"):
        scores = evaluate(ctx.evaluated_model, scored, ctx.task, ctx.data.labels, accelerator)
    log_record(ctx.run_dir, {"step": state.step, "epoch": round(state.epoch, 4), "validation": scores}, accelerator)
    kill_point("eval", state.step)  # test hook
    improved = is_better(scores[metric], state.best_metric, metric)
    if improved:
        state.best_metric, state.best_step, state.best_scores, state.bad_evals = scores[metric], state.step, scores, 0
        save_model_atomic(accelerator, ctx.evaluated_model, ctx.data.processor, ctx.run_dir / "best")
    else:
        state.bad_evals += 1
    log.say(
        f"[eval] step {state.step}/{ctx.plan.total_steps} epoch {state.epoch:.2f}  "
        + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
        + ("  (best)" if improved else f"  (best {state.best_metric:.4f} at step {state.best_step})")
    )
    patience = recipe.train.early_stopping_patience
    if patience and state.bad_evals >= patience:
        log.say(f"[early stop] no improvement in {metric} for {patience} evaluations")
        state.done = True
    if ctx.on_evaluate is not None:
        ctx.on_evaluate(state.step, scores)


def finish(ctx: RunContext, train_seconds: float) -> dict[str, Any]:
    """The best model becomes the run's model; test it and write the final metrics (the card: a run hook)."""
    state, accelerator, run_dir, metric = ctx.state, ctx.accelerator, ctx.run_dir, ctx.metric
    accelerator.wait_for_everyone()
    best = run_dir / "best"
    # [FSDP] a sharded model is rebuilt whole on the main process, for publishing
    rebuild = (lambda: build_model(ctx.recipe, ctx.task, ctx.data.labels)) if is_sharded(accelerator) else None
    plain = load_best(accelerator, ctx.model, best, rebuild) if best.is_dir() else None
    final: dict[str, Any] = {
        "best_step": state.best_step,
        f"best_validation_{metric}": state.best_metric,
        "train_seconds": round(train_seconds, 1),
        "steps": state.step,
        "num_processes": accelerator.num_processes,
        "examples": {split: len(ds) for split, ds in ctx.data.encoded.items()},
    }
    reported = "test" if "test" in ctx.eval_dls else "validation"  # the per-class report: test, else validation
    reports, started, sampled = {}, time.perf_counter(), VALIDATION_SAMPLE in ctx.eval_dls
    for split, dl in ctx.eval_dls.items():  # the best model's validation scores are known (unless sampled)
        if split == VALIDATION_SAMPLE:
            continue
        known = state.best_scores if split == "validation" and not sampled else None
        if known and split != reported:
            final[split] = known
            continue
        scored = score(ctx.model, dl, ctx.task, ctx.data.labels, accelerator, report=split == reported)
        final[split] = known or scored.metrics
        reports.update({split: scored.report} if scored.report else {})
    # this process's seconds up to the final evaluation (the card and plots come after)
    seconds = {**ctx.data.seconds, **ctx.costs.seconds, "final_eval": time.perf_counter() - started}
    final["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    if accelerator.is_main_process:
        if best.is_dir():
            publish_model(best, run_dir, plain)
        run_folder.write_final(run_dir, final)
        run_folder.write_class_report(run_dir, reports)
        log_record(run_dir, {"step": state.step, "final": final}, accelerator)
        run_folder.set_status(run_dir, "completed", steps=state.step)
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
    if (pair := run_folder.domain_gap(final, metric)) is None:
        return ""
    source, target = pair
    return f"  | {metric}: source test {source:.4f}  target test {target:.4f}  gap {source - target:+.4f}"


def release(ctx: RunContext) -> None:
    """Drop the prepared model, optimizer and loaders, then end the process group.

    DDP objects destroyed after the process group ends make 2-process CPU runs abort at exit (SIGABRT) about a
    third of the time.
    """
    ctx.accelerator.free_memory()
    ctx.model = ctx.optimizer = ctx.train_dl = ctx.scheduler = ctx.eval_model = None
    ctx.eval_dls = {}
    end_processes(ctx.accelerator)


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

"""The training run: recipe -> data + model -> strategy plan -> Accelerate loop -> evaluation -> saved run.

:func:`run` reads top to bottom. The same code runs on CPU, one GPU, or N
processes under ``accelerate launch`` / ``torchrun``; only the main process
prints, writes logs and saves models.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hftl.checkpointing import (complete_checkpoints, kill_point, load_checkpoint, load_saved_weights, publish_model,
                                read_status, save_checkpoint, save_model_atomic, set_status, write_json_atomic)
from hftl.card import write_report
from hftl.errors import HftlError
from hftl.hub import check_can_push, push_run
from hftl.recipe import Recipe
from hftl.tasks import TASKS, prepare_data
from hftl.trackers import check_trackers


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def run(recipe: Recipe, resume: bool | None = None) -> RunResult:
    """Train, evaluate and save one recipe; returns the final metrics."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm

    from hftl import feature_cache, strategies
    from hftl.planning import count_steps, make_plan
    from hftl.loop_utils import (LengthGroupedBatchSampler, build_optimizer, default_mixed_precision, evaluate,
                                 set_threads, wrap_lora)

    resume = recipe.train.resume if resume is None else resume
    set_threads(recipe.train.num_threads)
    task = TASKS.get(recipe.task)
    run_dir = recipe.run_dir
    check_trackers(recipe.train.trackers)
    if recipe.hub.push:  # fail now, not after hours of training
        check_can_push()

    # -- accelerator. The trainable set changes mid-run for staged strategies: DDP must then tolerate
    #    parameters without gradients (see hftl.strategies for why everything is wrapped trainable).
    staged = strategies.changes_mid_run(recipe.strategy)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # torchrun on CPU: without this, accelerate starts N independent single-process runs.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe.train.grad_accum,
        mixed_precision=default_mixed_precision(recipe.train.mixed_precision),
        log_with=recipe.train.trackers or None,
        project_dir=str(run_dir / "logs"),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=staged)],
    )
    check_process_count(accelerator)
    say = accelerator.print
    prepare_run_dir(recipe, run_dir, resume, accelerator)
    set_seed(recipe.train.seed)

    # -- data, processor, model (the main process fills the datasets cache first)
    with accelerator.main_process_first():
        processor, labels, encoded, reports = prepare_data(recipe)
    for report in reports:
        say(f"[data] {report}")
    if len(encoded["train"]) == 0:
        raise HftlError(f"{recipe.source_file}: the training split is empty after filtering bad examples.")
    model = task.build_model(recipe, labels)
    model = wrap_lora(model, recipe)

    # -- loaders: length-grouped, seeded per epoch, so a resumed run sees the same batches
    batch_sampler = LengthGroupedBatchSampler(
        encoded["train"]["length"] if "length" in encoded["train"].column_names else None,
        recipe.train.batch_size, seed=recipe.train.seed, group_by_length=recipe.train.group_by_length,
        n=len(encoded["train"]))
    # Each loader has its own generator: starting an iterator then draws no number from the global RNG, so
    # dropout sees the same random stream whether a run was resumed mid-epoch or not.
    train_dl = torch.utils.data.DataLoader(encoded["train"], batch_sampler=batch_sampler, generator=torch.Generator(),
                                           collate_fn=task.collator(processor, recipe, train=True))
    eval_bs = recipe.train.eval_batch_size or recipe.train.batch_size * 2
    eval_dls = {split: torch.utils.data.DataLoader(encoded[split], batch_size=eval_bs, generator=torch.Generator(),
                                                   collate_fn=task.collator(processor, recipe, train=False))
                for split in ("validation", "test") if split in encoded}

    # -- strategy plan: pure function of (groups, recipe, step)
    steps_per_epoch, total_steps = count_steps(recipe, len(batch_sampler), accelerator.num_processes)
    plan = make_plan(model, recipe, steps_per_epoch, total_steps)
    for name, param in model.named_parameters():  # everything that will ever train is trainable when wrapped
        param.requires_grad_(name in plan.ever_trainable())
    say(strategies.format_plan(plan, model))
    # -- [feature cache] body frozen for the whole run, nothing random feeding it: the loaders yield the head's
    #    inputs, computed once and cached on disk, and model.forward runs only the head (hftl/feature_cache.py).
    train_dl, eval_dls = feature_cache.maybe_use_cache(model, plan, recipe, task, processor, encoded, train_dl,
                                                       eval_dls, accelerator)

    optimizer, group_names = build_optimizer(model, plan, recipe.optim)
    warmup = recipe.optim.warmup_steps if recipe.optim.warmup_steps is not None else round(recipe.optim.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, strategies.lr_lambdas(plan, group_names, warmup, recipe.optim.scheduler))
    # The scheduler is not prepared: it is a pure function of the optimizer step, stepped once per step.
    model, optimizer, train_dl, *eval_list = accelerator.prepare(model, optimizer, train_dl, *eval_dls.values())
    eval_dls = dict(zip(eval_dls, eval_list))
    if accelerator.is_main_process:
        write_json_atomic(run_dir / "plan.json", plan.to_dict())
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
        (run_dir / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    accelerator.init_trackers(recipe.name, config=_flat(recipe.model_dump(mode="json")))

    # -- loop state (restored on resume)
    metric = recipe.train.metric or task.metric
    state = {"step": 0, "epoch": 0, "best_metric": None, "best_step": None, "bad_evals": 0, "done": False,
             "loss_sum": 0.0}
    last = complete_checkpoints(run_dir)
    if resume and last:
        state = {**state, **load_checkpoint(accelerator, model, optimizer, last[-1])}
        say(f"[resume] continuing from {last[-1]} (step {state['step']})")
    if resume:  # lines logged after the state we start from are written again
        _truncate_log(run_dir / "metrics.jsonl", state["step"], accelerator)
    set_step_lrs(optimizer, scheduler, state["step"])

    stop = StopFlag()
    eval_steps = recipe.train.eval_steps or steps_per_epoch
    save_steps = recipe.train.save_steps or eval_steps
    bar = tqdm(total=total_steps, initial=state["step"], disable=not accelerator.is_local_main_process,
               desc=recipe.name, dynamic_ncols=True)
    started = time.time()
    while state["step"] < total_steps and not state["done"]:
        epoch = state["step"] // steps_per_epoch
        train_dl.set_epoch(epoch)
        batches = train_dl
        skip = (state["step"] - epoch * steps_per_epoch) * recipe.train.grad_accum
        if skip:
            batches = accelerator.skip_first_batches(train_dl, skip)
        model.train()
        strategies.apply_plan(accelerator.unwrap_model(model), plan, state["step"])
        for batch in batches:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                kill_point("step", state["step"] + 1)  # test hook (inert unless HFTL_TEST_KILL_AT is set)
                if accelerator.sync_gradients and recipe.optim.max_grad_norm:
                    accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                recipe.optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state["loss_sum"] += loss.detach().float().item() / recipe.train.grad_accum
            if not accelerator.sync_gradients:
                continue
            state["step"] += 1
            state["epoch"] = state["step"] / steps_per_epoch
            scheduler.step()
            bar.update(1)
            if state["step"] in plan.stage_starts:
                say(f"[strategy] step {state['step']}: now training {', '.join(g.name for g in plan.trainable_at(state['step']))}")
            strategies.apply_plan(accelerator.unwrap_model(model), plan, state["step"])

            if state["step"] % recipe.train.log_steps == 0 or state["step"] == total_steps:
                n = recipe.train.log_steps if state["step"] % recipe.train.log_steps == 0 else state["step"] % recipe.train.log_steps
                record = {"step": state["step"], "epoch": round(state["epoch"], 4), "loss": state["loss_sum"] / max(1, n),
                          "lr": {g: optimizer.param_groups[i]["lr"] for i, g in enumerate(group_names)}}
                log_record(run_dir, record, accelerator)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                state["loss_sum"] = 0.0
            if state["step"] % eval_steps == 0 or state["step"] == total_steps:
                scores = evaluate(model, eval_dls["validation"], task, labels, accelerator)
                log_record(run_dir, {"step": state["step"], "epoch": round(state["epoch"], 4),
                                     "validation": scores}, accelerator)
                kill_point("eval", state["step"])  # test hook
                improved = is_better(scores[metric], state["best_metric"], metric)
                if improved:
                    state.update(best_metric=scores[metric], best_step=state["step"], best_scores=scores, bad_evals=0)
                    save_model_atomic(accelerator, model, processor, run_dir / "best")
                else:
                    state["bad_evals"] += 1
                say(f"[eval] step {state['step']}/{total_steps} epoch {state['epoch']:.2f}  "
                    + "  ".join(f"{k} {v:.4f}" for k, v in scores.items())
                    + ("  (best)" if improved else f"  (best {state['best_metric']:.4f} at step {state['best_step']})"))
                patience = recipe.train.early_stopping_patience
                if patience and state["bad_evals"] >= patience:
                    say(f"[early stop] no improvement in {metric} for {patience} evaluations")
                    state["done"] = True
                model.train()
                strategies.apply_plan(accelerator.unwrap_model(model), plan, state["step"])
            stopping = stop.agreed(accelerator)  # all processes stop at the same step, or the save deadlocks
            if state["step"] % save_steps == 0 or state["done"] or state["step"] == total_steps or stopping:
                save_checkpoint(accelerator, model, optimizer, run_dir, state, recipe.train.save_total_limit)
            if stopping:
                set_status(run_dir, "interrupted", step=state["step"]) if accelerator.is_main_process else None
                stop.restore()
                # The run folder's recipe.yaml is the recipe as resolved, command-line overrides included.
                raise Interrupted(f"Interrupted at step {state['step']}; the state is saved. Resume with: "
                                  f"hftl run {run_dir / 'recipe.yaml'} --resume")
            if state["step"] >= total_steps or state["done"]:
                break
    bar.close()
    stop.restore()
    train_seconds = time.time() - started

    # -- final: the best model becomes the run's model; test it
    accelerator.wait_for_everyone()
    best = run_dir / "best"
    if best.is_dir():
        load_saved_weights(accelerator.unwrap_model(model), best)
    final = {"best_step": state["best_step"], f"best_validation_{metric}": state["best_metric"],
             "train_seconds": round(train_seconds, 1), "steps": state["step"], "num_processes": accelerator.num_processes,
             "examples": {split: len(ds) for split, ds in encoded.items()}}
    for split, dl in eval_dls.items():  # the best model's validation scores are known already
        known = state.get("best_scores") if split == "validation" else None
        final[split] = known or evaluate(model, dl, task, labels, accelerator)
    if accelerator.is_main_process:
        if best.is_dir():
            publish_model(best, run_dir, accelerator.unwrap_model(model))
        write_json_atomic(run_dir / "metrics.json", final)
        log_record(run_dir, {"step": state["step"], "final": final}, accelerator)
        set_status(run_dir, "completed", steps=state["step"])
        write_report(run_dir)  # plots + README.md model card
    say("[done] " + "  ".join(f"{s} {k} {v:.4f}" for s in ("validation", "test") if s in final
                              for k, v in final[s].items()) + f"  -> {run_dir}")
    # Release the prepared model and optimizer before the process group ends: DDP objects destroyed
    # after it make 2-process CPU runs abort at exit (SIGABRT) about a third of the time.
    accelerator.free_memory()
    del model, optimizer, train_dl, eval_dls, eval_list, scheduler
    end_processes(accelerator)
    if recipe.hub.push and accelerator.is_main_process:  # after the process group ends: others need not wait
        print(f"[hub] pushed: {push_run(run_dir, recipe.hub.repo_id, recipe.hub.private, recipe.hub.revision)}")
    return RunResult(run_dir, final)


# --------------------------------------------------------------------------- helpers
class Interrupted(HftlError):
    exit_code = 130


class StopFlag:
    """Turns SIGTERM / Ctrl-C into a request to stop after the current step (and save)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. notebooks): keep the default handlers
                pass

    def restore(self) -> None:
        """Give the signals back their previous handlers (a notebook or test runner lives on after the run)."""
        for sig, handler in self._previous.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)

    def agreed(self, accelerator) -> bool:
        """Whether any process was asked to stop: a signal reaches the ranks of a job at slightly different steps."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch

        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True


def set_step_lrs(optimizer, scheduler, step: int) -> None:
    """Put the LambdaLR scheduler (a pure function of the step) at ``step``, e.g. after resume."""
    scheduler.last_epoch = step
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = group["initial_lr"] * fn(step)


def is_better(value: float, best: float | None, metric: str) -> bool:
    lower_is_better = metric.endswith("loss")
    return best is None or (value < best if lower_is_better else value > best)


def check_process_count(accelerator) -> None:
    """Refuse to silently run fewer processes than ``accelerate launch`` was asked for.

    ``accelerate launch --num_processes N`` with ``--cpu`` (or on a machine without GPUs and no ``--multi_gpu``)
    uses its single-process launcher: ONE process starts. It exports no process count, but for N > 1 it does
    export MASTER_ADDR/MASTER_PORT, and no WORLD_SIZE (a real multi-process launch sets WORLD_SIZE): measured with
    accelerate 1.15. ``HFTL_EXPECT_PROCESSES=N`` states the expected count explicitly for any launcher.
    """
    env = os.environ
    asked = env.get("HFTL_EXPECT_PROCESSES") or env.get("WORLD_SIZE")  # torchrun and real launches set WORLD_SIZE
    if "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env and "WORLD_SIZE" not in env:
        asked = asked or "more than 1"  # accelerate's single-process launcher, asked for several processes
    if asked and asked != str(accelerator.num_processes):
        raise HftlError(
            f"{asked} processes were asked for but only {accelerator.num_processes} started. On CPU, "
            "`accelerate launch --cpu --num_processes N` runs ONE process; use `ACCELERATE_USE_CPU=true accelerate "
            "launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no --dynamo_backend no "
            "hftl/run.py RECIPE` or `torchrun --nproc_per_node N hftl/run.py RECIPE`.")


def prepare_run_dir(recipe: Recipe, run_dir: Path, resume: bool, accelerator) -> None:
    """Create the run folder; refuse to silently overwrite a finished run or restart a resumable one."""
    status = read_status(run_dir).get("status")
    if accelerator.is_main_process:
        if status == "completed" and not recipe.output.overwrite and not resume:
            raise HftlError(f"{run_dir} holds a completed run. Set output.overwrite=true to train again into it, "
                            "or choose another folder with output.dir=...")
        if complete_checkpoints(run_dir) and not resume and not recipe.output.overwrite:
            raise HftlError(f"{run_dir} holds an unfinished run with saved states. Continue it with --resume "
                            "(or train.resume=true), or set output.overwrite=true to start again.")
        if not resume and recipe.output.overwrite and run_dir.exists():
            import shutil

            for child in ("checkpoints", "best", "metrics.jsonl"):
                path = run_dir / child
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        set_status(run_dir, "running")
    accelerator.wait_for_everyone()


def log_record(run_dir: Path, record: dict[str, Any], accelerator) -> None:
    """Append one JSON line to metrics.jsonl and send scalars to the trackers."""
    if accelerator.is_main_process:
        with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    flat = {k: v for k, v in _flat(record).items() if isinstance(v, (int, float)) and k != "step"}
    if flat:
        accelerator.log(flat, step=record["step"])


def _truncate_log(path: Path, step: int, accelerator) -> None:
    """Drop log lines written after the state we resume from (they will be written again)."""
    if accelerator.is_main_process and path.is_file():
        kept = [json.dumps(record) for record in map(_parse_line, path.read_text(encoding="utf-8").splitlines())
                if record and record.get("step", 0) <= step and "final" not in record]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _parse_line(line: str) -> dict[str, Any] | None:
    """One metrics.jsonl record; None for a blank line or one cut short when the run was killed mid-write."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "/"))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def end_processes(accelerator) -> None:
    """Synchronise, collect garbage and end the process group (call after dropping DDP objects)."""
    import gc

    import torch.distributed as dist

    accelerator.wait_for_everyone()
    gc.collect()
    accelerator.end_training()  # finishes the trackers; in accelerate >= 1.x it also destroys the process group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

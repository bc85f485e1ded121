"""The study engine: an Optuna storage that several workers share, and a loop that pops and runs trials.

Why our own loop instead of ``optuna.Study.optimize``: a grid must run each point exactly
once with any number of workers. Optuna's GridSampler can run a point twice in parallel,
and ``Study.ask`` creates a new trial when the queue is empty. So the grid is enqueued as
WAITING trials once, by whoever creates the study, and a worker takes one by switching it
from WAITING to RUNNING, which the storage allows only once per trial.

Dead workers: a worker records its host, pid and process start time on the trial it runs,
and an Optuna heartbeat. A RUNNING trial whose worker is gone (same host: the pid is dead;
another host: no heartbeat for ``GRACE_SECONDS``) is marked FAIL and queued again (Optuna's
retry-stale-trial callback), so rerunning a killed study runs only what did not finish.
A trial that raises is FAIL with its error, and the worker goes on with the next one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from hftl.analysis.study import Study, load_study, point_key
from hftl.analysis.study_identity import point_recipe, recorded_recipe
from hftl.analysis.study_report import current_trials, latest_trials, write_report, write_results
from hftl.analysis.study_storage import (
    HEARTBEAT_SECONDS,
    ensure_study,
    load_optuna,
    make_pruner,
    open_storage,
    storage_lock,
)
from hftl.config import log
from hftl.config.errors import HftlError

# What a trial folder keeps for the report; the rest (weights, processor, checkpoints/, best/) is deleted.
KEEP = {
    "metrics.json",
    "plan.json",
    "recipe.yaml",
    "metrics.jsonl",
    "README.md",
    "labels.json",
    "run_status.json",
    "error.txt",
}
# A trial that keeps no model writes no resumable state (a stopped trial runs again from its start) and no card
# (the study's report sums its trials up): 2.5 s of a 54.5 s MiniLM trial, 4.7% (benchmarks/trial_output.py).
TRIAL_OUTPUT = ["output.resumable=false", "output.card=false", "output.keep_checkpoints=none"]
HOST = socket.gethostname()


# --------------------------------------------------------------------------- running
def run_study(path: str | Path, storage: str | None = None, jobs: int | None = None) -> int:
    """Validate, then run the study's unfinished trials and write its report (``hftl study``)."""
    return run(load_study(path, storage), jobs)


def report_study(path: str | Path, storage: str | None = None) -> Path:
    """Rebuild results.csv, report.md and the plots from the storage, without training (``hftl study --report``)."""
    return write_report(load_study(path, storage))


def run(study: Study, jobs: int | None = None) -> int:
    """Run every unfinished trial with ``jobs`` local workers, then write the report; 1 if any trial failed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise HftlError(
            "hftl study runs its trials itself; start it with plain `hftl study`, not under "
            "accelerate launch / torchrun (see README, Studies)."
        )
    jobs = jobs or study.spec.jobs
    storage = open_storage(study)
    ostudy = ensure_study(study, storage)
    log.say(
        f"[study] {study.name}: {study.spec.search}, metric {study.metric} ({study.direction}), storage "
        f"{study.storage_url}, {jobs} worker(s)"
    )
    code = work(study, storage, ostudy) if jobs == 1 else _spawn_workers(study, jobs)
    write_report(study, ostudy)
    states = [t.state.name for t in current_trials(study, ostudy)]
    failed = states.count("FAIL")
    hidden = len(latest_trials(ostudy)) - len(states)
    log.summary(
        f"[study] {states.count('COMPLETE')} complete, {failed} failed, {states.count('RUNNING')} running, "
        f"{states.count('WAITING')} waiting -> {study.folder / 'report.md'}"
        + (f" ({hidden} earlier trial(s) of points no longer in the grid not shown)" if hidden else "")
    )
    return code or (1 if failed > 0 else 0)


def _spawn_workers(study: Study, jobs: int) -> int:
    """Start ``jobs`` worker processes on the shared storage, each with its share of the cores."""
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    level = str(log.logger().getEffectiveLevel())  # workers speak as this process was asked to (--quiet)
    env = {
        **os.environ,
        "HFTL_LOG_LEVEL": level,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "HFTL_STUDY_PARENT": str(os.getpid()),
    }
    cmd = [sys.executable, "-m", "hftl.analysis.study_engine", str(study.file), "--storage", study.storage_url]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(jobs)]
    try:
        return max(p.wait() for p in procs)
    except KeyboardInterrupt:
        for p in procs:  # each saves its run, re-queues its trial and stops
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
        raise


def work(study: Study, storage: Any, ostudy: Any) -> int:
    """One worker: take trials until none is left (grid) or the budget is spent (tpe); 130 if interrupted."""
    from hftl.tasks import reuse_prepared_data

    with reuse_prepared_data():  # load + tokenize once per (data, checkpoint, seed) in this worker
        return _work(study, storage, ostudy)


def _work(study: Study, storage: Any, ostudy: Any) -> int:
    deadline = time.time() + study.spec.timeout_minutes * 60 if study.spec.timeout_minutes else None
    while deadline is None or time.time() < deadline:
        with storage_lock(study):
            retire_dead_trials(study, storage, ostudy)
            trial = _next_trial(study, storage, ostudy)
            if trial is not None:
                trial.set_user_attr(
                    "hftl_worker", {"host": HOST, "pid": os.getpid(), "started": _start_time(os.getpid())}
                )
                storage.record_heartbeat(trial._trial_id)
        if trial is None:
            return 0
        if not run_trial(study, storage, ostudy, trial):
            return 130
    return 0


def _next_trial(study: Study, storage: Any, ostudy: Any) -> Any:
    """Pop a WAITING trial (the storage lets only one worker switch it to RUNNING); tpe: else ask a new one."""
    optuna = load_optuna()
    ours = {point_key(labels): labels for labels in study.points}  # grid
    before = ostudy.user_attrs.get("hftl_recipes_before") or {}
    for frozen in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        key = frozen.user_attrs.get("hftl_key")
        if study.spec.search == "grid" and (
            key not in ours or recorded_recipe(frozen, before) != point_recipe(study, ours[key])
        ):
            continue  # a point of another version of this grid (a machine that runs it grown, or whose recipe
            # file changed under it): it would run with another recipe than it was queued with, not ours to run
        if storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.RUNNING):
            return optuna.Trial(ostudy, frozen._trial_id)
    if study.spec.search == "tpe":
        started = [t for t in ostudy.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") is None]
        if len(started) < (study.spec.trials or 0):
            with warnings.catch_warnings():
                # Optuna warns that heartbeats belong to Study.optimize, which records them; this loop records them
                # itself (_Heartbeat, for the same purpose), so the warning would only alarm the user at each trial
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")
                return ostudy.ask()
    return None


def retire_dead_trials(study: Study, storage: Any, ostudy: Any) -> None:
    """FAIL and re-queue RUNNING trials whose worker is gone: a dead pid on this host, or a stale heartbeat."""
    optuna = load_optuna()
    for frozen in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = frozen.user_attrs.get("hftl_worker") or {}
        if worker.get("host") != HOST or _alive(worker.get("pid"), worker.get("started")):
            continue
        storage.set_trial_user_attr(frozen._trial_id, "hftl_error", f"its worker (pid {worker.get('pid')}) died")
        try:
            if storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL):
                storage.hftl_retry(ostudy, storage.get_trial(frozen._trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    optuna.storages.fail_stale_trials(ostudy)  # other hosts: Optuna's heartbeat


def run_trial(study: Study, storage: Any, ostudy: Any, trial: Any) -> bool:
    """Run one trial in this process into trials/<number>/ and record it; False if the run was interrupted."""
    from hftl.analysis.advise import resolve_strategy
    from hftl.config.recipe import load_recipe

    optuna = load_optuna()
    started = time.perf_counter()
    labels = _suggest(study, trial)
    run_dir = study.folder / "trials" / str(trial.number)
    overrides = study.trial_overrides(labels) + [f"output.dir={run_dir.resolve()}", "output.overwrite=true"]
    if not study.spec.keep_models:  # what the trial folder loses anyway is not written (TRIAL_OUTPUT)
        overrides += TRIAL_OUTPUT
    shown = ", ".join(f"{k}={v}" for k, v in labels.items())
    log.say(f"[study] trial {trial.number} ({shown}): running")
    beat = _Heartbeat(storage, trial._trial_id)
    run_seconds = 0.0
    try:
        recipe = resolve_strategy(load_recipe(study.recipe_file, overrides))  # strategy.name: auto
        from hftl.training.train import run as train_run  # lazy: the runner may move; one line to change

        before = time.perf_counter()
        try:
            with log.hushed():  # --quiet: the trial's own summary stays in its folder
                result = train_run(recipe, on_evaluate=_pruning_hook(study, trial))
        finally:
            run_seconds = time.perf_counter() - before
        value = lookup(result.metrics, study.metric)
        trial.set_user_attr("hftl_metrics", _scalars(result.metrics))
        error = None
    except optuna.TrialPruned as exc:
        beat.stop()
        prune_trial_dir(run_dir)
        trial.set_user_attr("hftl_run_seconds", round(time.perf_counter() - started, 3))
        trial.set_user_attr("hftl_pruned", str(exc))
        ostudy.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log.say(f"[study] trial {trial.number} ({shown}) pruned: {exc}")
        write_results(study, ostudy)
        return True
    except (KeyboardInterrupt, HftlError) as exc:
        if isinstance(exc, KeyboardInterrupt) or exc.exit_code == 130:  # SIGTERM / Ctrl-C: stop, run it again later
            beat.stop()
            trial.set_user_attr("hftl_error", "interrupted")
            ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
            storage.hftl_retry(ostudy, storage.get_trial(trial._trial_id))
            log.warn(f"[study] trial {trial.number} interrupted; it runs again when the study is rerun")
            return False
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a trial's failure is recorded; the study goes on
        error = f"{type(exc).__name__}: {exc}"
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
    beat.stop()
    if not study.spec.keep_models:
        prune_trial_dir(run_dir)
    trial.set_user_attr("hftl_run_seconds", round(run_seconds, 3))
    trial.set_user_attr("hftl_overhead_seconds", round(time.perf_counter() - started - run_seconds, 4))
    if error is None:
        ostudy.tell(trial, value)
        log.say(f"[study] trial {trial.number} ({shown}): {study.metric} {value:.4f} ({run_seconds:.1f} s)")
    else:
        trial.set_user_attr("hftl_error", error[:2000])
        ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
        log.warn(f"[study] trial {trial.number} ({shown}) FAILED: {error}")
    write_results(study, ostudy)
    return True


def _pruning_hook(study: Study, trial: Any) -> Any:
    """Report each evaluation during training to the pruner; stop the trial when it says so (search: tpe)."""
    if study.spec.pruner == "none":
        return None
    optuna = load_optuna()
    name = study.metric.split(".", 1)[1]  # validation.accuracy -> accuracy, as the loop's evaluations name it

    def on_evaluate(step: int, scores: dict[str, float]) -> None:
        if name in scores:
            trial.report(float(scores[name]), step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"{study.metric} {scores[name]:.4f} at step {step} behind the others")

    return on_evaluate


def _suggest(study: Study, trial: Any) -> dict[str, Any]:
    """The trial's axis labels: a grid point's as enqueued; a search's sampled, as Optuna parameters.

    A grid's labels are not recorded as Optuna parameters: a categorical parameter's choices
    cannot change within a study in Optuna, and a grid may grow (the labels are user attributes).
    """
    if study.spec.search == "grid":
        return dict(trial.user_attrs["hftl_labels"])
    labels = {}
    for axis in study.axes:
        if axis.is_range:
            whole = all(float(x).is_integer() for x in (axis.low, axis.high, axis.step or 1))
            labels[axis.name] = (
                trial.suggest_int(axis.name, int(axis.low), int(axis.high), step=int(axis.step or 1), log=axis.log)
                if whole and axis.step
                else trial.suggest_float(axis.name, axis.low, axis.high, log=axis.log, step=axis.step)
            )
        else:
            labels[axis.name] = trial.suggest_categorical(axis.name, [v.label for v in axis.values])
    trial.set_user_attr("hftl_labels", labels)
    trial.set_user_attr("hftl_key", point_key(labels))
    return labels


def lookup(metrics: dict[str, Any], dotted: str) -> float:
    """``test.accuracy`` -> metrics['test']['accuracy'], or an error naming what there is."""
    node: Any = metrics
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise HftlError(
                f"metric '{dotted}' is not in the run's metrics.json; it has: {', '.join(sorted(_scalars(metrics)))}."
            )
        node = node[part]
    if not isinstance(node, (int, float)) or node != node:
        raise HftlError(f"metric '{dotted}' is {node!r}, not a number")
    return float(node)


def prune_trial_dir(run_dir: Path) -> None:
    """Keep what the report needs (metrics, plan, recipe, log, card, plots); delete weights and checkpoints."""
    if not run_dir.is_dir():
        return
    for child in run_dir.iterdir():
        if child.name in KEEP or child.suffix == ".png":
            continue
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(_scalars(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


class _Heartbeat:
    """Records an Optuna heartbeat for the running trial, so workers on other hosts can tell it is alive."""

    def __init__(self, storage: Any, trial_id: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id), daemon=True)
        self._thread.start()

    def _beat(self, storage: Any, trial_id: int) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat is harmless; GRACE_SECONDS spans several
                storage.record_heartbeat(trial_id)

    def stop(self) -> None:
        self._stop.set()


def _start_time(pid: int) -> str | None:
    """The process's start time (Linux), so a reused pid is not taken for the worker that died."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int | None, started: str | None) -> bool:
    if not pid:
        return True  # not ours to judge: the heartbeat decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return started is None or _start_time(pid) in (None, started)


def _watch_parent(parent: int) -> None:
    """A worker dies with its `hftl study` (e.g. SIGKILL): its trial stays RUNNING and is rerun next time."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(137)

    threading.Thread(target=watch, daemon=True).start()


def worker_main(argv: list[str] | None = None) -> int:
    """Entry of a worker started by ``hftl study --jobs N``:
    ``python -m hftl.analysis.study_engine STUDY --storage URL``."""
    import argparse

    parser = argparse.ArgumentParser(prog="hftl-study-worker")
    parser.add_argument("study")
    parser.add_argument("--storage")
    args = parser.parse_args(argv)
    if os.environ.get("HFTL_STUDY_PARENT"):
        _watch_parent(int(os.environ["HFTL_STUDY_PARENT"]))
    study = load_study(args.study, args.storage, check=False)
    storage = open_storage(study)
    optuna = load_optuna()
    sampler = optuna.samplers.TPESampler(seed=study.spec.seed) if study.spec.search == "tpe" else None
    ostudy = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler, pruner=make_pruner(study))
    return work(study, storage, ostudy)


if __name__ == "__main__":
    sys.exit(worker_main())

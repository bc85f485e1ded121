"""The study's Optuna storage: opening it (SQLite by default, heartbeats, re-queueing of trials whose
worker died), a lock for read-then-write sections, and creating the study with its grid enqueued once.
Shared by the engine (:mod:`hftl.analysis.study_engine`) and the report (:mod:`hftl.analysis.study_report`)."""

from __future__ import annotations

import contextlib
import fcntl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hftl.analysis.study import Study, point_key
from hftl.config.errors import HftlError

HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 120  # another host's trial is stale after this long without a heartbeat


def load_optuna() -> Any:
    """optuna, imported on first use, quiet (warnings only)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")
    return optuna


# --------------------------------------------------------------------------- storage
def open_storage(study: Study) -> Any:
    """The study's RDB storage, with heartbeats and re-queueing of trials whose worker died.

    Default: SQLite in the study folder. Why not Optuna's JournalFileStorage, which is also safe
    for several local processes: in Optuna 4-5 only RDB storages have heartbeats (needed to find
    trials of a killed worker on another machine), SQLite is the same code path as the PostgreSQL
    used across machines, and ``optuna-dashboard sqlite:///...`` reads it as is. SQLite's
    read-then-write is not atomic across processes, so our pops and repairs also take a file lock
    (:func:`storage_lock`); the busy timeout makes other writes wait instead of failing.
    """
    optuna = load_optuna()
    storages = optuna.storages
    retry_cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    retry = retry_cls(max_retry=study.spec.max_retries)
    url = study.storage_url
    kwargs: dict[str, Any] = {"heartbeat_interval": HEARTBEAT_SECONDS, "grace_period": GRACE_SECONDS}
    if url.startswith("sqlite"):
        study.folder.mkdir(parents=True, exist_ok=True)
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    try:
        storage = storages.RDBStorage(url, heartbeat_stale_trial_callback=retry, **kwargs)
    except TypeError:  # Optuna < 4.9 names it failed_trial_callback
        storage = storages.RDBStorage(url, failed_trial_callback=retry, **kwargs)
    except Exception as exc:  # a wrong URL, an unreachable server, a missing driver
        raise HftlError(f"{study.file}: cannot open the study storage {url!r}: {exc}") from None
    storage.hftl_retry = retry
    return storage


@contextlib.contextmanager
def storage_lock(study: Study) -> Iterator[None]:
    """Serialise read-then-write sections between local processes on SQLite (a server's row locks do it otherwise)."""
    if not study.storage_url.startswith("sqlite:///"):
        yield
        return
    path = Path(study.storage_url.removeprefix("sqlite:///") + ".lock")
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def make_pruner(study: Study) -> Any:
    """The study's pruner: median (after 2 complete trials and 1 evaluation) or successive halving; else none."""
    optuna = load_optuna()
    if study.spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if study.spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def ensure_study(study: Study, storage: Any) -> Any:
    """Create the Optuna study and enqueue the grid once; or load it (refusing a different study of that name)."""
    optuna = load_optuna()
    sampler = (
        optuna.samplers.TPESampler(seed=study.spec.seed)
        if study.spec.search == "tpe"
        else optuna.samplers.RandomSampler(seed=study.spec.seed)
    )
    try:
        ostudy = optuna.create_study(
            storage=storage,
            study_name=study.name,
            direction=study.direction,
            sampler=sampler,
            pruner=make_pruner(study),
            load_if_exists=False,
        )
    except optuna.exceptions.DuplicatedStudyError:
        ostudy = optuna.load_study(study_name=study.name, storage=storage, sampler=sampler, pruner=make_pruner(study))
        deadline = time.time() + 15  # its creator may still be enqueueing the grid
        while "hftl_fingerprint" not in ostudy.user_attrs and time.time() < deadline:
            time.sleep(0.5)
    stored = ostudy.user_attrs.get("hftl_fingerprint")
    if stored is not None and stored != study.fingerprint():
        raise HftlError(
            f"{study.file}: the storage already holds a study named '{study.name}' with another recipe, "
            "axes or metric. Give this one another `name:`, or delete the old storage to start again."
        )
    if stored is None:  # created now, or its creator died before the grid was complete: fill in what is missing
        with storage_lock(study):
            have = {t.user_attrs.get("hftl_key") for t in ostudy.get_trials(deepcopy=False)}
            for labels in study.points:
                if point_key(labels) not in have:
                    ostudy.enqueue_trial(labels, user_attrs={"hftl_key": point_key(labels), "hftl_labels": labels})
            ostudy.set_user_attr("hftl_metric", study.metric)
            ostudy.set_user_attr("hftl_fingerprint", study.fingerprint())
    return ostudy

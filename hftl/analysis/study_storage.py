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
from hftl.analysis.study_identity import (
    digest,
    fingerprint,
    point_recipe,
    recipe_changes,
    recorded_recipe,
    settings_digest,
)
from hftl.analysis.study_upgrade import check_earlier, earlier_recipes, is_earlier
from hftl.config import log
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
    """Create the Optuna study and enqueue its grid; or load it, check it, and enqueue the points it lacks.

    A grid may grow (new axis values, seeds) and shrink between runs; what it may not change is
    checked by :func:`check_storage`. Each enqueued trial records its point (``hftl_key``,
    ``hftl_labels``) and the recipe it runs with (``hftl_recipe``, ``hftl_digest``:
    :mod:`hftl.analysis.study_identity`).
    """
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
    with storage_lock(study):
        check_storage(study, ostudy)
        have = {t.user_attrs.get("hftl_key") for t in ostudy.get_trials(deepcopy=False)}
        missing = [labels for labels in study.points if point_key(labels) not in have]
        for labels in missing:
            recipe = point_recipe(study, labels)
            attrs = {"hftl_key": point_key(labels), "hftl_labels": labels, "hftl_recipe": recipe}
            ostudy.enqueue_trial(labels, user_attrs={**attrs, "hftl_digest": digest(recipe)})
        if missing and have - {None}:
            log.say(f"[study] {study.name}: {len(missing)} new point(s) queued beside the trials it has")
        record_study(study, ostudy)
    return ostudy


def check_storage(study: Study, ostudy: Any) -> None:
    """Refuse a storage whose trials this study would misread (nothing is written).

    A grid keeps its trials when it grows or shrinks, when its recipe's text or its fixed overrides change,
    and when a value is rewritten, as long as each trial's point still resolves to the recipe the trial ran
    with (``hftl_recipe``) and the study's settings are the same (``hftl_settings``: metric, search, ...). A
    sampled search must be the same study (``hftl_fingerprint``). A storage of an earlier hftl is checked the
    way it was written (:mod:`hftl.analysis.study_upgrade`) and :func:`record_study` upgrades it.
    """
    attrs = ostudy.user_attrs
    if is_earlier(attrs):
        check_earlier(study, ostudy)
        return
    if "hftl_settings" not in attrs:  # new: nothing recorded yet
        return
    if study.spec.search == "tpe" and attrs.get("hftl_fingerprint") != fingerprint(study):
        raise HftlError(
            f"{study.file}: the storage already holds a study named '{study.name}' with another recipe, axes or "
            "metric. A search must not change (its sampler learnt from the trials it has); give this one another "
            "`name:`, or delete the old storage to start again."
        )
    if attrs["hftl_settings"] != settings_digest(study):
        raise HftlError(
            f"{study.file}: the storage already holds a study named '{study.name}' with another metric, direction "
            "or search settings; of a grid only the axes, the overrides and the recipe may change, as long as no "
            "trial's recipe does. Put those back, give this study another `name:`, or delete the old storage to "
            "start again."
        )
    if study.spec.search == "grid":
        _check_trials(study, ostudy)


def _check_trials(study: Study, ostudy: Any) -> None:
    """Each trial of a point of this grid ran (or is queued to run) with the recipe the point resolves to now."""
    before = ostudy.user_attrs.get("hftl_recipes_before") or {}
    points = {point_key(labels): labels for labels in study.points}
    changed: dict[str, tuple[Any, list[str]]] = {}
    for t in ostudy.get_trials(deepcopy=False):
        key = t.user_attrs.get("hftl_key")
        if key not in points or key in changed:
            continue
        ran, now = recorded_recipe(t, before), point_recipe(study, points[key])
        if ran != now:
            changed[key] = (t, recipe_changes(ran, now))
    if not changed:
        return
    lines = [
        f"point {', '.join(f'{k}={v}' for k, v in points[key].items())} (trial {t.number}): {'; '.join(diff)}"
        for key, (t, diff) in list(changed.items())[:_SHOWN]
    ]
    more = f"\n  - ... and {len(changed) - _SHOWN} more point(s)" if len(changed) > _SHOWN else ""
    raise HftlError(
        f"{study.file}: {len(changed)} point(s) of this study now resolve to another recipe than their trials in "
        "the storage ran with:\n  - " + "\n  - ".join(lines) + more + "\nPin what they ran with in the study "
        "file (the key in the value's `set:`, or under `overrides:`), give the new setting a new label (the "
        "finished trials keep the old one), or give the study another `name:`. Nothing was written."
    )


_SHOWN = 5  # points named in a refusal


def upgrade_storage(study: Study, ostudy: Any) -> None:
    """Check the storage (:func:`check_storage`) and, for an earlier hftl's record of this same study, record
    what each trial ran with (``hftl study --report`` does this without training)."""
    with storage_lock(study):
        check_storage(study, ostudy)
        if is_earlier(ostudy.user_attrs):
            record_study(study, ostudy)


def record_study(study: Study, ostudy: Any) -> None:
    """The study's digests; for an earlier hftl's storage, first what its trials ran with (by point: Optuna
    does not let a finished trial's attributes change)."""
    if is_earlier(ostudy.user_attrs) and study.spec.search == "grid":
        ostudy.set_user_attr("hftl_recipes_before", earlier_recipes(study, ostudy))
    ostudy.set_user_attr("hftl_settings", settings_digest(study))
    ostudy.set_user_attr("hftl_metric", study.metric)
    ostudy.set_user_attr("hftl_fingerprint", fingerprint(study))  # last: the grid is complete

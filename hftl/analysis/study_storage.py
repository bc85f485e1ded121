"""The study's Optuna storage: opening it (SQLite by default, heartbeats, re-queueing of trials whose
worker died), a lock for read-then-write sections, and creating the study with its grid enqueued once.
Shared by the engine (:mod:`hftl.analysis.study_engine`) and the report (:mod:`hftl.analysis.study_report`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hftl.analysis.study import Study, point_key
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
    ``hftl_labels``) and the digest of the overrides it runs with (``hftl_digest``).
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
            attrs = {"hftl_key": point_key(labels), "hftl_labels": labels, "hftl_digest": study.point_digest(labels)}
            ostudy.enqueue_trial(labels, user_attrs=attrs)
        if missing and have - {None}:
            log.say(f"[study] {study.name}: {len(missing)} new point(s) queued beside the trials it has")
        record_study(study, ostudy)
    return ostudy


def check_storage(study: Study, ostudy: Any) -> None:
    """Refuse a storage whose trials this study would misread (nothing is written).

    A grid keeps its finished trials when it grows or shrinks, provided nothing outside the axes
    changed (recipe text, fixed overrides, metric, search settings: ``hftl_base_fingerprint``) and
    no axis value that has trials now sets other keys (``hftl_values``, and each trial's
    ``hftl_digest``). A sampled search must be the same study (``hftl_fingerprint``), as before.
    A storage of an earlier hftl holds only ``hftl_fingerprint``: the same study passes (and
    :func:`record_study` upgrades it); a changed one is refused, since which trials still hold
    cannot be told from it.
    """
    attrs = ostudy.user_attrs
    whole, base = attrs.get("hftl_fingerprint"), attrs.get("hftl_base_fingerprint")
    if study.spec.search == "tpe" or base is None:
        if whole is not None and whole != study.fingerprint():
            earlier = study.spec.search == "grid"
            raise HftlError(
                f"{study.file}: the storage already holds a study named '{study.name}' with another recipe, "
                "axes or metric. Give this one another `name:`, or delete the old storage to start again."
                + (_EARLIER.format(file=study.file) if earlier else "")
            )
        return
    if base != study.base_fingerprint():
        raise HftlError(
            f"{study.file}: the storage already holds a study named '{study.name}' with another recipe, fixed "
            "overrides, metric or search settings; of a grid only the axes may change (values added or removed). "
            "Put those back, give this study another `name:`, or delete the old storage to start again."
        )
    stored: dict[str, dict[str, Any]] = attrs.get("hftl_values") or {}
    for axis in study.axes:
        for value in axis.values:
            before = stored.get(axis.name, {}).get(_label_key(value.label))
            if before is not None and before != _jsonable(value.sets):
                raise HftlError(
                    f"{study.file}: axis '{axis.name}', value {value.label!r} now sets {_jsonable(value.sets)}, but "
                    f"its trials in the storage ran with {before}. Give the new setting a new label (the finished "
                    "trials keep the old one), or give the study another `name:`."
                )
    points = {point_key(labels): labels for labels in study.points}
    for t in ostudy.get_trials(deepcopy=False):
        labels = points.get(t.user_attrs.get("hftl_key"))
        if labels is not None and t.user_attrs.get("hftl_digest") not in (None, study.point_digest(labels)):
            shown = ", ".join(f"{k}={v}" for k, v in labels.items())
            raise HftlError(
                f"{study.file}: point {shown}: trial {t.number} in the storage ran with other overrides than this "
                "point resolves to now (two axes that set one key, in another order?). Put the axes back in "
                "their order, or give the study another `name:`."
            )


_EARLIER = (
    " This storage was written by an earlier hftl, which kept no record of what each point ran with; to grow "
    "the grid, put the study file back as it was, run `hftl study {file} --report` once (it records that and "
    "trains nothing), then make the change."
)


def upgrade_storage(study: Study, ostudy: Any) -> None:
    """Check the storage (:func:`check_storage`) and, for an earlier hftl's record of this same grid,
    record what lets the grid grow (``hftl study --report`` does this without training)."""
    with storage_lock(study):
        check_storage(study, ostudy)
        attrs = ostudy.user_attrs
        if study.spec.search == "grid" and "hftl_fingerprint" in attrs and "hftl_base_fingerprint" not in attrs:
            record_study(study, ostudy)


def record_study(study: Study, ostudy: Any) -> None:
    """What the storage's trials were run with: the study's digests and each axis value's keys (merged with
    the values recorded before, so a value removed and added back later is checked too)."""
    if study.spec.search == "grid":
        values = {k: dict(v) for k, v in (ostudy.user_attrs.get("hftl_values") or {}).items()}
        for axis in study.axes:
            values.setdefault(axis.name, {}).update({_label_key(v.label): _jsonable(v.sets) for v in axis.values})
        ostudy.set_user_attr("hftl_values", values)
        ostudy.set_user_attr("hftl_base_fingerprint", study.base_fingerprint())
    ostudy.set_user_attr("hftl_metric", study.metric)
    ostudy.set_user_attr("hftl_fingerprint", study.fingerprint())  # last: the grid is complete


def _label_key(label: Any) -> str:
    """A label as a mapping key that keeps its type (1 and "1" are different labels)."""
    return json.dumps(label)


def _jsonable(value: Any) -> Any:
    """``value`` as the storage gives it back (JSON), so a recorded value and today's compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))

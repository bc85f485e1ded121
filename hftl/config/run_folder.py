"""The run folder: the one reader and writer of its small files, used by the loop, card, plots, CLI and tests.

A run folder holds the resolved ``recipe.yaml``, ``plan.json`` (the strategy as
applied), ``labels.json``, ``metrics.jsonl`` (every log and evaluation line),
``metrics.json`` (the final scores), ``run_status.json`` (running / interrupted
/ completed), the model files at its root and resumable states in
``checkpoints/`` (:mod:`hftl.training.training_state`). JSON files are written atomically
(temporary file + ``os.replace``), so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    from hftl.strategies.plan import Plan

RECIPE_FILE, PLAN_FILE, LABELS_FILE = "recipe.yaml", "plan.json", "labels.json"
LOG_FILE, FINAL_FILE, STATUS_FILE = "metrics.jsonl", "metrics.json", "run_status.json"
CLASS_REPORT_FILE = "class_report.json"  # per-class precision / recall / F1 (+ confusion matrix) of a split


# --------------------------------------------------------------------------- writing
def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def set_status(run_dir: Path, status: str, **extra: Any) -> None:
    """Record whether the run is ``running``, ``interrupted``, ``failed`` or ``completed``."""
    write_json_atomic(run_dir / STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def write_start(run_dir: Path, recipe_yaml: str, plan: Plan, labels: list[str]) -> None:
    """What a run knows before its first step: the plan, the resolved recipe (``Recipe.to_yaml``: overrides
    included), the labels."""
    write_json_atomic(run_dir / PLAN_FILE, plan.to_dict())
    (run_dir / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
    (run_dir / LABELS_FILE).write_text(json.dumps(labels), encoding="utf-8")


def write_final(run_dir: Path, final: dict[str, Any]) -> None:
    write_json_atomic(run_dir / FINAL_FILE, final)


def write_class_report(run_dir: Path, reports: dict[str, Any]) -> None:
    """Per split, the per-class report of the final model (nothing written for regression: it has no classes)."""
    if reports:
        write_json_atomic(run_dir / CLASS_REPORT_FILE, reports)


def append_log(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to metrics.jsonl."""
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def truncate_log(run_dir: Path, step: int) -> None:
    """Drop log lines written after the state a run resumes from (they will be written again)."""
    path = run_dir / LOG_FILE
    if path.is_file():
        kept = [json.dumps(r) for r in read_log(run_dir) if r.get("step", 0) <= step and "final" not in r]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def check_run_dir(run_dir: Path, overwrite: bool, resume: bool, has_checkpoints: bool) -> None:
    """Refuse a run folder that cannot be used, before anything is loaded, written or deleted.

    ``overwrite`` is ``output.overwrite``. Refused: a path that is a file (or lies under one), a completed run
    without ``overwrite`` or with ``--resume``, or an unfinished run without ``--resume``. (Whether the newest
    saved state loads: :func:`hftl.training.training_state.check_resumable`.)
    """
    for parent in [run_dir, *run_dir.parents]:
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == run_dir else f"lies under {parent}, which is a file"
            raise HftlError(
                f"The run folder {run_dir} (output.dir) {what}, not a folder. Point output.dir at a "
                "new or existing folder."
            )
    status = read_status(run_dir).get("status")
    if resume and status == "completed":
        raise HftlError(
            f"{run_dir} holds a completed run, so there is nothing to resume (a completed run keeps "
            "no best/ copy, and its resumable states only with output.keep_checkpoints). Set "
            "output.overwrite=true (without --resume) to train again into it, or choose another folder "
            "with output.dir=..."
        )
    if status == "completed" and not overwrite and not resume:
        raise HftlError(
            f"{run_dir} holds a completed run. Set output.overwrite=true to train again into it, "
            "or choose another folder with output.dir=..."
        )
    if has_checkpoints and not resume and not overwrite:
        raise HftlError(
            f"{run_dir} holds an unfinished run with saved states. Continue it with --resume "
            "(or train.resume=true), or set output.overwrite=true to start again."
        )


def prepare(run_dir: Path, overwrite: bool, resume: bool, has_checkpoints: bool) -> None:
    """Create the run folder; refuse to silently overwrite a finished run or restart a resumable one
    (``overwrite``: ``output.overwrite``)."""
    check_run_dir(run_dir, overwrite, resume, has_checkpoints)
    if not resume and overwrite and run_dir.exists():
        for child in ("checkpoints", "best", LOG_FILE):
            path = run_dir / child
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    set_status(run_dir, "running")


# --------------------------------------------------------------------------- reading
def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` in order, without blank lines or a last line cut short by a kill."""
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        raise HftlError(
            f"{run_dir} has no {LOG_FILE}: it is not an hftl run folder, or its run has not logged a step yet."
        )
    return [r for r in map(_parse_line, path.read_text(encoding="utf-8").splitlines()) if r is not None]


def read_json(run_dir: str | Path, name: str) -> dict[str, Any]:
    """A JSON file of the run folder, or {} when it is not there (yet)."""
    path = Path(run_dir) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_task(run_dir: str | Path) -> str:
    """The task a run folder was trained for (from its saved recipe)."""
    recipe_file = Path(run_dir) / RECIPE_FILE
    if not recipe_file.is_file():
        raise HftlError(f"{run_dir} is not an hftl run folder (no {RECIPE_FILE}). Train one with `hftl run RECIPE`.")
    task = _saved_recipe(recipe_file).get("task")
    if not isinstance(task, str):
        raise HftlError(f"{recipe_file} names no task: it is not the recipe an hftl run saves.")
    return task


def _saved_recipe(recipe_file: Path) -> dict[str, Any]:
    """A run folder's recipe.yaml as a mapping; a clear error when it was edited into something else."""
    try:
        doc = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise HftlError(
            f"{recipe_file} is not readable YAML ({type(exc).__name__}): the run folder's recipe was "
            "changed or damaged. Restore it, or train the run again."
        ) from None
    if not isinstance(doc, dict):
        raise HftlError(f"{recipe_file} is not a recipe mapping: the run folder's recipe was changed or damaged.")
    return doc


@dataclass
class RunFiles:
    """What a finished run folder says about itself."""

    run_dir: Path
    recipe: dict[str, Any]
    recipe_text: str
    plan: dict[str, Any]
    final: dict[str, Any]
    labels: list[str]
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def metric(self) -> str | None:
        """The metric that picked the best model, e.g. ``accuracy``."""
        return best_metric(self.final)

    @property
    def adapter_dir(self) -> Path | None:
        """Where a LoRA run keeps its peft adapter (with the head): ``adapter/``, or the root for adapter-only runs."""
        return next(
            (d for d in (self.run_dir / "adapter", self.run_dir) if (d / "adapter_config.json").is_file()), None
        )

    @property
    def has_full_model(self) -> bool:
        return (self.run_dir / "config.json").is_file()

    @property
    def class_report(self) -> dict[str, Any]:
        """Split -> per-class report of the final model ({} for regression, or a run from before it existed)."""
        return read_json(self.run_dir, CLASS_REPORT_FILE)


def read_run(run_dir: str | Path) -> RunFiles:
    """Read a finished run's small files; a clear error when the folder is not a finished run."""
    run_dir = Path(run_dir)
    missing = [f for f in (RECIPE_FILE, PLAN_FILE, FINAL_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise HftlError(
            f"{run_dir} is not a finished hftl run folder (missing {', '.join(missing)}). "
            "Train it to the end with `hftl run RECIPE` (or `--resume`) first."
        )
    text = (run_dir / RECIPE_FILE).read_text(encoding="utf-8")
    labels_file = run_dir / LABELS_FILE
    return RunFiles(
        run_dir=run_dir,
        recipe=_saved_recipe(run_dir / RECIPE_FILE),
        recipe_text=text,
        plan=read_json(run_dir, PLAN_FILE),
        final=read_json(run_dir, FINAL_FILE),
        labels=json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else [],
        log=read_log(run_dir) if (run_dir / LOG_FILE).is_file() else [],
    )


def domain_gap(final: dict[str, Any], metric: str | None) -> tuple[float, float] | None:
    """(source test, target test) of ``metric`` for a run with a labeled ``data.target``, else None."""
    source, target = final.get("test", {}).get(metric), final.get("target_test", {}).get(metric)
    return None if source is None or target is None else (source, target)


def best_metric(final: dict[str, Any]) -> str | None:
    """The metric named in a final record's ``best_validation_<metric>`` key."""
    return next((k.removeprefix("best_validation_") for k in final if k.startswith("best_validation_")), None)


def _parse_line(line: str) -> dict[str, Any] | None:
    """One metrics.jsonl record; None for a blank line or one cut short when the run was killed mid-write."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None

"""``hftl evaluate RUN DATA``: score a finished run on any labelled data in the run's input format.

DATA is anything ``data.source`` takes (a csv / json / jsonl / parquet file, an image folder, a catalog name or a
Hub dataset id); its columns are the run's (``data.columns`` of its recipe), overridable with ``--column
role=name``. The examples are encoded with the run's own tokenizer / processor and label set, and scored by the
same code as training's evaluation (:func:`hftl.training.evaluation.score`): the metrics and the per-class report go to
one JSON file, by default ``RUN/evaluations/<data>-<split>.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hftl.config.errors import HftlError, RecipeError


def evaluate_run(
    run_dir: str | Path,
    source: str,
    split: str | None = None,
    columns: list[str] = (),  # type: ignore[assignment]
    out: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Score the run on ``source``; returns where the result was written and the result."""
    import datasets
    import torch
    from accelerate import Accelerator

    from hftl.config.recipe import validate_recipe
    from hftl.config.run_folder import read_run, write_json_atomic
    from hftl.data import sources as data_sources
    from hftl.tasks import TASKS
    from hftl.tasks.common import column
    from hftl.tasks.labels import add_label_set, check_values, label_column_of
    from hftl.training.evaluation import score

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if not run.has_full_model:
        raise HftlError(f"{run_dir} has no saved model (config.json); finish the run first.")
    task = TASKS.get(run.recipe["task"])
    doc = run.recipe
    mapped = dict(doc["data"].get("columns") or {})
    for item in columns:
        role, sep, name = item.partition("=")
        if not sep or role not in task.roles:
            raise HftlError(
                f"--column takes role=name with a role of {task.name}: {', '.join(task.roles)} (got {item!r})."
            )
        mapped[role] = name
    doc["data"] = {**doc["data"], "columns": mapped}
    recipe = validate_recipe(doc, str(run_dir / "recipe.yaml"))
    local = Path(source).expanduser()
    raw = data_sources.load_source(str(local.resolve()) if local.exists() else source)
    chosen = split or ("test" if "test" in raw else next(iter(raw)) if len(raw) == 1 else None)
    if chosen not in raw:
        raise HftlError(
            f"{source} has the splits {', '.join(raw)}; name the one to score with --split "
            + ("(it has no 'test' split)." if split is None else f"({split!r} is not one of them).")
        )
    splits = add_label_set(datasets.DatasetDict({"test": raw[chosen]}), recipe.data, recipe.source_file)
    present = splits["test"].column_names
    needed = [r for r in task.required_roles if not (r == "label" and recipe.data.label_columns)]
    needed += ["text_pair"] if "text_pair" in task.roles and column(recipe.data, task.roles, "text_pair") else []
    for role in needed:
        if (col := column(recipe.data, task.roles, role)) not in present:
            raise RecipeError(
                f"{source} (split {chosen})",
                None,
                f"the run reads its {role} from column '{col}', which is not in the data",
                hint=f"Columns: {', '.join(present)}. Map it with --column {role}=<column>.",
            )
    if "label" in task.roles:  # the declared problem type, checked (token tasks have tags instead)
        label_col = label_column_of(recipe.data, column(recipe.data, task.roles, "label"))
        check_values(splits["test"][label_col][:2000], recipe.data.problem_type, label_col, recipe.source_file)
    model, processor = task.load_trained(run_dir)
    encoded, skipped = task.encode(splits, processor, recipe, run.labels)
    if len(encoded["test"]) == 0:
        raise HftlError(f"{source} (split {chosen}): no example left to score.")
    loader = torch.utils.data.DataLoader(
        encoded["test"],
        batch_size=recipe.train.eval_batch_size or recipe.train.batch_size * 2,
        collate_fn=task.collator(processor, recipe, train=False),
    )
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model, loader = accelerator.prepare(model, loader)
    scored = score(model, loader, task, run.labels, accelerator, report=True)
    result = {
        "run": str(run_dir),
        "data": source,
        "split": chosen,
        "examples": len(encoded["test"]),
        "skipped": skipped,
        "metrics": scored.metrics,
        "report": scored.report,
    }
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{local.stem if local.exists() else source}-{chosen}")
    path = Path(out) if out else run_dir / "evaluations" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return path, result

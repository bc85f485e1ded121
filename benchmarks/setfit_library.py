"""The setfit library itself on hftl's K shots: the reference hftl's ``strategy.name: setfit`` is checked against.

    python benchmarks/setfit_library.py --dataset rotten-tomatoes --shots 16 --variants library
    python benchmarks/setfit_library.py --report

The same K-shot training set, validation and test split as ``benchmarks/fewshot.py`` (hftl's own loading:
``recipes/sentiment.yaml`` with ``data.shots`` and ``train.seed``; BBC News as ``data.source=bbc-news``),
then ``setfit.Trainer`` on ``SetFitModel.from_pretrained(all-MiniLM-L6-v2)`` (Transformer -> mean Pooling ->
Normalize, as the checkpoint's modules.json says) with the variant's arguments, and the library's head
(scikit-learn ``LogisticRegression``, C = 1) on the tuned body's normalised embeddings. For choosing the head's
strength on *validation*, each row also records validation and test accuracy of the logistic head at other C
on the same embeddings (the body is tuned once).

Variants: ``library`` = setfit 1.2's defaults (``sampling_strategy="oversampling"``: every pair at least once,
batch 16, 1 epoch, body LR 2e-5, warmup 10%); ``iter20`` = the paper's ``num_iterations=20`` (2 x 20 x N pairs),
hftl's strategy default before this study; ``lr1e-4`` and ``epochs4``: a 5x body LR, or 4 epochs over the pairs
(the library's pair loss falls little in one epoch at 2e-5). Rows go to ``--out`` (restartable: rows there are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "sentiment.yaml"
DATASETS = {
    "rotten-tomatoes": [],
    "bbc-news": ["data.source=bbc-news", "data.group_column=null"],
}
VARIANTS = {
    "library": {},
    "iter20": {"num_iterations": 20},
    "lr1e-4": {"body_learning_rate": 1e-4},
    "epochs4": {"num_epochs": 4},
}
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def splits(dataset: str, shots: int, seed: int):
    from hftl.config.recipe import load_recipe
    from hftl.tasks import TASKS

    recipe = load_recipe(RECIPE, [f"data.shots={shots}", f"train.seed={seed}", *DATASETS[dataset]])
    return TASKS.get(recipe.task).load_splits(recipe), recipe.data.max_length


def measure(dataset: str, shots: int, seed: int, variant: str) -> dict:
    import numpy as np
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from sklearn.linear_model import LogisticRegression

    from hftl.models.pretrained import resolve_checkpoint

    data, max_length = splits(dataset, shots, seed)
    model = SetFitModel.from_pretrained(resolve_checkpoint("all-MiniLM-L6-v2"))
    settings = {"batch_size": 16, "num_epochs": 1, **VARIANTS[variant]}
    args = TrainingArguments(
        seed=seed, max_length=max_length, report_to="none", save_strategy="no", show_progress_bar=False, **settings
    )
    train = Dataset.from_dict({"text": data["train"]["text"], "label": data["train"]["label"]})
    started = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    seconds = time.perf_counter() - started
    # The body's own pipeline (Transformer -> Pooling -> Normalize), encoded once; the library's head reads the same.
    x = {s: model.model_body.encode(data[s]["text"], normalize_embeddings=False) for s in data}
    y = {s: np.array(data[s]["label"]) for s in data}
    acc = {"test": float((np.asarray(model.model_head.predict(x["test"])) == y["test"]).mean())}
    grid = {}
    for c in C_GRID:
        head = LogisticRegression(C=c, max_iter=1000).fit(x["train"], y["train"])
        grid[str(c)] = {s: float((head.predict(x[s]) == y[s]).mean()) for s in ("validation", "test")}
    state = trainer.st_trainer.state
    return {
        "accuracy": acc["test"],
        "validation_accuracy": grid["1.0"]["validation"],
        "head_c": grid,
        "pairs": len(trainer.st_trainer.train_dataset),
        "body_steps": state.global_step,
        "seconds": round(seconds, 1),
        "norm": float(np.linalg.norm(x["train"], axis=1).mean()),
    }


def report(rows: list[dict]) -> str:
    lines = [
        "| dataset | K | variant | test acc (C=1: setfit's head) | per seed | validation acc by head C | pairs "
        "| tune s |",
        "| --- | ---: | --- | ---: | --- | --- | ---: | ---: |",
    ]
    keys = sorted({(r["dataset"], r["shots"], r["variant"]) for r in rows})
    for dataset, k, variant in keys:
        cell = sorted(
            (r for r in rows if (r["dataset"], r["shots"], r["variant"]) == (dataset, k, variant)),
            key=lambda r: r["seed"],
        )
        accs = [r["accuracy"] for r in cell]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        by_c = ", ".join(
            f"{c}: {statistics.mean(r['head_c'][c]['validation'] for r in cell):.3f}" for c in cell[0]["head_c"]
        )
        lines.append(
            f"| {dataset} | {k} | {variant} | {statistics.mean(accs):.3f} "
            + (f"± {spread:.3f} " if len(accs) > 1 else "(1 seed) ")
            + f"| {' / '.join(f'{a:.3f}' for a in accs)} | {by_c} | {cell[0]['pairs']} "
            f"| {statistics.median(r['seconds'] for r in cell):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="rotten-tomatoes", choices=list(DATASETS))
    parser.add_argument("--shots", default="16")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="library")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "studies" / "setfit_library.json")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    rows = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    if not args.report:
        for k in [int(s) for s in args.shots.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                for variant in args.variants.split(","):
                    if any(
                        (r["dataset"], r["shots"], r["seed"], r["variant"]) == (args.dataset, k, seed, variant)
                        for r in rows
                    ):
                        continue
                    row = {
                        "dataset": args.dataset,
                        "shots": k,
                        "seed": seed,
                        "variant": variant,
                        **measure(args.dataset, k, seed, variant),
                        "load": Path("/proc/loadavg").read_text().split()[:3],
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"rows": rows}, indent=1))
    table = report(rows)
    args.out.with_suffix(".md").write_text(
        "<!-- generated by: python benchmarks/setfit_library.py (see its docstring); do not edit -->\n\n" + table + "\n"
    )
    print(table)


if __name__ == "__main__":
    main()

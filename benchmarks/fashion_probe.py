"""What a linear probe on frozen EfficientNet-Lite0 features reaches on 1,000 Fashion-MNIST images (issue 23).

    python benchmarks/fashion_probe.py                 # extract once (cached), fit every variant, write the report
    python benchmarks/fashion_probe.py --size 160      # another input size (its own feature file and report rows)
    python benchmarks/fashion_probe.py --report        # the markdown table from the results file only

The data are the study's (``studies/fashion-mnist-1k.yaml``): the shipped recipe at 112 px, 1,002 validation images
carved from train with ``data.split_seed 42``, the whole 10,000-image test split, and per seed (``train.seed`` 0, 1,
2) the 1,000 training images ``data.max_train_samples`` draws. The images go through hftl's own evaluation collator
(the checkpoint's processor: plain resize, mean = std = 0.5), so the features are those hftl caches.

One forward pass per image and view records every stage's output (timm ``blocks.0``-``blocks.6``, average-pooled)
and the pre-classifier map (``bn2``: the 1x1 conv to 1,280 channels, BatchNorm, ReLU6; average- and max-pooled).
Views: the image, its horizontal flip, and for training images ``--crops`` random resized crops (hftl's training
augmentation: scale 0.7-1, random flip). Features are cached in ``<hftl cache>/benchmarks/``.

Each variant fits the multinomial logistic probe hftl fits (``hftl.models.probe.fit_logistic``: L-BFGS, mean
cross-entropy + L2 on standardised features) and picks its L2 on validation per seed; the table gives validation and
test side by side (mean ± sample std over the 3 seeds). Only validation may choose a variant; test is reported.
Results: ``docs/studies/fashion-mnist-probe/benchmark.json`` (one block per input size) and ``benchmark.md`` (the
tables; text below its notes marker is written by hand and kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "fashion-mnist-efficientnet.yaml"
OUT = ROOT / "docs" / "studies" / "fashion-mnist-probe"
SEEDS = (0, 1, 2)
STUDY = [
    "data.split_seed=42",
    "data.validation_size=0.0167",
    "data.max_eval_samples=null",
    "strategy.name=feature_extraction",
]
BLOCKS = (16, 24, 40, 80, 112, 192, 320)  # channels of timm efficientnet_lite0 blocks.0 ... blocks.6
HEAD = 1280
NOTES = "<!-- notes: written by hand, kept by the script -->"


def block_slice(i: int) -> slice:
    start = sum(BLOCKS[:i])
    return slice(start, start + BLOCKS[i])


HEAD_AVG = slice(sum(BLOCKS), sum(BLOCKS) + HEAD)
HEAD_MAX = slice(HEAD_AVG.stop, HEAD_AVG.stop + HEAD)


def recipe_for(seed: int, size: int):
    from hftl.config.recipe import load_recipe

    return load_recipe(RECIPE, [*STUDY, f"train.seed={seed}", f"data.image_size={size}"])


def extract(size: int, crops: int) -> dict:
    """Pooled features of every image the 3 seeds use, per view, keyed by (split, index); cached on disk."""
    from hftl.data.cache import cache_dir
    from hftl.tasks import TASKS, prepare_data

    path = cache_dir() / "benchmarks" / f"fashion_probe_{size}px_{crops}crops.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    started = time.time()
    splits: dict[int, dict[str, list[tuple[str, int]]]] = {}
    rows: dict[tuple[str, int], dict] = {}
    for seed in SEEDS:
        recipe = recipe_for(seed, size)
        data = prepare_data(recipe)
        splits[seed] = {}
        for split in ("train", "validation", "test"):
            ds = data.encoded[split]
            keys = [_image_key(image, label) for image, label in zip(ds["image"], ds["labels"])]
            splits[seed][split] = keys
            for key, i in zip(keys, range(len(ds))):
                rows.setdefault(key, {"ds": ds, "i": i, "train": False})
                rows[key]["train"] |= split == "train"
    task = TASKS.get(recipe.task)
    model = task.build_model(recipe, data.labels).timm_model.eval().to(memory_format=torch.channels_last)
    eval_collate = task.collator(data.processor, recipe, train=False)
    train_collate = task.collator(data.processor, recipe.model_copy(update={"data": _augmented(recipe)}), train=True)
    keys = sorted(rows)
    views: dict[str, dict[tuple[str, int], torch.Tensor]] = {"image": {}, "flip": {}}
    views |= {f"crop{k}": {} for k in range(crops)}
    torch.manual_seed(0)
    for start in range(0, len(keys), 64):
        chunk = keys[start : start + 64]
        if start % 2048 == 0:
            print(f"[extract] {start}/{len(keys)} images, {time.time() - started:.0f} s", flush=True)
        batch = [rows[k]["ds"][rows[k]["i"]] for k in chunk]
        pixels = eval_collate(batch)["pixel_values"]
        for view, x in (("image", pixels), ("flip", pixels.flip(-1))):
            for key, row in zip(chunk, _pooled(model, x)):
                views[view][key] = row
        train_rows = [(k, b) for k, b in zip(chunk, batch) if rows[k]["train"]]
        for k in range(crops if train_rows else 0):
            x = train_collate([b for _, b in train_rows])["pixel_values"]
            for (key, _), row in zip(train_rows, _pooled(model, x)):
                views[f"crop{k}"][key] = row
    labels = {k: int(rows[k]["ds"][rows[k]["i"]]["labels"]) for k in keys}
    out = {"splits": splits, "views": views, "labels": labels, "seconds": time.time() - started, "images": len(keys)}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


def _image_key(image: dict, label: int) -> tuple[str, int]:
    """An image's identity across seeds (the encoded ``index`` column is the row's position in its split)."""
    import hashlib

    return hashlib.sha1(image["bytes"] or image["path"].encode()).hexdigest(), label


def _augmented(recipe):
    from hftl.config.recipe import load_recipe

    return load_recipe(RECIPE).data.model_copy(update={"image_size": recipe.data.image_size})


def _pooled(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each stage's output average-pooled, then the pre-classifier map average- and max-pooled, one row per image."""
    captured: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, a, out: captured.append(out)) for b in model.blocks]
    hooks.append(model.bn2.register_forward_hook(lambda m, a, out: captured.append(out)))
    try:
        with torch.inference_mode():
            model.forward_features(x.contiguous(memory_format=torch.channels_last))
    finally:
        for h in hooks:
            h.remove()
    pooled = [c.float().mean((2, 3)) for c in captured] + [captured[-1].float().amax((2, 3))]
    return list(torch.cat(pooled, 1).half())


@dataclass(frozen=True)
class Variant:
    name: str
    columns: Callable[[torch.Tensor], torch.Tensor]
    transform: str = "standardise"  # or "sqrt" (signed square root, then standardise)
    grid: tuple[float, ...] = ()  # empty: hftl's L2_GRID
    train_views: tuple[tuple[str, ...], ...] = (("image",),)  # training row sets, each the mean of these views
    eval_views: tuple[str, ...] = ("image",)  # features averaged over these views at validation and test


def head(x):
    return x[:, HEAD_AVG]


def stages(*which: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.cat([x[:, block_slice(i)] for i in which] + [x[:, HEAD_AVG]], 1)


FINE = tuple(10 ** (k / 4) for k in range(12, -21, -1))  # 1e3 ... 1e-5, quarter decades
FLIP = ("image", "flip")
FLIP_ROWS = (("image",), ("flip",))  # each training image twice: as is and flipped


def variants(crops: int) -> list[Variant]:
    crop_rows = FLIP_ROWS + tuple((f"crop{k}",) for k in range(crops))
    with_crops = [
        Variant(f"pre-classifier, + flip + {crops} crop train rows", head, train_views=crop_rows),
        Variant(f"stages 4-7 + pre-cl., + flip + {crops} crop rows", stages(3, 4, 5, 6), train_views=crop_rows),
    ]
    return [
        Variant("pre-classifier avg (hftl today)", head),
        Variant("  finer L2 grid (33 values)", head, grid=FINE),
        Variant("  signed sqrt", head, transform="sqrt"),
        Variant("  raw (not standardised)", head, transform="raw"),
        Variant("last stage avg (blocks.6, 320)", lambda x: x[:, block_slice(6)]),
        Variant("pre-classifier avg + max", lambda x: x[:, HEAD_AVG.start : HEAD_MAX.stop]),
        Variant("stages 5-7 + pre-classifier", stages(4, 5, 6)),
        Variant("stages 4-7 + pre-classifier", stages(3, 4, 5, 6)),
        Variant("all stages + pre-classifier", stages(*range(7))),
        Variant("pre-classifier, + flipped train rows", head, train_views=FLIP_ROWS),
        Variant(
            "pre-classifier, + flipped train rows, flip-averaged eval", head, train_views=FLIP_ROWS, eval_views=FLIP
        ),
        Variant("pre-classifier, flip-averaged (train, eval)", head, train_views=(FLIP,), eval_views=FLIP),
        Variant("stages 4-7 + pre-cl., + flipped train rows", stages(3, 4, 5, 6), train_views=FLIP_ROWS),
        Variant("stages 4-7 + pre-cl., flip-averaged", stages(3, 4, 5, 6), train_views=(FLIP,), eval_views=FLIP),
    ] + (with_crops if crops else [])


def fit(variant: Variant, features: dict, seed: int) -> dict:
    """L2 picked on validation; validation and test accuracy of that probe."""
    from hftl.models.probe import L2_GRID, fit_logistic

    views, labels, split = features["views"], features["labels"], features["splits"][seed]

    def matrix(keys, names):
        return torch.stack([torch.stack([views[n][k] for k in keys]).float() for n in names]).mean(0)

    train_keys = split["train"]
    x = torch.cat([matrix(train_keys, names) for names in variant.train_views])
    y = torch.tensor([labels[k] for k in train_keys] * (len(x) // len(train_keys)))
    x_val, x_test = matrix(split["validation"], variant.eval_views), matrix(split["test"], variant.eval_views)
    y_val = torch.tensor([labels[k] for k in split["validation"]])
    y_test = torch.tensor([labels[k] for k in split["test"]])
    x, x_val, x_test = (variant.columns(m) for m in (x, x_val, x_test))
    if variant.transform == "sqrt":
        x, x_val, x_test = (m.sign() * m.abs().sqrt() for m in (x, x_val, x_test))
    if variant.transform != "raw":
        mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
        x, x_val, x_test = ((m - mean) / std for m in (x, x_val, x_test))
    best, init, started = None, None, time.time()
    with torch.enable_grad():
        for l2 in variant.grid or L2_GRID:
            init = fit_logistic(x, y, 10, l2, init)
            accuracy = float(((x_val @ init[0].T + init[1]).argmax(-1) == y_val).float().mean())
            if best is None or accuracy > best[1]:
                best = (l2, accuracy, init)
    l2, val_acc, (w, b) = best
    test_acc = float(((x_test @ w.T + b).argmax(-1) == y_test).float().mean())
    majority = float((y_test == torch.bincount(y).argmax()).float().mean())
    return {
        "variant": variant.name,
        "seed": seed,
        "l2": l2,
        "validation": val_acc,
        "test": test_acc,
        "majority": majority,
        "train_rows": len(x),
        "dims": x.shape[1],
        "fit_s": time.time() - started,
    }


def report(results: dict) -> str:
    lines = []
    for size, block in sorted(results.items()):
        rows = block["rows"]
        names = list(dict.fromkeys(r["variant"] for r in rows))
        best = max(names, key=lambda n: statistics.mean(r["validation"] for r in rows if r["variant"] == n))
        lines += [
            f"### {size}: {block['images']} images x {block['views']} views extracted in {block['seconds']:.0f} s"
            f" ({block['load']})",
            "",
            *([block["note"], ""] if block.get("note") else []),
            "| variant | dims | train rows | L2 picked | validation | test |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for name in names:
            mine = [r for r in rows if r["variant"] == name]
            chosen = " **(best on validation)**" if name == best else ""
            lines.append(
                f"| {name.strip()}{chosen} | {mine[0]['dims']} | {mine[0]['train_rows']} | "
                f"{', '.join(format(r['l2'], '.3g') for r in mine)} | {_ms([r['validation'] for r in mine])} | "
                f"{_ms([r['test'] for r in mine])} |"
            )
        majority = statistics.mean(r["majority"] for r in rows)
        lines += ["", f"Majority-class baseline (test): {majority:.4f}.", ""]
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=112, help="input pixels (data.image_size)")
    parser.add_argument("--crops", type=int, default=0, help="random resized crops per training image")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only rewrite the markdown from the results file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results_file = OUT / "benchmark.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if not args.report:
        load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else ["?"]
        features = extract(args.size, args.crops)
        rows = []
        for variant in variants(args.crops):
            for seed in SEEDS:
                rows.append(fit(variant, features, seed))
                r = rows[-1]
                print(
                    f"{r['variant']:48s} seed {seed} L2 {r['l2']:<8.3g} val {r['validation']:.4f} "
                    f"test {r['test']:.4f} ({r['fit_s']:.1f} s)",
                    flush=True,
                )
        results[f"{args.size} px"] = {
            "rows": rows,
            "images": features["images"],
            "views": len(features["views"]),
            "seconds": features["seconds"],
            "load": f"load {' '.join(load)} at the start, {args.threads} threads",
        }
        OUT.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1) + "\n")
    md = OUT / "benchmark.md"
    notes = md.read_text().split(NOTES, 1)[1] if md.is_file() and NOTES in md.read_text() else "\n"
    header = "# Linear probe on frozen EfficientNet-Lite0 features, 1,000 Fashion-MNIST images\n\n"
    header += "Regenerate: `python benchmarks/fashion_probe.py [--size N]` (`--report`: the tables only).\n"
    header += "Mean ± sample std over 3 seeds (each draws its 1,000 training images); the L2 picked per seed.\n\n"
    md.write_text(header + report(results) + "\n" + NOTES + notes)
    print(report(results))


if __name__ == "__main__":
    sys.exit(main())

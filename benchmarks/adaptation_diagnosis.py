"""Why MNIST -> scikit-learn digits loses accuracy, measured with source labels and the *unlabeled* target only.

    python benchmarks/adaptation_diagnosis.py                  # seed 0; recipes/mnist-to-digits.yaml as is
    python benchmarks/adaptation_diagnosis.py --name without --extra data.augment.zoom=null \
        data.augment.low_resolution=null

Two parts, written to ``docs/adaptation_diagnosis.json`` (one entry per ``--name``):

1. Unlabeled statistics of the source training images, the unlabeled target images and the source rendered the
   way the target was made: mean intensity, fraction of ink, and how much of the frame the digit's bounding box
   fills (height and width). No label is read.
2. A source-only run of the recipe (``--extra`` overrides, e.g. the augmentation switched off), scored on the
   MNIST validation and test splits as is and rendered three ways: framing only (the digit's bounding box made
   to fill the frame), resolution only (the whole 28x28 frame made 8x8 with 0..16 levels), and both, which is how the
   8x8 digits were made (NIST's normalised 32x32 bitmaps, ink counted in 4x4 blocks). These are MNIST labels:
   if accuracy collapses on the rendered source as it does on the target, resolution and framing explain the
   shift, and an augmentation against them can be judged on the rendered source *validation* split without
   any target label.
   The run's target_test accuracy is printed beside it for reference, never used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "mnist-to-digits.yaml"
OUT = ROOT / "docs" / "adaptation_diagnosis.json"
INK = 128  # a pixel is ink at half intensity (the NIST bitmaps are binary)


def fill_frame(image: np.ndarray) -> np.ndarray:
    """The digit's bounding box, padded to a square around it (aspect kept), at 32x32 as NIST normalised."""
    from PIL import Image

    rows, cols = np.nonzero(image >= INK)
    if not len(rows):
        return np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR))
    box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    side = max(box.shape)
    square = np.zeros((side, side), np.uint8)
    top, left = (side - box.shape[0]) // 2, (side - box.shape[1]) // 2
    square[top : top + box.shape[0], left : left + box.shape[1]] = box
    return np.asarray(Image.fromarray(square).resize((32, 32), Image.Resampling.BILINEAR))


def to_8x8(image32: np.ndarray) -> np.ndarray:
    """Ink pixels counted in 4x4 blocks (0..16), scaled to 0..255 as hftl's ``digits`` entry stores them."""
    counts = (image32 >= INK).reshape(8, 4, 8, 4).sum(axis=(1, 3))
    return np.round(counts * (255 / 16)).astype(np.uint8)


def render(image: np.ndarray, how: str) -> np.ndarray:
    """One 28x28 MNIST digit as the target was made (``both``), or only one of the two differences."""
    from PIL import Image

    if how == "framing":
        return np.asarray(Image.fromarray(fill_frame(image)).resize((28, 28), Image.Resampling.BILINEAR))
    if how == "resolution":
        return to_8x8(np.asarray(Image.fromarray(image).resize((32, 32), Image.Resampling.BILINEAR)))
    return to_8x8(fill_frame(image))


def statistics(images: list[np.ndarray]) -> dict[str, float]:
    """Mean intensity and ink fraction (0..1), and the ink bounding box's share of the frame's height / width."""
    means, ink, heights, widths = [], [], [], []
    for image in images:
        on = image >= INK
        rows, cols = np.nonzero(on)
        means.append(image.mean() / 255)
        ink.append(on.mean())
        heights.append((rows.max() - rows.min() + 1) / image.shape[0] if len(rows) else 0.0)
        widths.append((cols.max() - cols.min() + 1) / image.shape[1] if len(cols) else 0.0)
    return {
        "images": len(images),
        "mean_intensity": round(float(np.mean(means)), 3),
        "ink_fraction": round(float(np.mean(ink)), 3),
        "box_height_fill": round(float(np.mean(heights)), 3),
        "box_width_fill": round(float(np.mean(widths)), 3),
    }


def grey(rows: Any) -> list[np.ndarray]:
    """The image column of a split as 2-D uint8 arrays."""
    return [np.asarray(image.convert("L")) for image in rows["image"]]


def accuracy(model: Any, processor: Any, images: list[np.ndarray], labels: list[int]) -> float:
    """Accuracy of the saved run on grey images, through its own processor (as evaluation does)."""
    import torch
    from PIL import Image

    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), 256):
            batch = [Image.fromarray(i).convert("RGB") for i in images[start : start + 256]]
            pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
            predicted = model(pixel_values=pixels).logits.argmax(-1).tolist()
            correct += sum(p == y for p, y in zip(predicted, labels[start : start + 256]))
    return correct / len(images)


def diagnose(recipe_path: Path, seed: int, extra: list[str], threads: int) -> dict[str, Any]:
    """Statistics, then one source-only run scored on the MNIST test split as is and rendered."""
    from hftl.config.recipe import load_recipe
    from hftl.config.registry import TASKS
    from hftl.training.adaptation import target_splits
    from hftl.training.train import run

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(
            recipe_path,
            [f"train.seed={seed}", f"train.num_threads={threads}", f"output.dir={tmp}/run", *extra],
        )
        task = TASKS.get(recipe.task)
        splits = task.load_splits(recipe)
        unlabeled, _ = target_splits(recipe, task)
        source_train = grey(splits["train"])
        stats = {
            "source train": statistics(source_train),
            "source train rendered as the target": statistics([render(i, "both") for i in source_train]),
            "target unlabeled": statistics(grey(unlabeled)),
        }
        print(json.dumps(stats, indent=1), file=sys.stderr)
        metrics = run(recipe).metrics
        model, processor = task.load_trained(Path(tmp) / "run")
        scores = {}
        for split in ("validation", "test"):
            names = splits[split].features["label"].names
            labels = [model.config.label2id[names[y]] for y in splits[split]["label"]]
            images = grey(splits[split])
            scores[split] = {"as is": accuracy(model, processor, images, labels)}
            for how in ("framing", "resolution", "both"):
                rendered = [render(i, how) for i in images]
                scores[split][f"rendered: {how}"] = accuracy(model, processor, rendered, labels)
    return {
        "seed": seed,
        "extra": extra,
        "statistics": stats,
        "source": scores,
        "run_test": metrics["test"]["accuracy"],
        "run_validation": metrics["validation"]["accuracy"],
        "target_test (reference only)": metrics["target_test"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", nargs="*", default=[], help="key=value overrides of the source-only run")
    parser.add_argument("--name", default="recipe", help="this entry's name in the results JSON")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = diagnose(args.recipe, args.seed, args.extra, args.threads)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results[args.name] = result
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

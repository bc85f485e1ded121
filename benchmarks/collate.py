"""What a training batch of images costs before the model sees it: hftl's collator against the same pipeline
normalising image by image (the collator before 2026-12-04). Side by side, one process, the same random draws.

    python benchmarks/collate.py [--image-size 64] [--batch-size 32] [--rounds 3]

Real Fashion-MNIST images (28x28 grey, the Debian package), the vision recipe's augmentation (random resized crop,
horizontal flip) and checkpoint normalisation. Checks that both give the same pixels, then prints milliseconds a
batch and the ratio; a training step of EfficientNet-Lite0 at 64 px takes about 160 ms here
(benchmarks/channels_last.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from hftl.config.recipe import validate_recipe
    from hftl.tasks import TASKS, prepare_data
    from hftl.tasks.image_classification import decode_image, train_transform

    recipe = validate_recipe(
        {
            "name": "collate",
            "task": "image-classification",
            "model": {"checkpoint": "efficientnet-lite0"},
            "data": {"source": "fashion-mnist", "image_size": args.image_size, "max_train_samples": 2000},
        },
        None,
    )
    task = TASKS.get(recipe.task)
    data = prepare_data(recipe)  # as a run loads and encodes it: the images stay undecoded until the collator
    processor, train = data.processor, data.encoded["train"]
    collator = task.collator(processor, recipe, train=True)
    rows = [dict(train[i]) for i in range(args.batch_size * args.batches)]
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    per_image = train_transform(processor, recipe.data.augment)
    flip = collator.flip

    def image_by_image(batch):
        pixels = torch.stack([per_image(decode_image(r["image"])) for r in batch])
        return torch.stack([flip(p) for p in pixels])

    def collated(batch):
        return collator(batch)["pixel_values"]

    torch.manual_seed(0)
    before = [image_by_image(b) for b in batches[:3]]
    torch.manual_seed(0)
    after = [collated(b) for b in batches[:3]]
    same = all(torch.equal(a, b) for a, b in zip(before, after))
    times: dict[str, list[float]] = {"image by image": [], "collator": []}
    for _ in range(args.rounds):  # alternated, so a change of machine speed hits both alike
        for name, fn in (("image by image", image_by_image), ("collator", collated)):
            start = time.perf_counter()
            for batch in batches:
                fn(batch)
            times[name].append((time.perf_counter() - start) / len(batches) * 1000)
    print(f"same pixels: {same}  ({args.batch_size} images a batch at {args.image_size} px, {args.batches} batches)")
    for name, values in times.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:>15}: {statistics.median(values):.1f} ms a batch (rounds: {rounds})")
    ratio = statistics.median(times["image by image"]) / statistics.median(times["collator"])
    print(f"collator {ratio:.2f}x faster")


if __name__ == "__main__":
    main()

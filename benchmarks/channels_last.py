"""Does channels-last memory format speed up CNN training and evaluation on this CPU? Side by side, one process.

    python benchmarks/channels_last.py [--image-size 64] [--batch-size 32] [--steps 30]

EfficientNet-Lite0 (the vision recipe's checkpoint, built as hftl builds it) on random images: forward + backward +
AdamW steps, then inference batches, in the default (contiguous) format and in channels-last, alternating the two
in rounds so that a change of machine speed hits both alike. Prints seconds per step and the ratio.
hftl already extracts frozen CNN features in channels-last (hftl/training/feature_extraction.py: about 2x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(image_size: int):
    from hftl.config.recipe import validate_recipe
    from hftl.tasks import TASKS

    recipe = validate_recipe(
        {
            "name": "channels-last",
            "task": "image-classification",
            "model": {"checkpoint": "efficientnet-lite0"},
            "data": {"source": "fashion-mnist", "image_size": image_size},
        },
        None,
    )
    return TASKS.get(recipe.task).build_model(recipe, [str(k) for k in range(10)])


def timed(fn, n: int) -> float:
    fn()  # warm-up (oneDNN primitives are created on first use)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build(args.image_size)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))

    def train_step(fmt):
        def step():
            model.train()
            out = model(pixel_values=x.contiguous(memory_format=fmt), labels=y)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def eval_step(fmt):
        def step():
            model.eval()
            with torch.inference_mode():
                model(pixel_values=x.contiguous(memory_format=fmt))

        return step

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            model.to(memory_format=fmt)
            times.setdefault(("train", name), []).append(timed(train_step(fmt), args.steps))
            times.setdefault(("eval", name), []).append(timed(eval_step(fmt), args.steps))
    print(f"EfficientNet-Lite0, {args.image_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print("| pass | contiguous s/step | channels-last s/step | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for kind in ("train", "eval"):
        a, b = statistics.median(times[(kind, "contiguous")]), statistics.median(times[(kind, "channels_last")])
        print(f"| {kind} | {a:.4f} | {b:.4f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()

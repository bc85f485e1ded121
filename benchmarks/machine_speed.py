"""How fast this machine trains MiniLM today: a bare PyTorch training step, no hftl, to run before a long study.

    python benchmarks/machine_speed.py [--steps 12] [--tokens 24 32 48]

The machine's speed for this workload varies from day to day (docs/studies/README.md): the sentiment-strategies
study took 58.2 / 77.4 / 64.5 / 68.1 minutes on four runs, on the same code. This times what those trials are made of,
all-MiniLM-L6-v2 forward + backward + fused AdamW under bf16 autocast on batches of 32 snippets, with nothing of
hftl's around it, and prints the median seconds a step per length. Compare with the values of earlier runs in
docs/studies/sentiment-strategies/STATUS.md: 0.34-0.43 s at 32 tokens on 2026-12-04, 14:40-15:05 UTC (five runs;
the study's trials then trained at 0.42-0.50 s a step, a slow day for it). Run it alone (``../shared/bin/heavy``):
it wants both cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per length (after 2 warm-up steps)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[24, 32, 48], help="sequence lengths")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification

    from hftl.models.pretrained import all_minilm_l6_v2

    transformers.logging.set_verbosity_error()  # the load report of the new head's weights
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(all_minilm_l6_v2(), num_labels=2).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # hftl's optimizer (training/optimizers.py)
    load = os.getloadavg()[0]
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}, load {load:.2f} before")
    for length in args.tokens:
        ids = torch.randint(1000, 20000, (args.batch_size, length))
        labels = torch.randint(0, 2, (args.batch_size,))
        seconds = []
        for step in range(args.steps + 2):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= 2:
                seconds.append(time.perf_counter() - started)
        median = statistics.median(seconds)
        print(f"batch {args.batch_size} x {length} tokens: {median:.3f} s a step (median of {args.steps})")
    print(f"load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()

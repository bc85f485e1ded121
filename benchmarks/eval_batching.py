"""Evaluation batches: sequential (each batch padded to its longest member) vs sorted by length, side by side.

    PYTHONPATH=. python benchmarks/eval_batching.py [--dataset rotten-tomatoes] [--rows 1300] [--max-length 64]

Same model (all-MiniLM-L6-v2), same rows, same batch size (64, hftl's eval default at batch 32): prints the
seconds of one forward pass over the rows in each order, the padded tokens each computes, and the ratio.
hftl's evaluation loaders use the sorted order (:class:`hftl.training.batching.LengthSortedBatchSampler`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="rotten-tomatoes")
    parser.add_argument("--rows", type=int, default=1300)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding

    from hftl.data.catalog import DATASETS
    from hftl.models.pretrained import all_minilm_l6_v2
    from hftl.training.batching import LengthSortedBatchSampler

    texts = DATASETS.get(args.dataset)()["train"]["text"][: args.rows]
    tok = AutoTokenizer.from_pretrained(all_minilm_l6_v2())
    model = AutoModel.from_pretrained(all_minilm_l6_v2()).eval()
    encoded = [tok(t, truncation=True, max_length=args.max_length) for t in texts]
    collate = DataCollatorWithPadding(tok)
    orders = {
        "sequential": [
            list(range(k, min(k + args.batch_size, len(encoded)))) for k in range(0, len(encoded), args.batch_size)
        ],
        "sorted": list(LengthSortedBatchSampler([len(e["input_ids"]) for e in encoded], args.batch_size)),
    }
    seconds: dict[str, float] = {}
    with torch.inference_mode():
        model(**collate(encoded[:8]))  # warm-up
        for name, batches in orders.items():
            padded, t0 = 0, time.perf_counter()
            for batch in batches:
                inputs = collate([encoded[i] for i in batch])
                padded += inputs["input_ids"].numel()
                model(**inputs)
            seconds[name] = time.perf_counter() - t0
            rows, threads = len(encoded), torch.get_num_threads()
            print(f"{name:>10}: {seconds[name]:6.2f} s  {padded:,} token positions  ({rows} rows, {threads} threads)")
    print(f"sorted / sequential: {seconds['sorted'] / seconds['sequential']:.2f}x the time")


if __name__ == "__main__":
    main()

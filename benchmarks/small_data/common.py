"""Shared helpers: the sentiment recipe's splits (exactly as hftl makes them) and the MiniLM body."""

import os
import subprocess

import numpy as np
import torch

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
RECIPE = os.path.join(HERE, "..", "..", "recipes", "sentiment.yaml")
SPLIT_SEED = 42  # the recipe's train.seed: fixes the by-movie train/validation/test carve
SIZES = [100, 500, 1000, 4000]
SEEDS = [0, 1, 2]


def load_data():
    """Full train / validation / test, tokenized by hftl (max_length 64, no padding)."""
    from hftl.config.recipe import load_recipe
    from hftl.tasks import prepare_data

    r = load_recipe(RECIPE, [f"train.seed={SPLIT_SEED}"])
    processor, labels, encoded, _ = prepare_data(r)
    return r, processor, labels, encoded


def subsample_indices(n_train, n, seed):
    """Row indices hftl's data.subsample(train, n, seed) keeps (first n of a seeded permutation, sorted)."""
    if n is None or n >= n_train:
        return np.arange(n_train)
    return np.sort(np.random.default_rng(seed).permutation(n_train)[:n])


def model_dir():
    from hftl.checkpoints import resolve_checkpoint

    return resolve_checkpoint("all-MiniLM-L6-v2")


def load_stamp():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def pad_batch(rows, pad_id=0):
    """rows: list of (input_ids list). Returns input_ids, attention_mask tensors (right padded)."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

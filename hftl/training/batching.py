"""Batches: length-grouped for training, in a seeded order that a resumed run replays; length-sorted for evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence


class LengthGroupedBatchSampler:
    """Batches of similar-length examples in a seeded random order, the same on every process.

    Each "megabatch" of 50 batches is sorted by length and cut into batches, so a
    batch of short reviews does not pay for long ones; batch order is then
    shuffled. The order depends only on (seed, epoch), so a resumed run replays it.
    """

    def __init__(
        self,
        lengths: Sequence[int] | None,
        batch_size: int,
        seed: int,
        group_by_length: bool = True,
        n: int | None = None,
    ) -> None:
        self.lengths = list(lengths) if lengths is not None else None
        self.n = len(self.lengths) if self.lengths is not None else int(n or 0)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.group = group_by_length and self.lengths is not None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.group:
            mega = self.batch_size * 50
            order = [
                i for k in range(0, self.n, mega) for i in sorted(order[k : k + mega], key=lambda j: -self.lengths[j])
            ]
        batches = [order[k : k + self.batch_size] for k in range(0, self.n, self.batch_size)]
        if self.group:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        return iter(batches)


class LengthSortedBatchSampler:
    """Evaluation batches of the examples sorted by length (longest first, ties in dataset order), in a fixed order.

    Scores do not depend on the order of examples, and dynamic padding then pads each batch to lengths
    close to its own: on Rotten Tomatoes snippets (5-64 tokens) a sequential batch pads to its longest
    member. Without lengths (images), batches follow the dataset order.
    """

    def __init__(self, lengths: Sequence[int] | None, batch_size: int, n: int | None = None) -> None:
        sizes = list(lengths) if lengths is not None else None
        self.n = len(sizes) if sizes is not None else int(n or 0)
        order = sorted(range(self.n), key=lambda j: -sizes[j]) if sizes is not None else list(range(self.n))
        self.batch_size = batch_size
        self.batches = [order[k : k + batch_size] for k in range(0, self.n, batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

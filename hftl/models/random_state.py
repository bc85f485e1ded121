"""Work that must not move the run's random streams, and the raw bytes of tensors for cache keys.

A cached or pre-computed step (features extracted once, a body tuned once and cached) runs inside
:func:`rng_untouched`, so a run that reuses the cache draws the same dropout masks and shuffles as one that
computes it. :func:`tensor_bytes` gives a tensor's bytes for the digests that name those caches.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Leave torch / random / numpy RNG states as they were: a cached run draws the same dropout masks."""
    import numpy as np

    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(py)
    np.random.set_state(np_state)


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's raw bytes (on the CPU, contiguous), for a digest."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")

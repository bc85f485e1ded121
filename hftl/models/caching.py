"""What hftl's caches share: work that must not move the run's random streams, key bytes, atomic files.

A cached or pre-computed step (features extracted once, a probe fitted once, a body tuned once) runs inside
:func:`rng_untouched`, so a run that reuses the cache draws the same dropout masks and shuffles as one that
computes it. :func:`tensor_bytes` gives a tensor's bytes for the digests that name those caches, and
:func:`save_tensors_atomic` writes their files so that a concurrent reader (another study worker) or a killed run
never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path

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


def save_tensors_atomic(
    path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` as one safetensors file at ``path``: written under a temporary name of this process in the
    same folder, then renamed over ``path`` (a rename within a folder is atomic), so readers see all or nothing."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    except BaseException:  # an error or an interrupt mid-write: no half file left behind (a SIGKILL still may)
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)

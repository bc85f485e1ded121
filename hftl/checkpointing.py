"""Atomic, resumable training states and the run folder's status.

Every save goes to a hidden temporary folder that is renamed into place only when
complete, so a run killed mid-save leaves at worst a ``.tmp-*`` folder that
resume ignores (and the next save removes). Weights are safetensors; the
optimizer and RNG states are loaded with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

STATE_FILE = "trainer_state.json"
STATUS_FILE = "run_status.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and ``os.replace``."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def set_status(run_dir: Path, status: str, **extra: Any) -> None:
    """Record whether the run is ``running``, ``interrupted``, ``failed`` or ``completed``."""
    write_json_atomic(run_dir / STATUS_FILE, {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished resumable states, oldest first (temporary folders never count)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def save_checkpoint(accelerator, model, optimizer, run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Save model, optimizer, per-rank RNG and loop state for ``state['step']``; rotate old ones.

    Called on every process: each writes its own RNG state, the main process the rest.
    """
    import torch
    from safetensors.torch import save_model

    root = run_dir / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".tmp-step-{state['step']:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / STATE_FILE, state)  # written last: marks the folder complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, model, optimizer, path: Path) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the loop state."""
    import torch
    from safetensors.torch import load_model

    load_model(accelerator.unwrap_model(model), str(path / "model.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    rng = path / f"rng_{accelerator.process_index}.pt"
    if rng.is_file():
        _set_rng_state(torch.load(rng, weights_only=True))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


def save_model_atomic(accelerator, model, processor, dest: Path, extra_files: dict[str, str] | None = None) -> None:
    """``save_pretrained`` model + processor into ``dest`` via a temporary folder (main process)."""
    if not accelerator.is_main_process:
        return
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(tmp, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    old = dest.with_name(f".old-{dest.name}")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def publish_model(src: Path, run_dir: Path) -> None:
    """Copy the saved model files from ``src`` into the run folder root (so ``pipeline(run_dir)`` works)."""
    for item in src.iterdir():
        if item.is_file():
            tmp = run_dir / f".tmp-{item.name}"
            shutil.copy2(item, tmp)
            os.replace(tmp, run_dir / item.name)


def _rng_state() -> dict[str, Any]:
    import torch

    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

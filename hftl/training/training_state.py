"""Atomic, resumable training states (``checkpoints/``) and the published model files of a run folder.

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
import signal
from pathlib import Path
from typing import Any

from hftl.training.run_folder import write_json_atomic

STATE_FILE = "trainer_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what a peft model saves instead of model.safetensors
_STEP_DIR = re.compile(r"^step-(\d+)$")


def kill_point(event: str, where: object) -> None:
    """TEST HOOK, inert unless ``HFTL_TEST_KILL_AT=<event>:<where>`` is set: SIGKILL this process right here.

    tests/test_reliability.py kills real runs at exact moments (mid-step, mid-evaluation, mid-save) and
    checks that ``--resume`` finishes with the same weights. ``HFTL_TEST_KILL_SIGNAL=TERM`` sends SIGTERM instead.
    """
    if os.environ.get("HFTL_TEST_KILL_AT") == f"{event}:{where}":
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("HFTL_TEST_KILL_SIGNAL", "KILL")))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished resumable states, oldest first (temporary folders never count)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def save_checkpoint(
    accelerator,
    model,
    optimizer,
    run_dir: Path,
    state: dict[str, Any],
    keep: int,
    extra_modules: dict[str, Any] | None = None,
) -> Path:
    """Save model, optimizer, per-rank RNG and loop state for ``state['step']``; rotate old ones.

    Called on every process: each writes its own RNG state, the main process the rest.
    ``extra_modules`` train beside the model (a domain classifier) and are saved as ``<name>.safetensors``.
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
        for name, module in (extra_modules or {}).items():
            save_model(accelerator.unwrap_model(module), str(tmp / f"{name}.safetensors"))
        kill_point("save", state["step"])  # test hook: dies with a half-written checkpoint
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
    kill_point("saved", state["step"])  # test hook: dies with a complete, resumable state behind
    return final


def check_checkpoint(path: Path) -> None:
    """Refuse a saved state that cannot be loaded, before resuming touches the run folder (headers only)."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    from hftl.config.errors import HftlError

    problem = None
    try:
        json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        with safe_open(str(path / "model.safetensors"), framework="pt"):
            pass
        if not zipfile.is_zipfile(path / "optimizer.pt"):
            problem = "optimizer.pt is not a saved torch state"
    except (OSError, ValueError, SafetensorError) as exc:
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if problem:
        raise HftlError(
            f"The saved state {path} cannot be loaded ({problem}). Delete that folder to resume from "
            "the one before it (if any), or set output.overwrite=true to start again."
        )


def load_checkpoint(
    accelerator, model, optimizer, path: Path, extra_modules: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns the loop state."""
    import torch
    from safetensors.torch import load_model

    load_model(accelerator.unwrap_model(model), str(path / "model.safetensors"))
    for name, module in (extra_modules or {}).items():
        load_model(accelerator.unwrap_model(module), str(path / f"{name}.safetensors"))
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
    loadable_by_timm(tmp / "config.json")
    if processor is not None:
        processor.save_pretrained(tmp)
    for name, text in (extra_files or {}).items():
        (tmp / name).write_text(text, encoding="utf-8")
    old = dest.with_name(f".old-{dest.name}")
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    kill_point("save-model", dest.name)  # test hook: dies between the two renames
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def loadable_by_timm(config_file: Path) -> None:
    """Let ``timm.create_model("local-dir:RUN")`` load a saved timm-wrapper model, as transformers already can.

    transformers writes ``"model_args": null`` for a ``TimmWrapper`` model; timm reads that key as a mapping and
    fails (``'NoneType' object has no attribute 'get'``). Without the key both libraries load the folder.
    """
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("model_type") == "timm_wrapper" and "model_args" in config and config["model_args"] is None:
        del config["model_args"]
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_saved_weights(model, folder: Path) -> None:
    """Load what :func:`save_model_atomic` wrote in ``folder`` back into ``model`` (a peft model: adapter + head)."""
    from safetensors.torch import load_file, load_model

    if (folder / ADAPTER_WEIGHTS).is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / ADAPTER_WEIGHTS))
    else:
        load_model(model, str(folder / "model.safetensors"), strict=False)


def publish_model(src: Path, run_dir: Path, model=None) -> None:
    """Copy the saved model files from ``src`` into the run folder root (so ``pipeline(run_dir)`` works).

    A peft adapter is published twice: as saved, in ``run_dir/adapter`` (its trained head included, for
    ``PeftModel.from_pretrained``), and merged into the base model in the root, so ``pipeline``, ``hftl predict``
    and the Hub need neither peft nor the base checkpoint. ``model`` is the peft model holding ``src``'s weights.
    """
    files = [item for item in src.iterdir() if item.is_file()]
    merged = run_dir / ".tmp-merged"
    if (src / ADAPTER_WEIGHTS).is_file():
        import copy

        _replace_folder(src, run_dir / "adapter")
        shutil.rmtree(merged, ignore_errors=True)
        copy.deepcopy(model).merge_and_unload().save_pretrained(merged, safe_serialization=True)
        loadable_by_timm(merged / "config.json")
        files = [f for f in files if not f.name.startswith("adapter_") and f.name != "README.md"]
        files += sorted(merged.iterdir())
    for item in files:
        tmp = run_dir / f".tmp-{item.name}"
        shutil.copy2(item, tmp)
        kill_point("publish", item.name)  # test hook: dies with the run folder half published
        os.replace(tmp, run_dir / item.name)
    shutil.rmtree(merged, ignore_errors=True)


def tidy_completed(run_dir: Path) -> None:
    """After a run completed: drop ``best/`` (published at the root) and the states ``output.keep_checkpoints`` lets go.

    Read from the run folder's own resolved recipe, so what is kept is what that run asked for. Called after the
    status says completed: a kill before this leaves a folder that resumes; a kill during it, a completed one.
    """
    import yaml

    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    keep = (recipe.get("output") or {}).get("keep_checkpoints", "none")
    shutil.rmtree(run_dir / "best", ignore_errors=True)
    states = complete_checkpoints(run_dir)
    if keep == "none":
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    elif keep == "last":
        for old in states[:-1]:
            shutil.rmtree(old, ignore_errors=True)


def _replace_folder(src: Path, dest: Path) -> None:
    """Copy folder ``src`` to ``dest`` via a temporary folder, replacing what was there."""
    tmp, old = dest.with_name(f".tmp-{dest.name}"), dest.with_name(f".old-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


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

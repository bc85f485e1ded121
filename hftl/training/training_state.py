"""Atomic, resumable training states (``checkpoints/``) and the published model files of a run folder.

Every save goes to a hidden temporary folder that is renamed into place only when
complete, so a run killed mid-save leaves at worst a ``.tmp-*`` folder that
resume ignores (and the next save removes). Inside, the state is what Accelerate's
``save_state`` writes: weights in safetensors (or FSDP shards); optimizer, GradScaler and
RNG states loaded back by accelerate with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hftl.config import log
from hftl.config.run_folder import write_json_atomic
from hftl.training.launch import bare_model

STATE_FILE = "trainer_state.json"
MODEL_WEIGHTS = "model.safetensors"  # accelerate's name for the first prepared model
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
    """Save the training state of ``state['step']`` with ``accelerator.save_state``; rotate old ones.

    Accelerate writes what each process holds: the model (gathered, or FSDP shards from every rank), the
    optimizer, the fp16 GradScaler, and every RNG (Python, NumPy, torch, CUDA) per rank. hftl wraps that in its
    own atomic write-then-rename (``trainer_state.json`` is written last: it marks the folder complete) and
    rotation. ``extra_modules`` train beside the model (a domain classifier) and are saved as
    ``<name>.safetensors``. Called on every process; ``model`` and ``optimizer`` are the prepared ones.
    """
    root = run_dir / "checkpoints"
    final = root / f"step-{state['step']:08d}"
    tmp = root / f".tmp-step-{state['step']:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _checkpoint_files(accelerator, extra_modules or {}):
        accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        kill_point("save", state["step"])  # test hook: dies with a half-written checkpoint
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


def check_resumable(run_dir: Path, resume: bool) -> None:
    """Resuming: the newest complete saved state must load (checked before any work)."""
    checkpoints = complete_checkpoints(run_dir)
    if resume and checkpoints:
        check_checkpoint(checkpoints[-1])


def check_checkpoint(path: Path) -> None:
    """Refuse a saved state that cannot be loaded, before resuming touches the run folder (headers only)."""
    from safetensors import SafetensorError, safe_open

    from hftl.config.errors import HftlError

    problem = None
    try:
        json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        if (path / "optimizer.pt").is_file():
            problem = "it was saved by an earlier hftl, whose training states this one does not read"
        elif (path / MODEL_WEIGHTS).is_file():
            with safe_open(str(path / MODEL_WEIGHTS), framework="pt"):
                pass
        elif not list(path.glob("pytorch_model_fsdp_*")):
            problem = f"no {MODEL_WEIGHTS} and no FSDP shards"
        if problem is None and not list(path.glob("random_states_*.pkl")):
            problem = "no random states (random_states_*.pkl)"
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
    """Restore what :func:`save_checkpoint` wrote (``accelerator.load_state``); returns the loop state."""
    from hftl.config.errors import HftlError

    if not (path / f"random_states_{accelerator.process_index}.pkl").is_file():
        # accelerate would go on silently with this process's RNG as it is: the run would not repeat itself
        raise HftlError(
            f"The saved state {path} has no random state for process {accelerator.process_index}: it was saved "
            "by a launch with fewer processes, or this machine does not see the folder the main process wrote "
            "(several machines need one shared filesystem for the run folder)."
        )
    with _checkpoint_files(accelerator, extra_modules or {}):
        accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text(encoding="utf-8"))


@contextmanager
def _checkpoint_files(accelerator, extra_modules: dict[str, Any]) -> Iterator[None]:
    """Within ``save_state``/``load_state``: the extra modules as ``<name>.safetensors``, the model as
    ``model.safetensors`` (accelerate would number every prepared module in the order it was prepared), and a
    ``torch.compile``d model saved and loaded as the module it wraps.

    Accelerate saves a compiled model's own ``state_dict``, every name prefixed ``_orig_mod.``: a state saved with
    ``train.compile`` (or ``--dynamo_backend``) would then not resume without it, nor the other way round. Without
    the prefix, a saved state is the same whether the run was compiled or not.
    """
    from accelerate.utils import is_compiled_module
    from safetensors.torch import load_model, save_model

    ids = {id(module): name for name, module in extra_modules.items()}

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        for m in models:
            if id(m) in ids and accelerator.is_main_process:
                save_model(bare_model(accelerator, m), str(Path(output_dir) / f"{ids[id(m)]}.safetensors"))
        if len(weights) != len(models):  # sharded (FSDP): accelerate saves the shards itself, weights stays empty
            return
        weights[:] = [
            w if not is_compiled_module(m) else m._orig_mod.state_dict()
            for m, w in zip(models, weights)
            if id(m) not in ids
        ]

    def load_hook(models: list, input_dir: str) -> None:
        for m in [m for m in models if id(m) in ids]:
            load_model(bare_model(accelerator, m), str(Path(input_dir) / f"{ids[id(m)]}.safetensors"))
            models.remove(m)
        models[:] = [m._orig_mod if is_compiled_module(m) else m for m in models]

    handles = [accelerator.register_save_state_pre_hook(save_hook), accelerator.register_load_state_pre_hook(load_hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def save_model_atomic(accelerator, model, processor, dest: Path, extra_files: dict[str, str] | None = None) -> None:
    """``save_pretrained`` model + processor into ``dest`` via a temporary folder (main process)."""
    # sharded (FSDP): every process takes part in gathering the full weights onto the main process
    state_dict = accelerator.get_state_dict(model) if is_sharded(accelerator) else None
    if not accelerator.is_main_process:
        return
    tmp = dest.with_name(f".tmp-{dest.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    with log.no_library_bars():
        bare_model(accelerator, model).save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    loadable_by_timm(tmp / "config.json")
    # A timm checkpoint's processor lives in the model's config.json (pretrained_cfg, written above); transformers'
    # TimmWrapperImageProcessor.save_pretrained writes nothing and logs that it does not
    if processor is not None and type(processor).__name__ != "TimmWrapperImageProcessor":
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


def is_sharded(accelerator) -> bool:
    """Whether the prepared model's parameters are split across processes (FSDP)."""
    return getattr(accelerator, "distributed_type", None) == "FSDP"  # a str enum


def init_optimizer_state(optimizer) -> None:
    """Create AdamW's state for every parameter now, exactly as its first step would (step 0, zero moments).

    Sharded (FSDP) states are saved and loaded by key: a state saved before a progressive group first trained
    lacks that group's entries, while loading initialises every parameter's (torch's ``_init_optim_state`` takes
    a zero step, which would also shift the bias correction). With every state present from the start, save and
    load see the same keys and the numbers stay those of lazy initialisation.
    """
    import torch
    from torch.optim.optimizer import _get_scalar_dtype

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
    if not isinstance(inner, torch.optim.AdamW):
        from hftl.config.errors import HftlError

        raise HftlError(
            f"optim.name '{type(inner).__name__.lower()}' is not supported under a sharded (FSDP) launch yet: its "
            "saved states were only proven exact with AdamW's. Use optim.name: adamw, or launch without FSDP."
        )
    for group in inner.param_groups:
        for p in group["params"]:
            state = inner.state[p]
            if state:
                continue
            on_device = group.get("capturable") or group.get("fused")
            state["step"] = (
                torch.zeros((), dtype=_get_scalar_dtype(is_fused=group.get("fused")), device=p.device)
                if on_device
                else torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu")
            )
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def load_best(accelerator, model, folder: Path, rebuild=None):
    """Put the weights saved in ``folder`` into the prepared ``model``; returns a plain model holding them (main
    process) for publishing.

    Sharded (FSDP): the main process builds a plain copy with ``rebuild()``, loads the folder into it as
    :func:`load_saved_weights` does (a peft folder too), and every process takes its shard of that copy.
    """
    unwrapped = bare_model(accelerator, model)
    if not is_sharded(accelerator):
        load_saved_weights(unwrapped, folder)
        return unwrapped
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    plain, full = None, {}
    if accelerator.is_main_process:
        plain = rebuild()
        load_saved_weights(plain, folder)
        full = plain.state_dict()
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(unwrapped, full, options=options)
    return plain


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
        with log.no_library_bars():
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

"""Launcher and process details, kept out of the loop: threads, the accelerator, signals, teardown.

The same run works under ``hftl run``, ``accelerate launch`` and ``torchrun``, on
CPU or GPUs, with one or N processes. What that takes (thread shares, torchrun
on CPU, refusing a launch that started fewer processes than asked, stopping all
ranks at the same step, ending the process group cleanly) lives here.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from hftl.config.schema import StrategySection, TrainSection
    from hftl.training.backend import Backend


class Interrupted(HftlError):
    exit_code = 130


def set_threads(requested: int | None) -> int:
    """Give each local process its share of the cores (two processes each using all cores thrash)."""
    import torch

    local = env_int("LOCAL_WORLD_SIZE", env_int("WORLD_SIZE", 1))
    n = requested or env_int("OMP_NUM_THREADS", 0) or max(1, (os.cpu_count() or 1) // max(1, local))
    torch.set_num_threads(n)
    return n


def env_int(name: str, default: int) -> int:
    """A whole-number environment variable (``default`` when unset or empty); anything else is a clear error."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HftlError(f"The environment variable {name}={raw!r} must be a whole number >= 0.") from None
    if value < 0:
        raise HftlError(f"The environment variable {name}={raw!r} must be a whole number >= 0.")
    return value


def build_accelerator(
    train: TrainSection, run_dir: Path, backend: Backend, find_unused_parameters: bool
) -> Accelerator:
    """The Accelerator for this launch: the recipe's ``train`` precision (resolved in :mod:`hftl.training.backend`),
    accumulation, trackers (logging under ``run_dir/logs``) and compilation; checked against (and logged with) the
    ``backend`` :func:`resolve_launch` planned.

    ``train.mixed_precision`` is never ``auto`` here (:func:`resolve_launch` resolved it). DDP tolerates
    unused parameters when the trainable set changes mid-run; FSDP comes from the launch's own settings.
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from hftl.training.backend import check_backend_applied

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # torchrun on CPU: without this, accelerate starts N independent single-process runs.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    use_tf32()
    fresh_accelerate_state()
    accelerator = Accelerator(
        gradient_accumulation_steps=train.grad_accum,
        mixed_precision=train.mixed_precision,
        log_with=train.trackers or None,
        project_dir=str(run_dir / "logs"),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
        # None: the launch's own --dynamo_backend (ACCELERATE_DYNAMO_BACKEND), if any
        dynamo_backend="inductor" if train.compile else None,
    )
    check_process_count(accelerator)
    check_backend_applied(backend, accelerator)
    return accelerator


def bare_model(accelerator: Any, model: Any) -> Any:
    """The prepared ``model`` without its launch wrappers (DDP, mixed-precision forward, torch.compile).

    ``accelerator.unwrap_model`` keeps a ``torch.compile`` wrapper by default, whose parameters are named
    ``_orig_mod.<name>``: the plan's names would match none of them (every parameter frozen: "element 0 of
    tensors does not require grad", issue 22) and ``strict=False`` loading would silently load nothing. Setting
    ``requires_grad``, saving and loading all go through this module; the compiled wrapper shares its
    parameters, and dynamo's guards on ``requires_grad`` and train/eval mode recompile it when the plan changes
    them.
    """
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def fresh_accelerate_state() -> None:
    """Forget the previous run's Accelerate settings in this process (the process group is kept).

    One process may run several recipes (a study worker, a notebook, the API). Accelerate keeps its settings in
    process-wide singletons: a second ``Accelerator()`` with another mixed precision is refused ("AcceleratorState
    has already been initialized"), and one with another dynamo backend or accumulation would silently keep the
    first run's. Accelerate has no public reset; ``_reset_state`` is what its own tests and notebook launcher use.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def resolve_launch(
    train: TrainSection, strategy: StrategySection, recipe_file: str | None
) -> tuple[TrainSection, Backend]:
    """The recipe's ``train`` section with ``mixed_precision`` as this launch runs it, and the launch's backend
    (or a refusal: ``strategy.adaptation`` under sharding, named in ``recipe_file``)."""
    from hftl.training.backend import refuse_under_sharding, resolve_backend

    backend = resolve_backend(train.mixed_precision, train.grad_accum)
    adaptation = strategy.adaptation.method if strategy.adaptation else None
    refuse_under_sharding(backend, adaptation, recipe_file)
    update: dict[str, Any] = {"mixed_precision": backend.mixed_precision}
    if backend.sharding != "none":  # cached features feed an unsharded head: not under FSDP
        update["cache_features"] = "never"
    return train.model_copy(update=update), backend


def use_tf32() -> None:
    """TF32 matmuls and convolutions on Ampere and newer GPUs (what transformers' Trainer calls ``tf32``)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def check_process_count(accelerator: Any) -> None:
    """Refuse to silently run fewer processes than ``accelerate launch`` was asked for.

    ``accelerate launch --num_processes N`` with ``--cpu`` (or on a machine without GPUs and no ``--multi_gpu``)
    uses its single-process launcher: ONE process starts. It exports no process count, but for N > 1 it does
    export MASTER_ADDR/MASTER_PORT, and no WORLD_SIZE (a real multi-process launch sets WORLD_SIZE): measured with
    accelerate 1.15. ``HFTL_EXPECT_PROCESSES=N`` states the expected count explicitly for any launcher.
    """
    env = os.environ
    asked = env.get("HFTL_EXPECT_PROCESSES") or env.get("WORLD_SIZE")  # torchrun and real launches set WORLD_SIZE
    if "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env and "WORLD_SIZE" not in env:
        asked = asked or "more than 1"  # accelerate's single-process launcher, asked for several processes
    if asked and asked != str(accelerator.num_processes):
        raise HftlError(
            f"{asked} processes were asked for but only {accelerator.num_processes} started. On CPU, "
            "`accelerate launch --cpu --num_processes N` runs ONE process; use `ACCELERATE_USE_CPU=true accelerate "
            "launch --multi_gpu --num_processes N --num_machines 1 --mixed_precision no --dynamo_backend no "
            "hftl/run.py RECIPE` or `torchrun --nproc_per_node N hftl/run.py RECIPE`."
        )


class StopFlag:
    """Turns SIGTERM / Ctrl-C into a request to stop after the current step (and save).

    The request is accelerate's trigger (``set_trigger`` / ``check_trigger``): a signal reaches the ranks of a
    job at slightly different steps, and the check agrees across them, so all stop at the same step.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator
        self.requested = False
        self._previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. notebooks): keep the default handlers
                pass

    def restore(self) -> None:
        """Give the signals back their previous handlers (a notebook or test runner lives on after the run)."""
        for sig, handler in self._previous.items():
            if handler is not None:  # None: installed outside Python, nothing to put back
                signal.signal(sig, handler)

    def agreed(self) -> bool:
        """Whether any process was asked to stop (one process: no collective, no device sync)."""
        if self.accelerator.num_processes == 1:
            return self.requested
        return self.accelerator.check_trigger()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.accelerator.set_trigger()


def end_processes(accelerator: Any) -> None:
    """Synchronise, collect garbage and end the process group (call after dropping DDP objects)."""
    import gc

    import torch.distributed as dist

    accelerator.wait_for_everyone()
    gc.collect()
    accelerator.end_training()  # finishes the trackers; in accelerate >= 1.x it also destroys the process group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_shared_run_dir(run_dir: Path, accelerator: Any) -> None:
    """Refuse a multi-machine launch whose machines do not all see the run folder the main process writes.

    The main process alone writes the run folder (logs, models, the end of each save), while every process writes
    its share of each training state into it (its RNG state, FSDP shards): all machines need one shared filesystem
    (NFS, a cluster filesystem) at the same path. Checked with a token the main process writes and every process
    reads back, before any training.
    """
    if accelerator.num_processes == 1:
        return
    import secrets

    import torch
    from accelerate.utils import broadcast_object_list

    token = [secrets.token_hex(8) if accelerator.is_main_process else None]
    broadcast_object_list(token)
    probe = run_dir / ".launch-check"
    if accelerator.is_main_process:
        probe.write_text(token[0], encoding="utf-8")
    accelerator.wait_for_everyone()
    try:
        seen = probe.read_text(encoding="utf-8") == token[0]
    except OSError:
        seen = False
    agreed = accelerator.reduce(torch.tensor([float(seen)], device=accelerator.device), "sum").item()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)
    if agreed < accelerator.num_processes:
        where = f"process {accelerator.process_index}" if not seen else "another process"
        raise HftlError(
            f"The run folder {run_dir} written by the main process is not visible to {where}: a launch over several "
            "machines needs the run folder on a filesystem every machine mounts at the same path (NFS or a cluster "
            "filesystem), because every process writes its share of each training state there. Set output.dir to "
            "such a path."
        )

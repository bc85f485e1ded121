"""Launcher and process details, kept out of the loop: threads, the accelerator, signals, teardown.

The same run works under ``hftl run``, ``accelerate launch`` and ``torchrun``, on
CPU or GPUs, with one or N processes. What that takes (thread shares, torchrun
on CPU, refusing a launch that started fewer processes than asked, stopping all
ranks at the same step, ending the process group cleanly) lives here.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    from accelerate import Accelerator

    from hftl.config.schema import Recipe


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


def default_mixed_precision(choice: str) -> str:
    """'auto' means bf16 on GPUs that support it, fp16 on other GPUs, and full precision on CPU."""
    if choice != "auto":
        return choice
    import torch

    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def build_accelerator(recipe: Recipe, find_unused_parameters: bool) -> Accelerator:
    """The Accelerator for this launch (DDP tolerates unused parameters when the trainable set changes mid-run)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # torchrun on CPU: without this, accelerate starts N independent single-process runs.
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe.train.grad_accum,
        mixed_precision=default_mixed_precision(recipe.train.mixed_precision),
        log_with=recipe.train.trackers or None,
        project_dir=str(recipe.run_dir / "logs"),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)],
    )
    check_process_count(accelerator)
    return accelerator


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
    """Turns SIGTERM / Ctrl-C into a request to stop after the current step (and save)."""

    def __init__(self) -> None:
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

    def agreed(self, accelerator: Any) -> bool:
        """Whether any process was asked to stop: a signal reaches the ranks of a job at slightly different steps."""
        if accelerator.num_processes == 1:
            return self.requested
        import torch

        flag = torch.tensor([float(self.requested)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True


def end_processes(accelerator: Any) -> None:
    """Synchronise, collect garbage and end the process group (call after dropping DDP objects)."""
    import gc

    import torch.distributed as dist

    accelerator.wait_for_everyone()
    gc.collect()
    accelerator.end_training()  # finishes the trackers; in accelerate >= 1.x it also destroys the process group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

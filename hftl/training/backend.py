"""What Accelerate's configuration asks of a run, and whether hftl runs it as asked.

``accelerate config`` / ``accelerate launch FLAGS`` reach the training process as
environment variables (``ACCELERATE_MIXED_PRECISION``, ``ACCELERATE_USE_FSDP``,
``FSDP_*``, ``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``),
which ``Accelerator()`` reads. This module decides, before anything is built, how
each of them meets the recipe: honoured (FSDP2, a launch's mixed precision when the
recipe says ``auto``), or refused with one message naming the setting and what works
instead. Nothing here is applied halfway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hftl.config import log
from hftl.config.errors import HftlError

PRECISIONS = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class Backend:
    """How this launch runs: the precision and where it came from, and the sharding (``ddp`` when none)."""

    mixed_precision: str
    precision_source: str
    sharding: str  # "none" (one process or DDP), "fsdp2", "fsdp1"

    def describe(self, num_processes: int) -> str:
        sharding = {"none": "DDP" if num_processes > 1 else "one process", "fsdp2": "FSDP2", "fsdp1": "FSDP1"}
        return (
            f"[launch] {num_processes} process(es), {sharding[self.sharding]}, "
            f"mixed precision {self.mixed_precision} ({self.precision_source})"
        )


def resolve_backend(recipe_precision: str, grad_accum: int, env: Mapping[str, str] | None = None) -> Backend:
    """Check the launch's settings against the recipe; the precision to use and the sharding in force."""
    env = os.environ if env is None else env
    check_deepspeed(env)
    check_grad_accum(grad_accum, env)
    precision, source = resolve_mixed_precision(recipe_precision, env)
    return Backend(precision, source, check_fsdp(env))


def resolve_mixed_precision(choice: str, env: Mapping[str, str]) -> tuple[str, str]:
    """``train.mixed_precision``: an explicit value wins; ``auto`` follows the launch, then the hardware.

    ``accelerate launch`` exports its choice (``--mixed_precision`` or the ``accelerate config`` file) as
    ACCELERATE_MIXED_PRECISION. Without one: bf16 on GPUs that support it, fp16 on other GPUs, full precision on
    CPU (bf16 autocast on CPU is faster on AVX512-BF16/AMX cores, but its accuracy is unmeasured: ask for it with
    ``train.mixed_precision: bf16``).
    """
    launched = env.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    if launched and launched not in PRECISIONS:
        raise HftlError(
            f"The launch asks for mixed precision {launched!r} (ACCELERATE_MIXED_PRECISION, from `accelerate config` "
            f"or `accelerate launch --mixed_precision`); hftl runs {', '.join(PRECISIONS)}. Choose one of them there, "
            "or set train.mixed_precision in the recipe."
        )
    if choice != "auto":
        if launched and launched != choice:
            from hftl.config.log import say

            say(
                f"[launch] train.mixed_precision: {choice} (the recipe) is used; the launch asked for {launched} "
                "(set train.mixed_precision: auto to follow the launch)"
            )
        return choice, "recipe"
    if launched:
        return launched, "accelerate launch"
    import torch

    if not torch.cuda.is_available():
        return "no", "auto: CPU"
    return ("bf16", "auto: GPU supports bf16") if torch.cuda.is_bf16_supported() else ("fp16", "auto: GPU, no bf16")


def check_grad_accum(grad_accum: int, env: Mapping[str, str]) -> None:
    """``train.grad_accum`` is the one source of truth: the plan's step counts are computed from it.

    ``accelerate launch --gradient_accumulation_steps N`` exports ACCELERATE_GRADIENT_ACCUMULATION_STEPS, which
    ``Accelerator()`` would silently prefer; a launch that agrees with the recipe is fine, one that does not is refused.
    """
    raw = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "").strip()
    if raw and raw != str(grad_accum):
        raise HftlError(
            f"The launch asks for {raw} gradient accumulation steps (ACCELERATE_GRADIENT_ACCUMULATION_STEPS, from "
            f"`accelerate launch --gradient_accumulation_steps` or the accelerate config), the recipe for "
            f"train.grad_accum={grad_accum}. The recipe decides (its plan counts optimizer steps with it): drop the "
            f"launch setting and set train.grad_accum={raw} in the recipe (or on the command line) if that is meant."
        )


def check_deepspeed(env: Mapping[str, str]) -> None:
    """DeepSpeed is refused: hftl's gating under ZeRO was never proven through hftl's own loop.

    hftl trains staged strategies by switching ``requires_grad`` and holding LR-0 groups in one optimizer built
    over every parameter that will ever train; ZeRO flattens those groups and partitions their state, and
    Accelerate's DeepSpeed path replaces hftl's optimizer step, clipping and save. A bare ZeRO-2 probe on CPU
    (deepspeed 0.19.8, gloo, 2 processes) kept an LR-0 group still and survived a ``requires_grad`` switch, but
    the whole run (resume, FSDP-like gathering for save_pretrained, the kill tests) was not (README: 'Several
    GPUs and machines').
    """
    if env.get("ACCELERATE_USE_DEEPSPEED", "").strip().lower() in ("1", "true", "yes"):
        raise HftlError(
            "The launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true: `distributed_type: DEEPSPEED` in the "
            "accelerate config, or `accelerate launch --use_deepspeed`). hftl does not run DeepSpeed: ZeRO flattens "
            "and partitions the parameter groups that hftl's strategies freeze, unfreeze and hold at LR 0, and "
            "hftl's loop, resume and saving were never proven exact under it. Use FSDP2 instead, which shards each "
            "parameter on its own and keeps every strategy exact: `accelerate launch --use_fsdp --fsdp_version 2 "
            "...` (`distributed_type: FSDP` with `fsdp_config: {fsdp_version: 2}` in the config), or plain DDP."
        )


def check_fsdp(env: Mapping[str, str]) -> str:
    """``none``, ``fsdp2`` or ``fsdp1`` for the FSDP settings of the launch; the ones hftl cannot honour are refused.

    FSDP2 shards each parameter on its own, so a wrapped unit may mix frozen and trainable parameters and the
    trainable set may change mid-run. FSDP1 flattens a unit's parameters into one tensor: it needs
    ``use_orig_params`` for that. ``cpu_ram_efficient_loading`` loads weights on rank 0 only and leaves the other
    ranks' models on the meta device, but hftl builds the model (new head, adapters) on every rank.
    """
    if env.get("ACCELERATE_USE_FSDP", "").strip().lower() not in ("1", "true", "yes"):
        return "none"
    version = env.get("FSDP_VERSION", "1").strip() or "1"
    if version not in ("1", "2"):
        raise HftlError(f"FSDP_VERSION={version!r} (fsdp_version in the accelerate config) must be 1 or 2.")
    if version == "1" and env.get("FSDP_USE_ORIG_PARAMS", "true").strip().lower() != "true":
        raise HftlError(
            "The launch asks for FSDP1 without use_orig_params (FSDP_USE_ORIG_PARAMS=false: fsdp_use_orig_params in "
            "the accelerate config). FSDP1 then flattens each wrapped unit's parameters into one tensor, so a unit "
            "cannot hold frozen and trainable parameters together, which hftl's strategies need. Use fsdp_version: 2 "
            "(`accelerate launch --use_fsdp --fsdp_version 2`), or set fsdp_use_orig_params: true."
        )
    if env.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").strip().lower() == "true":
        raise HftlError(
            "The launch asks for FSDP_CPU_RAM_EFFICIENT_LOADING=true (fsdp_cpu_ram_efficient_loading in the accelerate "
            "config): weights are then loaded on rank 0 only, but hftl builds the model (its new head, adapters) on "
            "every rank. Set fsdp_cpu_ram_efficient_loading: false."
        )
    refuse_fsdp_without_gpu(env)
    return "fsdp" + version


def refuse_fsdp_without_gpu(env: Mapping[str, str]) -> None:
    """Accelerate sets FSDP up on GPUs only: on CPU it would train DDP copies under an FSDP label."""
    import torch

    if not torch.cuda.is_available():
        raise HftlError(
            "The launch asks for FSDP (ACCELERATE_USE_FSDP=true: `distributed_type: FSDP` in the accelerate config, "
            "or `accelerate launch --use_fsdp`) on a machine without GPUs. Accelerate runs FSDP on GPUs only: on CPU "
            "its multi-process mode ignores the FSDP settings and would train unsharded DDP copies instead (torch "
            "itself can shard on CPU over gloo; Accelerate does not route it). On CPU drop --use_fsdp: DDP "
            "(`--multi_gpu` with ACCELERATE_USE_CPU=true) runs every strategy."
        )


def check_backend_applied(backend: Backend, accelerator: Any) -> None:
    """After ``Accelerator()``: the sharding hftl planned for is the one Accelerate set up (never half-applied);
    then the backend is logged in one line."""
    applied = getattr(accelerator, "distributed_type", None) == "FSDP"  # a str enum
    if applied != (backend.sharding != "none"):
        raise HftlError(
            f"hftl expected {'FSDP' if backend.sharding != 'none' else 'no FSDP'} from the launch's settings, but "
            f"Accelerate set up {getattr(accelerator, 'distributed_type', '?')}; check ACCELERATE_USE_FSDP and "
            "the accelerate config."
        )
    log.say(backend.describe(accelerator.num_processes))


def refuse_under_sharding(backend: Backend, adaptation: str | None, source_file: str | None) -> None:
    """Features that hold modules beside the model are not sharded: refuse them under FSDP."""
    if backend.sharding != "none" and adaptation:
        raise HftlError(
            f"{source_file}: strategy.adaptation: {adaptation} trains a module beside the model, which hftl does not "
            f"shard; it runs under DDP or one process, not under {backend.sharding.upper()} (drop --use_fsdp)."
        )

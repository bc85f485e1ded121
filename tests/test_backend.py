"""hftl.training.backend: how the launch's settings (accelerate config and launch flags, as environment variables)
meet the recipe. Table-driven over the environment; tests/test_sharding.py runs the same through forked launches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hftl.config.errors import HftlError
from hftl.training.backend import check_fsdp, check_grad_accum, resolve_mixed_precision


@pytest.mark.parametrize(
    "recipe, env, expected",
    [
        ("auto", {}, ("no", "auto: CPU")),  # this machine has no GPU; bf16 on CPU stays opt-in
        ("auto", {"ACCELERATE_MIXED_PRECISION": "bf16"}, ("bf16", "accelerate launch")),
        ("auto", {"ACCELERATE_MIXED_PRECISION": "NO"}, ("no", "accelerate launch")),
        ("fp16", {"ACCELERATE_MIXED_PRECISION": "bf16"}, ("fp16", "recipe")),  # explicit recipe wins
        ("bf16", {}, ("bf16", "recipe")),
    ],
)
def test_mixed_precision_explicit_recipe_then_launch_then_hardware(recipe, env, expected):
    assert resolve_mixed_precision(recipe, env) == expected


def test_unknown_launch_precision_is_refused_naming_it():
    with pytest.raises(HftlError, match=r"'fp8'.*ACCELERATE_MIXED_PRECISION"):
        resolve_mixed_precision("auto", {"ACCELERATE_MIXED_PRECISION": "fp8"})


def test_grad_accum_from_the_launch_must_agree_with_the_recipe():
    check_grad_accum(2, {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"})
    check_grad_accum(2, {})
    with pytest.raises(HftlError, match=r"4 gradient accumulation steps.*train.grad_accum=2.*train.grad_accum=4"):
        check_grad_accum(2, {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"})


@pytest.mark.parametrize(
    "env, words",
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "3"}, "FSDP_VERSION='3'"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "false"}, "use_orig_params"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "rank 0"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, "GPUs only"),  # no GPU here
    ],
)
def test_fsdp_settings_refused_with_the_setting_named(env, words):
    with pytest.raises(HftlError, match=words):
        check_fsdp(env)
    assert check_fsdp({}) == "none"


def test_each_run_in_one_process_gets_its_own_accelerate_settings(text_recipe):
    """A study worker runs trials one after another in one process: the second run's precision, dynamo backend
    and accumulation are its own (Accelerate's singletons would refuse the precision and keep the others)."""
    from hftl.config.recipe import load_recipe
    from hftl.training.launch import build_accelerator, resolve_launch

    def launched(**train: Any) -> tuple[Any, Path, Any]:
        recipe = load_recipe(text_recipe(train=train))
        resolved, backend = resolve_launch(recipe.train, recipe.strategy, recipe.source_file)
        return resolved, recipe.run_dir, backend

    first, second = launched(mixed_precision="no"), launched(mixed_precision="bf16", compile=True, grad_accum=2)
    a = build_accelerator(*first, find_unused_parameters=False)
    assert a.mixed_precision == "no" and a.gradient_accumulation_steps == 1
    b = build_accelerator(*second, find_unused_parameters=False)
    assert b.mixed_precision == "bf16" and b.gradient_accumulation_steps == 2
    assert str(b.state.dynamo_plugin.backend).lower().endswith("inductor")
    c = build_accelerator(*first, find_unused_parameters=False)
    assert c.mixed_precision == "no" and str(c.state.dynamo_plugin.backend).lower().endswith("no")

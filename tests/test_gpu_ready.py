"""The knobs that matter on GPUs, checked on CPU: gradient checkpointing changes memory, not results; token batches
pad to multiples of 8 under fp16/bf16 only; DataLoader workers stay off on CPU unless asked for."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hftl.config.recipe import load_recipe
from hftl.training.train import run


def test_gradient_checkpointing_trains_the_same_model(text_recipe, tmp_path):
    """Recomputed activations (dropout's RNG replayed) give the same weights as stored ones."""
    path = text_recipe(train={"max_steps": 4, "eval_steps": 4, "batch_size": 16}, output={"keep_checkpoints": "last"})
    runs = {}
    for flag in (False, True):
        overrides = [f"output.dir={tmp_path / str(flag)}", f"train.gradient_checkpointing={str(flag).lower()}"]
        runs[flag] = load_file(str(run(load_recipe(path, overrides)).run_dir / "model.safetensors"))
    from hftl.tasks import TASKS
    from hftl.training.build import build_model

    recipe = load_recipe(path, ["train.gradient_checkpointing=true"])
    assert build_model(recipe, TASKS.get(recipe.task), ["neg", "pos"]).is_gradient_checkpointing  # it is on
    plain, checkpointed = runs[False], runs[True]
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("precision, multiple", [("no", None), ("bf16", 8), ("fp16", 8)])
def test_token_batches_pad_to_multiples_of_8_under_half_precision(text_recipe, tiny_bert_dir, precision, multiple):
    from transformers import AutoTokenizer

    from hftl.tasks import TASKS

    recipe = load_recipe(text_recipe(train={"mixed_precision": precision}))
    collate = TASKS.get("text-classification").collator(AutoTokenizer.from_pretrained(tiny_bert_dir), recipe, True)
    batch = collate([{"input_ids": [2, 5, 6, 3], "labels": 0}, {"input_ids": [2, 5, 3], "labels": 1}])
    assert batch["input_ids"].shape[1] == (multiple or 4)


def test_loader_workers_default_to_none_on_cpu(text_recipe):
    from hftl.training.build import loader_workers

    assert loader_workers(load_recipe(text_recipe()).train.num_workers) == 0  # no GPU: they'd take the model's cores
    assert loader_workers(load_recipe(text_recipe(train={"num_workers": 3})).train.num_workers) == 3

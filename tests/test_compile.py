"""A compiled model (``train.compile``, or a launch's ``--dynamo_backend``) trains, saves and loads as the eager one.

Issue 22: under ``torch.compile`` every run failed at its first step ("element 0 of tensors does not require
grad"): the plan's trainable set was applied to the compiled wrapper, whose parameters are named
``_orig_mod.<name>``, so nothing trained. Each test here runs one recipe eagerly and compiled, and holds the
compiled run to the eager one: the same losses, the same saved weights under the same names, a model that loads.

What this covers: hftl's code path under compilation, which is the same for every backend (accelerate wraps the
prepared model in torch's ``OptimizedModule`` and hftl unwraps it for the plan, the saves and the loads). The
backend here is ``aot_eager`` (set as a launch would, ``ACCELERATE_DYNAMO_BACKEND``): dynamo traces the model and
AOTAutograd builds the forward and backward graphs with their guards (on ``requires_grad``, train/eval mode,
grad mode), as under inductor, without inductor's code generation (tens of seconds per graph on CPU). That
``train.compile: true`` asks accelerate for inductor: tests/test_backend.py. Inductor end to end on the real
model: ``hftl study studies/compile-cpu.yaml`` (docs/studies/compile-cpu/).
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hftl.config.recipe import load_recipe
from hftl.config.run_folder import read_log
from hftl.training.train import run

# Head from step 0, pooler + layer.1 from 2, layer.0 + embeddings from 4: graphs traced while a group was frozen
# must not be reused once it trains. Its last stage (steps 4-7) is full fine-tuning, every group trainable, so this
# one run also covers what a separate `full` run checked (the plan's trainable set applied under the compiled
# wrapper from step 0, eager names in the saves, a loadable model); that run was merged here (21.6 s saved).
PROGRESSIVE = {"name": "progressive", "progressive": {"unit": "step", "every": 2, "groups_per_stage": 2}}


def _train(text_recipe, monkeypatch, tmp_path, strategy: dict, backend: str | None) -> tuple:
    """One run of the toy recipe (eager when ``backend`` is None); returns its folder and whether it compiled."""
    from accelerate.utils import is_compiled_module

    import hftl.training.train as train_module

    if backend:
        monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", backend)
    else:
        monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    compiled = []
    real_prepare = train_module.prepare

    def prepare(ctx):
        real_prepare(ctx)
        compiled.append(is_compiled_module(ctx.model))

    monkeypatch.setattr(train_module, "prepare", prepare)
    out = tmp_path / (backend or "eager")
    recipe = text_recipe(
        strategy=strategy,
        train={"epochs": 1, "max_steps": 8, "eval_steps": 4, "log_steps": 1},
        output={"dir": str(out), "keep_checkpoints": "last"},
    )
    torch._dynamo.reset()  # no graph from an earlier test
    run(load_recipe(recipe))
    return out, compiled == [True]


@pytest.mark.slow
def test_a_compiled_run_trains_saves_and_loads_as_the_eager_one(text_recipe, tiny_bert_dir, monkeypatch, tmp_path):
    from transformers import AutoModelForSequenceClassification

    eager, was_compiled = _train(text_recipe, monkeypatch, tmp_path, PROGRESSIVE, None)
    assert not was_compiled
    compiled, was_compiled = _train(text_recipe, monkeypatch, tmp_path, PROGRESSIVE, "aot_eager")
    assert was_compiled

    def losses(folder):
        return [r["loss"] for r in read_log(folder) if "loss" in r]

    assert len(losses(eager)) == 8
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)

    # the published model: the eager run's names (no `_orig_mod.`) and weights; it loads with nothing missing
    want, got = load_file(eager / "model.safetensors"), load_file(compiled / "model.safetensors")
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    model, info = AutoModelForSequenceClassification.from_pretrained(str(compiled), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info

    # the resumable state of the last step (the published model is the best one, maybe from before a group
    # joined): the eager run's names and weights, so it resumes compiled or not; the late-joining embeddings
    # trained in it (a graph traced while they were frozen, reused afterwards, would leave them untouched)
    want, got = (load_file(f / "checkpoints" / "step-00000008" / "model.safetensors") for f in (eager, compiled))
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    pretrained = load_file(tiny_bert_dir / "model.safetensors")["embeddings.word_embeddings.weight"]
    assert not torch.equal(got["bert.embeddings.word_embeddings.weight"], pretrained), "the embeddings never trained"

"""The head reads what the checkpoint was trained to produce (model.pooling), and `model.pretrained: false`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from hftl.config.errors import RecipeError
from hftl.config.recipe import load_recipe
from hftl.models.pooled_model import PooledModelForSequenceClassification, pool
from hftl.models.pretrained import checkpoint_pooling
from hftl.tasks import TASKS

TEXT = TASKS.get("text-classification")


def sentence_transformers_copy(folder, tmp_path, **modes):
    """A copy of a checkpoint folder with a sentence-transformers pooling config."""
    copy = tmp_path / "st-model"
    shutil.copytree(folder, copy)
    (copy / "1_Pooling").mkdir()
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
    return copy


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        ({"pooling_mode_mean_tokens": True}, "mean"),
        ({"pooling_mode_cls_token": True}, "cls"),
        ({"pooling_mode_max_tokens": True}, "max"),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, "mean"),
        ({}, None),
    ],
)
def test_pooling_is_read_from_the_checkpoint(tiny_bert_dir, tmp_path, modes, expected):
    assert checkpoint_pooling(str(sentence_transformers_copy(tiny_bert_dir, tmp_path, **modes))) == expected
    assert checkpoint_pooling(str(tiny_bert_dir)) is None  # a plain BERT folder: its own head class


def test_pool_ignores_padding():
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(states, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(states, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(states, mask, "cls").tolist() == [[1.0, 2.0]]


def test_auto_pooling_builds_the_pooled_head_and_explicit_pooler_the_native_one(text_recipe, tiny_bert_dir, tmp_path):
    st = sentence_transformers_copy(tiny_bert_dir, tmp_path, pooling_mode_mean_tokens=True)
    model = TEXT.build_model(load_recipe(text_recipe(model={"checkpoint": str(st)})), ["neg", "pos"])
    assert isinstance(model, PooledModelForSequenceClassification) and model.config.pooling == "mean"
    assert model.body.pooler is None  # not read, so no parameter without a gradient
    native = TEXT.build_model(load_recipe(text_recipe(model={"checkpoint": str(st), "pooling": "pooler"})), ["a", "b"])
    assert type(native).__name__ == "BertForSequenceClassification"
    plain = TEXT.build_model(load_recipe(text_recipe()), ["a", "b"])
    assert type(plain).__name__ == "BertForSequenceClassification"
    cls = TEXT.build_model(load_recipe(text_recipe(model={"pooling": "cls"})), ["a", "b"])
    assert cls.config.pooling == "cls"


@pytest.mark.slow
def test_pooled_run_reloads_with_pipeline_and_remote_code(text_recipe, tiny_bert_dir, tmp_path):
    """The saved run predicts the same through hftl predict, transformers.pipeline, and (in a process without
    hftl) pipeline(..., trust_remote_code=True)."""
    from transformers import pipeline

    from hftl.cli.predict import predict
    from hftl.training.train import run

    st = sentence_transformers_copy(tiny_bert_dir, tmp_path, pooling_mode_mean_tokens=True)
    result = run(load_recipe(text_recipe(model={"checkpoint": str(st)})))
    run_dir = result.run_dir
    assert json.loads((run_dir / "config.json").read_text())["pooling"] == "mean"
    assert result.metrics["test"]["accuracy"] > 0.8  # the toy sentiment word is learnt through mean pooling
    texts = ["a very good movie", "the plot was awful", "dull and boring film", "warm fun story"]
    ours = [r[0]["label"] for r in predict(run_dir, texts)]
    assert ours == [r[0]["label"] for r in pipeline("text-classification", model=str(run_dir))(texts, top_k=1)]
    code = (
        "import json, sys\nfrom transformers import pipeline\n"
        f"p = pipeline('text-classification', model={str(run_dir)!r}, trust_remote_code=True)\n"
        f"print(json.dumps([r['label'] for r in p({texts!r})]))\n"
        "assert 'hftl' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ours
    card = (run_dir / "README.md").read_text()
    assert "mean pooling" in card


def test_pooling_is_refused_where_the_task_does_not_pool(text_recipe):
    with pytest.raises(RecipeError, match="model.pooling.*does not apply to token-classification, which uses"):
        load_recipe(
            text_recipe(task="token-classification", model={"pooling": "mean"}, data={"columns": {}, "source": "x.csv"})
        )


def test_batchnorm_eval_without_pretrained_statistics_is_refused(text_recipe):
    with pytest.raises(
        RecipeError, match=r"strategy\.batchnorm.*model\.pretrained is false.*Set strategy\.batchnorm: frozen"
    ):
        load_recipe(text_recipe(model={"pretrained": False}, strategy={"name": "full", "batchnorm": "eval"}))
    assert load_recipe(text_recipe(model={"pretrained": False}, strategy={"name": "full", "batchnorm": "frozen"}))


def test_pretrained_false_is_the_same_architecture_with_random_weights(text_recipe, tiny_bert_dir):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_bert_dir / "model.safetensors"))
    scratch = TEXT.build_model(load_recipe(text_recipe(model={"pretrained": False})), ["a", "b"])
    loaded = TEXT.build_model(load_recipe(text_recipe()), ["a", "b"])
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(loaded.bert.get_parameter(key), saved[key])
    assert scratch.bert.get_parameter(key).shape == saved[key].shape
    assert not torch.equal(scratch.bert.get_parameter(key), saved[key])

"""Feature caching (hftl.training.feature_cache) and the no-grad frozen prefix, on tiny random models.

The end-to-end tests train the tiny BERT fixture with a frozen body twice: once
normally and once on cached features, and check both give the same head.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hftl.config.recipe import load_recipe
from hftl.strategies.plan import apply_plan
from hftl.tasks import prepare_data
from hftl.training import feature_eligibility, feature_extraction, feature_key, feature_store
from hftl.training.build import plan_for
from hftl.training.train import run
from tests.tiny_models import SMALL, bert_config, distilbert_config, resnet_config, timm_config, vit_config

# head_solver adamw: these tests compare the loop on cached features with the loop without them
# (the default, an L-BFGS probe fitted first, is tested in tests/test_probe.py).
FROZEN = {
    "strategy": {"name": "feature_extraction", "feature_extraction": {"head_solver": "adamw"}},
    "optim": {"lr": 5e-3, "warmup_ratio": 0.1, "scheduler": "linear"},
    "data": {"max_train_samples": 160},
    "train": {"min_steps": 0, "epochs": 2, "batch_size": 16, "log_steps": 5, "seed": 0},
}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))


def train(text_recipe, tmp_path, capsys, name: str, **sections):
    """Run a frozen-body recipe into runs/<name>; returns (metrics, head weights, '[cache]' log lines)."""
    doc = {key: {**FROZEN.get(key, {}), **sections.get(key, {})} for key in {*FROZEN, *sections}}
    doc["output"] = {"dir": str(tmp_path / name)}
    result = run(load_recipe(text_recipe(**doc)))
    log = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[cache]")]
    weights = load_file(str(result.run_dir / "model.safetensors"))
    return result, {k: v for k, v in weights.items() if k.startswith("classifier.")}, log


@pytest.mark.slow
def test_cached_head_matches_uncached_run_then_cache_is_reused_and_invalidated(text_recipe, tmp_path, capsys):
    plain, plain_head, log = train(text_recipe, tmp_path, capsys, "plain", train={"cache_features": "never"})
    assert log == ["[cache] skipped: train.cache_features is 'never'"]

    cached, cached_head, log = train(text_recipe, tmp_path, capsys, "cached")
    assert "the head (dropout -> classifier) trains on cached inputs of 'dropout'" in log[0]
    assert [re.match(r"\[cache\] (\w+): (\w+)", line).groups() for line in log[1:]] == [
        ("train", "built"),
        ("validation", "built"),
        ("test", "built"),
    ]
    # Same batches, same dropout masks (the head's own dropout, replayed on the cache), same optimizer steps.
    for name, value in plain_head.items():
        torch.testing.assert_close(cached_head[name], value, rtol=1e-4, atol=1e-5)
    assert cached.metrics["test"]["accuracy"] == pytest.approx(plain.metrics["test"]["accuracy"])
    assert cached.metrics["validation"]["loss"] == pytest.approx(plain.metrics["validation"]["loss"], rel=1e-4)

    again, again_head, log = train(text_recipe, tmp_path, capsys, "again", optim={"lr": 1e-2})  # another recipe
    assert [line.split()[2] for line in log[1:]] == ["reused"] * 3
    assert not torch.equal(again_head["classifier.weight"], cached_head["classifier.weight"])

    _, _, log = train(text_recipe, tmp_path, capsys, "shorter", data={"max_length": 6})
    assert [line.split()[2] for line in log[1:]] == ["built"] * 3

    # The saved run is the normal full model, with the head trained on the cache: it loads with pipeline.
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(cached.run_dir))
    assert pipe("a great movie")[0]["label"] in ("pos", "neg")
    assert torch.equal(pipe.model.classifier.weight.detach(), cached_head["classifier.weight"])
    assert json.loads((cached.run_dir / "config.json").read_text())["architectures"] == [
        "BertForSequenceClassification"
    ]


@pytest.mark.parametrize(
    ("sections", "reason"),
    [
        ({"strategy": {"name": "full"}}, "body group(s) embeddings, layer.0, layer.1, pooler train during the run"),
        ({"strategy": {"name": "two_stage", "two_stage": {"head_epochs": 1}}}, "body group(s) embeddings, layer.0"),
        ({"strategy": {"name": "partial", "partial": {"freeze_groups": 2}}}, "body group(s) layer.1, pooler train"),
        ({"strategy": {"name": "partial", "partial": {"freeze_groups": 4}}}, None),
        ({"strategy": {"name": "feature_extraction"}, "train": {"cache_features": "never"}}, "'never'"),
    ],
)
def test_skip_reasons(text_recipe, sections, reason):
    recipe = load_recipe(text_recipe(**sections))
    model, plan, encoded = build(recipe)
    found = feature_eligibility.skip_reason(
        model, plan, TASK(), encoded, recipe.train.cache_features, recipe.data.augment
    )
    assert (found is None) if reason is None else (reason in found), found


def TASK():
    from hftl.tasks import TASKS

    return TASKS.get("text-classification")


def build(recipe):
    prepared = prepare_data(recipe)
    labels, encoded = prepared.labels, prepared.encoded
    model = TASK().build_model(recipe, labels)
    return model, plan_for(model, recipe, 10, 30), encoded


def test_cache_key_follows_the_frozen_weights_and_digest_follows_the_rows(text_recipe):
    recipe = load_recipe(text_recipe(strategy={"name": "feature_extraction"}))
    model, plan, encoded = build(recipe)
    processor = TASK().load_processor(recipe)
    key = feature_key.cache_key(model, plan, recipe.model, recipe.data, processor, "dropout")
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # the head does not change what is cached
    assert feature_key.cache_key(model, plan, recipe.model, recipe.data, processor, "dropout") == key
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.bias.add_(1e-3)
    assert feature_key.cache_key(model, plan, recipe.model, recipe.data, processor, "dropout") != key
    train = encoded["train"]
    assert feature_key.dataset_digest(train) == feature_key.dataset_digest(train.select(range(len(train))))
    assert feature_key.dataset_digest(train) != feature_key.dataset_digest(train.select(range(len(train) - 1)))
    assert feature_key.dataset_digest(train) == feature_key.dataset_digest(train.remove_columns("labels"))


# --------------------------------------------------------------------------- heads of other architectures
def _vit():
    from transformers import ViTForImageClassification

    config = vit_config(**SMALL, image_size=16, num_labels=3)
    return ViTForImageClassification(config), {"pixel_values": torch.randn(2, 3, 16, 16)}


def _resnet():
    from transformers import ResNetForImageClassification

    config = resnet_config(layer_type="bottleneck", num_labels=3)
    return ResNetForImageClassification(config), {"pixel_values": torch.randn(2, 3, 32, 32)}


def _timm():
    from transformers import TimmWrapperForImageClassification

    config = timm_config()
    return TimmWrapperForImageClassification(config), {"pixel_values": torch.randn(2, 3, 32, 32)}


def _bert(cls: str, dropout: float = 0.1):
    import transformers

    config = bert_config(**SMALL, vocab_size=40, num_labels=3, classifier_dropout=dropout)
    ids = torch.randint(5, 40, (2, 7))
    return getattr(transformers, cls)(config), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _distilbert():
    from transformers import DistilBertForSequenceClassification

    config = distilbert_config(vocab_size=40, dim=16, hidden_dim=20, num_labels=3)
    ids = torch.randint(5, 40, (2, 7))
    return DistilBertForSequenceClassification(config), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize(
    ("make", "chain", "shape"),
    [
        (lambda: _bert("BertForSequenceClassification"), ["dropout", "classifier"], (16,)),
        (lambda: _bert("BertForTokenClassification"), ["dropout", "classifier"], (7, 16)),
        (_vit, ["classifier"], (16,)),
        (_resnet, ["classifier"], (16, 1, 1)),
        (_timm, ["timm_model.classifier"], None),  # global pooling folded into the cached features
        (_distilbert, None, "something hftl cannot replay runs between head modules 'pre_classifier' and 'dropout'"),
    ],
)
def test_trace_head_finds_the_chain_to_replay(make, chain, shape, text_recipe):
    torch.manual_seed(0)
    model, batch = make()
    recipe = load_recipe(text_recipe(strategy={"name": "feature_extraction"}))
    plan = plan_for(model, recipe, 10, 30)
    found, reason = feature_eligibility.trace_head(model, plan, batch)
    if chain is None:
        assert found == [] and shape in reason
        return
    assert (found, reason) == (chain, None)
    # Replaying the chain on the captured input gives the model's logits.
    modules = dict(model.named_modules())
    captured = []
    modules[found[0]].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
        x = captured[0]
        for name in found:
            x = modules[name](x)
    torch.testing.assert_close(x, logits)
    if shape is not None:
        assert tuple(captured[0].shape[1:]) == shape


def test_token_level_features_drop_padding_and_collate_back():
    features = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    rows = feature_extraction._per_example(features, mask)
    assert [tuple(r.shape) for r in rows] == [(4, 3), (2, 3)]
    batch = feature_store.collate_cached([(rows[0], [0, 1, 2, -100]), (rows[1], [1, 2])])
    assert batch["features"].shape == (2, 4, 3)
    assert batch["labels"].tolist() == [[0, 1, 2, -100], [1, 2, -100, -100]]


def test_rows_round_trip_through_the_cache_file(tmp_path):
    ragged = [torch.randn(n, 3) for n in (4, 2, 5)]
    feature_store.write_rows(tmp_path / "r.safetensors", ragged)
    for a, b in zip(feature_store.read_rows(tmp_path / "r.safetensors"), ragged):
        assert torch.equal(a, b)
    fixed = [torch.randn(3) for _ in range(4)]
    feature_store.write_rows(tmp_path / "f.safetensors", fixed)
    assert torch.equal(feature_store.read_rows(tmp_path / "f.safetensors"), torch.stack(fixed))
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    assert feature_store.read_rows(tmp_path / "bad.safetensors") is None


# --------------------------------------------------------------------------- no-grad frozen prefix
def test_frozen_prefix_builds_no_autograd_graph(text_recipe):
    """Bottom groups frozen by the plan: their activations are not saved for backward, and they run in eval mode."""
    recipe = load_recipe(text_recipe(strategy={"name": "partial", "partial": {"freeze_groups": 2}}))
    model, plan, encoded = build(recipe)
    batch = TASK().collator(TASK().load_processor(recipe), recipe, train=True)([encoded["train"][i] for i in range(8)])

    def saved_bytes(step_plan) -> tuple[int, dict[str, bool]]:
        model.train()
        apply_plan(model, step_plan, 0)
        grads, total = {}, 0
        hooks = [
            model.get_submodule(name).register_forward_hook(
                lambda m, a, out, name=name: grads.__setitem__(name, out[0].requires_grad)
            )
            for name in ("bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1")
        ]

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(**batch).loss.backward()
        for h in hooks:
            h.remove()
        return total, grads

    frozen, grads = saved_bytes(plan)
    assert grads == {"bert.embeddings": False, "bert.encoder.layer.0": False, "bert.encoder.layer.1": True}
    assert not model.bert.encoder.layer[0].training and model.bert.encoder.layer[1].training
    model.requires_grad_(True)
    full, _ = saved_bytes(plan_for(model, load_recipe(text_recipe(strategy={"name": "full"})), 10, 30))
    assert frozen < 0.6 * full, (frozen, full)


def test_cache_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """save_tensors_atomic (the feature rows, the probe fit and SetFit's tuned body all use it): a new file appears
    whole with its metadata; a write that fails leaves the old file as it was and no temporary file beside it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from hftl.models import caching

    path = tmp_path / "sub" / "entry.safetensors"
    caching.save_tensors_atomic(path, {"w": torch.arange(6.0).reshape(2, 3).t()}, metadata={"version": "1"})
    assert torch.equal(load_file(str(path))["w"], torch.arange(6.0).reshape(2, 3).t())
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"version": "1"}
    before = path.read_bytes()

    def killed(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.torch.save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        caching.save_tensors_atomic(path, {"w": torch.zeros(2)})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["entry.safetensors"]

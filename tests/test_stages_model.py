"""``model.pooling: stages``: a linear head on every stage of a timm body (hftl/models/stages_model.py), on timm's
tiny ``test_efficientnet`` / ``test_resnet`` with random weights and generated stripes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hftl.cli import main as cli
from hftl.config.recipe import load_recipe
from hftl.models.layers import map_layer_groups
from hftl.models.stages_model import StagesModelForImageClassification
from hftl.tasks import TASKS
from hftl.training.train import run
from tests.test_image_classification import write_stripe_folder
from tests.tiny_models import resnet_config

TASK = TASKS.get("image-classification")
TINY_CFG = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0, "classifier": "classifier"}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def stripes_dir(tmp_path_factory) -> Path:
    """An imagefolder of 64 grey stripe images, class = folder."""
    return write_stripe_folder(tmp_path_factory.mktemp("stripes"), 64)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random timm checkpoints (timm's own test models, saved as transformers TimmWrapper folders) and a
    transformers ResNet (not timm)."""
    from transformers import ConvNextImageProcessor, ResNetModel, TimmWrapperConfig, TimmWrapperModel

    folders = {}
    for arch in ("test_efficientnet", "test_resnet"):
        torch.manual_seed(0)
        folders[arch] = tmp_path_factory.mktemp(arch)
        TimmWrapperModel(TimmWrapperConfig(architecture=arch, pretrained_cfg=TINY_CFG)).save_pretrained(folders[arch])
    folders["hf-resnet"] = tmp_path_factory.mktemp("hf-resnet")
    ResNetModel(resnet_config()).save_pretrained(folders["hf-resnet"])
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folders["hf-resnet"])
    return folders


@pytest.fixture
def recipe(tmp_path, stripes_dir, checkpoints):
    """Write a stages recipe on a tiny checkpoint; returns a function(checkpoint, **sections) -> path."""

    def write(checkpoint: str = "test_efficientnet", **sections) -> Path:
        doc = {
            "name": "stripes-stages",
            "task": "image-classification",
            "model": {"checkpoint": str(checkpoints.get(checkpoint, checkpoint)), "pooling": "stages"},
            "data": {"source": str(stripes_dir), "max_train_samples": 24, "max_eval_samples": 8},
            "strategy": {"name": "full"},
            "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
            "train": {"min_steps": 0, "max_steps": 2, "batch_size": 8, "eval_steps": 2, "seed": 0},
            "output": {"dir": str(tmp_path / "run")},
        }
        for key, value in sections.items():
            doc[key] = {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) else value
        path = tmp_path / "stages.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


def test_the_head_reads_every_stage_and_the_pre_classifier_vector(recipe):
    """EfficientNet: every block stage (timm's extra_blocks, stem left out); ResNet: timm's feature_info levels."""
    model = TASK.build_model(load_recipe(recipe()), ["horizontal", "vertical"])
    assert isinstance(model, StagesModelForImageClassification)
    timm_model = model.timm_model
    assert model.config.extra_blocks and model.config.indices == list(range(1, len(timm_model.blocks) + 1))
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():  # an independent oracle: each block's output, caught by hooks, average-pooled
        caught = []
        hooks = [b.register_forward_hook(lambda m, a, out: caught.append(out.mean((2, 3)))) for b in timm_model.blocks]
        pre = timm_model(x)  # num_classes=0: timm's pooled pre-classifier vector
        for h in hooks:
            h.remove()
        expected = torch.cat([*caught, pre], 1)
        torch.testing.assert_close(model.features(x), expected)
        torch.testing.assert_close(model(pixel_values=x).logits, model.classifier(expected))
    assert model.config.widths == [t.shape[1] for t in [*caught, pre]]
    assert model.classifier.in_features == expected.shape[1] == sum(model.config.widths)

    resnet = TASK.build_model(load_recipe(recipe("test_resnet")), ["horizontal", "vertical"])
    assert not resnet.config.extra_blocks and len(resnet.config.indices) == len(resnet.timm_model.feature_info)


def test_layer_groups_are_timms_then_the_linear_head(recipe):
    model = TASK.build_model(load_recipe(recipe()), ["horizontal", "vertical"])
    groups = map_layer_groups(model)
    assert (
        groups[0].name == "stem"
        and groups[-2].name == "neck"
        and [g.name for g in groups[1:-2]] == [f"blocks.{i}" for i in range(len(model.timm_model.blocks))]
    )
    assert groups[-1].is_head and set(groups[-1].params) == {"classifier.weight", "classifier.bias"}
    assert groups[-1].modules == ("classifier",)  # timm's parameter-free pooling stays in the body (the neck)
    assert "timm_model.global_pool" in groups[-2].modules
    assert sum(len(g.params) for g in groups) == len(list(model.parameters()))


@pytest.mark.slow
def test_a_full_run_trains_saves_and_reloads_with_identical_logits(recipe, checkpoints, stripes_dir, tmp_path):
    """Full fine-tuning trains the body and the wide head; the run reloads through AutoModel, hftl predict,
    pipeline, and (in a process without hftl) pipeline / AutoModel with trust_remote_code, all alike."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification, pipeline

    from hftl.cli.predict import predict

    result = run(load_recipe(recipe()))
    run_dir = result.run_dir
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_type"] == "hftl-stages-classifier" and (run_dir / "stages_model.py").is_file()
    start = load_file(str(checkpoints["test_efficientnet"] / "model.safetensors"))
    trained = load_file(str(run_dir / "model.safetensors"))
    assert any(not torch.equal(trained[k], v) for k, v in start.items() if "bn" not in k)  # the body trained
    assert trained["classifier.weight"].shape == (2, sum(config["widths"]))

    model = AutoModelForImageClassification.from_pretrained(str(run_dir)).eval()
    assert isinstance(model, StagesModelForImageClassification)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    files = [str(sorted((stripes_dir / label).glob("*.png"))[0]) for label in ("vertical", "horizontal")]
    ours = [r[0] for r in predict(run_dir, files)]
    assert ours == [r[0] for r in pipeline("image-classification", model=str(run_dir))(files, top_k=1)]
    code = (
        "import json, sys, torch\nfrom transformers import AutoModelForImageClassification, pipeline\n"
        f"m = AutoModelForImageClassification.from_pretrained({str(run_dir)!r}, trust_remote_code=True).eval()\n"
        "x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))\n"
        "with torch.no_grad():\n    logits = m(pixel_values=x).logits.tolist()\n"
        f"p = pipeline('image-classification', model={str(run_dir)!r}, trust_remote_code=True)\n"
        f"print(json.dumps([logits, [r[0] for r in p({files!r}, top_k=1)]]))\n"
        "assert 'hftl' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    remote_logits, remote_top = json.loads(out.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(remote_logits), logits)
    assert remote_top == ours
    card = (run_dir / "README.md").read_text()
    assert "all 5 stages" in card and "model.pooling: stages" in card

    # init_from this run: the same labels keep its head and body
    again = load_recipe(recipe(model={"checkpoint": None, "init_from": str(run_dir), "pooling": "stages"}))
    kept = TASK.build_model(again, json.loads((run_dir / "labels.json").read_text())).state_dict()
    assert all(torch.equal(kept[k], v) for k, v in trained.items())


def test_feature_extraction_caches_the_wide_vector_under_its_own_key(recipe, capsys):
    """The probe and the cache work unchanged on the concatenated features; the cache key tells the heads apart."""
    from hftl.tasks import prepare_data
    from hftl.training.build import plan_for
    from hftl.training.feature_key import cache_key

    frozen = {"name": "feature_extraction"}
    no_crop = {"augment": {"random_resized_crop": False, "hflip": False}}
    stages = load_recipe(recipe(strategy=frozen, data=no_crop, train={"max_steps": 4, "eval_steps": 4}))
    result = run(stages)
    log = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("[cache]", "[probe]"))]
    assert any("the head (classifier) trains on cached inputs of 'classifier'" in line for line in log), log
    width = json.loads((result.run_dir / "config.json").read_text())["widths"]
    assert any(f"shape ({sum(width)},)" in line for line in log), log

    own = load_recipe(recipe(model={"pooling": "auto"}, strategy=frozen, data=no_crop))
    data = prepare_data(stages)
    keys = []
    for r in (stages, own):
        model = TASK.build_model(r, data.labels)
        keys.append(cache_key(model, plan_for(model, r, 3, 6), r.model, r.data, data.processor, "classifier"))
    assert keys[0] != keys[1]


@pytest.mark.parametrize(
    ("checkpoint", "overrides", "problem"),
    [
        ("hf-resnet", [], "'stages' reads the stages of a timm model .* is a 'resnet' checkpoint"),
        ("test_efficientnet", ["model.pooling=mean"], "pools a text model's token states"),
    ],
)
def test_where_it_does_not_apply_it_is_refused_with_exit_2(recipe, tmp_path, capsys, checkpoint, overrides, problem):
    import re

    assert cli(["run", str(recipe(checkpoint)), *overrides]) == 2
    assert re.search(rf"key 'model.pooling'.*{problem}", capsys.readouterr().err)
    assert not (tmp_path / "run").exists()  # nothing written


def test_text_and_token_tasks_refuse_stages(text_recipe, capsys):
    assert cli(["validate", str(text_recipe()), "model.pooling=stages"]) == 2
    assert "a text classifier pools token states" in capsys.readouterr().err
    token = text_recipe(task="token-classification", data={"columns": {}, "source": "x.csv"})
    assert cli(["validate", str(token), "model.pooling=stages"]) == 2
    assert "does not apply to token-classification" in capsys.readouterr().err

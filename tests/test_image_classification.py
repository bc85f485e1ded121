"""The image-classification task: tiny random ViT / ResNet checkpoints on generated stripes, every strategy,
preprocessing (grey -> RGB, augmentation in training only), bad images, ``model.init_from``, the shipped
recipes, and the real EfficientNet-Lite0 on Fashion-MNIST."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from hftl.cli import main as cli
from hftl.config.errors import DataError, RecipeError
from hftl.config.recipe import load_recipe
from hftl.tasks import TASKS
from hftl.training.train import run
from tests.tiny_models import convnext_config, deit_config, resnet_config, vit_config

TASK = TASKS.get("image-classification")
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
LORA_TARGETS = {"vit": ["q_proj", "v_proj"], "resnet": ["convolution"]}


def stripes(label: str, rng: np.random.Generator, side: int = 20) -> np.ndarray:
    """A noisy grey image of horizontal or vertical stripes (learnable in a few steps, flip-invariant)."""
    width, phase = rng.integers(2, 4), rng.integers(0, 4)
    line = ((np.arange(side) + phase) // width % 2).astype(float)
    pixels = np.tile(line[:, None], (1, side)) if label == "horizontal" else np.tile(line[None, :], (side, 1))
    return (pixels * 180 + 40 + rng.normal(0, 20, (side, side))).clip(0, 255).astype(np.uint8)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_stripe_folder(root: Path, count: int, modes: tuple[str, ...] = ("L",)) -> Path:
    """An imagefolder of ``count`` stripe images under ``root``, class = folder, image i saved in mode
    ``modes[i % len(modes)]``."""
    rng = np.random.default_rng(0)
    for i in range(count):
        label = ("horizontal", "vertical")[i % 2]
        image = Image.fromarray(stripes(label, rng)).convert(modes[i % len(modes)])
        (root / label).mkdir(exist_ok=True)
        image.save(root / label / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def stripes_dir(tmp_path_factory) -> Path:
    """An imagefolder of 96 stripe images, class = folder; grey, RGB and RGBA files mixed."""
    return write_stripe_folder(tmp_path_factory.mktemp("stripes"), 96, ("L", "RGB", "RGBA"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny random 'pretrained' backbones (no head) with their image processors, as local checkpoint folders."""
    from transformers import ConvNextImageProcessor, ResNetModel, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    vit, resnet = tmp_path_factory.mktemp("tiny-vit"), tmp_path_factory.mktemp("tiny-resnet")
    ViTModel(vit_config(), add_pooling_layer=False).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    ResNetModel(resnet_config()).save_pretrained(resnet)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(resnet)
    return {"vit": vit, "resnet": resnet}


@pytest.fixture
def image_recipe(tmp_path, stripes_dir, checkpoints):
    """Write an image-classification recipe on a tiny checkpoint; returns a function(arch, **sections) -> path."""

    def write(arch: str = "resnet", **sections) -> Path:
        doc = {
            "name": f"stripes-{arch}",
            "task": "image-classification",
            "model": {"checkpoint": str(checkpoints[arch])},
            "data": {"source": str(stripes_dir), "max_train_samples": 24, "max_eval_samples": 8},
            "strategy": {"name": "full"},
            "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
            "train": {"min_steps": 0, "epochs": 2, "batch_size": 8, "log_steps": 3, "seed": 0},
            "output": {"dir": str(tmp_path / f"run-{arch}")},
        }
        for key, value in sections.items():
            doc[key] = {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) else value
        path = tmp_path / f"{arch}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


def undecoded(image: Image.Image) -> dict:
    return {"bytes": png_bytes(image), "path": None}


# --------------------------------------------------------------------------- strategies
STRATEGIES = {
    "full": {},
    "feature_extraction": {},
    "partial": {"partial": {"freeze_groups": 2}},
    "progressive": {"progressive": {"every": 1, "unit": "step"}},
    "two_stage": {"two_stage": {"head_epochs": 1}},
    "lora": {"lora": {"r": 4, "alpha": 8}},
}


@pytest.mark.parametrize("model", ["vit", "resnet"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_trains_what_its_plan_says(image_recipe, checkpoints, model, strategy):
    section = {"name": strategy, **STRATEGIES[strategy]}
    if strategy == "lora":
        section["lora"] = {**section["lora"], "target_modules": LORA_TARGETS[model]}
    result = run(load_recipe(image_recipe(model, strategy=section)))
    run_dir = result.run_dir
    assert json.loads((run_dir / "run_status.json").read_text())["status"] == "completed"
    from transformers import AutoModelForImageClassification

    start = AutoModelForImageClassification.from_pretrained(checkpoints[model], num_labels=2).state_dict()
    trained = AutoModelForImageClassification.from_pretrained(run_dir).state_dict()  # the best step's weights
    changed = {n for n, p in start.items() if not n.startswith("classifier.") and not torch.equal(trained[n], p)}
    if strategy == "lora":  # adapter + head saved as trained, and merged into the published model
        saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
        assert any("lora_A" in k for k in saved) and any("classifier" in k for k in saved), sorted(saved)
        assert changed and all(any(t in n for t in LORA_TARGETS[model]) for n in changed), changed
        return
    plan = json.loads((run_dir / "plan.json").read_text())
    best = result.metrics["best_step"]
    for group in plan["groups"]:
        if not group["is_head"]:
            trains = group["start_step"] is not None and group["start_step"] < best
            in_group = changed & set(group["params"] + group["frozen_params"])
            assert bool(in_group) == trains, (group["name"], group["start_step"], best, in_group)


@pytest.mark.parametrize("family", ["convnext", "deit"])
def test_more_checkpoint_families_train_and_use_their_processor(image_recipe, tmp_path, family):
    """ConvNeXt (shortest-edge resize) and DeiT (resize 36 then centre crop 32), two steps each."""
    from transformers import ConvNextImageProcessor, ConvNextModel, DeiTImageProcessor, DeiTModel

    torch.manual_seed(0)
    folder = tmp_path / family
    if family == "convnext":
        ConvNextModel(convnext_config()).save_pretrained(folder)
        ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(folder)
    else:
        DeiTModel(deit_config(), add_pooling_layer=False).save_pretrained(folder)
        DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(
            folder
        )
    recipe = load_recipe(image_recipe(model={"checkpoint": str(folder)}, train={"max_steps": 2}))
    features = [{"image": undecoded(Image.new("L", (50, 40))), "labels": 0, "split": "train", "index": 0}]
    processor = TASK.load_processor(recipe)
    for train in (True, False):
        assert TASK.collator(processor, recipe, train=train)(features)["pixel_values"].shape == (1, 3, 32, 32)
    result = run(recipe)
    assert json.loads((result.run_dir / "run_status.json").read_text())["status"] == "completed"
    assert json.loads((result.run_dir / "config.json").read_text())["id2label"] == {"0": "horizontal", "1": "vertical"}


# --------------------------------------------------------------------------- preprocessing
def test_grey_rgba_and_palette_images_become_three_channels(image_recipe, checkpoints):
    recipe = load_recipe(image_recipe("resnet"))
    processor = TASK.load_processor(recipe)
    grey = Image.fromarray(stripes("vertical", np.random.default_rng(1)))
    features = [
        {"image": undecoded(grey.convert(mode)), "labels": 1, "split": "train", "index": i}
        for i, mode in enumerate(["L", "RGBA", "P", "RGB"])
    ]
    for train in (True, False):
        batch = TASK.collator(processor, recipe, train=train)(features)
        assert batch["pixel_values"].shape == (4, 3, 32, 32)
        assert batch["labels"].tolist() == [1, 1, 1, 1]
    # a grey image gives the same values on all three channels
    pixels = TASK.collator(processor, recipe, train=False)(features[:1])["pixel_values"][0]
    assert torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[1], pixels[2])


def test_augmentation_only_in_training_and_configurable(image_recipe):
    recipe = load_recipe(image_recipe("resnet", data={"augment": {"min_scale": 0.3}}))
    processor = TASK.load_processor(recipe)
    rng = np.random.default_rng(2)
    features = [
        {"image": undecoded(Image.fromarray(stripes("horizontal", rng))), "labels": 0, "split": "train", "index": i}
        for i in range(6)
    ]
    train, evaluate = TASK.collator(processor, recipe, train=True), TASK.collator(processor, recipe, train=False)
    torch.manual_seed(0)
    first, second = train(features)["pixel_values"], train(features)["pixel_values"]
    assert not torch.equal(first, second)  # random crops and flips differ from call to call
    expected = processor(
        images=[Image.open(io.BytesIO(f["image"]["bytes"])).convert("RGB") for f in features], return_tensors="pt"
    )["pixel_values"]
    assert torch.equal(evaluate(features)["pixel_values"], expected)  # evaluation: exactly the processor
    assert torch.equal(evaluate(features)["pixel_values"], expected)

    off = load_recipe(image_recipe("resnet", data={"augment": {"random_resized_crop": False, "hflip": False}}))
    assert torch.equal(TASK.collator(processor, off, train=True)(features)["pixel_values"], expected)

    flip_only = load_recipe(image_recipe("resnet", data={"augment": {"random_resized_crop": False}}))
    torch.manual_seed(0)
    flipped = TASK.collator(processor, flip_only, train=True)(features)["pixel_values"]
    mirrored = [torch.equal(got, want.flip(-1)) and not torch.equal(got, want) for got, want in zip(flipped, expected)]
    assert all(m or torch.equal(got, want) for m, got, want in zip(mirrored, flipped, expected))
    assert 0 < sum(mirrored) < len(features), mirrored  # about half, the others as evaluated


def test_image_size_resizes_cnn_inputs_but_not_vit(image_recipe):
    recipe = load_recipe(image_recipe("resnet", data={"image_size": 24}))
    processor = TASK.load_processor(recipe)
    features = [{"image": undecoded(Image.new("L", (20, 20))), "labels": 0, "split": "train", "index": 0}]
    for train in (True, False):
        assert TASK.collator(processor, recipe, train=train)(features)["pixel_values"].shape == (1, 3, 24, 24)
    TASK.build_model(recipe, ["a", "b"])  # a CNN takes any size

    vit = load_recipe(image_recipe("vit", data={"image_size": 24}))
    with pytest.raises(RecipeError, match=r"data\.image_size.*does not suit this checkpoint"):
        TASK.build_model(vit, ["a", "b"])


def test_a_cnn_trains_in_channels_last_on_cpu_and_saves_the_same_values(image_recipe, monkeypatch):
    """A CNN on CPU trains in oneDNN's channels-last layout (benchmarks/channels_last.py: about 1.7x faster a step); the
    model it publishes loads as an ordinary checkpoint, with the weights the last training step left."""
    from transformers import AutoModelForImageClassification

    import hftl.training.train as train_module

    layouts, weights, step = [], {}, train_module.optimizer_step

    def spy(ctx):  # every step: the layout of the prepared model's 4-d (convolution) weights
        step(ctx)
        layouts.append(
            {p.is_contiguous(memory_format=torch.channels_last) for p in ctx.model.parameters() if p.dim() == 4}
        )
        weights.update({n: p.detach().clone() for n, p in ctx.model.named_parameters()})

    monkeypatch.setattr(train_module, "optimizer_step", spy)
    path = image_recipe("resnet", train={"epochs": 1, "eval_steps": 100}, strategy={"name": "full"})
    run_dir = run(load_recipe(path)).run_dir
    assert layouts and all(seen == {True} for seen in layouts), layouts
    published = AutoModelForImageClassification.from_pretrained(run_dir).state_dict()
    assert all(torch.equal(published[n], w) for n, w in weights.items())  # the last step is the best (one eval)


# --------------------------------------------------------------------------- bad images
@pytest.fixture
def bad_images(tmp_path) -> datasets.DatasetDict:
    """6 image files of which #2 is truncated, #4 is text named .png, #5 a truncated JPEG (header intact)."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        data = png_bytes(Image.fromarray(stripes("vertical", rng)))
        if i == 2:
            data = data[: len(data) // 2]
        if i == 4:
            data = b"label,text\n1,not an image\n"
        if i == 5:
            path = tmp_path / "5.jpg"
            data = png_bytes(Image.fromarray(stripes("vertical", rng, side=64)), "JPEG")[:400]
        path.write_bytes(data)
        paths.append(str(path))
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"file": paths, "label": ["v"] * 6})})


def test_bad_images_are_reported_with_split_and_index(image_recipe, bad_images):
    recipe = load_recipe(image_recipe("resnet", data={"columns": {"image": "file"}}))
    processor = TASK.load_processor(recipe)
    with pytest.raises(DataError, match=r"train example 2: .*2\.png is not a readable image.*on_error: skip"):
        TASK.encode(bad_images, processor, recipe, ["v", "h"])


def test_bad_images_are_skipped_and_counted(image_recipe, bad_images):
    recipe = load_recipe(image_recipe("resnet", data={"columns": {"image": "file"}, "on_error": "skip"}))
    processor = TASK.load_processor(recipe)
    encoded, reports = TASK.encode(bad_images, processor, recipe, ["v", "h"])
    assert encoded["train"]["index"] == [0, 1, 3, 5]
    assert len(reports) == 1 and reports[0].startswith("skipped 2 bad train example(s)"), reports
    # the truncated JPEG passes the header check; decoding its batch names it
    strict = load_recipe(image_recipe("resnet", data={"columns": {"image": "file"}}))
    with pytest.raises(DataError, match=r"train example 5: cannot decode the image"):
        TASK.collator(processor, strict, train=False)([encoded["train"][i] for i in range(4)])
    with pytest.warns(UserWarning, match="skipped 1 bad train example"):
        batch = TASK.collator(processor, recipe, train=False)([encoded["train"][i] for i in range(4)])
    assert batch["pixel_values"].shape[0] == 3


def test_a_column_without_images_is_a_clear_error(image_recipe):
    recipe = load_recipe(image_recipe("resnet", data={"columns": {"image": "n"}}))
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"n": [1, 2], "label": ["a", "b"]})})
    with pytest.raises(DataError, match="column 'n' holds .*not images or image paths"):
        TASK.encode(splits, TASK.load_processor(recipe), recipe, ["a", "b"])


# --------------------------------------------------------------------------- learning, predict, init_from
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, stripes_dir, checkpoints) -> Path:
    """A completed run of the tiny ResNet on the stripes (horizontal / vertical)."""
    folder = tmp_path_factory.mktemp("trained")
    doc = {
        "name": "stripes",
        "task": "image-classification",
        "model": {"checkpoint": str(checkpoints["resnet"])},
        "data": {"source": str(stripes_dir)},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "train": {"min_steps": 0, "epochs": 6, "batch_size": 16, "seed": 0},
        "output": {"dir": str(folder / "run")},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(doc))
    result = run(load_recipe(folder / "recipe.yaml"))
    assert result.metrics["test"]["accuracy"] >= 0.9, result.metrics
    return result.run_dir


def test_predict_cli_on_images(trained_run, stripes_dir, capsys):
    vertical, horizontal = (sorted((stripes_dir / label).glob("*.png"))[0] for label in ("vertical", "horizontal"))
    assert cli(["predict", str(trained_run), "--image", str(vertical), "--image", str(horizontal)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1].split()[0] for line in lines] == ["vertical", "horizontal"], lines


def test_init_from_keeps_the_body_and_renews_a_head_for_other_labels(image_recipe, trained_run):
    before = load_file(trained_run / "model.safetensors")
    head = [k for k in before if k.startswith("classifier.")]
    assert head
    same = load_recipe(image_recipe("resnet", model={"checkpoint": None, "init_from": str(trained_run)}))
    kept = TASK.build_model(same, ["horizontal", "vertical"]).state_dict()
    assert all(torch.equal(kept[k], before[k]) for k in before)  # same labels: the trained head is kept

    # same number of labels, other meaning (order): the head is new, the body is the trained one
    renewed = TASK.build_model(same, ["vertical", "horizontal"]).state_dict()
    assert all(torch.equal(renewed[k], before[k]) for k in before if k not in head)
    assert not any(torch.equal(renewed[k], before[k]) for k in head if k.endswith("weight"))
    assert TASK.build_model(same, ["a", "b", "c"]).classifier[-1].out_features == 3
    assert TASK.load_processor(same).size["shortest_edge"] == 32  # the run's own processor


def test_init_from_refuses_a_folder_that_is_not_a_completed_run(image_recipe, tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "run_status.json").write_text(json.dumps({"status": "running"}))
    for folder, problem in (
        (tmp_path / "half", "is not a completed hftl run .status: running"),
        (tmp_path / "missing", "folder does not exist"),
    ):
        recipe = load_recipe(image_recipe("resnet", model={"checkpoint": None, "init_from": str(folder)}))
        with pytest.raises(RecipeError, match=f"model.init_from.*{problem}"):
            TASK.build_model(recipe, ["a", "b"])


def test_needs_a_checkpoint_or_init_from(image_recipe):
    with pytest.raises(RecipeError, match="model.checkpoint.*is required for image-classification"):
        load_recipe(image_recipe("resnet", model={"checkpoint": None}))


# --------------------------------------------------------------------------- recipes and real checkpoints
def test_efficientnet_lite0_export_is_a_working_imagenet_classifier():
    import skimage.data
    from transformers import pipeline

    from hftl.models.pretrained import resolve_checkpoint

    folder = Path(resolve_checkpoint("efficientnet-lite0"))
    config = json.loads((folder / "config.json").read_text())
    assert "model_args" not in config and config["pretrained_cfg"]["mean"] == [0.5] * 3
    assert config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    top = pipeline("image-classification", model=str(folder))(Image.fromarray(skimage.data.chelsea()), top_k=1)[0]
    assert top["label"] in {"tiger cat", "tabby, tabby cat", "Egyptian cat"}, top


def test_efficientnet_recipe_feature_extraction_on_fashion_mnist(tmp_path, capsys):
    """The offline recipe's checkpoint and data, as a linear probe: 200 images, 64 px, 30 steps."""
    overrides = [
        "strategy.name=feature_extraction",
        "data.max_train_samples=200",
        "data.max_eval_samples=200",
        "data.image_size=64",
        "data.augment.random_resized_crop=false",
        "data.augment.hflip=false",
        "train.max_steps=30",
        "train.batch_size=20",
        "train.eval_steps=30",
        "optim.head_lr=0.01",
        "optim.warmup_ratio=0",
        f"output.dir={tmp_path / 'run'}",
    ]
    result = run(load_recipe(RECIPES / "fashion-mnist-efficientnet.yaml", overrides))
    assert result.metrics["test"]["accuracy"] > 0.35, result.metrics  # chance is 0.1

    from hftl.data.catalog import FASHION_MNIST_CLASSES
    from hftl.data.sources import load_source

    sample = load_source("fashion-mnist")["test"][0]
    sample["image"].save(tmp_path / "item.png")
    assert cli(["predict", str(result.run_dir), "--image", str(tmp_path / "item.png"), "--top-k", "3"]) == 0
    shown = capsys.readouterr().out.strip().split("\t")[1]
    assert any(name in shown for name in FASHION_MNIST_CLASSES), shown


def test_multistage_recipes_run_a_few_steps(tmp_path):
    """Pre-train on Fashion-MNIST, transfer to MNIST digits with model.init_from, and the scratch baseline."""
    small = ["data.max_train_samples=64", "data.max_eval_samples=32", "train.max_steps=4", "train.eval_steps=4"]
    pre = run(load_recipe(RECIPES / "fashion-mnist-pretrain.yaml", [*small, f"output.dir={tmp_path / 'pre'}"]))
    transfer = run(
        load_recipe(
            RECIPES / "mnist-transfer.yaml",
            [*small, f"model.init_from={pre.run_dir}", f"output.dir={tmp_path / 'transfer'}"],
        )
    )
    scratch = run(load_recipe(RECIPES / "mnist-scratch.yaml", [*small, f"output.dir={tmp_path / 'scratch'}"]))
    digits = [str(d) for d in range(10)]
    for result, labels in ((pre, None), (transfer, digits), (scratch, digits)):
        assert json.loads((result.run_dir / "run_status.json").read_text())["status"] == "completed"
        if labels:
            assert json.loads((result.run_dir / "labels.json").read_text()) == labels
    assert load_recipe(RECIPES / "mnist-transfer.yaml").model.init_from == "runs/fashion-mnist-pretrain"
    assert load_recipe(RECIPES / "fashion-mnist-pretrain.yaml").run_dir.as_posix() == "runs/fashion-mnist-pretrain"


def test_a_timm_checkpoint_gets_its_pil_processor_without_the_torchvision_fallback_warning(
    image_recipe, checkpoints, tmp_path, monkeypatch
):
    """transformers has only a PIL image processor for timm models: hftl asks for it by name, so transformers does not
    log "Requested torchvision backend is not available" (torchvision is installed); other models keep
    transformers' own choice."""
    from transformers.models.auto import image_processing_auto

    from hftl.models.pretrained import image_processor_backend

    assert image_processor_backend("efficientnet-lite0") == {"backend": "pil"}  # the real timm checkpoint, offline
    assert image_processor_backend(str(checkpoints["vit"])) == {}
    assert image_processor_backend(str(tmp_path / "no-such-folder")) == {}

    warned: list[str] = []
    # warning_once would stay silent after a first call: record every call instead
    monkeypatch.setattr(image_processing_auto.logger, "warning_once", warned.append)
    recipe = load_recipe(image_recipe(model={"checkpoint": "efficientnet-lite0"}))
    processor = TASKS.get("image-classification").load_processor(recipe)
    assert type(processor).__name__ == "TimmWrapperImageProcessor"
    assert not [w for w in warned if "backend" in w], warned


def test_a_timm_model_is_saved_without_transformers_saying_its_processor_was_not(tmp_path, monkeypatch):
    """A timm checkpoint's processor lives in the model's config.json: hftl does not call the wrapper processor's
    save_pretrained (which writes nothing and logs so), and the saved folder loads its processor all the same."""
    from accelerate import Accelerator
    from transformers import AutoImageProcessor, TimmWrapperForImageClassification
    from transformers.models.timm_wrapper import image_processing_timm_wrapper

    from hftl.training.training_state import save_model_atomic
    from tests.tiny_models import timm_config

    model = TimmWrapperForImageClassification(timm_config())
    cfg = {"input_size": [3, 40, 40], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 1.0}
    model.config.pretrained_cfg = cfg  # as fit_image_size records data.image_size
    processor = image_processing_timm_wrapper.TimmWrapperImageProcessor(pretrained_cfg=cfg, architecture="x")
    warned: list[str] = []
    monkeypatch.setattr(image_processing_timm_wrapper.logger, "warning_once", warned.append)
    save_model_atomic(Accelerator(cpu=True), model, processor, tmp_path / "saved")
    assert not warned
    reloaded = AutoImageProcessor.from_pretrained(tmp_path / "saved")
    assert type(reloaded).__name__ == "TimmWrapperImageProcessor"
    assert tuple(reloaded.data_config["input_size"]) == (3, 40, 40)

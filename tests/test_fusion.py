"""Image + text fusion: the model, per-tower plans, save / reload, recipe checks, and the evidence that
fusing two towers solves a task neither tower can solve alone."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from hftl.config.errors import DataError, RecipeError
from hftl.config.recipe import load_recipe, validate_recipe
from hftl.models.fusion_model import FusionConfig, FusionModel, FusionProcessor, load_fusion
from hftl.tasks import TASKS
from hftl.tasks.fusion import NUMBER_WORDS, digits_plus
from tests.tiny_models import bert_config, resnet_config, vit_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TEXT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "plus", *NUMBER_WORDS]
N_PRETRAIN = 2500  # digits-plus rows used to pre-train the vision tower; the other 2,500 make the fusion data


# --------------------------------------------------------------------------- tiny towers
def tiny_text_tower():
    from transformers import BertModel

    return BertModel(bert_config(vocab_size=len(TEXT_VOCAB), max_position_embeddings=16))


def tiny_resnet_config(**extra):
    return resnet_config(embedding_size=16, hidden_sizes=[16, 32], **extra)  # wider: it learns to read digits


def tiny_vision_tower(kind: str):
    from transformers import ResNetModel, ViTModel

    if kind == "vit":
        return ViTModel(vit_config(image_size=28, patch_size=7))
    return ResNetModel(tiny_resnet_config())


def image_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def fusion_model(kind: str = "vit", method: str = "concat", labels=tuple("0123456789")) -> FusionModel:
    towers = {
        "vision": {"checkpoint": f"tiny-{kind}", "revision": None},
        "text": {"checkpoint": "tiny-bert", "revision": None},
    }
    vision, text = tiny_vision_tower(kind), tiny_text_tower()
    towers["vision"]["config"], towers["text"]["config"] = vision.config.to_dict(), text.config.to_dict()
    return FusionModel(vision, text, FusionConfig(towers=towers, labels=list(labels), method=method, hidden_size=16))


@pytest.fixture(scope="session")
def number_bert_dir(tmp_path_factory) -> Path:
    """A random tiny BERT whose vocab holds 'plus' and the number words."""
    from transformers import BertTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("number-bert")
    (folder / "vocab.txt").write_text("\n".join(TEXT_VOCAB) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    tiny_text_tower().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def digits_plus_data():
    """digits-plus, with a seeded half of its rows set apart for pre-training the vision tower."""
    ds = digits_plus()["train"]
    order = np.random.default_rng(0).permutation(len(ds))
    return ds.select(np.sort(order[:N_PRETRAIN])), ds.select(np.sort(order[N_PRETRAIN:]))


@pytest.fixture(scope="session")
def digit_resnet_dir(tmp_path_factory, digits_plus_data) -> Path:
    """A tiny ResNet pre-trained to read digits (source task) on rows the fusion task never sees."""
    from transformers import ResNetForImageClassification

    pretrain, _ = digits_plus_data
    torch.manual_seed(0)
    model = ResNetForImageClassification(tiny_resnet_config(num_labels=10))
    pixels = FusionProcessor(image_processor(), None).images(list(pretrain["image"]))
    digits = torch.tensor(pretrain["digit"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(3):
        for batch in torch.randperm(len(digits)).split(64):
            loss = model(pixel_values=pixels[batch], labels=digits[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    folder = tmp_path_factory.mktemp("digit-resnet")
    model.resnet.save_pretrained(folder)
    image_processor().save_pretrained(folder)
    return folder


def fusion_recipe(tmp_path: Path, name: str, vision: Path | str, text: Path | str, source: Path | str, **sections):
    doc = {
        "name": name,
        "task": "fusion",
        "model": {
            "towers": {"vision": {"checkpoint": str(vision)}, "text": {"checkpoint": str(text)}},
            "fusion": {"method": "concat", "hidden_size": 128, "dropout": 0.0},
        },
        "data": {"source": str(source), "max_length": 8},
        "strategy": {"name": "full", "towers": {"vision": {"name": "feature_extraction"}}},
        "optim": {"lr": 3e-3, "head_lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant", "weight_decay": 0.0},
        "train": {"min_steps": 0, "epochs": 4, "batch_size": 32, "log_steps": 10, "seed": 0},
        "output": {"dir": str(tmp_path / name)},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    return validate_recipe(doc, str(tmp_path / f"{name}.yaml"))


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize("method", ["concat", "gated"])
def test_every_parameter_gets_a_gradient(kind, method):
    """Pooled features of both towers reach the loss, and no parameter is left unused (DDP would hang on one)."""
    model = fusion_model(kind, method)
    out = model(
        pixel_values=torch.randn(4, 3, 28, 28),
        input_ids=torch.randint(5, len(TEXT_VOCAB), (4, 3)),
        attention_mask=torch.ones(4, 3, dtype=torch.long),
        labels=torch.tensor([0, 1, 2, 3]),
    )
    assert out.logits.shape == (4, 10) and out.loss.ndim == 0
    out.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []
    assert not any(name.startswith("text.pooler") for name, _ in model.named_parameters())


def test_text_is_mean_pooled_over_real_tokens_only():
    model = fusion_model().eval()
    pixels, ids = torch.randn(1, 3, 28, 28), torch.tensor([[2, 5, 8, 3]])
    alone = model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones(1, 4, dtype=torch.long)).logits
    padded = model(
        pixel_values=pixels,
        input_ids=torch.tensor([[2, 5, 8, 3, 0, 0]]),
        attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0]]),
    ).logits
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-4)


def test_save_and_reload_through_hftls_own_loader(tmp_path, number_bert_dir):
    from transformers import AutoTokenizer

    model = fusion_model("resnet", "gated", labels=[f"class-{i}" for i in range(10)]).eval()
    processor = FusionProcessor(image_processor(), AutoTokenizer.from_pretrained(number_bert_dir))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["labels"][3] == config["id2label"]["3"] == "class-3"
    assert config["towers"]["vision"]["checkpoint"] == "tiny-resnet" and config["method"] == "gated"

    again, processor_again = load_fusion(tmp_path)
    from PIL import Image

    batch = processor_again([Image.new("L", (28, 28), 200)], ["plus seven"])
    assert processor_again.tokenizer.convert_ids_to_tokens(batch["input_ids"][0]) == ["[CLS]", "plus", "seven", "[SEP]"]
    with torch.inference_mode():
        torch.testing.assert_close(again(**batch).logits, model(**batch).logits)
    assert again.fusion_config.labels == model.fusion_config.labels and again.fusion_config.method == "gated"
    assert again.fusion_config.towers["vision"]["config"]["hidden_sizes"] == [16, 32]


# --------------------------------------------------------------------------- planning
def test_each_tower_gets_its_own_strategy(tmp_path, number_bert_dir):
    from hftl.training.build import plan_for

    recipe = fusion_recipe(
        tmp_path,
        "plan",
        "unused",
        number_bert_dir,
        "unused",
        strategy={
            "towers": {"vision": {"name": "feature_extraction"}, "text": {"name": "full", "llrd": {"decay": 0.5}}}
        },
        optim={"lr": 1e-3, "head_lr": 1e-2},
    )
    model = fusion_model("vit")
    plan = plan_for(model, recipe, steps_per_epoch=10, total_steps=30)
    by_name = {g.name: g for g in plan.groups}
    assert list(by_name) == [
        "vision.embeddings",
        "vision.layer.0",
        "vision.layer.1",
        "vision.neck",
        "text.embeddings",
        "text.layer.0",
        "text.layer.1",
        "head",
    ]
    assert [g.depth for g in plan.groups] == list(range(8))
    assert all(by_name[n].start_step is None for n in by_name if n.startswith("vision."))
    assert [by_name[n].lr for n in ("text.embeddings", "text.layer.0", "text.layer.1")] == pytest.approx(
        [1e-3 * 0.5**3, 1e-3 * 0.5**2, 1e-3 * 0.5]
    )
    assert by_name["head"].is_head and by_name["head"].lr == 1e-2 and by_name["head"].start_step == 0
    params = dict(model.named_parameters())
    assert plan.ever_trainable() == {n for n in params if not n.startswith("vision.")}
    assert "vision: feature_extraction" in plan.strategy and "text: full" in plan.strategy


def test_fusion_plan_carries_the_recipes_schedule_and_warmup(tmp_path, number_bert_dir):
    """`hftl plan` and plan.json report the schedule a fusion run applies (its LR lambdas read the same plan)."""
    from hftl.strategies.plan import format_plan
    from hftl.training.build import plan_for

    recipe = fusion_recipe(
        tmp_path, "plan", "unused", number_bert_dir, "unused", optim={"scheduler": "cosine", "warmup_steps": 5}
    )
    plan = plan_for(fusion_model("resnet"), recipe, steps_per_epoch=10, total_steps=30)
    assert (plan.scheduler, plan.warmup_steps, plan.total_steps) == ("cosine", 5, 30)
    assert plan.schedule(0) == pytest.approx(1 / 6) and plan.schedule(30) == pytest.approx(0.0)
    assert "cosine, 5 warmup steps" in format_plan(plan)


def test_staged_tower_strategy_changes_mid_run(tmp_path, number_bert_dir):
    from hftl.strategies import changes_mid_run
    from hftl.training.build import plan_for

    recipe = fusion_recipe(
        tmp_path,
        "plan",
        "unused",
        number_bert_dir,
        "unused",
        strategy={
            "name": "feature_extraction",
            "towers": {"text": {"name": "two_stage", "two_stage": {"head_epochs": 1}}},
        },
    )
    plan = plan_for(fusion_model("resnet"), recipe, steps_per_epoch=10, total_steps=30)
    starts = {g.name: g.start_step for g in plan.groups}
    assert starts["vision.stem"] is None and starts["text.layer.0"] == 10 and starts["head"] == 0
    assert changes_mid_run(recipe.strategy) and plan.stage_starts == [0, 10]


# --------------------------------------------------------------------------- recipe and data checks
BASE = {
    "name": "f",
    "task": "fusion",
    "data": {"source": "digits-plus"},
    "model": {"towers": {"vision": {"checkpoint": "v"}, "text": {"checkpoint": "t"}}},
}
RECIPE_MISTAKES = {
    "checkpoint": ({"model": {"checkpoint": "bert-base-uncased", **BASE["model"]}}, "key 'model.checkpoint'"),
    "missing-tower": ({"model": {"towers": {"vision": {"checkpoint": "v"}}}}, "key 'model.towers.text'"),
    "lora-tower": (
        {"strategy": {"towers": {"text": {"name": "lora", "lora": {"r": 4}}}}},
        "key 'strategy.towers.text.name': 'lora' wraps a whole model",
    ),
    "augment": ({"data": {"source": "digits-plus", "augment": {"hflip": False}}}, "key 'data.augment'"),
    "init-from": ({"model": {**BASE["model"], "init_from": "runs/x"}}, "key 'model.init_from'"),
    "bad-role": ({"data": {"source": "digits-plus", "columns": {"caption": "text"}}}, "key 'data.columns.caption'"),
}


@pytest.mark.parametrize("change, fragment", RECIPE_MISTAKES.values(), ids=list(RECIPE_MISTAKES))
def test_recipe_mistakes_are_named(change, fragment):
    with pytest.raises(RecipeError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        validate_recipe({**BASE, **change}, "fusion.yaml")


def test_digits_plus_pairs_need_both_inputs(digits_plus_data):
    pretrain, rest = digits_plus_data
    ds = digits_plus()["train"]
    digits, offsets, labels = (np.asarray(ds[c]) for c in ("digit", "offset", "label"))
    assert (labels == (digits + offsets) % 10).all()
    assert list(ds["text"][:3]) == [f"plus {NUMBER_WORDS[k]}" for k in offsets[:3]]
    # every label occurs with every digit and with every offset: neither input alone decides it
    for source in (digits, offsets):
        assert all(len(set(labels[source == value])) == 10 for value in range(10))
    assert len(pretrain) == len(rest) == 2500


def test_bad_pairs_are_named_or_skipped(tmp_path, number_bert_dir, digit_resnet_dir, digits_plus_data):
    import datasets

    _, rest = digits_plus_data
    rows = rest.select(range(6)).to_dict()
    rows["text"][2] = "  "
    bad = datasets.Dataset.from_dict(rows, features=rest.features)
    task = TASKS.get("fusion")
    recipe = fusion_recipe(tmp_path, "bad", digit_resnet_dir, number_bert_dir, "unused")
    processor = task.load_processor(recipe)
    with pytest.raises(DataError, match=r"train example 2: empty or missing text in column 'text'"):
        task.encode(datasets.DatasetDict({"train": bad}), processor, recipe, [str(d) for d in range(10)])
    skip = fusion_recipe(tmp_path, "bad", digit_resnet_dir, number_bert_dir, "unused", data={"on_error": "skip"})
    encoded, reports = task.encode(datasets.DatasetDict({"train": bad}), processor, skip, [str(d) for d in range(10)])
    assert len(encoded["train"]) == 5 and reports == [
        "skipped 1 bad train example(s) (first: #2: empty or missing text in column 'text' ('  '))"
    ]
    assert set(encoded["train"].column_names) == {
        "image",
        "input_ids",
        "token_type_ids",
        "attention_mask",
        "labels",
        "length",
        "index",
        "split",
    }
    assert encoded["train"]["index"] == [0, 1, 3, 4, 5]

    # an image that cannot be decoded is named when its batch is built
    broken = encoded["train"].cast_column("image", datasets.Image(decode=False)).to_list()
    broken[3]["image"] = {"bytes": b"not a png", "path": None}
    batch = task.collator(processor, skip, train=True)
    assert batch(broken[:3])["pixel_values"].shape == (3, 3, 28, 28)
    with pytest.raises(DataError, match=r"train example 4: cannot read its image"):
        batch(broken)


# --------------------------------------------------------------------------- the evidence
@pytest.mark.slow
def test_fusion_beats_each_single_tower(tmp_path, number_bert_dir, digit_resnet_dir, digits_plus_data):
    """label = (digit + k) mod 10 for an image of a digit and the text "plus <k>".

    The same fusion model (vision tower pre-trained on other digits and frozen, text tower and head trained)
    learns it from both inputs; with the text blanked ("plus") or the image blanked (black), held-out
    accuracy stays near chance (0.1), because each input alone carries no information about the label.
    """
    from PIL import Image

    from hftl.cli import main
    from hftl.training.train import run

    _, rest = digits_plus_data
    blank = Image.new("L", (28, 28))
    variants = {
        "fused": rest,
        "vision_only": rest.map(lambda _: {"text": "plus"}),
        "text_only": rest.map(lambda _: {"image": blank}),
    }
    accuracy = {}
    for name, data in variants.items():
        data.to_parquet(tmp_path / f"{name}.parquet")
        # the same budget for each: 3 epochs, evaluated (and saved) once, at the end
        result = run(
            fusion_recipe(
                tmp_path,
                name,
                digit_resnet_dir,
                number_bert_dir,
                tmp_path / f"{name}.parquet",
                train={"epochs": 3, "eval_steps": 10_000},
            )
        )
        accuracy[name] = result.metrics["test"]["accuracy"]
    assert accuracy["fused"] > 0.7, accuracy
    assert max(accuracy["vision_only"], accuracy["text_only"]) < 0.25, accuracy

    # hftl predict on the fused run: an image and a text per input, paired in order
    images = []
    for i in range(5):
        path = tmp_path / f"digit-{i}.png"
        rest[i]["image"].save(path)
        images += ["--image", str(path), "--text", "plus three"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["predict", str(tmp_path / "fused"), *images]) == 0
    predicted = [line.split("\t")[1].split()[0] for line in out.getvalue().splitlines()]
    expected = [str((d + 3) % 10) for d in rest["digit"][:5]]
    assert sum(p == e for p, e in zip(predicted, expected)) >= 4, (predicted, expected)


@pytest.mark.integration
def test_offline_fusion_recipe_runs_a_few_steps(tmp_path):
    """The shipped offline recipe on its real towers (EfficientNet-Lite0, MiniLM): a few steps, saved, reloaded."""
    from hftl.cli.predict import predict
    from hftl.training.train import run

    recipe = load_recipe(
        RECIPES / "fusion-digits.yaml",
        [
            f"output.dir={tmp_path / 'run'}",
            "train.max_steps=3",
            "train.batch_size=8",
            "data.max_train_samples=24",
            "data.max_eval_samples=16",
        ],
    )
    result = run(recipe)
    assert result.metrics["steps"] == 3 and result.metrics["examples"]["train"] == 24
    digit = tmp_path / "digit.png"
    digits_plus()["train"][0]["image"].save(digit)
    [top] = predict(result.run_dir, [f"{digit}\tplus two"], top_k=3)
    assert len(top) == 3 and {r["label"] for r in top} <= {str(d) for d in range(10)}

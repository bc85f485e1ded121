"""The vision levers: label smoothing, TrivialAugment / RandAugment, mixup / cutmix, an EMA of the weights and the
optimizer choice (AdamW / SGD / LAMB). Recipe errors for each; each changes the training and, off, leaves it as it
was; the EMA is what is evaluated and saved; EMA and optimizer states resume exactly after a kill; the EMA stays
equal across 2 processes. Tiny random ResNet on generated stripes (tests/test_image_classification.py)."""

# The image fixtures (checkpoints, stripes_dir) are imported from test_image_classification, so the tests' parameters
# redefine those names: that is how pytest finds them.
# ruff: noqa: F811
from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from hftl.cli import main as cli
from hftl.config.errors import RecipeError
from hftl.config.recipe import load_recipe
from hftl.config.run_folder import read_log
from hftl.tasks import TASKS
from hftl.training import train
from hftl.training.build import build_optimizer, plan_for
from hftl.training.losses import TaskLoss
from hftl.training.mixup import BatchMixer
from hftl.training.train import run
from hftl.training.training_state import complete_checkpoints
from tests.test_image_classification import checkpoints, stripes, stripes_dir, undecoded  # noqa: F401
from tests.test_reliability import assert_same_model, run_child

TASK = TASKS.get("image-classification")
# 24 training images, batch 8: 3 steps an epoch, 2 epochs; each lever's run takes about a second.
LEVERS = {
    "label_smoothing": {"train": {"label_smoothing": 0.2}},
    "trivialaugment": {"data": {"augment": {"auto": "trivialaugment"}}},
    "mixup": {"train": {"mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0}}},
    "ema": {"train": {"ema": {"decay": 0.9}}},
    "sgd": {"optim": {"name": "sgd", "lr": 0.05}},
    "lamb": {"optim": {"name": "lamb"}},
}
OFF = {
    "data": {"augment": {"auto": None}},
    "train": {"label_smoothing": 0.0, "mixup": None, "ema": None},
    "optim": {"name": "adamw"},
}


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_log(run_dir) if "loss" in r]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, stripes_dir, checkpoints) -> Path:
    """The run with every lever off (the defaults)."""
    return run(load_recipe(write(tmp_path_factory.mktemp("baseline"), stripes_dir, checkpoints))).run_dir


def write(folder: Path, stripes_dir: Path, checkpoints: dict, **sections) -> Path:
    """The stripes recipe of test_image_classification on the tiny ResNet, with ``sections`` merged in."""
    import yaml

    doc = {
        "name": "levers",
        "task": "image-classification",
        "model": {"checkpoint": str(checkpoints["resnet"])},
        "data": {"source": str(stripes_dir), "max_train_samples": 24, "max_eval_samples": 8},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
        "train": {"min_steps": 0, "epochs": 2, "batch_size": 8, "log_steps": 1, "seed": 0},
        "output": {"dir": str(folder / "run")},
    }
    doc = merged(doc, sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def merged(doc: dict, sections: dict) -> dict:
    """``doc`` with ``sections`` merged in, mapping by mapping (a None or a value replaces)."""
    out = dict(doc)
    for key, value in sections.items():
        both = isinstance(value, dict) and value and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


# --------------------------------------------------------------------------- recipe errors
@pytest.mark.parametrize(
    ("sections", "key", "says"),
    [
        ({"train": {"label_smoothing": 1.0}}, "train.label_smoothing", "less than 1"),
        ({"train": {"label_smoothing": 0.1}, "data": {"problem_type": "regression"}}, "train.label_smoothing", ""),
        ({"train": {"label_smoothing": 0.1}, "data": {"problem_type": "multi_label"}}, "train.label_smoothing", ""),
        ({"data": {"augment": {"auto": "autoaugment"}}}, "data.augment.auto", "trivialaugment"),
        ({"data": {"augment": {"randaugment_magnitude": 5}}}, "data.augment.randaugment_magnitude", "auto: randaug"),
        (
            {"data": {"augment": {"auto": "randaugment", "randaugment_magnitude": 31}}},
            "data.augment.randaugment_magnitude",
            "30",
        ),
        ({"train": {"mixup": {"mixup_alpha": 0.0}}}, "train.mixup", "both 0"),
        ({"train": {"mixup": {"alpha": 0.2}}}, "train.mixup.alpha", "mixup_alpha"),
        ({"train": {"mixup": {}}, "data": {"problem_type": "multi_label"}}, "train.mixup", "single-label"),
        ({"train": {"ema": {"decay": 1.0}}}, "train.ema.decay", "less than 1"),
        ({"optim": {"name": "adam"}}, "optim.name", "'adamw', 'sgd' or 'lamb'"),
        ({"optim": {"momentum": 0.5}}, "optim.momentum", "only applies with optim.name: sgd"),
        ({"optim": {"name": "sgd", "momentum": 0.0}}, "optim", "nesterov needs momentum > 0"),
    ],
)
def test_image_recipe_errors_name_the_key(tmp_path, stripes_dir, checkpoints, sections, key, says) -> None:
    with pytest.raises(RecipeError) as error:
        load_recipe(write(tmp_path, stripes_dir, checkpoints, **sections))
    assert f"'{key}" in str(error.value) and says in str(error.value), str(error.value)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"data": {"augment": {"auto": "trivialaugment"}}}, "data.augment.auto"),
        ({"train": {"mixup": {"mixup_alpha": 0.2}}}, "train.mixup"),
        ({"train": {"label_smoothing": 0.1}, "data": {"problem_type": "multi_label"}}, "train.label_smoothing"),
    ],
)
def test_text_recipes_refuse_image_levers_with_exit_2_and_nothing_written(text_recipe, capsys, sections, key) -> None:
    path = text_recipe(**sections)
    assert cli(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"key '{key}'" in err and "Traceback" not in err, err
    assert not (path.parent / "run").exists()


def test_text_label_smoothing_and_optimizers_are_accepted(text_recipe) -> None:
    recipe = load_recipe(text_recipe(train={"label_smoothing": 0.1}, optim={"name": "sgd", "lr": 0.1}))
    assert recipe.train.label_smoothing == 0.1 and recipe.optim.name == "sgd" and recipe.optim.momentum == 0.9


# --------------------------------------------------------------------------- the pieces against their oracles
def test_loss_smooths_like_torch_and_takes_soft_targets_like_timm() -> None:
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    plain = torch.nn.functional.cross_entropy(logits, labels)
    smoothed = TaskLoss(None, False, 0.1)(logits, labels)
    assert smoothed == pytest.approx(torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels).item())
    assert smoothed.item() != pytest.approx(plain.item())
    soft = torch.softmax(torch.randn(6, 3), -1)
    assert TaskLoss(None, False, 0.1)(logits, soft) == pytest.approx(SoftTargetCrossEntropy()(logits, soft).item())


def test_mixer_mixes_even_batches_and_keeps_an_odd_last_example() -> None:
    from hftl.config.schema import MixupSection

    mixer = BatchMixer(MixupSection(mixup_alpha=0.5), label_smoothing=0.1, num_classes=3)
    pixels, labels = torch.randn(5, 3, 4, 4), torch.tensor([0, 1, 2, 2, 1])
    np.random.seed(0)
    first = mixer({"pixel_values": pixels.clone(), "labels": labels})
    np.random.seed(0)
    again = mixer({"pixel_values": pixels.clone(), "labels": labels})
    assert torch.equal(first["pixel_values"], again["pixel_values"])  # NumPy's seeded stream: it repeats
    assert not torch.equal(first["pixel_values"][:4], pixels[:4]) and torch.equal(first["pixel_values"][4], pixels[4])
    soft = first["labels"]
    assert soft.shape == (5, 3) and torch.allclose(soft.sum(-1), torch.ones(5))
    assert torch.allclose(soft[4], torch.tensor([0.1 / 3, 1 - 0.1 + 0.1 / 3, 0.1 / 3]))  # smoothed one-hot
    assert soft[:4].max() < 1 - 0.1 + 0.1 / 3  # mixed: no single class keeps its whole weight


@pytest.mark.parametrize("policy", ["trivialaugment", "randaugment"])
def test_auto_augment_in_training_only_and_repeats_with_the_seed(tmp_path, stripes_dir, checkpoints, policy) -> None:
    plain = load_recipe(write(tmp_path, stripes_dir, checkpoints))
    auto = load_recipe(write(tmp_path, stripes_dir, checkpoints, data={"augment": {"auto": policy}}))
    processor = TASK.load_processor(plain)
    rng = np.random.default_rng(3)
    features = [
        {"image": undecoded(Image.fromarray(stripes("vertical", rng))), "labels": 1, "split": "train", "index": i}
        for i in range(6)
    ]

    def pixels(recipe, train: bool, seed: int = 0) -> torch.Tensor:
        torch.manual_seed(seed)
        return TASK.collator(processor, recipe, train=train)(features)["pixel_values"]

    assert torch.equal(pixels(auto, True), pixels(auto, True))  # the same seed, the same policy draws
    assert not torch.equal(pixels(auto, True), pixels(plain, True))  # the crops and flips alone differ
    assert torch.equal(pixels(auto, False), pixels(plain, False))  # evaluation: the processor's plain image
    no_crop = {"augment": {"auto": policy, "random_resized_crop": False, "hflip": False}}
    resized = load_recipe(write(tmp_path, stripes_dir, checkpoints, data=no_crop))
    assert pixels(resized, True).shape == pixels(plain, False).shape  # a plain resize to the input size


def test_optimizer_choice_keeps_every_param_group_and_its_lr(tmp_path, stripes_dir, checkpoints) -> None:
    llrd = {"strategy": {"name": "full", "llrd": {"decay": 0.5}}, "optim": {"head_lr": 1e-2}}
    groups = {}
    for name in ("adamw", "sgd", "lamb"):
        sections = {**llrd, "optim": {**llrd["optim"], "name": name}}
        recipe = load_recipe(write(tmp_path / name, stripes_dir, checkpoints, **sections))
        model = TASK.build_model(recipe, ["horizontal", "vertical"])
        optimizer, _ = build_optimizer(model, plan_for(model, recipe, 3, 6), recipe.optim)
        assert type(optimizer).__name__.lower() == name
        groups[name] = [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups]
    assert groups["adamw"] == groups["sgd"] == groups["lamb"]
    assert len({lr for _, lr, _, _ in groups["adamw"]}) > 2  # layer-wise decay: several LRs


# --------------------------------------------------------------------------- each lever changes the training
def test_explicitly_off_is_the_default_run_bit_for_bit(tmp_path, stripes_dir, checkpoints, baseline) -> None:
    off = run(load_recipe(write(tmp_path, stripes_dir, checkpoints, **OFF))).run_dir
    want, got = load_file(str(baseline / "model.safetensors")), load_file(str(off / "model.safetensors"))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert losses(off) == losses(baseline)


@pytest.mark.parametrize("lever", list(LEVERS))
def test_each_lever_changes_the_training(tmp_path, stripes_dir, checkpoints, baseline, lever) -> None:
    result = run(load_recipe(write(tmp_path, stripes_dir, checkpoints, **LEVERS[lever])))
    assert json.loads((result.run_dir / "run_status.json").read_text())["status"] == "completed"
    assert len(losses(result.run_dir)) == len(losses(baseline)) == 6
    if lever == "ema":  # the same training; what is evaluated and saved differs
        assert losses(result.run_dir) == losses(baseline)
        assert result.metrics["validation"] != json.loads((baseline / "metrics.json").read_text())["validation"]
    else:
        assert losses(result.run_dir) != losses(baseline), lever
    card = (result.run_dir / "README.md").read_text()
    shown = {"label_smoothing": "label smoothing 0.2", "mixup": "mixup 0.4 / cutmix 1", "ema": "an EMA of the weights"}
    shown |= {"sgd": "SGD (momentum 0.9, Nesterov)", "lamb": "LAMB (timm)"}
    assert shown.get(lever, "") in card


def test_ema_weights_are_evaluated_and_saved(tmp_path, stripes_dir, checkpoints, monkeypatch) -> None:
    """One evaluation, at the last step: what it scored, the published model and the checkpoint's EMA are the same
    weights, and differ from the trained weights of that step."""
    scored = []

    def evaluate(model, *args, **kwargs):
        scored.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", evaluate)
    sections = {"train": {"ema": {"decay": 0.9}, "eval_steps": 6}, "output": {"keep_checkpoints": "last"}}
    result = run(load_recipe(write(tmp_path, stripes_dir, checkpoints, **sections)))
    state = complete_checkpoints(result.run_dir)[-1]
    ema, trained = load_file(str(state / "ema.safetensors")), load_file(str(state / "model.safetensors"))
    published = load_file(str(result.run_dir / "model.safetensors"))
    assert len(scored) == 1 and result.metrics["best_step"] == 6
    assert all(torch.equal(published[k], ema[k]) and torch.equal(scored[0][k], ema[k]) for k in ema)
    assert any(not torch.equal(trained[k], ema[k]) for k in ema if k.endswith("weight"))


def test_ema_of_a_lora_model_publishes_the_averaged_adapter(tmp_path, stripes_dir, checkpoints) -> None:
    lora = {"name": "lora", "lora": {"r": 4, "alpha": 8, "target_modules": ["convolution"]}}
    sections = {"strategy": lora, "train": {"ema": {"decay": 0.9}, "eval_steps": 6}}
    sections["output"] = {"keep_checkpoints": "last"}
    result = run(load_recipe(write(tmp_path, stripes_dir, checkpoints, **sections)))
    ema = load_file(str(complete_checkpoints(result.run_dir)[-1] / "ema.safetensors"))
    adapter = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    averaged = {k.replace(".default", ""): v for k, v in ema.items() if "lora_" in k}
    assert averaged and all(torch.equal(adapter[k], v) for k, v in averaged.items())
    from transformers import AutoModelForImageClassification

    assert AutoModelForImageClassification.from_pretrained(result.run_dir).config.num_labels == 2  # merged, loads


def test_mixup_and_auto_augment_turn_the_feature_cache_off(tmp_path, stripes_dir, checkpoints) -> None:
    import datasets

    from hftl.training.feature_eligibility import skip_reason

    frozen = {"strategy": {"name": "feature_extraction"}}
    frozen["data"] = {"augment": {"random_resized_crop": False, "hflip": False}}
    encoded = {"train": datasets.Dataset.from_dict({"labels": [0, 1]})}
    reasons = {}
    for name, extra in [
        ("none", {}),
        ("mixup", {"train": {"mixup": {"mixup_alpha": 0.2}}}),
        ("auto", {"data": {"augment": {"auto": "trivialaugment"}}}),
        ("crop", {"data": {"augment": {"random_resized_crop": True}}}),
        ("hflip", {"data": {"augment": {"hflip": True}}}),  # replayed from the cache's flipped copy
    ]:
        recipe = load_recipe(write(tmp_path / name, stripes_dir, checkpoints, **merged(frozen, extra)))
        model = TASK.build_model(recipe, ["horizontal", "vertical"])
        plan = plan_for(model, recipe, 3, 6)
        reasons[name] = skip_reason(model, plan, TASK, encoded, "auto", recipe.data.augment, recipe.train.mixup)
    assert reasons["none"] is None
    assert reasons["mixup"].startswith("train.mixup mixes the raw images")
    assert reasons["auto"].startswith("random augmentation feeds the backbone")
    assert "data.augment.auto" in reasons["auto"]
    assert "data.augment.random_resized_crop=false" in reasons["crop"]
    assert reasons["hflip"] is None


def test_a_horizontal_flip_is_replayed_from_cached_features_of_both_orientations(
    tmp_path, stripes_dir, checkpoints, capsys, monkeypatch
) -> None:
    """data.augment.hflip with a frozen body: the train split is also cached mirrored (each row = the frozen body's
    features of the mirrored image), the loop draws between the two, and the L-BFGS probe is fitted on both."""
    import re

    from PIL import ImageOps
    from transformers import AutoModelForImageClassification

    from hftl.tasks import prepare_data
    from hftl.tasks.image_classification import decode_image
    from hftl.training.feature_extraction import rows_of
    from hftl.training.feature_store import read_rows

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    sections = {"strategy": {"name": "feature_extraction"}, "data": {"augment": {"random_resized_crop": False}}}
    sections["model"] = {"checkpoint": str(checkpoints["vit"])}  # a linear head on (CLS) vectors: probed
    recipe = load_recipe(write(tmp_path, stripes_dir, checkpoints, **sections))
    result = run(recipe)
    out = capsys.readouterr().out
    assert "trains on cached inputs" in out and "[probe] head fitted by L-BFGS" in out
    path = re.search(
        r"\[cache\] train, flipped \(data.augment.hflip\): built features of 24 examples .* (\S+)$", out, re.M
    )
    assert path, out
    flipped = read_rows(Path(path.group(1)))

    # Oracle: the saved model's head input for each training image mirrored with PIL before the processor.
    data = prepare_data(recipe)
    model = AutoModelForImageClassification.from_pretrained(result.run_dir).eval()
    rows = rows_of(data.encoded["train"], range(len(data.encoded["train"])))
    for row in rows:
        row["image"] = undecoded(ImageOps.mirror(decode_image(row["image"])))
    captured = []
    model.classifier.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        model(pixel_values=TASK.collator(data.processor, recipe, train=False)(rows)["pixel_values"])
    torch.testing.assert_close(torch.stack(list(flipped)).flatten(1), captured[0].flatten(1), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(flipped[0], captured[0][1])  # the images differ, so do their features


def test_a_cached_split_with_flipped_rows_draws_either_and_fits_on_both() -> None:
    from hftl.training.feature_store import CachedSplit

    rows, mirrored = [torch.zeros(2), torch.ones(2)], [torch.full((2,), 10.0), torch.full((2,), 11.0)]
    split = CachedSplit(rows, [0, 1], flipped_rows=mirrored)
    torch.manual_seed(0)
    drawn = [float(split[1][0][0]) for _ in range(200)]
    assert set(drawn) == {1.0, 11.0} and 60 < drawn.count(11.0) < 140  # about half mirrored
    every, labels = split.every_view()
    assert [float(r[0]) for r in every] == [0.0, 1.0, 10.0, 11.0] and labels == [0, 1, 0, 1]
    assert CachedSplit(rows, [0, 1]).every_view() == (rows, [0, 1])


def test_ema_on_cached_features_averages_the_head(tmp_path, stripes_dir, checkpoints, capsys) -> None:
    """A frozen body's cached features with an EMA: the average's head-only forward runs its own head."""
    sections = {"strategy": {"name": "feature_extraction"}, "train": {"ema": {"decay": 0.9}, "eval_steps": 6}}
    sections["data"] = {"augment": {"random_resized_crop": False, "hflip": False}}
    sections["output"] = {"keep_checkpoints": "last"}
    result = run(load_recipe(write(tmp_path, stripes_dir, checkpoints, **sections)))
    assert "trains on cached inputs" in capsys.readouterr().out
    state = complete_checkpoints(result.run_dir)[-1]
    ema, trained = load_file(str(state / "ema.safetensors")), load_file(str(state / "model.safetensors"))
    published = load_file(str(result.run_dir / "model.safetensors"))
    head = [k for k in ema if k.startswith("classifier.")]
    assert head and all(torch.equal(published[k], ema[k]) for k in ema)
    assert any(not torch.equal(trained[k], ema[k]) for k in head)


# --------------------------------------------------------------------------- resume and processes
# Augmentation in the loader is off in the resume tests: accelerate's loader collates batch k + 1 before step k's
# state is saved, so a resumed run re-draws that batch's crops, flips (and auto policy) from a later point of the
# random stream: a mid-epoch resume of an augmented image run is not bit-exact (README, "Vision levers").
NO_AUGMENT = {"data": {"augment": {"random_resized_crop": False, "hflip": False}}}


@pytest.mark.parametrize(
    "levers",
    [
        {"optim": {"name": "sgd", "lr": 0.05}, "train": {"ema": {"decay": 0.9}, "mixup": {"cutmix_alpha": 1.0}}},
        {"optim": {"name": "lamb"}, "train": {"label_smoothing": 0.1, "ema": {}}},
    ],
    ids=["sgd-ema-mixup", "lamb-ema-smoothing"],
)
def test_a_killed_run_resumes_exactly(tmp_path, stripes_dir, checkpoints, levers) -> None:
    """Killed inside step 5 (mid-epoch; the last state is step 4), resumed: the same model, scores and log as the
    uninterrupted run: the EMA, the optimizer's state and the mixup / augmentation draws all continue."""
    sections = merged(merged(NO_AUGMENT, levers), {"train": {"save_steps": 2, "eval_steps": 3}})
    reference = run(load_recipe(write(tmp_path / "ref", stripes_dir, checkpoints, **sections))).run_dir
    recipe, log = write(tmp_path / "killed", stripes_dir, checkpoints, **sections), tmp_path / "children.log"
    assert run_child(["run", str(recipe)], log, HFTL_TEST_KILL_AT="step:5") == -signal.SIGKILL, log.read_text()[-3000:]
    assert complete_checkpoints(tmp_path / "killed" / "run")[-1].name == "step-00000004"
    assert run_child(["run", str(recipe), "--resume"], log) == 0, log.read_text()[-3000:]
    assert_same_model(tmp_path / "killed" / "run", reference)


@pytest.mark.distributed
def test_ema_stays_equal_across_two_processes(tmp_path, stripes_dir, checkpoints, monkeypatch) -> None:
    """2 forked CPU processes (gloo DDP); after each saved state every rank writes its EMA (BatchNorm statistics
    included): the ranks' averages are equal bit for bit, and differ from the trained weights."""
    dump = tmp_path / "dump"
    dump.mkdir()
    real = train.save_checkpoint

    def save_and_dump(accelerator, model, optimizer, run_dir, state, keep, extra_modules=None):
        path = real(accelerator, model, optimizer, run_dir, state, keep, extra_modules)
        ema = {k: v.detach().contiguous() for k, v in extra_modules["ema"].state_dict().items()}
        save_file(ema, str(dump / f"rank{accelerator.process_index}-step{state['step']}.safetensors"))
        return path

    monkeypatch.setattr(train, "save_checkpoint", save_and_dump)  # the forked ranks inherit it
    sections = {
        "train": {"ema": {"decay": 0.9}, "save_steps": 1, "batch_size": 4},
        "output": {"keep_checkpoints": "last"},
    }
    recipe, log = write(tmp_path, stripes_dir, checkpoints, **sections), tmp_path / "children.log"
    assert run_child(["run", str(recipe)], log, processes=2) == 0, log.read_text()[-3000:]
    steps = sorted(int(p.stem.split("step")[1]) for p in dump.glob("rank0-*"))
    assert steps == list(range(1, 7))
    for step in steps:
        rank0, rank1 = (load_file(str(dump / f"rank{r}-step{step}.safetensors")) for r in (0, 1))
        drift = [k for k in rank0 if not torch.equal(rank0[k], rank1[k])]
        assert not drift, f"step {step}: the ranks' averages differ in {drift[:5]}"
    assert any("running_mean" in k for k in rank0)
    trained = load_file(str(complete_checkpoints(tmp_path / "run")[-1] / "model.safetensors"))
    assert any(not torch.equal(trained[k], rank0[k]) for k in trained if k.endswith("weight"))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_processes"] == 2

"""Model cards, training-curve plots and tracker checks, on tiny real runs and on synthetic logs."""

from __future__ import annotations

import json
import re

import pytest

from hftl.config.errors import HftlError


def card_parts(run_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(run_dir / "README.md")
    return card.data.to_dict(), card.text


# --------------------------------------------------------------------------- real runs
def test_staged_run_writes_plots_and_a_card_that_states_the_applied_strategy(text_recipe, monkeypatch):
    from PIL import Image

    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    monkeypatch.setenv("HF_TOKEN", "hf_planted_secret_for_the_card_test")
    recipe = load_recipe(
        text_recipe(
            description="Toy reviews, unfrozen from the top.",
            strategy={"name": "progressive", "progressive": {"every": 12, "unit": "step"}, "llrd": {"decay": 0.5}},
            optim={"lr": 2e-3, "head_lr": 4e-3, "warmup_ratio": 0.0, "scheduler": "constant"},
            train={"epochs": 3, "batch_size": 16, "log_steps": 4, "eval_steps": 12, "seed": 0},
        )
    )
    run_dir = run(recipe).run_dir
    plan = json.loads((run_dir / "plan.json").read_text())
    final = json.loads((run_dir / "metrics.json").read_text())

    for name in ("training_curves.png", "learning_rates.png"):
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.width > 600
    meta, text = card_parts(run_dir)
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "transformers"
    assert "hftl" in meta["tags"] and "strategy:progressive" in meta["tags"]
    assert "base_model" not in meta  # a local folder is not a Hub id
    results = {
        (r["dataset"]["split"], m["type"]): m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]
    }
    assert results[("test", "accuracy")] == pytest.approx(final["test"]["accuracy"], abs=1e-4)

    assert "Toy reviews, unfrozen from the top." in text
    assert "![training and validation curves](training_curves.png)" in text
    assert "![learning rate of every layer group](learning_rates.png)" in text
    # the strategy as applied: every group's peak LR and start step come from plan.json
    for group in plan["groups"]:
        row = next(line for line in text.splitlines() if line.startswith(f"| {group['name']}"))
        assert f"{group['lr']:.2e}" in row and (f"step {group['start_step']}" in row)
    assert "Layer-wise LR decay 0.5" in text and "BatchNorm in frozen groups: **frozen**" in text
    assert re.search(r"Unfreezing schedule: step 12 \(epoch 0\.5\): pooler", text)
    assert re.search(r"Options \(`strategy.progressive`\): every 12, unit step", text)
    stages = [line for line in text.splitlines() if re.match(r"\| \d+ \| \d+–\d+ \|", line)]
    assert len(stages) == len({g["start_step"] for g in plan["groups"]}) == 5
    assert f"train = split `train`: {final['examples']['train']:,} examples" in text
    assert "```yaml\nname: toy\n" in text and re.search(r"hftl \d+\.\d+", text)
    assert "hf_planted_secret_for_the_card_test" not in (run_dir / "README.md").read_text()


def test_lora_run_card_has_peft_metadata_and_snippet(text_recipe):
    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    recipe = load_recipe(
        text_recipe(
            strategy={"name": "lora", "lora": {"r": 4}},
            train={"max_steps": 12, "batch_size": 16, "log_steps": 4, "seed": 0},
        )
    )
    run_dir = run(recipe).run_dir
    meta, text = card_parts(run_dir)
    assert meta["library_name"] == "transformers" and "lora" in meta["tags"]  # the root holds the merged model
    assert 'pipeline("text-classification", model=' in text
    assert f'AutoPeftModelForSequenceClassification.from_pretrained("{run_dir}/adapter")' in text
    assert re.search(r"peft adapter: peft_type LORA, r 4, lora_alpha 16, .*target_modules", text)
    trained, total = map(
        lambda n: int(n.replace(",", "")), re.search(r"Trained parameters: ([\d,]+) of ([\d,]+)", text).groups()
    )
    assert 0 < trained < total / 4  # LoRA matrices and the head only


# --------------------------------------------------------------------------- plots from a synthetic log
def write_run_files(run_dir, records, groups):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "plan.json").write_text(json.dumps({"groups": [{"name": n, "start_step": s} for n, s in groups]}))
    (run_dir / "metrics.json").write_text(json.dumps({"best_validation_f1": 0.5}))


def test_learning_rate_plot_has_one_line_per_group_in_plan_order(tmp_path):
    from hftl.publish.plots import learning_rates, plot_run, read_log, stage_starts, training_curves

    groups = [("embeddings", 20), ("layer.0", 10), ("head", 0)]
    records = []
    for step in range(2, 31, 2):
        records.append(
            {
                "step": step,
                "loss": 1 / step,
                "lr": {n: (0.0 if step < s else 1e-3 * 0.5 ** (2 - i)) for i, (n, s) in enumerate(groups)},
            }
        )
        if step % 10 == 0:
            records.append({"step": step, "validation": {"f1": step / 40, "loss": 1 / step}})
    write_run_files(tmp_path / "run", records, groups)

    assert stage_starts(tmp_path / "run") == {10: ["layer.0"], 20: ["embeddings"]}
    figure = learning_rates(read_log(tmp_path / "run"), ["embeddings", "layer.0", "head"], {10: ["layer.0"]})
    lines = [line for line in figure.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["embeddings", "layer.0", "head"]
    assert max(lines[0].get_ydata()[:4]) == 0.0 and lines[0].get_ydata()[-1] == pytest.approx(2.5e-4)
    curves = training_curves(read_log(tmp_path / "run"), "f1")
    assert [line.get_label() for line in curves.axes[1].get_lines()] == ["f1"]
    assert [p.name for p in plot_run(tmp_path / "run")] == ["training_curves.png", "learning_rates.png"]


def test_compare_runs_plots_each_run(tmp_path):
    from hftl.publish.plots import compare_runs

    for name, slope in (("fe", 1), ("ft", 2)):
        write_run_files(
            tmp_path / name, [{"step": s, "validation": {"f1": s * slope / 100}} for s in (10, 20)], [("head", 0)]
        )
    figure = compare_runs(
        {"feature extraction": tmp_path / "fe", "fine-tuning": tmp_path / "ft"}, path=tmp_path / "compare.png"
    )
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["feature extraction", "fine-tuning"]
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_plots_and_cards_need_a_run_folder(tmp_path):
    from hftl.publish.card import write_card
    from hftl.publish.plots import plot_run

    with pytest.raises(HftlError, match="no metrics.jsonl"):
        plot_run(tmp_path)
    with pytest.raises(HftlError, match=r"not a finished hftl run folder \(missing recipe.yaml, plan.json"):
        write_card(tmp_path)


# --------------------------------------------------------------------------- metadata helpers and trackers
@pytest.mark.parametrize(
    "checkpoint, hub_id",
    [
        ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),  # catalog name -> its Hub alias
        ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased"),
        ("/some/local/folder", None),
        ("bert-base-uncased", "bert-base-uncased"),  # canonical ids without a namespace (the Hub redirects them)
        ("./bert", None),
        ("..", None),
    ],
)
def test_checkpoint_hub_ids(checkpoint, hub_id):
    from hftl.publish.card import _checkpoint_hub_id

    assert _checkpoint_hub_id(checkpoint) == hub_id


def test_missing_tracker_is_a_clear_error(monkeypatch):
    import importlib.util

    from hftl.training import trackers
    from hftl.training.trackers import check_trackers

    check_trackers(["tensorboard"])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        trackers.importlib.util, "find_spec", lambda name: None if name == "wandb" else real_find_spec(name)
    )
    with pytest.raises(HftlError, match=r"asks for wandb, which is not installed.*pip install wandb"):
        check_trackers(["wandb"])

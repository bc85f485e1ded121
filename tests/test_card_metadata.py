"""The model card's Hub metadata survives huggingface_hub's own parsing; timm-wrapper runs load with timm too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hftl.config.run_folder import RunFiles
from hftl.publish.card import card_data

RECIPE = {
    "name": "toy",
    "task": "text-classification",
    "model": {"checkpoint": "bert-base-uncased"},
    "data": {"source": "cornell-movie-review-data/rotten_tomatoes"},
    "strategy": {"name": "full"},
}
FINAL = {
    "best_validation_accuracy": 0.8,
    "validation": {"accuracy": 0.8, "f1": 0.79, "loss": 0.4},
    "test": {"accuracy": 0.78, "f1": 0.77},
}


def finished_run(tmp_path: Path, **recipe: object) -> RunFiles:
    (tmp_path / "config.json").write_text("{}")  # a full model, loadable by transformers
    doc = {**RECIPE, **recipe}
    return RunFiles(
        run_dir=tmp_path, recipe=doc, recipe_text=yaml.safe_dump(doc), plan={}, final=FINAL, labels=["neg", "pos"]
    )


@pytest.mark.parametrize(
    "checkpoint, base_model",
    [
        ("bert-base-uncased", "bert-base-uncased"),
        ("google-bert/bert-base-uncased", "google-bert/bert-base-uncased"),
        ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ],
)
def test_card_metadata_round_trips_through_huggingface_hub(tmp_path, checkpoint, base_model):
    from huggingface_hub import ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results

    data = card_data(finished_run(tmp_path, model={"checkpoint": checkpoint}))
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# toy\n")
    parsed = ModelCard(str(card)).data
    assert isinstance(parsed, ModelCardData)
    assert parsed.to_dict() == data.to_dict()
    assert parsed.base_model == base_model and parsed.library_name == "transformers"
    assert parsed.datasets == ["cornell-movie-review-data/rotten_tomatoes"]
    meta = yaml.safe_load(str(card).split("---")[1])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "toy"
    assert {(r.dataset_split, r.metric_type, r.metric_value) for r in results} == {
        ("test", "accuracy", 0.78),
        ("test", "f1", 0.77),
        ("validation", "accuracy", 0.8),
        ("validation", "f1", 0.79),
    }


def test_local_data_files_and_catalog_names_claim_no_hub_dataset(tmp_path):
    for data in (
        {"source": None, "files": {"train": "data/train.csv"}},
        {"source": "rotten-tomatoes"},
        {"source": "csv", "files": {"train": "a.csv"}},
        {"source": "reviews/train.csv"},
    ):
        assert card_data(finished_run(tmp_path, data=data)).datasets is None, data


# --------------------------------------------------------------------------- timm
def test_a_saved_timm_wrapper_model_loads_with_timm_local_dir(tmp_path):
    """What a run saves for a timm checkpoint (save_model_atomic, then publish) loads with
    ``timm.create_model("local-dir:RUN")`` and gives the same logits as transformers."""
    import timm
    import torch
    from timm.models import save_for_hf
    from transformers import AutoModelForImageClassification

    from hftl.training.training_state import publish_model, save_model_atomic

    class OneProcess:
        is_main_process = True

        def unwrap_model(self, model, keep_torch_compile=True):
            return model

    source = tmp_path / "timm-export"
    save_for_hf(
        timm.create_model("test_efficientnet", pretrained=False, num_classes=3), str(source), safe_serialization=True
    )
    config = json.loads((source / "config.json").read_text())
    config.pop("model_args")  # as hftl's efficientnet-lite0 export does (transformers refuses a second num_classes)
    (source / "config.json").write_text(json.dumps(config))
    labels = ["a", "b", "c"]
    model = AutoModelForImageClassification.from_pretrained(
        source, num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_model_atomic(OneProcess(), model, None, run_dir / "best")
    publish_model(run_dir / "best", run_dir)
    assert "model_args" not in json.loads((run_dir / "config.json").read_text())

    loaded = timm.create_model(f"local-dir:{run_dir}", pretrained=True).eval()
    assert loaded.pretrained_cfg["label_names"] == labels
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(pixel_values=x).logits)
    again = AutoModelForImageClassification.from_pretrained(run_dir)  # transformers still loads it
    assert again.config.id2label == dict(enumerate(labels))

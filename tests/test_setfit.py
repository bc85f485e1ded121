"""strategy.name: setfit: contrastive body tuning (the setfit library) on pairs of the K shots, then the head.

On a tiny random BERT saved as a sentence-transformers folder (modules.json + 1_Pooling, mean pooling), with the
toy reviews whose label is one sentiment word: the tuned body must separate the classes far better than the
same head on the untuned body, the saved run must load with ``transformers.pipeline`` and ``hftl predict``, and
a run killed after a checkpoint must resume to the same weights (the tuned body from the cache).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hftl.cli import main
from hftl.config.errors import RecipeError
from hftl.config.recipe import load_recipe
from tests.conftest import make_reviews
from tests.test_strategies import run_killed_after_checkpoint

SETFIT = {"name": "setfit", "setfit": {"num_iterations": 10, "body_lr": 3e-3, "body_batch_size": 16}}  # 40 steps
DATA = {"shots": 16, "group_column": "movie", "max_length": 16}


@pytest.fixture(scope="module")
def tiny_st_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """The tiny BERT as a sentence-transformers model folder (mean pooling, then Normalize), like all-MiniLM-L6-v2's."""
    folder = tmp_path_factory.mktemp("tiny-st") / "model"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    return folder


def _recipe(text_recipe, folder: Path, strategy: dict, **train) -> Path:
    return text_recipe(
        model={"checkpoint": str(folder)},
        strategy=strategy,
        data=DATA,
        train={"epochs": 1, "min_steps": 0, **train},
    )


def test_setfit_tunes_the_body_and_saves_a_pipeline_model(text_recipe, tiny_st_dir, tmp_path, monkeypatch, capsys):
    from transformers import pipeline

    from hftl.training.train import run

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    # The baseline: the same fixed-L2 L-BFGS head on the untuned body's features.
    probe = run(
        load_recipe(
            _recipe(text_recipe, tiny_st_dir, {"name": "feature_extraction", "feature_extraction": {"l2": 1.0}}),
            [f"output.dir={tmp_path / 'probe'}"],
        )
    )
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(load_recipe(_recipe(text_recipe, tiny_st_dir, SETFIT)))
    assert not [w for w in caught if "pin_memory" in str(w.message)], "no memory pinning on the CPU, so no warning"
    out = capsys.readouterr().out
    assert "[setfit] body tuned in" in out and "640 pairs from 32 examples of 2 classes, 40 contrastive steps" in out
    assert "head fitted as setfit's: scikit-learn LogisticRegression(C=1 fixed) on 32 tuned-body features" in out
    log = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    tuning = next(r["body_tuning"] for r in log if "body_tuning" in r)
    assert tuning["pairs"] == 640 and tuning["body_steps"] == 40 and tuning["last_loss"] < tuning["first_loss"]
    # Learned: the tuned body's features separate the sentiment words; the untuned random body's do not.
    test, baseline = result.metrics["test"]["accuracy"], probe.metrics["test"]["accuracy"]
    assert test >= 0.75 and test >= baseline + 0.1, (test, baseline)
    # The body changed and is the run's own saved model (pooled classifier: body + linear head).
    saved = load_file(str(result.run_dir / "model.safetensors"))
    untuned = load_file(str(probe.run_dir / "model.safetensors"))
    changed = [k for k in saved if k.startswith("body.") and not torch.equal(saved[k], untuned[k])]
    assert len(changed) > 10
    # The head read unit-length features (the folder's modules.json ends with Normalize), and so does the saved run.
    assert json.loads((result.run_dir / "config.json").read_text())["normalize"] is True
    card = (result.run_dir / "README.md").read_text()
    assert "Body tuned first (SetFit, contrastive): 640 sentence pairs drawn from 32 training examples" in card
    assert "40 steps of batch 16" in card
    # Loaded back as any run is, the saved model classifies new reviews as well as the run scored its test split.
    fresh = make_reviews(100, seed=7)
    pipe = pipeline("text-classification", model=str(result.run_dir))
    labels = [p["label"] for p in pipe([r["text"] for r in fresh])]
    assert sum(label == r["label"] for label, r in zip(labels, fresh)) / len(fresh) >= 0.7
    assert main(["predict", str(result.run_dir), "--text", fresh[0]["text"], "--text", fresh[1]["text"]]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [line.split("\t")[1].split()[0] for line in printed] == labels[:2]


def test_setfit_resumes_after_a_kill_with_the_tuned_body_from_the_cache(
    text_recipe, tiny_st_dir, tmp_path, monkeypatch, capsys
):
    from hftl.training.train import run

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    strategy = {**SETFIT, "setfit": {**SETFIT["setfit"], "finetune_head": True, "max_body_steps": 6}}
    path = _recipe(text_recipe, tiny_st_dir, strategy, epochs=4, save_steps=2, eval_steps=2)
    whole = run(load_recipe(path, [f"output.dir={tmp_path / 'whole'}"]))
    capsys.readouterr()
    killed = [f"output.dir={tmp_path / 'killed'}"]
    assert run_killed_after_checkpoint(path, killed, 2) == -9
    resumed = run(load_recipe(path, killed), resume=True)
    out = capsys.readouterr().out
    assert "[setfit] tuned body loaded from the cache" in out and "[resume] continuing from" in out
    a, b = (load_file(str(r.run_dir / "model.safetensors")) for r in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["test"] == whole.metrics["test"]


def test_setfit_on_the_checkpoints_own_pooler_is_a_recipe_error(text_recipe, tiny_bert_dir, tmp_path, monkeypatch):
    from hftl.training.train import run

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    path = _recipe(text_recipe, tiny_bert_dir, SETFIT)  # a plain BERT folder: auto pooling is its pooler
    with pytest.raises(RecipeError, match=r"key 'model\.pooling'.*Set model\.pooling: mean"):
        run(load_recipe(path))


def test_the_advisor_knows_setfit_for_few_shot_text():
    from hftl.analysis.advice_rules import FE, SETFIT, TABLE, Measurements, decide, neighbours, rung_settings

    few = decide(Measurements(32, 0.6, 0.62, 0.55, n_classes=2, text=True))  # 16 per class, ordinary features
    assert (few.size_band, few.rung.label, few.runner_up.label) == ("few-shot", SETFIT, FE)
    settings = rung_settings(few.rung, 32, 16, images=False, pooling="pooler")
    assert settings["strategy.name"] == SETFIT and settings["model.pooling"] == "mean"
    assert [r.label for r in neighbours(SETFIT)] == [FE, "full"]
    # Not few-shot: 150 per class, images, or an unknown label count read the size bands as before.
    for m in (
        Measurements(300, 0.6, 0.62, 0.55, n_classes=2, text=True),
        Measurements(32, 0.6, 0.62, 0.55, n_classes=2, text=False),
        Measurements(32, 0.6, 0.62, 0.55),
    ):
        d = decide(m)
        assert (d.size_band, d.rung.label) == ("small", TABLE[("small", "ordinary")].rung) != ("small", SETFIT), m


@pytest.mark.distributed
def test_setfit_under_two_processes_tunes_one_body(text_recipe, tiny_st_dir, tmp_path, monkeypatch):
    """2 forked ranks (gloo): the transformers Trainer inside setfit runs DDP over both (batch 16 per process: half
    the steps), and both ranks hold the same tuned body and head at the checkpoint."""
    import hftl.training.train
    from tests.test_reliability import run_child

    monkeypatch.setenv("HFTL_CACHE_DIR", str(tmp_path / "cache"))
    saved = hftl.training.train.save_checkpoint

    def save_and_dump(accelerator, model, optimizer, run_dir, state, *args, **kwargs):
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(tensors, str(run_dir.parent / f"dump-rank{accelerator.process_index}"))
        return saved(accelerator, model, optimizer, run_dir, state, *args, **kwargs)

    monkeypatch.setattr(hftl.training.train, "save_checkpoint", save_and_dump)  # inherited by the forked ranks
    log = tmp_path / "ranks.log"
    assert run_child(["run", str(_recipe(text_recipe, tiny_st_dir, SETFIT))], log, processes=2) == 0, log.read_text()
    log_lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tuning = next(r["body_tuning"] for r in log_lines if "body_tuning" in r)
    assert (tuning["pairs"], tuning["body_steps"]) == (640, 20)
    rank0, rank1 = (load_file(str(tmp_path / f"dump-rank{r}")) for r in range(2))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    untuned = load_file(str(tiny_st_dir / "model.safetensors"))
    assert not torch.equal(
        rank0["body.encoder.layer.0.attention.self.query.weight"],
        untuned["encoder.layer.0.attention.self.query.weight"],
    )


def test_the_head_reads_unit_length_features_only_where_the_checkpoint_and_strategy_say_so(
    text_recipe, tiny_st_dir, tiny_bert_dir, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    from hftl.models.pooled_model import pool
    from hftl.tasks import TASKS

    task = TASKS.get("text-classification")
    plain_st = tmp_path / "plain-st"  # a sentence-transformers folder whose pipeline ends at Pooling
    shutil.copytree(tiny_st_dir, plain_st)
    modules = json.loads((plain_st / "modules.json").read_text())[:2]
    (plain_st / "modules.json").write_text(json.dumps(modules))

    def built(folder: Path, strategy: dict, pooling: str = "auto"):
        recipe = load_recipe(text_recipe(model={"checkpoint": str(folder), "pooling": pooling}, strategy=strategy))
        return task.build_model(recipe, ["neg", "pos"])

    no_unit = {**SETFIT, "setfit": {**SETFIT["setfit"], "normalize": False}}
    cases = [
        (tiny_st_dir, SETFIT, True),
        (tiny_st_dir, no_unit, False),  # the option turns it off
        (tiny_st_dir, {"name": "prototypes"}, False),  # other strategies keep the raw pooled features
        (plain_st, SETFIT, False),  # no Normalize in modules.json
    ]
    for folder, strategy, unit in cases:
        assert built(folder, strategy).config.normalize is unit, (folder.name, strategy["name"], unit)
    assert built(tiny_bert_dir, SETFIT, pooling="mean").config.normalize is False  # not a sentence-transformers folder

    model = built(tiny_st_dir, SETFIT).eval()
    batch = {
        "input_ids": torch.tensor([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]]),
        "attention_mask": torch.tensor([[1] * 5, [1] * 3 + [0] * 2]),
    }
    with torch.no_grad():
        states = model.body(**batch).last_hidden_state
        unit = torch.nn.functional.normalize(pool(states, batch["attention_mask"], "mean"), dim=-1)
        assert torch.allclose(model(**batch).logits, model.classifier(unit), atol=1e-6)
        assert not torch.allclose(
            model(**batch).logits, model.classifier(pool(states, batch["attention_mask"], "mean"))
        )
    # Saved and loaded the transformers way, the flag and the predictions come back.
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "saved")).eval()
    assert loaded.config.normalize is True
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-6)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_logistic_head_is_scikit_learns(classes):
    """The head set in the linear layer gives scikit-learn LogisticRegression's class probabilities."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from hftl.strategies.setfit import fit_logistic_head

    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(classes, 8, generator=generator)
    y = torch.arange(classes).repeat(10)
    x = centres[y] + 0.8 * torch.randn(len(y), 8, generator=generator)
    linear = torch.nn.Linear(8, classes)
    chain = [torch.nn.Dropout(0.1), linear]
    fit = fit_logistic_head(chain, list(x), y.tolist(), list(x[:6]), y[:6].tolist(), grid=(0.5,))
    assert fit is not None and fit.c == 0.5 and fit.scores == {0.5: fit.validation_accuracy}
    expected = LogisticRegression(C=0.5, max_iter=1000).fit(x.double().numpy(), y.numpy()).predict_proba(x.numpy())
    with torch.no_grad():
        got = torch.softmax(linear(x), dim=-1).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    picked = fit_logistic_head(chain, list(x), y.tolist(), list(x[:6]), (1 - y[:6] % 2).tolist(), grid=(1e-4, 1.0))
    assert list(picked.scores) == [1e-4, 1.0] and picked.c == max(picked.scores, key=picked.scores.get)

"""The training loop end to end on a tiny random BERT and a learnable toy task."""

from __future__ import annotations

import json

import pytest

from hftl.config.recipe import load_recipe
from hftl.config.run_folder import read_log
from hftl.training.train import run


def test_loss_falls_and_model_reloads_with_pipeline(text_recipe):
    result = run(load_recipe(text_recipe()))
    log = read_log(result.run_dir)
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.metrics["test"]["accuracy"] > 0.9, result.metrics
    assert json.loads((result.run_dir / "run_status.json").read_text())["status"] == "completed"
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(result.run_dir))
    assert pipe("a great movie")[0]["label"] == "pos"
    assert pipe("an awful plot")[0]["label"] == "neg"


def test_eval_sample_scores_a_fixed_sample_in_the_loop_and_the_full_splits_at_the_end(text_recipe, monkeypatch):
    """train.eval_sample: the loop's evaluations see N validation rows (the same rows each time); the best model
    is then scored once on the whole validation and test splits, which metrics.json reports."""
    import hftl.training.train

    seen: list[tuple[int, tuple]] = []

    def counting(real):
        def scored(model, dl, *args, **kwargs):
            seen.append((len(dl.dataset), tuple(dl.dataset["text"]) if "text" in dl.dataset.column_names else ()))
            return real(model, dl, *args, **kwargs)

        return scored

    for name in ("evaluate", "score"):  # the loop's evaluations; the final scoring (with the per-class report)
        monkeypatch.setattr(hftl.training.train, name, counting(getattr(hftl.training.train, name)))
    recipe = load_recipe(
        text_recipe(train={"max_steps": 6, "eval_steps": 2, "eval_sample": 7, "min_steps": 0, "seed": 0})
    )
    final = run(recipe).metrics
    sizes = final["examples"]
    assert sizes["validation_sample"] == 7 and sizes["validation"] > 7
    in_loop, at_end = seen[:3], seen[3:]
    assert [n for n, _ in in_loop] == [7, 7, 7] and len({rows for _, rows in in_loop}) == 1
    assert sorted(n for n, _ in at_end) == sorted([sizes["validation"], sizes["test"]])
    assert final["validation"]["accuracy"] * sizes["validation"] == pytest.approx(
        round(final["validation"]["accuracy"] * sizes["validation"])
    )


def test_evaluation_batches_are_sorted_by_length_and_score_what_sequential_batches_score(text_recipe):
    """The eval loaders batch rows longest first (less padding); every row is scored once and the scores are those
    of plain sequential batches over the same model."""
    import torch
    from accelerate import Accelerator

    from hftl.tasks import TASKS
    from hftl.training.build import build_loaders, load_data
    from hftl.training.evaluation import score

    recipe = load_recipe(text_recipe(train={"eval_batch_size": 4}))
    task, accelerator = TASKS.get(recipe.task), Accelerator(cpu=True)
    data = load_data(recipe, accelerator)
    _, eval_dls = build_loaders(recipe, task, data)
    split = data.encoded["validation"]
    batches = list(eval_dls["validation"].batch_sampler)
    lengths = [[split["length"][i] for i in b] for b in batches]
    assert sorted(i for b in batches for i in b) == list(range(len(split)))
    flat = [n for b in lengths for n in b]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) > 1, lengths
    torch.manual_seed(0)
    model = task.build_model(recipe, data.labels)
    sequential = torch.utils.data.DataLoader(
        split, batch_size=4, collate_fn=task.collator(data.processor, recipe, False)
    )
    got, want = (
        score(model, dl, task, data.labels, accelerator).metrics for dl in (eval_dls["validation"], sequential)
    )
    assert got["accuracy"] == want["accuracy"] and got["loss"] == pytest.approx(want["loss"], rel=1e-5)


def test_steps_that_mean_nothing_to_the_user_draw_no_library_bar(text_recipe, capsys):
    """transformers draws a "Writing model shards" bar at each save_pretrained; saved mid-epoch (the best model, a
    checkpoint) it would cut the run's own progress bar. datasets draws "Flattening the indices" when the labels
    column is added to a split carved from the data. Both are off for those steps and as they were after."""
    import datasets
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled(), datasets.is_progress_bar_enabled()  # another test may have run quiet
    hf_logging.enable_progress_bar()
    datasets.enable_progress_bars()
    try:
        run(load_recipe(text_recipe(train={"eval_steps": 3, "save_steps": 3, "max_steps": 9})))
        err = capsys.readouterr().err
        assert "Tokenizing train" in err  # the bars that say something stay
        assert "Writing model shards" not in err and "Flattening the indices" not in err
        assert hf_logging.is_progress_bar_enabled() and datasets.is_progress_bar_enabled()
    finally:
        if not was[0]:
            hf_logging.disable_progress_bar()
        if not was[1]:
            datasets.disable_progress_bars()

"""Domain adaptation (hftl/training/adaptation.py): recipe errors, the two losses against hand-written oracles,
a run that scores target_test and keeps the domain classifier out of the published model, and an exact resume."""

from __future__ import annotations

import csv
import json
import math
import os
import signal

import pytest
import torch

from hftl.cli import main
from hftl.config.recipe import load_recipe
from hftl.config.run_folder import read_log
from hftl.training.adaptation_methods import TargetBatches, coral_loss, dann_coefficient, gather_rows, merge_batches
from tests.conftest import make_reviews
from tests.test_strategies import run_killed_after_checkpoint, weights


@pytest.fixture
def target_csv(tmp_path):
    """Other 'reviews' (another seed) with an extra numeric column, as unlabeled target data + labeled test."""
    path = tmp_path / "target.csv"
    rows = [{"review": r["text"], "sentiment": r["label"], "stars": i % 5} for i, r in enumerate(make_reviews(200, 7))]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def adapted(text_recipe, target_csv, method="dann", **sections):
    data = {
        "target": {"source": str(target_csv), "columns": {"text": "review", "label": "sentiment"}, "test_size": 0.25}
    }
    return text_recipe(
        data=data,
        strategy={"name": "full", "adaptation": {"method": method}},
        train={"epochs": 1, "min_steps": 0, "log_steps": 1, **sections.get("train", {})},
        output={"keep_checkpoints": "last"},  # the tests read the last resumable state
    )


def test_dann_coefficient_ramps_from_0_towards_1():
    """2 / (1 + exp(-10 p)) - 1 (Ganin et al.): 0 at the start; at p = 1, 2 / (1 + e^-10) - 1 = 0.9999092."""
    assert dann_coefficient(0.0) == 0.0 and dann_coefficient(1.0) == pytest.approx(0.9999092, abs=1e-6)


def test_coral_loss_of_a_hand_computed_case_and_its_properties():
    """Source rows (1, 0), (-1, 0): mean 0, covariance (n - 1 = 1) [[2, 0], [0, 0]]. Target rows (0, 1), (0, -1),
    (0, 0): covariance [[0, 0], [0, (1 + 1) / 2]] = [[0, 0], [0, 1]]. Difference [[2, 0], [0, -1]]: squared
    Frobenius norm 4 + 1 = 5, over 4 d^2 = 16: 0.3125."""
    s = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, -1.0], [0.0, 0.0]])
    assert coral_loss(s, t).item() == pytest.approx(0.3125, abs=1e-7)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, 3, generator=g), torch.randn(30, 3, generator=g) * 2
    assert coral_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)  # identical batches: no distance
    assert coral_loss(a, b).item() == pytest.approx(coral_loss(b, a).item(), rel=1e-6)  # symmetric
    assert coral_loss(a, b + 5.0).item() == pytest.approx(coral_loss(a, b).item(), rel=1e-5)  # shift: no change
    assert coral_loss(2 * a, 2 * b).item() == pytest.approx(16 * coral_loss(a, b).item(), rel=1e-5)  # cov x 4


def test_target_batches_depend_only_on_seed_and_index():
    a = list(TargetBatches(10, 4, seed=3, total=7))
    assert a == list(TargetBatches(10, 4, seed=3, total=7)) and a != list(TargetBatches(10, 4, seed=4, total=7))
    assert all(len(b) == 4 for b in a) and sorted(a[0] + a[1]) == sorted(set(a[0] + a[1]))  # no repeat in an epoch


def test_merged_batch_pads_texts_and_hides_target_labels():
    source = {
        "input_ids": torch.ones(2, 3, dtype=torch.long),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
        "labels": torch.tensor([0, 1]),
    }
    target = {
        "input_ids": torch.full((3, 5), 7),
        "attention_mask": torch.ones(3, 5, dtype=torch.long),
        "labels": torch.tensor([0, 0, 0]),
    }
    merged = merge_batches(source, target, pad_id=0)
    assert merged["input_ids"].shape == (5, 5) and merged["labels"].tolist() == [0, 1, -100, -100, -100]
    assert merged["attention_mask"][:2, 3:].sum() == 0


@pytest.mark.parametrize(
    "change, key",
    [
        ({"data": {"target": None}}, "strategy.adaptation"),
        ({"strategy": {"name": "feature_extraction"}}, "strategy.adaptation"),
        ({"columns": {"text": "stars"}}, "data.target.columns.text"),
        ({"columns": {"textt": "review"}}, "data.target.columns.textt"),
    ],
)
def test_bad_adaptation_recipes_name_the_key_and_exit_2(text_recipe, target_csv, capsys, change, key):
    path = adapted(text_recipe, target_csv)
    doc = __import__("yaml").safe_load(path.read_text())
    if "columns" in change:
        doc["data"]["target"]["columns"] = change["columns"]
    if "data" in change:
        doc["data"].pop("target")
    if "strategy" in change:
        doc["strategy"]["name"] = change["strategy"]["name"]
    path.write_text(__import__("yaml").safe_dump(doc))
    command = "run" if key == "data.target.columns.text" else "plan"  # the input type is known once the data is read
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err
    assert f"key '{key}'" in err
    if "strategy" in change:  # the hint lists the strategies that train the body, from their registrations
        assert "trains the body: strategy.name: full / lora / partial / progressive / two_stage." in err


@pytest.mark.parametrize("method", ["dann", "coral"])
def test_adapted_run_scores_target_test_and_publishes_a_plain_model(text_recipe, target_csv, tmp_path, method, capsys):
    from transformers import pipeline

    from hftl.training.train import run

    result = run(load_recipe(adapted(text_recipe, target_csv, method)))
    assert (
        set(result.metrics["target_test"]) >= {"accuracy", "f1_macro"}
        and result.metrics["examples"]["target_test"] == 50
    )
    out = capsys.readouterr().out
    assert f"[adaptation] {method} (weight 1)" in out and "150 unlabeled examples, 50 labeled" in out
    source, target = result.metrics["test"]["accuracy"], result.metrics["target_test"]["accuracy"]
    assert f"accuracy: source test {source:.4f}  target test {target:.4f}  gap {source - target:+.4f}" in out
    # Visible: each logged step splits the total loss into the task loss and the method's term (log_steps 1).
    log = read_log(result.run_dir)
    logged = [r for r in log if "adaptation" in r]
    term = "coral_distance" if method == "coral" else "domain_loss"
    assert len(logged) == result.metrics["steps"]
    for r in logged:
        assert r["loss"] == pytest.approx(r["adaptation"]["task_loss"] + r["adaptation"][term], rel=1e-4, abs=1e-6)
    if method == "dann":
        assert all(0.0 <= r["adaptation"]["domain_accuracy"] <= 1.0 for r in logged)
    card = (result.run_dir / "README.md").read_text()
    assert f"Target domain: domain adaptation {method}" in card and "| target_test |" in card
    assert "![domain adaptation" in card and (result.run_dir / "adaptation.png").is_file()
    assert ("CORAL distance " if method == "coral" else "domain-classifier accuracy (0.5") in card
    assert f"on the target (gap {source - target:+.4f})" in card
    checkpoint = sorted((result.run_dir / "checkpoints").iterdir())[-1]
    assert (checkpoint / "domain_classifier.safetensors").is_file() == (method == "dann")
    assert not any(k.startswith("domain") for k in weights(result.run_dir / "model.safetensors"))
    assert pipeline("text-classification", model=str(result.run_dir))("a great film")[0]["label"] in {"pos", "neg"}


def test_source_only_run_with_target_data_scores_target_test(text_recipe, target_csv, tmp_path):
    from hftl.training.train import run

    path = adapted(text_recipe, target_csv)
    doc = __import__("yaml").safe_load(path.read_text())
    doc["strategy"].pop("adaptation")
    doc["strategy"]["name"] = "feature_extraction"  # cached features: target_test is cached too
    path.write_text(__import__("yaml").safe_dump(doc))
    assert "accuracy" in run(load_recipe(path)).metrics["target_test"]


def test_dann_resume_after_sigkill_matches_an_uninterrupted_run(text_recipe, target_csv, tmp_path, capsys):
    """Killed right after the step-7 checkpoint (mid-epoch): model, domain classifier and log end the same."""
    from hftl.training.train import run

    path = adapted(text_recipe, target_csv, train={"save_steps": 7, "max_steps": 14})
    straight = run(load_recipe(path, [f"output.dir={tmp_path / 'straight'}"])).run_dir
    killed = tmp_path / "killed"
    assert run_killed_after_checkpoint(path, [f"output.dir={killed}"], step=7) == -signal.SIGKILL
    capsys.readouterr()
    resumed = run(load_recipe(path, [f"output.dir={killed}"]), resume=True).run_dir
    assert "(step 7)" in capsys.readouterr().out
    for name in ("model", "domain_classifier"):
        a = weights(straight / f"checkpoints/step-00000014/{name}.safetensors")
        b = weights(resumed / f"checkpoints/step-00000014/{name}.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6, name
    losses = lambda d: [r["loss"] for r in read_log(d) if "loss" in r]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-6) and not any(map(math.isnan, losses(straight)))


# --------------------------------------------------------------------------- several processes
def _fork_two(tmp_path, work) -> list[dict]:
    """Run ``work(rank)`` in 2 forked processes joined by a gloo process group; their torch.save'd results."""
    import socket

    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pids = []
    for rank in range(2):
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            code = 1
            try:
                dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
                torch.save(work(rank), tmp_path / f"rank{rank}.pt")
                dist.destroy_process_group()
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids] == [0, 0]
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]


def test_coral_over_two_processes_is_the_one_process_coral_of_the_global_batch(tmp_path):
    """Rows split unevenly over 2 processes (5 + 3 source, 4 + 4 target): the gathered CORAL loss equals the
    one-process loss on all rows, and each process's gradient, averaged as DDP averages, is the one-process one."""
    g = torch.Generator().manual_seed(0)
    source, target = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g) * 2 + 1
    cut = {"source": [(0, 5), (5, 8)], "target": [(0, 4), (4, 8)]}

    def work(rank: int) -> dict:
        s = source[slice(*cut["source"][rank])].clone().requires_grad_(True)
        t = target[slice(*cut["target"][rank])].clone().requires_grad_(True)
        loss = coral_loss(gather_rows(s), gather_rows(t))
        loss.backward()
        return {"loss": loss.detach(), "source": s.grad, "target": t.grad}

    ranks = _fork_two(tmp_path, work)
    s, t = source.clone().requires_grad_(True), target.clone().requires_grad_(True)
    one = coral_loss(s, t)
    one.backward()
    for rank, got in enumerate(ranks):
        torch.testing.assert_close(got["loss"], one.detach(), rtol=1e-6, atol=1e-9)
        # Every process backpropagates the same global loss: its rows get 2x their gradient; DDP's mean halves it.
        torch.testing.assert_close(got["source"] / 2, s.grad[slice(*cut["source"][rank])], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(got["target"] / 2, t.grad[slice(*cut["target"][rank])], rtol=1e-5, atol=1e-9)
    assert gather_rows(source) is source  # one process: nothing gathered


def test_target_batches_are_sharded_over_processes_as_accelerate_prepares_them():
    """Each process gets every other batch of the one target stream: distinct batches per step, none lost."""
    from accelerate.data_loader import prepare_data_loader

    stream = list(TargetBatches(40, 4, seed=1, total=12))
    loader = torch.utils.data.DataLoader(list(range(40)), batch_sampler=TargetBatches(40, 4, seed=1, total=12))
    shards = [
        [b.tolist() for b in prepare_data_loader(loader, num_processes=2, process_index=r, put_on_device=False)]
        for r in range(2)
    ]
    assert shards[0] == stream[0::2] and shards[1] == stream[1::2]


@pytest.mark.slow
@pytest.mark.distributed
def test_coral_under_two_processes_keeps_ranks_identical_and_resumes_exactly(
    text_recipe, target_csv, tmp_path, monkeypatch
):
    """A 2-process CORAL run (gloo, forked ranks): every checkpoint holds the same weights on both ranks; killed
    right after the step-3 checkpoint and resumed, it ends exactly where the uninterrupted run ends."""
    import hftl.training.train
    from tests.test_reliability import assert_same_model, run_child

    saved = hftl.training.train.save_checkpoint

    def save_and_dump(accelerator, model, optimizer, run_dir, state, *args, **kwargs):
        path = saved(accelerator, model, optimizer, run_dir, state, *args, **kwargs)
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        save_file(tensors, str(run_dir.parent / f"dump-{run_dir.name}-rank{accelerator.process_index}-{state['step']}"))
        return path

    monkeypatch.setattr(hftl.training.train, "save_checkpoint", save_and_dump)  # inherited by the forked ranks
    path = adapted(text_recipe, target_csv, "coral", train={"save_steps": 3, "max_steps": 6})
    log = tmp_path / "ranks.log"
    straight = ["run", str(path), f"output.dir={tmp_path / 'straight'}"]
    assert run_child(straight, log, processes=2) == 0, log.read_text()[-3000:]
    for step in (3, 6):
        rank0, rank1 = (weights(tmp_path / f"dump-straight-rank{r}-{step}") for r in range(2))
        assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0), step
    killed = ["run", str(path), f"output.dir={tmp_path / 'killed'}"]
    assert run_child(killed, log, processes=2, HFTL_TEST_KILL_AT="saved:3") == -signal.SIGKILL
    assert run_child([*killed, "--resume"], log, processes=2) == 0, log.read_text()[-3000:]
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["num_processes"] == 2
    assert_same_model(tmp_path / "killed", tmp_path / "straight")


def test_shipped_text_shift_recipe_splits_the_titles_into_unlabeled_and_target_test():
    """recipes/bbc-bodies-to-titles.yaml: the target titles are cut in two disjoint halves (seeded by train.seed):
    the unlabeled target for adaptation and the labeled target_test, each holding all 5 sections."""
    from hftl.config.registry import TASKS
    from hftl.training.adaptation import target_splits

    recipe = load_recipe("bbc-bodies-to-titles")
    unlabeled, test = target_splits(recipe, TASKS.get(recipe.task))
    assert len(unlabeled) + len(test) == 1031 and abs(len(test) - 1031 * 0.5) <= 1
    assert set(unlabeled.column_names) == set(test.column_names) == {"text", "label"}
    assert not set(unlabeled["text"]) & set(test["text"])
    assert set(test["label"]) == set(unlabeled["label"]) == set(range(5))
    other, other_test = target_splits(load_recipe("bbc-bodies-to-titles", ["train.seed=1"]), TASKS.get(recipe.task))
    assert other_test["text"] != test["text"] and len(other) == len(unlabeled)


def test_benchmark_table_and_results_file_per_recipe():
    """benchmarks/adaptation.py: one JSON per recipe (MNIST keeps docs/adaptation.json); mean ± std per method."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import adaptation as bench

    assert bench.default_out(Path("recipes/mnist-to-digits.yaml")).name == "adaptation.json"
    assert bench.default_out(Path("recipes/bbc-bodies-to-titles.yaml")).name == "adaptation-bbc-bodies-to-titles.json"
    rows = [
        {"method": m, "seed": s, "test": t, "target_test": g, "target_test_majority": 0.25, "train_seconds": 10.0}
        for m, s, t, g in [("dann", 1, 0.9, 0.6), ("source", 0, 0.9, 0.5), ("source", 1, 0.8, 0.7)]
    ]
    lines = bench.report(rows).splitlines()
    assert lines[2] == "| source | 0,1 | 0.850 ± 0.071 | 0.600 ± 0.141 | 0.250 ± 0.000 | 10 |"
    assert lines[3].startswith("| dann | 1 | 0.900 ± 0.000 | 0.600 ± 0.000 |") and len(lines) == 4

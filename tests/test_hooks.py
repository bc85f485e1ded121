"""Run hooks (hftl/training/hooks.py, run_hooks.py; hftl/publish/run_hooks.py): which features a recipe
turns on and in what order, each hook's self-description, the loop that names none of them, and the
device-side loss sum (no per-batch sync)."""

from __future__ import annotations

import ast
import inspect
import random
import textwrap

import pytest
import torch

from hftl.config.recipe import load_recipe
from hftl.publish import run_hooks as publish_hooks
from hftl.training import run_hooks, train
from hftl.training.context import LoopState, RunContext
from hftl.training.hooks import EVENTS, HOOKS, RunHook, hooks_for


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({}, ["feature_cache", "card"]),
        ({"strategy": {"name": "feature_extraction"}}, ["feature_cache", "probe_head", "card"]),
        (
            {"strategy": {"name": "feature_extraction", "feature_extraction": {"head_solver": "adamw"}}},
            ["feature_cache", "card"],
        ),
        ({"strategy": {"name": "prototypes"}}, ["feature_cache", "probe_head", "card"]),
        ({"hub": {"push": True, "repo_id": "alice/x"}}, ["feature_cache", "card", "hub"]),
    ],
)
def test_a_recipe_turns_on_its_hooks_in_their_order(text_recipe, sections, expected) -> None:
    assert hooks_for(load_recipe(text_recipe(**sections))).names == expected


def test_target_data_turns_on_adaptation_before_the_hub(text_recipe, tmp_path) -> None:
    target = tmp_path / "target.csv"
    target.write_text("text,label\na fine film,pos\n")
    recipe = load_recipe(
        text_recipe(
            data={"target": {"source": str(target)}},
            strategy={"name": "full", "adaptation": {"method": "coral"}},
            hub={"push": True, "repo_id": "alice/x"},
        )
    )
    assert hooks_for(recipe).names == ["feature_cache", "adaptation", "card", "hub"]


def test_every_hook_describes_itself() -> None:
    specs = [spec for _, spec in HOOKS.items()]
    assert {spec.name for spec in specs} == {
        "body_tuning",
        "feature_cache",
        "probe_head",
        "mixup",
        "task_loss",
        "adaptation",
        "ema",
        "card",
        "hub",
    }
    assert len({spec.order for spec in specs}) == len(specs)  # the order is explicit, never a tie
    for spec in specs:
        assert spec.summary and spec.when and inspect.getmodule(spec.make) in (run_hooks, publish_hooks)
        assert spec.events and set(spec.events) <= set(EVENTS)
    assert {spec.name: spec.events for spec in specs}["adaptation"] == [
        "on_data",
        "on_plan",
        "param_groups",
        "before_prepare",
        "loss",
        "log_fields",
    ]


def test_a_hook_order_already_taken_is_refused() -> None:
    from hftl.training.hooks import run_hook

    with pytest.raises(ValueError, match="order 10 is taken"):
        run_hook("another", order=10, applies=lambda recipe: True, when="never")(RunHook)


def test_the_loop_reads_in_80_lines_and_names_no_feature() -> None:
    source = textwrap.dedent(inspect.getsource(train.run))
    tree = ast.parse(source).body[0]
    assert tree.end_lineno - tree.lineno + 1 <= 80
    words = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    words |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    words |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    features = ("adapt", "cache", "probe", "hub", "push", "fitter", "target")
    assert not [w for w in words if any(f in w.lower() for f in features)]


def test_the_loss_summed_on_the_device_is_the_host_sum_bit_for_bit(text_recipe) -> None:
    recipe = load_recipe(text_recipe())
    ctx = RunContext(recipe, None, recipe.run_dir, False, state=LoopState(loss_sum=0.125))
    rng = random.Random(0)
    losses = [torch.tensor(rng.uniform(0.01, 3.0), dtype=torch.float32) for _ in range(97)]
    host = 0.125
    for loss in losses:  # what the loop did before: one .item() per micro-batch
        host += loss.detach().float().item() / 3
        ctx.add_loss(loss, 3)
    assert ctx.synced_state().loss_sum == host
    single = torch.tensor(0.125, dtype=torch.float32)
    for loss in losses:
        single += loss / 3
    assert single.item() != host  # a float32 sum would not do: the equality above is a real check
    ctx.reset_loss()
    ctx.add_loss(losses[0], 1)
    assert ctx.synced_state().loss_sum == losses[0].item()

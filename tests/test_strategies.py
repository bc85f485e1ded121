"""Transfer strategies, table-driven over (strategy x architecture) on tiny random models.

Each case plans a strategy, then trains a few real AdamW steps with the loop's own
pieces (``apply_plan`` + ``build_optimizer`` + ``lr_lambdas``) and checks, step by
step, that exactly the planned parameters changed (frozen weights and BatchNorm
statistics bitwise unchanged) and that every group ran at its planned LR. Slower
tests run the real loop: LoRA save and reload, and resuming mid-schedule.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import (
    BertForSequenceClassification,
    ResNetForImageClassification,
    TimmWrapperForImageClassification,
    ViTForImageClassification,
)

from hftl.config.errors import HftlError, RecipeError
from hftl.config.recipe import load_recipe, validate_recipe
from hftl.config.run_folder import read_log
from hftl.strategies import STRATEGIES, wrap_model
from hftl.strategies.plan import Plan, apply_plan, lr_lambdas
from hftl.training.build import build_optimizer, plan_for
from tests.tiny_models import SMALL, bert_config, resnet_config, timm_config, vit_config

STEPS, PER_EPOCH = 6, 2  # every case trains 6 optimizer steps, "epochs" of 2 steps
LR, HEAD_LR, WD = 1e-2, 5e-2, 0.01


# --------------------------------------------------------------------------- architectures
def _images(n_labels: int, size: int) -> Callable[[torch.Generator], dict]:
    return lambda g: {
        "pixel_values": torch.randn(4, 3, size, size, generator=g),
        "labels": torch.randint(0, n_labels, (4,), generator=g),
    }


def _tokens(g: torch.Generator) -> dict:
    return {"input_ids": torch.randint(5, 50, (4, 8), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}


@dataclass(frozen=True)
class Arch:
    id: str
    task: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], dict]
    freeze_pattern: str  # for partial freezing by pattern: the BatchNorm (or norm) of a block that keeps training
    lora_targets: tuple[str, ...] | None = None


ARCHS = [
    Arch(
        "bert",
        "text-classification",
        lambda: BertForSequenceClassification(bert_config(**SMALL, vocab_size=50, max_position_embeddings=16)),
        _tokens,
        r"encoder\.layer\.1\..*LayerNorm",
        ("query", "value"),
    ),
    Arch(
        "vit",
        "image-classification",
        lambda: ViTForImageClassification(vit_config(**SMALL, image_size=16, num_labels=3)),
        _images(3, 16),
        r"layers\.1\.layernorm_after",
        ("q_proj", "v_proj"),
    ),
    Arch(
        "resnet",
        "image-classification",
        lambda: ResNetForImageClassification(resnet_config(num_labels=3)),
        _images(3, 32),
        r"stages\.1\..*normalization",
    ),
    Arch(
        "timm-efficientnet",
        "image-classification",
        lambda: TimmWrapperForImageClassification(timm_config("efficientnet_lite0")),
        _images(3, 32),
        r"blocks\.5\..*bn",
    ),
]


# --------------------------------------------------------------------------- strategies and what they must do
def _progressive_starts(n: int, per_stage: int, every: float, until: int | None = None) -> list[int | None]:
    """Independent oracle: body group at distance d from the head (d = 1 is the top) joins at ((d-1)//k + 1)*every
    (rounded to a step)."""
    starts: list[int | None] = []
    for depth in range(n - 1):
        d = n - 1 - depth
        starts.append(round(((d - 1) // per_stage + 1) * every) if until is None or d <= until else None)
    return starts + [0]


@dataclass(frozen=True)
class Case:
    id: str
    section: Callable[[Arch], dict]
    starts: Callable[[int], list[int | None]] | None  # group-level: first step per group, input to head
    peaks: Callable[[int], list[float]] = lambda n: [LR] * (n - 1) + [HEAD_LR]
    optim: dict = field(default_factory=dict)
    archs: tuple[str, ...] = ()  # empty: every architecture


def _geometric(lo: float, hi: float, n: int) -> list[float]:
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


CASES = [
    Case("full", lambda a: {"name": "full"}, lambda n: [0] * n),
    Case("feature_extraction", lambda a: {"name": "feature_extraction"}, lambda n: [None] * (n - 1) + [0]),
    Case(
        "feature_extraction-bn-train",
        lambda a: {"name": "feature_extraction", "batchnorm": "train"},
        lambda n: [None] * (n - 1) + [0],
        archs=("resnet", "timm-efficientnet"),
    ),
    Case(
        "partial-groups",
        lambda a: {"name": "partial", "partial": {"freeze_groups": 2}},
        lambda n: [None, None] + [0] * (n - 2),
    ),
    Case(
        "partial-fraction",
        lambda a: {"name": "partial", "partial": {"freeze_fraction": 0.5}},
        lambda n: [None] * ((n - 1) // 2) + [0] * (n - (n - 1) // 2),
    ),
    Case("partial-patterns", lambda a: {"name": "partial", "partial": {"freeze_patterns": [a.freeze_pattern]}}, None),
    Case(
        "full-llrd",
        lambda a: {"name": "full", "llrd": {"decay": 0.5}},
        lambda n: [0] * n,
        peaks=lambda n: [LR * 0.5 ** (n - 1 - d) for d in range(n - 1)] + [HEAD_LR],
    ),
    Case(
        "full-discriminative-range",
        lambda a: {"name": "full", "discriminative": {"range": [1e-4, 1e-2]}},
        lambda n: [0] * n,
        peaks=lambda n: _geometric(1e-4, 1e-2, n),
        optim={"head_lr": None},
    ),
    Case(
        "two_stage",
        lambda a: {"name": "two_stage", "two_stage": {"head_epochs": 1, "body_lr_scale": 0.1}},
        lambda n: [PER_EPOCH] * (n - 1) + [0],
        peaks=lambda n: [LR * 0.1] * (n - 1) + [HEAD_LR],
    ),
    Case(
        "two_stage-bn-eval",
        lambda a: {"name": "two_stage", "batchnorm": "eval", "two_stage": {"head_epochs": 1}},
        lambda n: [PER_EPOCH] * (n - 1) + [0],
        archs=("resnet", "timm-efficientnet"),
    ),
    Case(
        "progressive-steps",
        lambda a: {"name": "progressive", "progressive": {"unit": "step", "every": 1, "groups_per_stage": 3}},
        lambda n: _progressive_starts(n, 3, 1),
    ),
    Case(  # percent of the run's steps: 20% of 6 steps = a stage every 1.2 steps (1, 2, 4, 5), whatever the epochs
        "progressive-percent",
        lambda a: {"name": "progressive", "progressive": {"unit": "percent", "every": 20, "groups_per_stage": 3}},
        lambda n: _progressive_starts(n, 3, STEPS * 0.2),
    ),
    Case(
        "progressive-epochs-until",
        lambda a: {"name": "progressive", "progressive": {"every": 1, "until": 2}},
        lambda n: _progressive_starts(n, 1, PER_EPOCH, until=2),
    ),
    Case(
        "lora",
        lambda a: {"name": "lora", "lora": {"r": 2, "target_modules": list(a.lora_targets)}},
        None,
        archs=("bert", "vit"),
    ),
]
TABLE = [
    pytest.param(arch, case, id=f"{case.id}-{arch.id}")
    for case in CASES
    for arch in ARCHS
    if not case.archs or arch.id in case.archs
]


def make_recipe(section: dict, task: str = "text-classification", **optim) -> Recipe:  # noqa: F821
    doc = {
        "name": "t",
        "task": task,
        "model": {"checkpoint": "tiny"},
        "data": {"source": "x.csv"},
        "strategy": section,
        "optim": {
            "lr": LR,
            "head_lr": HEAD_LR,
            "weight_decay": WD,
            "scheduler": "constant",
            "warmup_steps": 0,
            **optim,
        },
    }
    doc["optim"] = {k: v for k, v in doc["optim"].items() if v is not None}
    return validate_recipe(doc, "recipe.yaml")


def build(arch: Arch, recipe, total_steps: int = STEPS) -> tuple[nn.Module, Plan]:
    torch.manual_seed(0)
    model = arch.build()
    calibrate_batchnorm(model, arch.batch(torch.Generator().manual_seed(1)))
    model = wrap_model(model, recipe)
    return model, plan_for(model, recipe, PER_EPOCH, total_steps)


def calibrate_batchnorm(model: nn.Module, batch: dict) -> None:
    """Give BatchNorm statistics of real inputs, as a pretrained checkpoint has them: with the initial (0, 1),
    a random CNN's frozen layers can feed a constant to the next BatchNorm, whose weight then gets no gradient."""
    norms = [m for m in model.modules() if is_batchnorm(m)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics exactly
    with torch.no_grad():
        model.train()(**batch)
    for norm in norms:
        norm.momentum = 0.1


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def train_and_watch(model: nn.Module, plan: Plan, recipe, batch: dict, steps: int = STEPS):
    """The loop's strategy mechanics, step by step: yields (step, changed tensor names, LR per param group,
    the optimizer, the BatchNorm modules in train mode during the step)."""
    for name, param in model.named_parameters():  # as hftl/training/train.py does before accelerator.prepare
        param.requires_grad_(name in plan.ever_trainable())
    optimizer, names = build_optimizer(model, plan, recipe.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(plan, names))
    for step in range(steps):
        model.train()
        apply_plan(model, plan, step)
        training_norms = {n for n, m in model.named_modules() if is_batchnorm(m) and m.training}
        before = {k: v.clone() for k, v in model.state_dict().items()}
        lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
        yield step, changed, lrs, optimizer, training_norms


def expected_trainable(case: Case, arch: Arch, model: nn.Module, plan: Plan, step: int) -> set[str]:
    """Parameter names that must change at ``step``, from the case's own oracle (not from the plan)."""
    names = [n for n, _ in model.named_parameters()]
    if case.id == "lora":
        return {n for n in names if "lora_" in n or "modules_to_save" in n}
    if case.starts is None:  # freeze by pattern
        return {n for n in names if not re.search(arch.freeze_pattern, n)}
    starts = case.starts(len(plan.groups))
    return {
        p
        for g, start in zip(plan.groups, starts)
        if start is not None and start <= step
        for p in g.params + g.frozen_params
    }


def updating_norms(model: nn.Module, trainable: set[str], batchnorm: str) -> set[str]:
    """The BatchNorm modules whose statistics must move, as strategy.batchnorm documents it: 'train' all of them,
    'eval' none, 'frozen' exactly those whose own weights train at this step."""
    norms = {n for n, m in model.named_modules() if is_batchnorm(m)}
    return {"train": norms, "eval": set(), "frozen": {n for n in norms if f"{n}.weight" in trainable}}[batchnorm]


# --------------------------------------------------------------------------- the table
@pytest.mark.parametrize("arch, case", TABLE)
def test_strategy_trains_what_it_plans(arch: Arch, case: Case) -> None:
    recipe = make_recipe(case.section(arch), arch.task, **case.optim)
    model, plan = build(arch, recipe)
    n = len(plan.groups)
    if case.starts is not None:
        assert [g.start_step for g in plan.groups] == case.starts(n), [g.name for g in plan.groups]
    body_frozen = all(g.start_step is None for g in plan.groups if not g.is_head)
    assert STRATEGIES.get(recipe.strategy.name).frozen_body == body_frozen  # its registration tells the truth
    batch = arch.batch(torch.Generator().manual_seed(0))
    params = {n for n, _ in model.named_parameters()}
    for step, changed, lrs, optimizer, training_norms in train_and_watch(model, plan, recipe, batch):  # noqa: B007
        trainable = expected_trainable(case, arch, model, plan, step)
        assert changed & params == trainable, (
            f"step {step}: changed but should not {sorted((changed & params) - trainable)[:5]}, "
            f"should change but did not {sorted(trainable - changed)[:5]}"
        )
        # BatchNorm, seen in the model itself: which modules ran in train mode, and whose statistics moved.
        moved = {name.rsplit(".", 1)[0] for name in changed - params}
        norms = updating_norms(model, trainable, recipe.strategy.batchnorm)
        assert training_norms == norms and moved == norms, (step, sorted(training_norms ^ norms)[:5])
        assert all(b in changed for n in moved for b in (f"{n}.running_mean", f"{n}.running_var"))
        for group, peak in zip(plan.groups, case.peaks(n)):
            trains_now = bool(set(group.params) & trainable)
            for suffix in ("", "/no_decay"):
                if group.name + suffix in lrs:
                    assert lrs[group.name + suffix] == pytest.approx(peak if trains_now else 0.0, rel=1e-12), (
                        step,
                        group.name + suffix,
                    )
    wd = {g["name"]: g["weight_decay"] for g in optimizer.param_groups}
    assert all(v == (0.0 if k.endswith("/no_decay") else WD) for k, v in wd.items()), wd


def test_bert_peak_lrs_are_exactly_the_documented_formulas() -> None:
    """Hand-computed LRs for the 5 BERT groups (embeddings, layer.0, layer.1, pooler, head)."""
    arch = ARCHS[0]
    expected = {
        "flat + head_lr": ({"name": "full"}, {}, [1e-2, 1e-2, 1e-2, 1e-2, 5e-2]),
        "llrd 0.8": (
            {"name": "full", "llrd": {"decay": 0.8}},
            {},
            [1e-2 * 0.4096, 1e-2 * 0.512, 1e-2 * 0.64, 1e-2 * 0.8, 5e-2],
        ),
        "discriminative lrs": (
            {"name": "full", "discriminative": {"lrs": [1e-5, 2e-5, 3e-5, 4e-5, 1e-3]}},
            {"head_lr": None},
            [1e-5, 2e-5, 3e-5, 4e-5, 1e-3],
        ),
        "discriminative range": (
            {"name": "full", "discriminative": {"range": [1e-5, 1e-3]}},
            {"head_lr": None},
            [1e-5, 10**-4.5, 1e-4, 10**-3.5, 1e-3],
        ),
        "two_stage body x0.1": (
            {"name": "two_stage", "two_stage": {"body_lr_scale": 0.1}},
            {},
            [1e-3, 1e-3, 1e-3, 1e-3, 5e-2],
        ),
    }
    for label, (section, optim, lrs) in expected.items():
        _, plan = build(arch, make_recipe(section, **optim))
        assert [g.name for g in plan.groups] == ["embeddings", "layer.0", "layer.1", "pooler", "head"]
        assert [g.lr for g in plan.groups] == pytest.approx(lrs, rel=1e-12), label


def test_joining_groups_ramp_up_on_the_shared_schedule() -> None:
    """Progressive warmup: a group joining at step s gets (k+1)/warmup of its LR at s+k, times the linear schedule."""
    arch = ARCHS[0]
    recipe = make_recipe(
        {"name": "progressive", "progressive": {"unit": "step", "every": 2, "warmup_steps": 2}},
        scheduler="linear",
        warmup_steps=1,
    )
    total = 12
    model, plan = build(arch, recipe, total)
    base = lambda s: 1 / 2 if s < 1 else 1 - (s - 1) / (total - 1)  # noqa: E731  linear, 1 warmup step
    starts = {"pooler": 2, "layer.1": 4, "layer.0": 6, "embeddings": 8, "head": 0}
    assert {g.name: g.start_step for g in plan.groups} == starts
    peak = {g.name: g.lr for g in plan.groups}
    for step, _, lrs, _, _ in train_and_watch(model, plan, recipe, arch.batch(torch.Generator().manual_seed(0)), total):
        for name, start in starts.items():
            ramp = 0.0 if step < start else 1.0 if start == 0 else min(1.0, (step - start + 1) / 2)
            assert lrs[name] == pytest.approx(peak[name] * base(step) * ramp, rel=1e-12, abs=1e-15), (step, name)


def test_frozen_layers_below_the_lowest_trainable_one_build_no_graph() -> None:
    arch = ARCHS[0]
    recipe = make_recipe({"name": "partial", "partial": {"freeze_groups": 2}})  # embeddings and layer.0 frozen
    model, plan = build(arch, recipe)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str, module: nn.Module, inputs: tuple, output) -> None:
        outputs[name] = output[0] if isinstance(output, tuple) else output

    for name in ("bert.encoder.layer.0", "bert.encoder.layer.1"):
        model.get_submodule(name).register_forward_hook(partial(keep, name))
    next(train_and_watch(model, plan, recipe, arch.batch(torch.Generator().manual_seed(0)), 1))
    assert outputs["bert.encoder.layer.0"].grad_fn is None  # no autograd graph kept for the frozen part
    assert outputs["bert.encoder.layer.1"].grad_fn is not None


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "section, optim, total, message",
    [
        (
            {"name": "partial", "partial": {"freeze_patterns": ["encoder", "no_such_layer"]}},
            {},
            STEPS,
            r"recipe\.yaml, key 'strategy\.partial\.freeze_patterns': 'no_such_layer' matches no parameter name",
        ),
        (
            {"name": "partial", "partial": {"freeze_patterns": ["(unclosed"]}},
            {},
            STEPS,
            r"not a valid regular expression",
        ),
        (
            {"name": "partial", "partial": {"freeze_groups": 5}},
            {},
            STEPS,
            r"recipe\.yaml, key 'strategy\.partial\.freeze_groups': asks to freeze 5 groups but the model has only "
            r"4 body",
        ),
        ({"name": "partial", "partial": {"freeze_patterns": ["."]}}, {}, STEPS, r"leaves no parameter to train"),
        (
            {"name": "progressive", "progressive": {"every": 1}},
            {},
            8,
            r"schedule is longer than the run \(8 optimizer steps, 2 per epoch\): "
            r"embeddings \(from step 8\) would never",
        ),
        (
            {"name": "progressive", "progressive": {"until": 7}},
            {},
            STEPS,
            r"'strategy\.progressive\.until': asks to unfreeze 7 body groups but the model has only 4",
        ),
        ({"name": "two_stage", "two_stage": {"head_epochs": 3}}, {}, STEPS, r"schedule is longer than the run"),
        (
            {"name": "full", "discriminative": {"lrs": [1e-3, 1e-3]}},
            {"head_lr": None},
            STEPS,
            r"'strategy\.discriminative\.lrs': needs one LR per layer group, 5 here \(embeddings, layer\.0",
        ),
    ],
)
def test_bad_strategies_fail_with_the_key_and_the_fix(section: dict, optim: dict, total: int, message: str) -> None:
    recipe = make_recipe(section, **optim)
    torch.manual_seed(0)
    with pytest.raises(RecipeError, match=message):
        plan_for(ARCHS[0].build(), recipe, PER_EPOCH, total)


def test_discriminative_lrs_and_head_lr_conflict_at_validation() -> None:
    with pytest.raises(RecipeError, match=r"key 'strategy\.discriminative': sets every group's LR.*optim\.head_lr"):
        make_recipe({"name": "full", "discriminative": {"range": [1e-5, 1e-3]}})


def test_unknown_strategy_lists_the_known_ones() -> None:
    with pytest.raises(
        HftlError, match=r"'strategy\.name': unknown strategy 'progresive'\. Did you mean 'progressive'\?"
    ):
        make_recipe({"name": "progresive"})
    assert set(STRATEGIES.names()) == {
        "full",
        "feature_extraction",
        "partial",
        "two_stage",
        "progressive",
        "lora",
        "prototypes",
        "setfit",
    }


# --------------------------------------------------------------------------- hftl plan and plan.json
def test_plan_table_shows_groups_lrs_decay_schedule_and_stage_totals(text_recipe, capsys) -> None:
    from hftl.cli import main

    path = text_recipe(
        strategy={
            "name": "progressive",
            "progressive": {"every": 1, "until": 2, "warmup_steps": 3},
            "llrd": {"decay": 0.5},
        },
        optim={"lr": 1e-3, "head_lr": 1e-2, "weight_decay": 0.05},
    )
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    for column in ("group", "depth", "params", "trainable", "peak LR", "weight decay", "trains"):
        assert column in out
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in out.splitlines()
        if line.startswith("│")
    }
    # 384 training examples / batch 16 = 24 steps per epoch, 4 epochs
    assert rows["embeddings"] == ["0", "3,232", "0", "-", "-", "never (frozen)"]
    assert rows["layer.0"][2:] == ["0", "-", "-", "never (frozen)"]
    assert rows["layer.1"] == [
        "2",
        "6,789",
        "6,789",
        "2.50e-04",
        "0.05",
        "from step 48 (epoch 2), LR ramp over 3 steps",
    ]
    assert rows["pooler"] == ["3", "1,056", "1,056", "5.00e-04", "0.05", "from step 24 (epoch 1), LR ramp over 3 steps"]
    assert rows["head"] == ["4", "66", "66", "1.00e-02", "0.05", "steps 0-95"]
    assert "stage 0, from step 0 (epoch 0): 66 trainable parameters (+head)" in out
    assert "stage 1, from step 24 (epoch 1): 1,122 trainable parameters (+pooler)" in out
    assert "stage 2, from step 48 (epoch 2): 7,911 trainable parameters (+layer.1)" in out


# --------------------------------------------------------------------------- the real loop: resume mid-schedule
PROGRESSIVE = {
    "name": "progressive",
    "llrd": {"decay": 0.8},
    "progressive": {"unit": "step", "every": 6, "until": 3, "warmup_steps": 3},
}


def run_killed_after_checkpoint(path: Path, overrides: list[str], step: int) -> int:
    """Run a recipe in a forked child (torch is imported already: no 10 s start-up) that SIGKILLs itself right
    after the checkpoint of ``step`` is complete; returns the child's exit code."""
    import hftl.training.train

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            os.environ["HFTL_TEST_KILL_AT"] = f"saved:{step}"  # hftl.training.training_state.kill_point
            hftl.training.train.run(load_recipe(path, overrides))
        finally:
            os._exit(70)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_mid_progressive_schedule_matches_an_uninterrupted_run(text_recipe, tmp_path, capsys) -> None:
    """Killed (SIGKILL) right after the step-7 checkpoint: past the stage change at step 6, inside that group's LR
    ramp and mid-epoch. Resumed, it must end where the uninterrupted run ends, logging the same LRs."""
    from hftl.training.train import run

    path = text_recipe(
        strategy=PROGRESSIVE,
        optim={"lr": 2e-3, "head_lr": 5e-3, "scheduler": "linear", "warmup_ratio": 0.1},
        train={"epochs": 1, "save_steps": 7, "log_steps": 1},
        output={"keep_checkpoints": "last"},
    )  # the final states are compared below
    straight = run(load_recipe(path, [f"output.dir={tmp_path / 'straight'}"])).run_dir
    killed = tmp_path / "killed"
    assert run_killed_after_checkpoint(path, [f"output.dir={killed}"], step=7) == -signal.SIGKILL
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-00000007"]
    capsys.readouterr()
    resumed = run(load_recipe(path, [f"output.dir={killed}"]), resume=True).run_dir
    assert "step-00000007 (step 7)" in capsys.readouterr().out  # it did continue, not start again

    final = "checkpoints/step-00000024/model.safetensors"
    a, b = weights(straight / final), weights(resumed / final)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    initial = weights(Path(load_recipe(path).model.checkpoint) / "model.safetensors")
    assert torch.equal(a["bert.embeddings.word_embeddings.weight"], initial["embeddings.word_embeddings.weight"])
    assert not torch.equal(
        a["bert.encoder.layer.0.output.dense.weight"], initial["encoder.layer.0.output.dense.weight"]
    )

    def lr_log(run_dir: Path) -> list[dict]:
        return [r["lr"] for r in read_log(run_dir) if "lr" in r]

    logged = lr_log(straight)
    assert lr_log(resumed) == logged and len(logged) == 24
    # The record of step s holds the LRs of the next update; the shared schedule is linear with 2 warmup steps.
    base = lambda s: 1 - (s - 2) / 22  # noqa: E731
    pooler = [lrs["pooler"] for lrs in logged]
    assert pooler[4] == 0.0  # step 5
    assert pooler[5:8] == pytest.approx([2e-3 * 0.8 * base(s) * ramp for s, ramp in ((6, 1 / 3), (7, 2 / 3), (8, 1))])
    plan = json.loads((straight / "plan.json").read_text())
    assert plan["options"]["llrd"] == {"decay": 0.8} and plan["options"]["progressive"]["every"] == 6
    assert plan["scheduler"] == "linear" and plan["warmup_steps"] == 2
    assert [s["step"] for s in plan["stages"]] == [0, 6, 12, 18]
    assert plan["stages"][1]["groups"] == ["pooler", "head"]
    assert {g["name"]: g["lr"] for g in plan["groups"]}["layer.1"] == pytest.approx(2e-3 * 0.8**2)


def test_groups_train_from_the_step_they_join(text_recipe, monkeypatch) -> None:
    """A group that joins mid-epoch, away from an evaluation, trains (train mode: dropout on) from that very step,
    and frozen groups stay in eval mode at every step (the plan is applied where a stage starts, not every step)."""
    import hftl.training.train

    seen: list[tuple[int, dict[str, bool], set[str]]] = []
    step = hftl.training.train.optimizer_step

    def record(ctx) -> None:
        model = hftl.training.train.bare_model(ctx.accelerator, ctx.model)
        modes = {g.name: all(model.get_submodule(m).training for m in g.modules) for g in ctx.plan.groups}
        seen.append((ctx.state.step, modes, {g.name for g in ctx.plan.trainable_at(ctx.state.step)}))
        step(ctx)

    monkeypatch.setattr(hftl.training.train, "optimizer_step", record)
    path = text_recipe(strategy=PROGRESSIVE, train={"epochs": 1, "eval_steps": 100})
    hftl.training.train.run(load_recipe(path))
    assert len(seen) == 24 and [s for s, _, _ in seen] == list(range(24))
    for at, modes, trainable in seen:
        assert {g for g, training in modes.items() if training} == trainable, at
    assert len({frozenset(t) for _, _, t in seen}) == 4  # the stages at steps 0, 6, 12 and 18


# --------------------------------------------------------------------------- the real loop: LoRA save and reload
def test_lora_run_reloads_with_its_trained_head(text_recipe, monkeypatch) -> None:
    from peft import AutoPeftModelForSequenceClassification, PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import hftl.training.train

    path = text_recipe(
        strategy={"name": "lora", "lora": {"r": 4, "target_modules": ["query", "value"]}}, optim={"lr": 1e-2}
    )
    recipe = load_recipe(path)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model.checkpoint)
    batch = tokenizer(
        ["a great movie", "an awful plot", "the film was dull and cold"], return_tensors="pt", padding=True
    )
    at_end: dict[str, torch.Tensor] = {}
    publish = hftl.training.train.publish_model

    def spy(src, run_dir, model=None):  # the model as training left it (best weights loaded)
        model.eval()
        with torch.no_grad():
            at_end["logits"] = model(**batch).logits
        return publish(src, run_dir, model)

    monkeypatch.setattr(hftl.training.train, "publish_model", spy)
    result = hftl.training.train.run(recipe)
    assert result.metrics["test"]["accuracy"] > 0.8
    run_dir = result.run_dir
    base = AutoModelForSequenceClassification.from_pretrained(recipe.model.checkpoint, num_labels=2)
    reloaded = {
        "PeftModel": PeftModel.from_pretrained(base, run_dir / "adapter"),
        "AutoPeftModel": AutoPeftModelForSequenceClassification.from_pretrained(run_dir / "adapter"),
        "merged run folder": AutoModelForSequenceClassification.from_pretrained(run_dir),
    }
    for how, model in reloaded.items():
        with torch.no_grad():
            logits = model.eval()(**batch).logits
        assert torch.allclose(logits, at_end["logits"], atol=1e-5), how
    assert reloaded["merged run folder"].config.id2label == {0: "neg", 1: "pos"}
    assert sorted(p.name for p in (run_dir / "adapter").glob("adapter_*")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    from safetensors.torch import load_file

    saved = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert any("classifier" in k for k in saved) and any("lora_A" in k for k in saved)
    assert not any("embeddings" in k for k in saved)

"""Real 2-process CPU runs under ``accelerate launch``: staged strategies stay in sync across ranks.

Why this needs real processes: a layer frozen when ``accelerator.prepare`` wraps the
model and unfrozen later trains without gradient synchronisation and drifts apart
across ranks (see ``hftl.strategies``). Each launch dumps every rank's weights at each
checkpoint (``tests/launch_driver.py``), so the test compares the ranks with each other
and with the pretrained weights, stage by stage. The progressive run goes through the documented
``accelerate launch`` command and must exit 0 (two-process CPU runs used to abort at exit now and then);
the two_stage and LoRA runs are the same 2-process DDP jobs with ranks forked from the test process
(tests/test_reliability.py's ``run_child``, the environment a launcher gives each rank).

A launch takes 20-40 s on a 2-core machine, most of it importing torch in 3 processes; a forked job a few seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import hftl.training.train
from hftl.config.run_folder import read_log
from tests.launch_driver import dumping
from tests.test_reliability import run_child

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("distributed")]

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("launch_driver.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")
N_STEPS = 24  # 384 training reviews, batch 16, 2 processes: 12 steps per epoch, 2 epochs


def free_port() -> int:
    with socket.socket() as sock:  # other test workers may launch at the same time: never the default 29500
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(
    script: Path, args: list[str], *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``accelerate launch FLAGS script ARGS`` with one thread per process, offline, on CPU."""
    full_env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        **(env or {}),
    }
    full_env.pop("WORLD_SIZE", None)
    command = [
        str(ACCELERATE),
        "launch",
        *flags,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(script),
        *args,
    ]
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=600, cwd=REPO)


def launch_two(recipe: Path, dump: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The documented CPU multi-process command, through the driver that dumps each rank's weights."""
    dump.mkdir()
    return accelerate_launch(
        DRIVER,
        [str(recipe), *overrides],
        "--multi_gpu",
        "--num_processes",
        "2",
        env={"ACCELERATE_USE_CPU": "true", "HFTL_TEST_DUMP": str(dump)},
    )


def dumps(dump: Path) -> dict[int, tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """step -> (rank 0 tensors, rank 1 tensors)."""
    steps = sorted(int(p.stem.split("-step")[1]) for p in dump.glob("rank0-step*.safetensors"))
    return {
        s: (load_file(str(dump / f"rank0-step{s}.safetensors")), load_file(str(dump / f"rank1-step{s}.safetensors")))
        for s in steps
    }


def group_of(name: str) -> str:
    """BERT layer group of a parameter name (with or without a peft prefix)."""
    name = name.removeprefix("base_model.model.")
    if name.startswith("classifier"):
        return "head"
    if name.startswith("bert.encoder.layer."):
        return "layer." + name.split(".")[3]
    return name.split(".")[1]  # embeddings, pooler


def changed_groups(tensors: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]) -> set[str]:
    """Body groups holding a tensor that differs from the pretrained checkpoint."""
    return {
        group_of(k)
        for k, v in tensors.items()
        if k.removeprefix("bert.") in initial and not torch.equal(v, initial[k.removeprefix("bert.")])
    }


def assert_ranks_identical(by_step: dict) -> None:
    for step, (rank0, rank1) in by_step.items():
        assert rank0.keys() == rank1.keys()
        drift = {k for k in rank0 if not torch.equal(rank0[k], rank1[k])}
        assert not drift, f"step {step}: ranks differ in {sorted(drift)[:5]}"


def test_staged_strategies_under_two_processes(text_recipe, tiny_bert_dir, tmp_path, monkeypatch) -> None:
    initial = load_file(str(tiny_bert_dir / "model.safetensors"))
    monkeypatch.setattr(hftl.training.train, "save_checkpoint", dumping(hftl.training.train.save_checkpoint))
    recipe = text_recipe(train={"epochs": 2, "batch_size": 16, "save_steps": 6, "log_steps": 6, "seed": 0})
    runs = {
        # head from step 0, pooler from 6, layer.1 from 12, layer.0 from 18; embeddings never
        "progressive": ["strategy.name=progressive", "strategy.progressive={unit: step, every: 6, until: 3}"],
        # head alone for one epoch (12 steps), then every group at a tenth of the LR
        "two_stage": ["strategy.name=two_stage", "strategy.two_stage={head_epochs: 1, body_lr_scale: 0.1}"],
        "lora": ["strategy.name=lora", "strategy.lora={r: 4, target_modules: [query, value]}"],
    }
    expected_changes = {  # checkpoint step -> groups changed (a checkpoint at step s holds s updates)
        "progressive": {6: set(), 12: {"pooler"}, 18: {"pooler", "layer.1"}, 24: {"pooler", "layer.1", "layer.0"}},
        "two_stage": {
            6: set(),
            12: set(),
            18: {"embeddings", "layer.0", "layer.1", "pooler"},
            24: {"embeddings", "layer.0", "layer.1", "pooler"},
        },
    }
    for name, overrides in runs.items():  # back to back: each job must exit 0
        run_dir, dump = tmp_path / name, tmp_path / f"dump-{name}"
        if name == "progressive":  # the documented launcher, real processes
            proc = launch_two(recipe, dump, f"output.dir={run_dir}", *overrides)
            assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        else:  # the same 2-rank DDP job, ranks forked (about 25 s less each)
            dump.mkdir()
            argv = ["run", str(recipe), f"output.dir={run_dir}", *overrides]
            code = run_child(argv, tmp_path / f"{name}.log", processes=2, HFTL_TEST_DUMP=str(dump))
            assert code == 0, f"{name}: exit {code}\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
        by_step = dumps(dump)
        assert sorted(by_step) == [6, 12, 18, 24]
        assert_ranks_identical(by_step)

        log = read_log(run_dir)  # written once, by the main process only
        assert [r["step"] for r in log if "loss" in r] == [6, 12, 18, 24]
        assert sum("final" in r for r in log) == 1
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["num_processes"] == 2 and metrics["steps"] == N_STEPS
        assert json.loads((run_dir / "run_status.json").read_text())["status"] == "completed"

        if name in expected_changes:
            changed = {step: changed_groups(rank0, initial) for step, (rank0, _) in by_step.items()}
            assert changed == expected_changes[name], name
        else:  # lora: the base never changes, the adapters and the head do
            first, last = by_step[6][0], by_step[24][0]
            base = [k for k in last if "lora_" not in k and "modules_to_save" not in k]
            assert all(torch.equal(first[k], last[k]) for k in base)
            assert all(
                torch.equal(last[k], initial[k.removeprefix("base_model.model.bert.").replace(".base_layer", "")])
                for k in base
                if k.startswith("base_model.model.bert.")
            )
            assert not torch.equal(
                first["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight"],
                last["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.default.weight"],
            )
            assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_cpu_launcher_that_starts_one_process_is_refused(text_recipe, tmp_path) -> None:
    """``accelerate launch --cpu --num_processes 2`` silently starts ONE process (accelerate 1.15)."""
    recipe = text_recipe()
    proc = accelerate_launch(REPO / "hftl" / "run.py", [str(recipe)], "--cpu", "--num_processes", "2")
    assert proc.returncode != 0
    assert "more than 1 processes were asked for but only 1 started" in proc.stderr
    assert "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_torchrun_on_cpu_starts_one_two_process_run(text_recipe, tmp_path) -> None:
    """``torchrun --nproc_per_node 2`` on a machine without GPUs is one 2-process gloo run, not two runs."""
    recipe = text_recipe(train={"max_steps": 4, "batch_size": 16, "eval_steps": 4})
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "hftl" / "run.py"),
        str(recipe),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 4
    assert sum("final" in r for r in read_log(tmp_path / "run")) == 1
    # logs appear once on a 2-process run: the plan, each evaluation and the summary come from rank 0 only
    out = proc.stdout + proc.stderr
    counts = [out.count(line) for line in ("[done]", "[eval] step 4/4", "strategy: full")]
    assert counts == [1, 1, 1], out[-3000:]


@pytest.mark.parametrize(
    "env, started, refused",
    [
        ({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, 1, True),  # --cpu, N=2
        ({"ACCELERATE_USE_CPU": "True"}, 1, False),  # --cpu --num_processes 1: no MASTER_PORT
        ({"ACCELERATE_USE_CPU": "true", "MASTER_PORT": "29500", "WORLD_SIZE": "2"}, 2, False),  # --multi_gpu on CPU
        ({"WORLD_SIZE": "2"}, 1, True),  # torchrun whose ranks did not join one process group
        ({"HFTL_EXPECT_PROCESSES": "4"}, 2, True),
        ({"HFTL_EXPECT_PROCESSES": "2"}, 2, False),
    ],
)
def test_process_count_check_reads_what_the_launcher_exports(monkeypatch, env, started, refused) -> None:
    """The environment each launcher exports, as measured with accelerate 1.15 (see check_process_count)."""
    from types import SimpleNamespace

    from hftl.config.errors import HftlError
    from hftl.training.launch import check_process_count

    for key in ("ACCELERATE_USE_CPU", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "HFTL_EXPECT_PROCESSES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    accelerator = SimpleNamespace(num_processes=started)
    if refused:
        with pytest.raises(HftlError, match=r"processes were asked for but only \d started"):
            check_process_count(accelerator)
    else:
        check_process_count(accelerator)

"""What an ``accelerate config`` file asks of a run: honoured, or refused with a message naming the setting.

Each config file is turned into the launch's environment by accelerate's own ``accelerate launch`` code (argument
parsing, config reading, environment preparation), so a forked run (as in test_reliability: torch is imported
already) sees what a process started by ``accelerate launch --config_file FILE`` sees.

FSDP: torch shards on CPU (``fully_shard`` over gloo), but Accelerate 1.16 sets FSDP up on GPUs only (its CPU
multi-process mode ignores the FSDP settings), so hftl refuses FSDP on CPU rather than train DDP copies under an
FSDP label (tested below). To run hftl's FSDP path here all the same, the FSDP tests lift exactly those two gates
(:func:`fsdp_on_cpu`): Accelerate's own FSDP2 preparation, sharded save_state/load_state, clipping and full-state
gathering then run for real on 2 CPU processes. ``benchmarks/gpu_check.sh`` runs FSDP2 on a GPU.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hftl.training.training_state import complete_checkpoints
from tests.test_reliability import run_child, write_recipe

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("distributed")]

SHORT = {"train": {"max_steps": 6, "eval_steps": 3, "save_steps": 3, "log_steps": 1}}
FSDP2 = {
    "distributed_type": "FSDP",
    "fsdp_config": {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": False,
        "fsdp_reshard_after_forward": True,
    },
    "num_processes": 2,
}


STRATEGIES = {
    # embeddings never train, the pooler joins at step 2: one FSDP unit holds frozen and trainable parameters;
    # clipped through accelerator.clip_grad_norm_ (FSDP's own, over its shards; frozen ones hold no gradient)
    "progressive": {
        "strategy": {"name": "progressive", "progressive": {"unit": "step", "every": 2, "until": 2}},
        "optim": {"lr": 2e-3, "max_grad_norm": 0.5},
    },
    "lora": {"strategy": {"name": "lora", "lora": {"r": 4, "target_modules": ["query", "value"]}}},
}
# No transformer-based auto wrap: with it, accelerate 1.16 shards BERT's word embeddings twice (inside the
# BertEmbeddings unit, then as the input embeddings) and fully_shard fails; the root unit alone is what mixes
# frozen and trainable parameters most.
FSDP2_ROOT = {**FSDP2, "fsdp_config": {k: v for k, v in FSDP2["fsdp_config"].items() if k != "fsdp_auto_wrap_policy"}}


@pytest.fixture
def fsdp_on_cpu(monkeypatch):
    """Lift the two gates that keep FSDP off CPU (forked ranks inherit the patches): Accelerate's (its CPU
    multi-process state becomes FSDP with a plugin read from the launch's FSDP_* settings) and hftl's refusal."""
    import accelerate.state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    import hftl.training.backend

    init = accelerate.state.AcceleratorState.__init__

    def init_with_fsdp(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = FullyShardedDataParallelPlugin()

    monkeypatch.setattr(accelerate.state.AcceleratorState, "__init__", init_with_fsdp)
    monkeypatch.setattr(hftl.training.backend, "refuse_fsdp_without_gpu", lambda env: None)


def launch_env(config: dict, tmp_path: Path) -> dict[str, str]:
    """The environment ``accelerate launch --config_file FILE`` gives its training processes (accelerate's code)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import (
        prepare_deepspeed_cmd_env,
        prepare_multi_gpu_env,
        prepare_simple_launcher_cmd_env,
    )

    path = tmp_path / "accelerate.yaml"
    path.write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "num_machines": 1, **config}))
    args = launch_command_parser().parse_args(["--config_file", str(path), "--main_process_port", "1", "run.py"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config) if defaults else ""
        _, env = prepare_deepspeed_cmd_env(args)
    elif args.use_fsdp or args.multi_gpu:
        env = prepare_multi_gpu_env(args)
    else:
        _, env = prepare_simple_launcher_cmd_env(args)
    keep = ("ACCELERATE_", "FSDP_")
    return {k: v for k, v in env.items() if k.startswith(keep) and k != "ACCELERATE_USE_CPU"}


def run_job(folder: Path, bert: Path, csv: Path, sections: dict, env: dict[str, str], processes: int = 2, **kw) -> int:
    recipe = write_recipe(folder, bert, csv, **{**SHORT, **sections})
    return run_child(["run", str(recipe), *kw.pop("argv", [])], folder / "log.txt", processes=processes, **env, **kw)


def output(folder: Path, capfd) -> str:
    """What a forked job wrote: its log file and hftl's messages (which go to pytest's captured streams)."""
    captured = capfd.readouterr()
    return (folder / "log.txt").read_text() + captured.out + captured.err


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fsdp2_trains_like_ddp(strategy, fsdp_on_cpu, tmp_path, tiny_bert_dir, reviews_csv, capfd):
    """2 processes, FSDP2 from an accelerate config file vs plain DDP: the same published model (to float
    rounding), a normal save_pretrained folder, sharded training states."""
    sections = {**STRATEGIES[strategy], "output": {"keep_checkpoints": "last"}}
    folders = {"ddp": tmp_path / "ddp", "fsdp": tmp_path / "fsdp"}
    envs = {"ddp": {}, "fsdp": launch_env(FSDP2_ROOT, tmp_path)}
    for name, folder in folders.items():
        code = run_job(folder, tiny_bert_dir, reviews_csv, sections, envs[name])
        assert code == 0, output(folder, capfd)[-3000:]
        assert f"[launch] 2 process(es), {'FSDP2' if name == 'fsdp' else 'DDP'}" in output(folder, capfd)
    state = complete_checkpoints(folders["fsdp"] / "run")[-1]
    assert (state / "pytorch_model_fsdp_0").is_dir() and not (state / "model.safetensors").exists()
    ddp, fsdp = final_weights(folders["ddp"] / "run"), final_weights(folders["fsdp"] / "run")
    assert ddp.keys() == fsdp.keys()
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], rtol=1e-4, atol=1e-5, msg=key)
    pretrained = load_file(str(tiny_bert_dir / "model.safetensors"))
    embeddings = "bert.embeddings.word_embeddings.weight"
    trained = "pooler.dense.weight" if strategy == "progressive" else "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(fsdp["bert." + trained], pretrained[trained])  # the body did train (LoRA: merged in)
    moved = not torch.equal(fsdp[embeddings], pretrained["embeddings.word_embeddings.weight"])
    assert not moved  # progressive never trains them; LoRA's merged model keeps them
    if strategy == "lora":
        assert (folders["fsdp"] / "run" / "adapter" / "adapter_model.safetensors").is_file()
    metrics = [json.loads((f / "run" / "metrics.json").read_text()) for f in folders.values()]
    assert metrics[0]["test"] == pytest.approx(metrics[1]["test"], abs=1e-4)


def test_fsdp2_resumes_exactly_after_sigkill(fsdp_on_cpu, tmp_path, tiny_bert_dir, reviews_csv, capfd):
    """Killed right after the step-3 state (sharded model + optimizer, every rank's RNG) and resumed: bitwise the
    uninterrupted FSDP2 run."""
    env = launch_env(FSDP2_ROOT, tmp_path)
    sections = STRATEGIES["progressive"]
    assert run_job(tmp_path / "straight", tiny_bert_dir, reviews_csv, sections, env) == 0
    killed = tmp_path / "killed"
    code = run_job(killed, tiny_bert_dir, reviews_csv, sections, env, HFTL_TEST_KILL_AT="saved:3")
    assert code == -signal.SIGKILL, output(killed, capfd)[-3000:]
    assert complete_checkpoints(killed / "run")[-1].name == "step-00000003"
    assert run_job(killed, tiny_bert_dir, reviews_csv, sections, env, argv=["--resume"]) == 0
    assert "(step 3)" in output(killed, capfd)
    a, b = final_weights(tmp_path / "straight" / "run"), final_weights(killed / "run")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed FSDP2 run differs"


@pytest.mark.parametrize(
    "config, words",
    [
        (
            {"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 2}, "num_processes": 2},
            "ACCELERATE_USE_DEEPSPEED=true",
        ),
        (
            {**FSDP2, "fsdp_config": {**FSDP2["fsdp_config"], "fsdp_version": 1, "fsdp_use_orig_params": False}},
            "FSDP_USE_ORIG_PARAMS=false",
        ),
        (
            {**FSDP2, "fsdp_config": {**FSDP2["fsdp_config"], "fsdp_cpu_ram_efficient_loading": True}},
            "FSDP_CPU_RAM_EFFICIENT_LOADING=true",
        ),
        (FSDP2, "Accelerate runs FSDP on GPUs only"),  # on CPU accelerate would silently run DDP
        ({"distributed_type": "NO", "num_processes": 1, "use_cpu": True}, "train.grad_accum=1"),
    ],
    ids=["deepspeed", "fsdp1-flat-params", "fsdp-rank0-loading", "fsdp-on-cpu", "grad-accum"],
)
def test_config_settings_hftl_cannot_honour_are_refused(config, words, tmp_path, tiny_bert_dir, reviews_csv, capfd):
    """Refused before anything is written, with one message naming the setting (exit 2)."""
    env = launch_env(config, tmp_path)
    if config["distributed_type"] == "NO":  # as `accelerate launch --gradient_accumulation_steps 4` exports it
        env["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = "4"
    code = run_job(tmp_path / "job", tiny_bert_dir, reviews_csv, {}, env, processes=1)
    log = output(tmp_path / "job", capfd)
    assert code == 2 and words in log, log[-3000:]
    assert "Traceback" not in log and not (tmp_path / "job" / "run").exists()


@pytest.mark.parametrize(
    "recipe_precision, expected",
    [("auto", "mixed precision bf16 (accelerate launch)"), ("no", "mixed precision no (recipe)")],
)
def test_mixed_precision_from_the_config_file_unless_the_recipe_says(
    recipe_precision, expected, tmp_path, tiny_bert_dir, reviews_csv, capfd
):
    """A config choosing bf16 (on CPU: autocast to bf16) is followed by ``auto`` and overridden by an explicit value;
    the run records what it used."""
    env = launch_env(
        {"distributed_type": "NO", "num_processes": 1, "use_cpu": True, "mixed_precision": "bf16"}, tmp_path
    )
    sections = {"train": {**SHORT["train"], "mixed_precision": recipe_precision}}
    assert run_job(tmp_path / "job", tiny_bert_dir, reviews_csv, sections, env, processes=1) == 0
    assert expected in output(tmp_path / "job", capfd)
    used = yaml.safe_load((tmp_path / "job" / "run" / "recipe.yaml").read_text())["train"]["mixed_precision"]
    assert used == expected.split()[2]

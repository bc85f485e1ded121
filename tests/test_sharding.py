"""What an ``accelerate config`` file asks of a run: honoured, or refused with a message naming the setting.

Each config file is turned into the launch's environment by accelerate's own ``accelerate launch`` code (argument
parsing, config reading, environment preparation), so a forked run (as in test_reliability: torch is imported
already) sees what a process started by ``accelerate launch --config_file FILE`` sees.

FSDP itself is not run here: torch shards on CPU (``fully_shard`` over gloo works), but Accelerate 1.16 sets up
FSDP on GPUs only (its CPU multi-process mode ignores the FSDP settings), so on CPU hftl refuses it rather than
train DDP copies under an FSDP label. ``benchmarks/gpu_check.sh`` runs FSDP2 on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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

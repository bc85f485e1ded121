"""Two "machines" on this one: two ``torchrun --nnodes 2 --nproc_per_node 1`` agents meeting at a c10d rendezvous
on 127.0.0.1, as two real machines would (each agent its own node, one process each, gloo over loopback).

Shared filesystem (both nodes see the same run folder): ranks hold identical weights at every checkpoint and the run
folder is written once. Separate filesystems (simulated: node 1 is given another output.dir, which is what it would
see of a folder on node 0's local disk): refused before training. hftl's check does not depend on the launcher (the
main process writes a token in the run folder, every process reads it back), so that case runs as a 2-rank job
forked from the test process (tests/test_reliability.py's ``run_child``), not through two more torchrun agents
(about 20 s of interpreter start-up).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hftl.training.train
from tests.launch_driver import dumping
from tests.test_distributed import assert_ranks_identical, dumps, free_port, read_log
from tests.test_reliability import run_child

pytestmark = [pytest.mark.distributed, pytest.mark.xdist_group("distributed")]

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("launch_driver.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


def two_nodes(recipe: Path, overrides: list[list[str]], dump: Path) -> list[subprocess.CompletedProcess]:
    """Start both node agents at once (node-specific recipe overrides), wait for both (bounded)."""
    port = free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HFTL_TEST_DUMP": str(dump),
    }
    agents = [
        subprocess.Popen(
            [
                str(TORCHRUN),
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--rdzv_backend",
                "c10d",
                "--rdzv_endpoint",
                f"127.0.0.1:{port}",
                "--rdzv_id",
                "hftl-test",
                "--rdzv_conf",
                "timeout=60",
                "--local_addr",
                "127.0.0.1",
                str(DRIVER),
                str(recipe),
                *node_overrides,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for node_overrides in overrides
    ]
    results = []
    for agent in agents:
        try:
            out, err = agent.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for other in agents:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(agent.args, agent.returncode, out, err))
    return results


def test_two_nodes_over_loopback_share_one_run_folder(text_recipe, tmp_path) -> None:
    recipe = text_recipe(
        strategy={"name": "progressive", "progressive": {"unit": "step", "every": 2, "until": 2}},
        train={"max_steps": 6, "batch_size": 16, "save_steps": 2, "log_steps": 2, "eval_steps": 3},
    )
    (dump := tmp_path / "dump").mkdir()
    run_dir = tmp_path / "run"
    nodes = two_nodes(recipe, [[], []], dump)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    by_step = dumps(dump)
    assert sorted(by_step) == [2, 4, 6]
    assert_ranks_identical(by_step)  # rank 0 on node 0, rank 1 on node 1
    log = read_log(run_dir)  # written once, by the main process
    assert [r["step"] for r in log if "loss" in r] == [2, 4, 6] and sum("final" in r for r in log) == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["steps"] == 6
    out = "".join(n.stdout + n.stderr for n in nodes)
    assert out.count("[done]") == 1 and "[launch] 2 process(es), DDP" in out


def test_two_nodes_that_do_not_see_one_run_folder_are_refused(text_recipe, tmp_path, monkeypatch, capfd) -> None:
    recipe = text_recipe(train={"max_steps": 2, "batch_size": 16, "save_steps": 1})
    (dump := tmp_path / "dump").mkdir()
    monkeypatch.setattr(hftl.training.train, "save_checkpoint", dumping(hftl.training.train.save_checkpoint))
    log = tmp_path / "job.log"
    argv, node1 = ["run", str(recipe)], [f"output.dir={tmp_path / 'node1-local'}"]
    code = run_child(argv, log, processes=2, rank_argv={1: node1}, HFTL_TEST_DUMP=str(dump))
    captured = capfd.readouterr()  # hftl's messages go to pytest's captured streams, the rest to the log
    err = log.read_text() + captured.out + captured.err
    assert code == 2, err[-3000:]  # hftl's user error, before any training
    assert "a launch over several machines needs the run folder on a filesystem every machine mounts" in err, err[
        -3000:
    ]
    assert not list(dump.iterdir()) and not (tmp_path / "run" / "metrics.jsonl").exists()

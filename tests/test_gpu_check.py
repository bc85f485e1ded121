"""benchmarks/gpu_check.sh in its CPU smoke mode (what CI can run of the prepared GPU check): every check row is
produced, passes, and lands in the JSON and the markdown table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_mode_runs_every_check_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {(r["check"], r["subject"]): r for r in report["checks"]}
    assert set(rows) == {("throughput", "tiny-bert"), ("resume", "bf16"), ("fsdp", "full")}
    assert rows[("resume", "bf16")]["detail"].startswith("0 of ")  # bitwise after SIGKILL + resume, under bf16
    assert rows[("throughput", "tiny-bert")]["value"] > 0
    assert report["smoke"] and report["passed"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| resume | bf16 | ok |" in table and "benchmarks/gpu_check.sh OUTDIR --smoke" in table

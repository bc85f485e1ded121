"""Reliability: kill -9 and resume, atomic saves, rotation, interrupts, data faults, checkpoint faults, safety.

The kill tests run real child processes and kill them with SIGKILL at exact points
through the test hook :func:`hftl.training.training_state.kill_point` (``HFTL_TEST_KILL_AT=<event>:<where>``).
Children are forked from the test process (torch and transformers are already
imported, so a child starts in a fraction of a second instead of ~10 s); one test
launches ``python -m hftl`` for real to check the exit status and message of SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hftl.cli.forked import exit_with_main
from hftl.config.errors import CheckpointError, DataError, HftlError
from hftl.config.recipe import load_recipe
from hftl.config.run_folder import read_log, read_status
from hftl.training.train import run
from hftl.training.training_state import complete_checkpoints, publish_model, save_checkpoint, save_model_atomic

# A short run with many events: eval every 3 steps, save every 4, log every 2; validation loss picks the
# best model, so the best folder is rewritten several times (steps 3, 9, 12 on this data).
TOY = {
    "data": {"max_train_samples": 96, "max_eval_samples": 32},
    "optim": {"lr": 2e-3, "warmup_ratio": 0.0, "scheduler": "linear"},
    "train": {
        "min_steps": 0,
        "epochs": 3,
        "batch_size": 16,
        "log_steps": 2,
        "eval_steps": 3,
        "save_steps": 4,
        "seed": 0,
        "metric": "loss",
        "save_total_limit": 2,
    },
}


def write_recipe(folder: Path, bert: Path, csv: Path, **sections) -> Path:
    doc = {
        "name": "toy",
        "task": "text-classification",
        "model": {"checkpoint": str(bert)},
        "data": {"source": str(csv), "group_column": "movie", "max_length": 16},
        "output": {"dir": str(folder / "run")},
    }
    for key, value in {**TOY, **sections}.items():
        doc[key] = {**doc.get(key, {}), **value}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_child(
    argv: list[str],
    log: Path,
    processes: int = 1,
    main_env: dict[str, str] | None = None,
    timeout: float = 300,
    rank_argv: dict[int, list[str]] | None = None,
    **env: str,
) -> int:
    """Run ``hftl <argv>`` in ``processes`` forked children (a CPU DDP job when 2+); the job's exit code.

    Like ``accelerate launch``/``torchrun``: each rank gets RANK/WORLD_SIZE/MASTER_* and, once one rank fails,
    the others are killed. ``main_env`` goes to rank 0 only; ``rank_argv`` adds arguments to one rank's (a machine
    that sees another ``output.dir``). Returns -9 when a rank was SIGKILLed, else the first non-zero exit code,
    else 0; a job still running after ``timeout`` seconds is killed and fails the test.
    """
    port = _free_port()
    sys.stdout.flush()
    sys.stderr.flush()
    pids = []
    for rank in range(processes):
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            own = [*argv, *(rank_argv or {}).get(rank, [])]
            _child(own, log, {**env, **((main_env or {}) if rank == 0 else {}), **_rank_env(rank, processes, port)})
        pids.append(pid)
    codes: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(codes) < len(pids):
        for pid in set(pids) - set(codes):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes[pid] = os.waitstatus_to_exitcode(status)
        hung = time.monotonic() > deadline
        if hung or any(codes.values()):  # one rank died: end the job, as the launchers do
            for other in set(pids) - set(codes):
                os.kill(other, signal.SIGKILL)
                codes[other] = os.waitstatus_to_exitcode(os.waitpid(other, 0)[1])
            assert not hung, f"job still running after {timeout} s: {log.read_text()[-3000:]}"
        time.sleep(0.05)
    first = [codes[pid] for pid in pids if codes[pid] != 0]
    return -signal.SIGKILL if -signal.SIGKILL in first else (first[0] if first else 0)


def _child(argv: list[str], log: Path, env: dict[str, str]) -> None:
    def setup() -> None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(env)

    exit_with_main(argv, setup)


def _rank_env(rank: int, processes: int, port: int) -> dict[str, str]:
    if processes == 1:
        return {}
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(processes),
        "LOCAL_WORLD_SIZE": str(processes),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "ACCELERATE_USE_CPU": "true",
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_model(run_dir: Path, reference: Path) -> None:
    import torch

    got, want = weights(run_dir), weights(reference)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"{name} differs")
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference))
    for key in ("validation", "test", "best_step", "steps"):
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-5), key
    assert comparable_log(run_dir) == comparable_log(reference)


def comparable_log(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock times; losses rounded for the float comparison."""
    lines = read_log(run_dir)
    for line in lines:
        line.get("final", {}).pop("train_seconds", None)
        line.get("final", {}).pop("seconds", None)  # the cost breakdown
    return json.loads(json.dumps(lines), parse_float=lambda x: round(float(x), 5))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_dir, reviews_csv) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    result = run(load_recipe(write_recipe(folder, tiny_bert_dir, reviews_csv)))
    return result.run_dir


# Each entry: kill point, then what the run folder must look like right after the kill.
KILL_CHAIN = [
    ("step:3", "during step 3, before any state was saved"),
    ("eval:6", "during the evaluation at step 6 (after its log line)"),
    ("save:8", "during the save of step 8 (weights written, optimizer not yet)"),
    ("save-model:best", "between the two renames that replace the best model"),
    ("publish:model.safetensors", "while copying the final model into the run folder"),
]


def test_sigkill_at_each_point_then_resume_gives_the_same_model(tmp_path, tiny_bert_dir, reviews_csv, reference):
    recipe = write_recipe(tmp_path, tiny_bert_dir, reviews_csv)
    run_dir, log = tmp_path / "run", tmp_path / "children.log"
    survived = 0
    for i, (point, what) in enumerate(KILL_CHAIN):
        argv = ["run", str(recipe)] + (["--resume"] if i else [])
        code = run_child(argv, log, HFTL_TEST_KILL_AT=point)
        assert code == -signal.SIGKILL, f"not killed {what} (exit {code}):\n{log.read_text()[-3000:]}"
        assert read_status(run_dir)["status"] == "running"
        newest = complete_checkpoints(run_dir)
        if point == "save:8":  # the half-written step 8 exists but is never picked
            assert (run_dir / "checkpoints" / ".tmp-step-00000008" / "model.safetensors").is_file()
            assert newest[-1].name == "step-00000004"
        if point == "save-model:best":  # the best model is mid-replacement: resume must rebuild it
            assert not (run_dir / "best").exists() and (run_dir / ".tmp-best").is_dir()
        survived += 1
    assert run_child(["run", str(recipe), "--resume"], log) == 0, log.read_text()[-3000:]
    assert read_status(run_dir)["status"] == "completed"
    assert_same_model(run_dir, reference)
    # completed: the model is at the root; best/ and the resumable states are gone (output.keep_checkpoints: none)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "best").exists()
    assert not list(run_dir.rglob(".tmp-*")) and not list(run_dir.rglob(".old-*"))
    print(f"kill points tried {len(KILL_CHAIN)}, survived {survived}")


@pytest.mark.slow
def test_sigterm_saves_state_exits_130_and_resume_finishes(tmp_path, tiny_bert_dir, reviews_csv, reference):
    """A real ``python -m hftl run`` gets SIGTERM during step 5: it finishes the step, saves, says how to resume."""
    recipe = write_recipe(tmp_path, tiny_bert_dir, reviews_csv)
    env = {**os.environ, "HFTL_TEST_KILL_AT": "step:5", "HFTL_TEST_KILL_SIGNAL": "TERM"}
    proc = subprocess.run(
        [sys.executable, "-m", "hftl", "run", str(recipe)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 130, proc.stderr[-3000:]
    run_dir = tmp_path / "run"
    # the run folder's recipe.yaml is the resolved recipe: resuming with it keeps any command-line overrides
    assert "Interrupted at step 5" in proc.stderr and f"hftl run {run_dir / 'recipe.yaml'} --resume" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert read_status(run_dir) | {"time": None} == {"status": "interrupted", "step": 5, "time": None}
    assert complete_checkpoints(run_dir)[-1].name == "step-00000005"
    assert run_child(["run", str(run_dir / "recipe.yaml"), "--resume"], tmp_path / "resume.log") == 0
    assert_same_model(run_dir, reference)


@pytest.fixture(scope="module")
def reference_2p(tmp_path_factory, tiny_bert_dir, reviews_csv) -> Path:
    """The uninterrupted 2-process job (forked ranks match ``accelerate launch --multi_gpu`` on CPU bit for bit)."""
    folder = tmp_path_factory.mktemp("reference-2p")
    log = folder / "children.log"
    assert run_child(["run", str(write_recipe(folder, tiny_bert_dir, reviews_csv))], log, processes=2) == 0, (
        log.read_text()[-3000:]
    )
    return folder / "run"


@pytest.mark.distributed
def test_sigkill_under_two_processes_then_resume_gives_the_same_model(
    tmp_path, tiny_bert_dir, reviews_csv, reference_2p
):
    """2 CPU processes (gloo DDP), 3 steps an epoch. First only the main process dies, mid-save, while the other
    waits at the barrier (the launcher then ends it); then both die inside step 6. Resumed, the job must end
    exactly where an uninterrupted 2-process job ends."""
    log = tmp_path / "children.log"
    recipe = write_recipe(tmp_path / "killed", tiny_bert_dir, reviews_csv)
    run_dir = tmp_path / "killed" / "run"
    for i, point in enumerate(["save:8", "step:6"]):
        argv = ["run", str(recipe)] + (["--resume"] if i else [])
        assert run_child(argv, log, processes=2, HFTL_TEST_KILL_AT=point) == -signal.SIGKILL, log.read_text()[-3000:]
        assert complete_checkpoints(run_dir)[-1].name == "step-00000004"
    assert run_child(["run", str(recipe), "--resume"], log, processes=2) == 0, log.read_text()[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["num_processes"] == 2
    assert_same_model(run_dir, reference_2p)


@pytest.mark.distributed
def test_sigterm_reaching_one_process_stops_both_at_the_same_step(tmp_path, tiny_bert_dir, reviews_csv, reference_2p):
    """Only rank 0 gets SIGTERM (during step 5): both processes must agree to stop after step 5 and save it,
    or rank 0 would wait in the save while rank 1 trains on (a hang)."""
    log = tmp_path / "children.log"
    recipe = write_recipe(tmp_path, tiny_bert_dir, reviews_csv)
    term = {"HFTL_TEST_KILL_AT": "step:5", "HFTL_TEST_KILL_SIGNAL": "TERM"}
    assert run_child(["run", str(recipe)], log, processes=2, main_env=term, timeout=120) == 130, log.read_text()[-3000:]
    assert read_status(tmp_path / "run")["status"] == "interrupted"
    assert complete_checkpoints(tmp_path / "run")[-1].name == "step-00000005"
    assert run_child(["run", str(recipe), "--resume"], log, processes=2) == 0, log.read_text()[-3000:]
    assert_same_model(tmp_path / "run", reference_2p)


def test_kill_in_the_middle_of_progressive_unfreezing(tmp_path, tiny_bert_dir, reviews_csv):
    """Resuming inside a staged schedule restores the right trainable set and LRs (nothing beyond the step)."""
    progressive = {"strategy": {"name": "progressive", "progressive": {"every": 4, "unit": "step"}}}
    ref = run(load_recipe(write_recipe(tmp_path / "ref", tiny_bert_dir, reviews_csv, **progressive))).run_dir
    recipe = write_recipe(tmp_path / "killed", tiny_bert_dir, reviews_csv, **progressive)
    log = tmp_path / "children.log"
    assert run_child(["run", str(recipe)], log, HFTL_TEST_KILL_AT="step:7") == -signal.SIGKILL
    assert complete_checkpoints(tmp_path / "killed" / "run")[-1].name == "step-00000004"
    assert run_child(["run", str(recipe), "--resume"], log) == 0, log.read_text()[-3000:]
    assert_same_model(tmp_path / "killed" / "run", ref)


# --------------------------------------------------------------------------- atomic saves, rotation
class OneProcess:
    """The few Accelerator members the savers use, for a single process."""

    is_main_process = True
    process_index = 0

    def wait_for_everyone(self) -> None:
        pass

    def unwrap_model(self, model, keep_torch_compile=True):
        return model


def test_half_written_checkpoints_are_never_picked_and_rotation_keeps_the_newest(tmp_path):
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    linear = torch.nn.Linear(2, 2)
    model, optimizer = accelerator.prepare(linear, torch.optim.AdamW(linear.parameters()))
    for step in (1, 2, 3):
        save_checkpoint(accelerator, model, optimizer, tmp_path, {"step": step}, keep=2)
    root = tmp_path / "checkpoints"
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    (root / ".tmp-step-00000009").mkdir()  # killed mid-save
    (root / "step-00000010").mkdir()  # renamed by hand, no state file
    (root / ".tmp-step-00000011").mkdir()
    (root / ".tmp-step-00000011" / "trainer_state.json").write_text("{}")
    assert complete_checkpoints(tmp_path)[-1].name == "step-00000003"
    save_checkpoint(accelerator, model, optimizer, tmp_path, {"step": 4}, keep=1)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000004"]
    assert not list(root.glob(".tmp-*")), "stale temporary folders are cleaned up by the next save"


def test_resume_drops_log_lines_after_the_state_and_a_line_cut_short(tmp_path):
    from hftl.config.run_folder import truncate_log

    log = tmp_path / "metrics.jsonl"
    log.write_text(
        '{"step": 2, "loss": 0.5}\n\n{"step": 4, "loss": 0.4}\n{"step": 6, "loss": 0.3}\n'
        '{"step": 4, "final": {}}\n{"step": 8, "lo'
    )  # killed in the middle of a write
    truncate_log(tmp_path, 4)
    assert read_log(tmp_path) == [
        {"step": 2, "loss": 0.5},
        {"step": 4, "loss": 0.4},
    ]


def test_model_saves_are_atomic_and_safetensors_only(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    save_model_atomic(OneProcess(), model, tokenizer, tmp_path / "best")
    save_model_atomic(OneProcess(), model, tokenizer, tmp_path / "best")  # replaces an existing one
    publish_model(tmp_path / "best", tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in names and not [n for n in names if n.startswith((".tmp-", ".old-"))]
    assert_no_pickles(tmp_path)


def assert_no_pickles(folder: Path) -> None:
    pickles = [
        p
        for p in folder.rglob("*")
        if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt") and "checkpoints" not in p.parts
    ]
    assert not pickles, f"pickled files in a model folder: {pickles}"


def test_final_run_folder_has_only_safetensors_weights(reference):
    assert_no_pickles(reference)
    assert (reference / "model.safetensors").is_file() and not (reference / "best").exists()


def test_package_loads_pickles_only_with_weights_only_and_yaml_only_safely():
    package = Path(__file__).resolve().parents[1] / "hftl"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(|yaml\.(Unsafe|Full)?Loader\b", text), path
        assert not re.search(r"\bpickle\.loads?\(", text), path


# --------------------------------------------------------------------------- run-folder protection, resume edge cases
def test_completed_run_is_not_silently_overwritten(reference):
    recipe = load_recipe(reference / "recipe.yaml", [f"output.dir={reference}"])
    with pytest.raises(HftlError, match="holds a completed run.*output.overwrite"):
        run(recipe)


# --------------------------------------------------------------------------- data faults (text)
def write_csv(path: Path, rows: list[tuple[str, str]], repeat: int = 12) -> Path:
    """A csv with the given rows first, then ``repeat`` copies of clean rows."""
    import csv

    clean = [("a great movie", "pos"), ("an awful plot", "neg"), ("the fun film", "pos"), ("a dull story", "neg")]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows + clean * repeat)
    return path


def encode_splits(recipe_path: Path):
    from hftl.tasks import prepare_data

    prepared = prepare_data(load_recipe(recipe_path))
    return prepared.encoded, prepared.reports


BAD_ROWS = [
    ([("", "pos")], "empty or missing text"),
    ([("   ", "neg")], "empty or missing text"),
    ([("a fine film", "")], "label None is not one of"),
    ([("a fine film", "meh")], "label 'meh' is not one of"),
]


@pytest.mark.parametrize("rows, problem", BAD_ROWS, ids=["empty-text", "blank-text", "missing-label", "unknown-label"])
def test_bad_text_example_fails_naming_the_example(tmp_path, text_recipe, rows, problem):
    data = write_csv(tmp_path / "bad.csv", rows)
    path = text_recipe(data={"source": str(data), "group_column": None, "label_names": ["pos", "neg"]})
    with pytest.raises(DataError, match=rf"example \d+: {re.escape(problem)}.*data.on_error: skip"):
        encode_splits(path)


def test_skip_counts_bad_examples_and_names_the_first(tmp_path, text_recipe):
    data = write_csv(tmp_path / "bad.csv", [rows[0] for rows, _ in BAD_ROWS], repeat=30)
    path = text_recipe(
        data={
            "source": str(data),
            "group_column": None,
            "label_names": ["pos", "neg"],
            "on_error": "skip",
            "validation_size": 0.3,
            "test_size": 0.3,
        }
    )
    encoded, reports = encode_splits(path)
    skipped = sum(int(re.search(r"skipped (\d+) bad", r).group(1)) for r in reports)
    assert skipped == len(BAD_ROWS), reports
    assert all(re.search(r"\(first: #\d+: ", r) for r in reports), reports
    assert sum(len(encoded[s]) for s in encoded) == 4 * 30


def test_empty_training_set_after_filtering_is_a_clear_error(tmp_path, text_recipe):
    data = write_csv(tmp_path / "bad.csv", [("", "pos"), (" ", "neg")] * 20, repeat=0)
    path = text_recipe(
        data={
            "source": str(data),
            "group_column": None,
            "label_names": ["pos", "neg"],
            "on_error": "skip",
            "splits": {"train": "train", "validation": None, "test": None},
        },
        train={"max_steps": 1},
    )
    with pytest.raises(HftlError, match="training split is empty after filtering bad examples"):
        run(load_recipe(path))


# --------------------------------------------------------------------------- checkpoint faults
def test_missing_local_checkpoint_is_named(text_recipe, tmp_path):
    from hftl.tasks import TASKS

    recipe = load_recipe(text_recipe(model={"checkpoint": str(tmp_path / "no-such-model")}))
    with pytest.raises(CheckpointError, match="no-such-model"):
        TASKS.get(recipe.task).load_processor(recipe)


def test_unreachable_checkpoint_offline_names_offline_alternatives(text_recipe, monkeypatch):
    from hftl.tasks import TASKS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(text_recipe(model={"checkpoint": "someone/not-a-real-model"}))
    with pytest.raises(CheckpointError, match=r"someone/not-a-real-model.*HF_HUB_OFFLINE.*all-MiniLM-L6-v2"):
        TASKS.get(recipe.task).load_processor(recipe)
    typo = load_recipe(text_recipe(model={"checkpoint": "all-MiniLM-L6-v3"}))
    with pytest.raises(CheckpointError, match=r"'all-MiniLM-L6-v3'.*Did you mean 'all-MiniLM-L6-v2'\?"):
        TASKS.get(typo.task).load_processor(typo)


# --------------------------------------------------------------------------- safety
def test_trust_remote_code_is_off_by_default_and_warns_with_the_repo_when_on(text_recipe, tiny_bert_dir):
    from hftl.models.pretrained import load_pretrained
    from hftl.tasks import TASKS

    calls = []

    class Factory:
        @staticmethod
        def from_pretrained(name, **kwargs):
            calls.append(kwargs)

    recipe = load_recipe(text_recipe())
    assert recipe.model.trust_remote_code is False
    load_pretrained(Factory, "org/model")
    assert calls[-1]["trust_remote_code"] is False
    with pytest.warns(UserWarning, match="trust_remote_code is on: code from 'org/model' will run"):
        load_pretrained(Factory, "org/model", trust_remote_code=True)
    assert calls[-1]["trust_remote_code"] is True
    on = load_recipe(text_recipe(model={"checkpoint": str(tiny_bert_dir), "trust_remote_code": True}))
    with pytest.warns(UserWarning, match=re.escape(f"code from '{tiny_bert_dir}' will run")):
        TASKS.get(on.task).load_processor(on)


TOKEN = "hf_PlantedSecretToken0123456789abcdefXYZ"


def test_hub_token_never_reaches_any_output(tmp_path, tiny_bert_dir, reviews_csv, monkeypatch, capfd):
    import tensorboard  # noqa: F401  (a dev dependency: the tracker under test must be installed)

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    token_file = tmp_path / "hf-home" / "token"
    token_file.parent.mkdir()
    token_file.write_text(TOKEN)
    monkeypatch.setenv("HF_TOKEN_PATH", str(token_file))
    recipe = write_recipe(tmp_path, tiny_bert_dir, reviews_csv, train={"max_steps": 4, "trackers": ["tensorboard"]})
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run_dir = run(load_recipe(recipe)).run_dir
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before, "handlers not given back"
    out, err = capfd.readouterr()
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in files), "the tracker wrote nothing"
    leaks = [str(p) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaks and TOKEN not in out + err, leaks

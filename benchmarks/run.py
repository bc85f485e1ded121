"""hftl's performance comparisons (issue 5), side by side in one process tree, as a markdown table of ratios.

    python benchmarks/run.py                # all six comparisons (about 10 minutes on 2 cores)
    python benchmarks/run.py --only 2,5     # some of them
    python benchmarks/run.py --threads 2    # torch threads of the single-process runs (default: all cores)

Each measurement runs in a fresh process (``benchmarks/workloads.py``); the variants
of a comparison alternate (A B C A B C ...) and the best of the repeats is kept, so
a busy neighbour slows both sides alike. Ratios, not seconds, are the result: they
mean the same on a faster machine.

1. full fine-tuning, same model / rows / batch / steps, every batch padded alike: hftl vs a plain loop vs Trainer
2. feature extraction, 5 epochs, end to end: hftl (feature cache, extraction included) vs Trainer, frozen backbone
3. bottom half of MiniLM frozen vs full fine-tuning: step time and peak memory
4. sentiment recipe epoch: dynamic padding (+ length grouping) vs padding to 128
5. start-up of ``hftl --help`` and ``hftl validate recipes/sentiment.yaml``
6. two processes x one thread vs one process x two threads, same recipe
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass
class Row:
    number: str
    comparison: str
    measured: str
    ratio: str
    goal: str
    met: bool | None = None


@dataclass
class Bench:
    threads: int
    work: Path
    repeats: int
    quick: bool = False

    def size(self, full: int, quick: int) -> int:
        """A workload size: ``full``, or ``quick`` for a smoke run (--quick)."""
        return quick if self.quick else full

    def env(self, threads: int | None = None) -> dict[str, str]:
        n = str(threads or self.threads)
        return {
            **os.environ,
            "OMP_NUM_THREADS": n,
            "MKL_NUM_THREADS": n,
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HFTL_CACHE_DIR": str(self.work / "cache"),
            "PYTHONWARNINGS": "ignore",
        }

    def measure(self, name: str, **params: Any) -> dict[str, Any]:
        """Run one workload in a fresh process; its RESULT dict."""
        params.setdefault("tmp", str(self.work / "runs"))
        command = [sys.executable, str(ROOT / "benchmarks" / "workloads.py"), name, json.dumps(params)]
        started = time.perf_counter()
        done = subprocess.run(command, env=self.env(), capture_output=True, text=True, cwd=ROOT)
        result = next(
            (json.loads(line[7:]) for line in reversed(done.stdout.splitlines()) if line.startswith("RESULT ")), None
        )
        if result is None:
            raise RuntimeError(f"{name} {params} failed:\n{done.stderr[-3000:]}")
        log(
            f"  {name} {params.get('variant', '')} {params.get('model', '')}: "
            f"{ {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()} } "
            f"({time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.1f})"
        )
        return result

    def side_by_side(self, name: str, variants: list[str], key: str, **params: Any) -> dict[str, dict[str, Any]]:
        """Each variant ``repeats`` times, interleaved; per variant the result with the smallest ``key``."""
        best: dict[str, dict[str, Any]] = {}
        for _ in range(self.repeats):
            for variant in variants:
                result = self.measure(name, variant=variant, **params)
                if variant not in best or result[key] < best[variant][key]:
                    best[variant] = result
        return best


def free_port() -> int:
    """A free TCP port, so this launch cannot meet another job's process group on accelerate's default 29500."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the comparisons
def full_finetuning(bench: Bench) -> list[Row]:
    steps, batch, length = bench.size(30, 6), 16, 64
    r = bench.side_by_side(
        "finetune", ["hftl", "plain", "trainer"], "step_s", steps=steps, batch_size=batch, max_length=length
    )
    h, p, t = (r[v]["step_s"] for v in ("hftl", "plain", "trainer"))
    what = f"MiniLM full FT, batch {batch} x {length} tokens, {steps} steps; median s/step"
    return [
        Row(
            "1a",
            "full fine-tuning: hftl speed vs plain PyTorch loop",
            f"{what}: hftl {h:.3f}, plain {p:.3f}",
            f"{p / h:.2f}x",
            ">= 0.97x",
            p / h >= 0.97,
        ),
        Row(
            "1b",
            "full fine-tuning: hftl speed vs transformers.Trainer",
            f"{what}: hftl {h:.3f}, Trainer {t:.3f}",
            f"{t / h:.2f}x",
            ">= 1.0x",
            t / h >= 1.0,
        ),
    ]


def feature_extraction(bench: Bench) -> list[Row]:
    rows = []
    for letter, model, n_train, n_eval in (
        ("a", "tiny-bert", bench.size(2000, 64), bench.size(500, 32)),
        ("b", "all-MiniLM-L6-v2", bench.size(1000, 64), bench.size(250, 32)),
        ("c", "efficientnet-lite0", bench.size(1000, 64), bench.size(250, 32)),
    ):
        epochs = bench.size(5, 2)
        r = bench.side_by_side(
            "frozen_body", ["hftl", "trainer"], "seconds", model=model, epochs=epochs, n_train=n_train, n_eval=n_eval
        )
        h, t = r["hftl"]["seconds"], r["trainer"]["seconds"]
        ht, tt = r["hftl"]["training_s"], r["trainer"]["training_s"]
        rows.append(
            Row(
                f"2{letter}",
                f"feature extraction {epochs} epochs, {model}: hftl (cache) speed vs Trainer (frozen)",
                f"{n_train} train / {n_eval} val / {n_eval} test, end to end: hftl {h:.1f} s "
                f"(test acc {r['hftl']['test_accuracy']:.3f}), Trainer {t:.1f} s "
                f"(test acc {r['trainer']['test_accuracy']:.3f}); training phase (extraction + epochs + "
                f"validations): {ht:.1f} vs {tt:.1f} s = {tt / ht:.1f}x",
                f"{t / h:.2f}x",
                ">= 4x",
                t / h >= 4,
            )
        )
    return rows


def frozen_prefix(bench: Bench) -> list[Row]:
    r = bench.side_by_side(
        "freeze_half", ["full", "half"], "step_s", steps=bench.size(10, 6), batch_size=16, max_length=128
    )
    full, half = r["full"], r["half"]
    what = "MiniLM, batch 16 x 128 tokens, bottom half of the body frozen (embeddings + layers 0-2), median s/step"
    return [
        Row(
            "3a",
            "bottom half frozen vs full: step time",
            f"{what}: {half['step_s']:.3f} vs {full['step_s']:.3f} s",
            f"{half['step_s'] / full['step_s']:.2f}x",
            "<= 0.75x",
            half["step_s"] / full["step_s"] <= 0.75,
        ),
        Row(
            "3b",
            "bottom half frozen vs full: peak memory",
            "peak RSS above the loaded model (activations, grads, AdamW state; sampled each ms): "
            f"{half['peak_mb']:.0f} vs {full['peak_mb']:.0f} MB; "
            f"autograd saved tensors {half['saved_mb']:.0f} vs {full['saved_mb']:.0f} MB",
            f"{half['peak_mb'] / full['peak_mb']:.2f}x",
            "<= 0.8x",
            half["peak_mb"] / full["peak_mb"] <= 0.8,
        ),
    ]


def dynamic_padding(bench: Bench) -> list[Row]:
    n = bench.size(640, 192)
    r = bench.side_by_side("padding", ["dynamic", "ungrouped", "pad128"], "step_s", n_train=n)
    d, u, p = (r[v]["step_s"] for v in ("dynamic", "ungrouped", "pad128"))
    return [
        Row(
            "4",
            "sentiment recipe epoch: dynamic padding vs padding to 128",
            f"MiniLM, batch 32, {n} rows, max 128 tokens; s/step: length-grouped {d:.3f}, "
            f"dynamic without grouping {u:.3f} ({u / p:.2f}x), padded to 128 {p:.3f}",
            f"{d / p:.2f}x",
            "<= 0.4x",
            d / p <= 0.4,
        )
    ]


def startup(bench: Bench) -> list[Row]:
    rows = []
    for letter, args in (("a", ["--help"]), ("b", ["validate", "recipes/sentiment.yaml"])):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([str(BIN / "hftl"), *args], env=bench.env(), cwd=ROOT, capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        median = statistics.median(times)
        rows.append(
            Row(
                f"5{letter}",
                f"start-up: hftl {' '.join(args)}",
                f"wall time, median of 5: {median:.2f} s (min {min(times):.2f})",
                f"{median:.2f} s",
                "<= 1 s",
                median <= 1.0,
            )
        )
        log(f"  startup {args}: {[round(t, 2) for t in times]}")
    return rows


def processes_vs_threads(bench: Bench) -> list[Row]:
    n = bench.size(640, 128)
    overrides = [
        f"data.max_train_samples={n}",
        "data.max_eval_samples=64",
        "train.eval_steps=100000",
        "output.overwrite=true",
    ]
    launch = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(ROOT / "hftl" / "run.py"),
    ]
    setups = {
        "2 processes x 1 thread": (launch, 1, {"ACCELERATE_USE_CPU": "true"}),
        "1 process x 2 threads": ([str(BIN / "hftl"), "run"], 2, {}),
    }
    results: dict[str, tuple[float, float]] = {}
    for _ in range(bench.repeats):
        for name, (command, threads, extra) in setups.items():
            out = bench.work / "runs" / ("threads-" + name.split()[0])
            started = time.perf_counter()
            done = subprocess.run(
                [*command, "recipes/sentiment.yaml", *overrides, f"output.dir={out}"],
                cwd=ROOT,
                env={**bench.env(threads), **extra},
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - started
            if done.returncode != 0:
                (out.parent / "failed.log").write_text(done.stdout + done.stderr)
                raise RuntimeError(f"{name} failed (full log: {out.parent / 'failed.log'}):\n{done.stderr[-3000:]}")
            train = json.loads((out / "metrics.json").read_text())["train_seconds"]
            log(f"  threads {name}: train {train:.1f} s, wall {wall:.1f} s")
            if name not in results or train < results[name][0]:
                results[name] = (train, wall)
    (two, two_wall), (one, one_wall) = results["2 processes x 1 thread"], results["1 process x 2 threads"]
    return [
        Row(
            "6",
            "2 processes x 1 thread vs 1 process x 2 threads (time)",
            f"sentiment recipe, {n} rows, 1 epoch (batch 32 per step): training {two:.1f} vs {one:.1f} s, "
            f"wall {two_wall:.1f} vs {one_wall:.1f} s",
            f"{two / one:.2f}x",
            "report only",
        )
    ]


COMPARISONS: dict[str, Callable[[Bench], list[Row]]] = {
    "1": full_finetuning,
    "2": feature_extraction,
    "3": frozen_prefix,
    "4": dynamic_padding,
    "5": startup,
    "6": processes_vs_threads,
}


def table(rows: list[Row]) -> str:
    lines = ["| # | comparison | measured | ratio | goal | met |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.number} | {r.comparison} | {r.measured} | {r.ratio} | {r.goal} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(COMPARISONS), help="comma-separated comparisons (1-6)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of single-process runs (default: all cores)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant, interleaved; the best is kept")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs, measures nothing")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(tempfile.gettempdir()) / "hftl-bench",
        help="scratch folder (caches and run folders)",
    )
    args = parser.parse_args(argv)
    chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := [c for c in chosen if c not in COMPARISONS]:
        parser.error(f"--only: unknown comparison(s) {unknown}; choose from {', '.join(COMPARISONS)}")
    bench = Bench(args.threads, args.work, args.repeats, args.quick)
    started = time.perf_counter()
    log(f"[bench] preparing caches in {args.work}")
    bench.measure("prepare")
    rows: list[Row] = []
    for number in chosen:
        log(f"[bench] {number}. {COMPARISONS[number].__name__.replace('_', ' ')}")
        try:
            rows += COMPARISONS[number](bench)
        except RuntimeError as exc:  # report and go on with the others
            log(str(exc))
            rows.append(Row(number, COMPARISONS[number].__name__, "failed (see the log above)", "-", "-", False))
    import torch  # only for the environment line

    print(
        f"\nhftl benchmarks: {os.cpu_count()} cores, {args.threads} torch threads per single-process run, "
        f"torch {torch.__version__}; best of {args.repeats} interleaved runs; {time.perf_counter() - started:.0f} s "
        f"in all.\nCommand: python benchmarks/run.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
    )
    print(table(rows))
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

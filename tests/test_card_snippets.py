"""The model card's "How to use" code runs as written: for every task, problem type and pooling mode, a run of two
steps on a tiny model, its README.md's first Python block extracted and executed in a fresh Python process (hftl
importable, as after `pip install hftl`; nothing else from this process).

The runs are built once for the module. The snippets run in one subprocess (tests/snippet_runner.py) that imports
torch and transformers once and forks a fresh child per snippet, two at a time: hftl is imported by the snippet
itself, as written, in a process of its own (ten separate interpreters cost about 60 s more, importing the same
two packages ten times).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import NEGATIVE, POSITIVE, make_reviews

ROOT = Path(__file__).resolve().parents[1]
POOLINGS = ("pooler", "mean", "max", "cls")


def sentence_transformers_copy(bert: Path, folder: Path, mode: str) -> Path:
    """The tiny BERT with a sentence-transformers pooling config (what model.pooling: auto reads)."""
    copy = folder / f"st-{mode}"
    shutil.copytree(bert, copy)
    (copy / "1_Pooling").mkdir()
    flag = {"mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens", "cls": "pooling_mode_cls_token"}
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, flag[mode]: True}))
    return copy


def text_rows(n: int = 64) -> list[dict]:
    rng = random.Random(1)
    rows = make_reviews(n)
    for row in rows:
        words = row["text"].split()
        row["tags"] = sorted({"pos" if w in POSITIVE else "neg" for w in words if w in POSITIVE + NEGATIVE} | {"any"})
        row["score"] = (1.0 if row["label"] == "pos" else 0.0) + rng.random() / 10
        row["other"] = rng.choice(rows)["text"]
        row["tokens"] = words
        row["ner_tags"] = ["B-SENT" if w in POSITIVE + NEGATIVE else "O" for w in words]
    return rows


def recipe(name: str, task: str, checkpoint: Path | None, source: Path | str, folder: Path, **sections) -> Path:
    doc = {
        "name": name,
        "task": task,
        "model": {"checkpoint": str(checkpoint)} if checkpoint else {},
        "data": {"source": str(source), "max_length": 16, "max_train_samples": 32, "max_eval_samples": 16},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0},
        "train": {"min_steps": 0, "max_steps": 2, "batch_size": 8, "seed": 0},
        "output": {"dir": str(folder / name)},
    }
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """One finished two-step run per task / problem type / pooling mode."""
    from PIL import Image
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    from hftl.cli.api import run_recipe

    folder = tmp_path_factory.mktemp("snippet-runs")
    data = folder / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in text_rows()))
    images = folder / "images"
    for i in range(24):
        label = ("dark", "light")[i % 2]
        (images / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40, 40, 40) if label == "dark" else (220, 220, 220)).save(
            images / label / f"{i}.png"
        )
    resnet = folder / "tiny-resnet"
    ResNetModel(
        ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    ).save_pretrained(resnet)
    ConvNextImageProcessor(size={"shortest_edge": 32}).save_pretrained(resnet)

    text = "text-classification"
    recipes = {
        f"text-{mode}": recipe(
            f"text-{mode}",
            text,
            tiny_bert_dir if mode == "pooler" else sentence_transformers_copy(tiny_bert_dir, folder, mode),
            data,
            folder,
        )
        for mode in POOLINGS
    }
    recipes["multi-label"] = recipe(
        "multi-label",
        text,
        tiny_bert_dir,
        data,
        folder,
        data={"problem_type": "multi_label", "columns": {"label": "tags"}},
    )
    recipes["regression"] = recipe(
        "regression",
        text,
        tiny_bert_dir,
        data,
        folder,
        data={"problem_type": "regression", "columns": {"label": "score"}},
    )
    recipes["pairs"] = recipe("pairs", text, tiny_bert_dir, data, folder, data={"columns": {"text_pair": "other"}})
    recipes["token"] = recipe("token", "token-classification", tiny_bert_dir, data, folder)
    recipes["image"] = recipe("image", "image-classification", resnet, images, folder)
    recipes["fusion"] = recipe(
        "fusion",
        "fusion",
        None,
        "digits-plus",
        folder,
        model={"towers": {"vision": {"checkpoint": str(resnet)}, "text": {"checkpoint": str(tiny_bert_dir)}}},
    )
    return {name: run_recipe(path).run_dir for name, path in recipes.items()}


def snippet(run_dir: Path) -> str:
    """The first Python block of the card's How to use section."""
    card = (run_dir / "README.md").read_text()
    usage = card[card.index("## How to use") :]
    return re.search(r"```python\n(.*?)```", usage, re.S).group(1)


def execute(codes: dict[str, str], cwd: Path) -> dict[str, dict]:
    """Each snippet in a fresh process forked by tests/snippet_runner.py: {name: returncode, stdout, stderr}."""
    (cwd / "snippets.json").write_text(json.dumps(codes))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, str(ROOT / "tests" / "snippet_runner.py"), "snippets.json", "results.json"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / "results.json").read_text())


@pytest.mark.slow
def test_every_card_snippet_runs_as_written_in_a_fresh_process(runs, tmp_path):
    codes = {name: snippet(run_dir) for name, run_dir in runs.items()}
    results = execute(codes, tmp_path)
    assert set(results) == set(codes)
    failed = {name: r["stderr"][-1500:] for name, r in results.items() if r["returncode"] != 0}
    assert not failed, failed
    for name, result in results.items():  # a prediction was printed (a token model may find no entity yet)
        labels = json.loads((runs[name] / "labels.json").read_text())
        assert name == "token" or any(label in result["stdout"] for label in labels), (name, result["stdout"])
        assert result["stdout"].strip().startswith(("[", "{")), (name, result["stdout"])
    for mode in ("mean", "max", "cls"):  # hftl's pooled head loads through `import hftl`, no remote code
        assert "trust_remote_code" not in codes[f"text-{mode}"] and "import hftl" in codes[f"text-{mode}"]
    assert "import hftl" not in codes["text-pooler"]  # the checkpoint's own head: plain transformers
    assert "top_k=None" in codes["multi-label"] and "text_pair" in codes["pairs"]

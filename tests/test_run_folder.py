"""What a completed run folder keeps: the model and the small files (``output.keep_checkpoints``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftl.config.recipe import load_recipe
from hftl.training.train import run

SHORT = {"max_steps": 6, "eval_steps": 2, "save_steps": 2, "save_total_limit": 2, "epochs": 1}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "keep, states", [("none", None), ("last", ["step-00000006"]), ("all", ["step-00000004", "step-00000006"])]
)
def test_completed_run_keeps_the_model_and_the_states_asked_for(text_recipe, keep, states):
    recipe = load_recipe(text_recipe(train=SHORT, output={"keep_checkpoints": keep}))
    run_dir = run(recipe).run_dir
    assert not (run_dir / "best").exists(), "best/ would be a second copy of the published model"
    found = sorted(p.name for p in (run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").exists() else None
    assert found == states
    if keep == "none":  # about the model's size: weights + tokenizer, recipe, logs, card and plots
        model = (run_dir / "model.safetensors").stat().st_size
        total = folder_bytes(run_dir)
        print(f"run folder {total:,} bytes, model.safetensors {model:,} bytes")
        assert total - model < 400_000, sorted((p.name, p.stat().st_size) for p in run_dir.rglob("*") if p.is_file())


def test_a_completed_run_cannot_be_resumed_and_is_left_as_it_was(text_recipe, capsys):
    from hftl.cli import main

    path = text_recipe(train=SHORT)
    run_dir = run(load_recipe(path)).run_dir
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    assert main(["run", str(path), "--resume"]) == 2
    assert "holds a completed run, so there is nothing to resume" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_a_run_that_is_not_resumable_saves_no_state_and_without_a_card_writes_none(text_recipe, tmp_path, monkeypatch):
    """``output.resumable: false`` / ``output.card: false`` (what a study trial that keeps no model sets): no state
    is ever saved, no card or plot written, and the run trains exactly as the default one."""
    import hftl.training.train as train_module

    saved = []
    real = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint", lambda *a, **k: (saved.append(a[3]), real(*a, **k)))
    plain = run(load_recipe(text_recipe(train=SHORT, output={"dir": str(tmp_path / "plain")})))
    assert len(saved) == 3 and (plain.run_dir / "README.md").exists() and list(plain.run_dir.glob("*.png"))
    saved.clear()
    lean = run(load_recipe(text_recipe(train=SHORT, output={"resumable": False, "card": False})))
    assert saved == []
    names = {p.name for p in lean.run_dir.iterdir()}
    assert "README.md" not in names and not [n for n in names if n.endswith(".png")] and "checkpoints" not in names
    assert "model.safetensors" in names and "metrics.json" in names
    assert lean.metrics["test"] == plain.metrics["test"] and lean.metrics["validation"] == plain.metrics["validation"]


def test_kept_states_need_a_resumable_run(text_recipe, capsys):
    from hftl.cli import main

    path = text_recipe(train=SHORT, output={"resumable": False, "keep_checkpoints": "last"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "output" in err and "resumable: false saves none" in err and "Traceback" not in err

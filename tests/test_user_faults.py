"""Every place hftl reads user input, one fault each: exit 2 through ``hftl.cli.main``, one ``hftl: error:``
paragraph naming the fault, no traceback, and nothing written or deleted (the test folder, run folder included,
is byte for byte as before).

A fault is a row of FAULTS: a function that sets it up in the test folder (given the recipe writer) and returns
the command line, and words the message must hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hftl.cli import main

Setup = Callable[[Path, Callable[..., Path], pytest.MonkeyPatch], list[str]]


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


# --------------------------------------------------------------------------- the faults
def duplicate_section(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    path = recipe()
    path.write_text(path.read_text() + "train:\n  epochs: 9\n")
    return ["run", str(path)]


def duplicate_key_in_override_file(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    path = recipe()
    path.write_text(path.read_text().replace("name: toy\n", "name: toy\nname: toy2\n"))
    return ["validate", str(path)]


def csv_header_only(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    data = tmp / "empty.csv"
    data.write_text("text,label\n")
    return ["run", str(recipe(data={"source": str(data), "group_column": None}))]


def csv_zero_bytes(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    data = tmp / "zero.csv"
    data.write_bytes(b"")
    return ["run", str(recipe(data={"source": str(data), "group_column": None}))]


def csv_utf16(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    data = tmp / "utf16.csv"
    data.write_bytes(("text,label\n" + "a good film,pos\nan awful plot,neg\n" * 10).encode("utf-16"))
    return ["run", str(recipe(data={"source": str(data), "group_column": None}))]


def json_not_records(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    data = tmp / "data.json"
    data.write_text("42")
    return ["run", str(recipe(data={"source": str(data), "group_column": None}))]


def files_of_mixed_types(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "a.csv").write_text("text,label\nx,pos\n")
    (tmp / "b.json").write_text("[]")
    return [
        "run",
        str(recipe(data={"source": None, "files": {"train": "a.csv", "test": "b.json"}, "group_column": None})),
    ]


def files_missing(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["run", str(recipe(data={"source": None, "files": {"train": "nope.csv"}, "group_column": None}))]


def lora_target_matches_nothing(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["run", str(recipe(strategy={"name": "lora", "lora": {"target_modules": ["q_proj"]}}))]


def output_dir_is_a_file(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "run").write_text("not a folder")
    return ["run", str(recipe())]


def output_dir_under_a_file(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "file").write_text("not a folder")
    return ["run", str(recipe(output={"dir": str(tmp / "file" / "run")}))]


def resume_a_completed_run_without_states(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "run_status.json").write_text(json.dumps({"status": "completed"}))
    return ["run", str(recipe()), "--resume"]


def corrupt_checkpoint_state(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    state = tmp / "run" / "checkpoints" / "step-00000002"
    state.mkdir(parents=True)
    (state / "trainer_state.json").write_text(json.dumps({"step": 2}))
    (state / "model.safetensors").write_bytes(b"garbage")
    (tmp / "run" / "run_status.json").write_text(json.dumps({"status": "interrupted"}))
    return ["run", str(recipe()), "--resume"]


def checkpoint_folder_without_config(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "model").mkdir()
    return ["run", str(recipe(model={"checkpoint": str(tmp / "model")}))]


def checkpoint_with_corrupt_weights(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    import shutil

    bert = Path(json.loads((tmp / "bert.json").read_text()))
    shutil.copytree(bert, tmp / "model")
    (tmp / "model" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    return ["run", str(recipe(model={"checkpoint": str(tmp / "model")}))]


def init_from_a_file(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "earlier").write_text("x")
    return ["run", str(recipe(model={"checkpoint": None, "init_from": str(tmp / "earlier")}))]


def image_folder_without_images(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "images" / "cat").mkdir(parents=True)
    (tmp / "images" / "cat" / "notes.md").write_text("no images here")
    return [
        "run",
        str(
            recipe(
                task="image-classification",
                data={"source": str(tmp / "images"), "group_column": None, "max_length": 128},
            )
        ),
    ]


def image_folder_of_one_class(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    from PIL import Image

    (tmp / "images" / "cat").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (4, 4)).save(tmp / "images" / "cat" / f"{i}.png")
    return [
        "run",
        str(
            recipe(
                task="image-classification",
                data={"source": str(tmp / "images"), "group_column": None, "max_length": 128},
            )
        ),
    ]


def predict_missing_folder(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["predict", str(tmp / "no-run"), "--text", "hi"]


def predict_folder_with_garbled_recipe(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "recipe.yaml").write_text("task: [unclosed\n")
    return ["predict", str(tmp / "run"), "--text", "hi"]


def predict_input_file_missing(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["predict", str(tmp), "--file", str(tmp / "inputs.txt")]


def push_a_file(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "run").write_text("x")
    return ["push", str(tmp / "run"), "--repo-id", "me/x"]


def threads_not_a_number(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    mp.setenv("OMP_NUM_THREADS", "four")
    return ["run", str(recipe())]


def cache_dir_is_a_file(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    (tmp / "cache").write_text("x")
    mp.setenv("HFTL_CACHE_DIR", str(tmp / "cache"))
    return ["cache"]


def log_level_unknown(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    mp.setenv("HFTL_LOG_LEVEL", "loud")
    return ["run", str(recipe())]


def labelled_jsonl(tmp: Path, label) -> str:
    """A JSONL file of 20 texts whose label column holds ``label(i)``."""
    path = tmp / "labelled.jsonl"
    path.write_text("".join(json.dumps({"text": f"a good film {i}", "label": label(i)}) + "\n" for i in range(20)))
    return str(path)


def list_labels_under_single_label(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    source = labelled_jsonl(tmp, lambda i: ["pos", "neg"][: 1 + i % 2])
    return ["run", str(recipe(data={"source": source, "group_column": None}))]


def float_labels_under_single_label(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    source = labelled_jsonl(tmp, lambda i: i / 7)
    return ["run", str(recipe(data={"source": source, "group_column": None}))]


def text_labels_under_regression(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["run", str(recipe(data={"problem_type": "regression"}))]


def plain_labels_under_multi_label(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["run", str(recipe(data={"problem_type": "multi_label"}))]


def class_weights_of_wrong_length(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["run", str(recipe(train={"class_weights": [1.0, 2.0, 3.0]}))]


def class_weights_under_regression(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    source = labelled_jsonl(tmp, lambda i: i / 7)
    path = recipe(data={"source": source, "group_column": None, "problem_type": "regression"})
    return ["run", str(path), "train.class_weights=balanced"]


def image_classes_under_regression(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp / "images" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (4, 4)).save(tmp / "images" / label / f"{i}.png")
    data = {"source": str(tmp / "images"), "group_column": None, "problem_type": "regression"}
    model = {"checkpoint": "resnet-small-untrained"}  # an offline catalog checkpoint with an image processor
    return ["run", str(recipe(task="image-classification", data=data, model=model))]


def evaluate_missing_folder(tmp: Path, recipe: Callable[..., Path], mp: pytest.MonkeyPatch) -> list[str]:
    return ["evaluate", str(tmp / "no-run"), labelled_jsonl(tmp, lambda i: "pos")]


FAULTS: dict[str, tuple[Setup, str]] = {
    "duplicate-section": (duplicate_section, "key 'train': is written twice (lines"),
    "duplicate-key": (duplicate_key_in_override_file, "key 'name': is written twice (lines"),
    "csv-header-only": (csv_header_only, "no rows"),
    "csv-zero-bytes": (csv_zero_bytes, "no rows"),
    "csv-utf16": (csv_utf16, "not UTF-8"),
    "json-not-records": (json_not_records, "Cannot read the json data"),
    "files-mixed-types": (files_of_mixed_types, "must all be of one supported type"),
    "files-missing": (files_missing, "'nope.csv' does not exist"),
    "lora-target-none": (lora_target_matches_nothing, "names no module of this model: q_proj"),
    "output-dir-is-a-file": (output_dir_is_a_file, "is a file, not a folder"),
    "output-dir-under-a-file": (output_dir_under_a_file, "which is a file"),
    "resume-completed": (resume_a_completed_run_without_states, "nothing to resume"),
    "corrupt-checkpoint": (corrupt_checkpoint_state, "cannot be loaded"),
    "checkpoint-no-config": (checkpoint_folder_without_config, "Cannot load"),
    "checkpoint-corrupt-weights": (checkpoint_with_corrupt_weights, "Cannot load"),
    "init-from-a-file": (init_from_a_file, "model.init_from"),
    "image-folder-no-images": (image_folder_without_images, "needs images or data files"),
    "image-folder-one-class": (image_folder_of_one_class, "at least 2"),
    "predict-missing-folder": (predict_missing_folder, "no-run"),
    "predict-garbled-recipe": (predict_folder_with_garbled_recipe, "recipe.yaml"),
    "predict-input-file-missing": (predict_input_file_missing, "inputs.txt"),
    "push-a-file": (push_a_file, "no such run folder"),
    "threads-not-a-number": (threads_not_a_number, "OMP_NUM_THREADS"),
    "cache-dir-is-a-file": (cache_dir_is_a_file, "HFTL_CACHE_DIR"),
    "log-level-unknown": (log_level_unknown, "HFTL_LOG_LEVEL='loud' is not a log level"),
    "list-labels-single-label": (list_labels_under_single_label, "holds lists of labels"),
    "float-labels-single-label": (float_labels_under_single_label, "one class per distinct value"),
    "text-labels-regression": (text_labels_under_regression, "does not hold numbers"),
    "plain-labels-multi-label": (plain_labels_under_multi_label, "holds single values, not lists"),
    "class-weights-wrong-length": (class_weights_of_wrong_length, "gives 3 weights for 2 labels"),
    "class-weights-regression": (class_weights_under_regression, "a regression target has none"),
    "image-classes-regression": (image_classes_under_regression, "holds classes (cat, dog"),
    "evaluate-missing-folder": (evaluate_missing_folder, "not a finished hftl run folder"),
}


@pytest.mark.parametrize("setup, words", FAULTS.values(), ids=FAULTS.keys())
def test_fault_exits_2_with_one_message_and_touches_nothing(
    tmp_path, text_recipe, tiny_bert_dir, monkeypatch, capsys, setup, words
):
    (tmp_path / "bert.json").write_text(json.dumps(str(tiny_bert_dir)))
    argv = setup(tmp_path, text_recipe, monkeypatch)
    before = snapshot(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    message = err[err.index("hftl: error: ") :] if "hftl: error: " in err else err
    assert words in message, message
    assert snapshot(tmp_path) == before, "the fault wrote or deleted files"

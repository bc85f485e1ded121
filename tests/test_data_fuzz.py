"""Property: whatever data file or image folder a recipe points at, preparing it (load, carve, label, encode,
collate) gives batches or an HftlError (a message the CLI shows without a traceback), never another exception.

Examples are kept small (a few rows, a few 1-8 px images) so each property runs in seconds.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftl.config.errors import HftlError
from hftl.config.recipe import load_recipe

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
COLUMNS = ["text", "label", "movie", "x", "", "text "]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]

cells = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "good film",
            "bad",
            "pos",
            "neg",
            "",
            " ",
            "a,b",
            'say "hi"',
            "line\nbreak",
            "ünïcödé ✓",
            "\x00",
            "1e5",
            "null",
        ]
    ),
    st.text(max_size=8),
)
json_cells = st.one_of(cells, st.lists(cells, max_size=2), st.dictionaries(st.sampled_from(COLUMNS), cells, max_size=2))


@st.composite
def data_files(draw) -> tuple[str, bytes]:
    """(file suffix, raw bytes): a CSV/TSV/JSON/JSONL table of random shape, values and text encoding."""
    suffix = draw(st.sampled_from([".csv", ".tsv", ".json", ".jsonl"]))
    columns = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=4, unique=True))
    rows = draw(
        st.lists(
            st.lists(
                json_cells if "json" in suffix else cells,
                min_size=len(columns),
                max_size=len(columns) + draw(st.integers(0, 1)),
            ),
            max_size=8,
        )
    )
    if suffix in (".csv", ".tsv"):
        out = io.StringIO()
        writer = csv.writer(out, delimiter="\t" if suffix == ".tsv" else ",")
        if draw(st.booleans()) or not rows:
            writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        text = out.getvalue()
    elif suffix == ".json":
        records = [dict(zip(columns, row)) for row in rows]
        text = json.dumps(draw(st.sampled_from([records, {"data": records}, records[:1], 3, "x"])))
    else:
        text = "".join(json.dumps(dict(zip(columns, row))) + "\n" for row in rows)
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]  # cut short
    data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="replace")
    if draw(st.integers(0, 7)) == 0:
        data += draw(st.binary(max_size=8))
    return suffix, data


def prepare_batches(recipe_path: Path) -> None:
    """What a run does with the data before the first step: load, carve, label, encode, collate every split."""
    from hftl.tasks import TASKS, prepare_data

    recipe = load_recipe(recipe_path)
    task = TASKS.get(recipe.task)
    data = prepare_data(recipe)
    for split, ds in data.encoded.items():
        collate = task.collator(data.processor, recipe, train=split == "train")
        if len(ds):
            collate([ds[i] for i in range(len(ds))])


def check(recipe_path: Path) -> None:
    try:
        prepare_batches(recipe_path)
    except HftlError as exc:
        assert str(exc).strip(), "an error needs a message"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-fuzz")


def write_recipe(folder: Path, task: str, checkpoint: Path, source: Path, **data: Any) -> Path:
    doc = {
        "name": "fuzz",
        "task": task,
        "model": {"checkpoint": str(checkpoint)},
        "data": {"source": str(source), "validation_size": 0.25, "test_size": 0.25, "on_error": "skip", **data},
        "output": {"dir": str(folder / "run")},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@FUZZ
@given(data_files(), st.sampled_from(["raise", "skip"]), st.booleans())
def test_random_data_files_give_batches_or_a_clear_error(workdir, tiny_bert_dir, file, on_error, stratify):
    suffix, data = file
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        source = Path(folder) / f"data{suffix}"
        source.write_bytes(data)
        check(
            write_recipe(
                Path(folder),
                "text-classification",
                tiny_bert_dir,
                source,
                on_error=on_error,
                max_length=8,
                stratify=stratify,
            )
        )


# --------------------------------------------------------------------------- image folders
@pytest.fixture(scope="module")
def tiny_resnet_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("fuzz-resnet")
    config = ResNetConfig(embedding_size=4, hidden_sizes=[4], depths=[1], layer_type="basic")
    ResNetModel(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 16}).save_pretrained(folder)
    return folder


def image_bytes(draw) -> tuple[str, bytes]:
    """(file name suffix, bytes): a small valid image in a random mode and format, or a broken one."""
    from PIL import Image

    kind = draw(st.sampled_from(["png", "png", "jpeg", "gif", "bmp", "truncated", "text", "empty", "random"]))
    if kind in ("text", "empty", "random"):
        data = {"text": b"label,text\n1,hello\n", "empty": b"", "random": draw(st.binary(min_size=1, max_size=32))}
        return draw(st.sampled_from([".png", ".jpg"])), data[kind]
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "CMYK", "LA"]))
    side = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    image = Image.new(mode, side, color=draw(st.integers(0, 255)) if mode not in ("RGB", "RGBA", "CMYK") else None)
    fmt = {"truncated": "png"}.get(kind, kind)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt.upper())
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode: save it as PNG
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        fmt = "png"
    data = buffer.getvalue()
    if kind == "truncated":
        data = data[: max(1, len(data) // 2)]
    return "." + {"jpeg": "jpg"}.get(fmt, fmt), data


@st.composite
def image_folders(draw) -> dict[str, bytes]:
    """relative path -> bytes: 0-3 class folders of 0-4 images, maybe stray files or nesting."""
    files: dict[str, bytes] = {}
    for c in range(draw(st.integers(0, 3))):
        cls = draw(st.sampled_from(["cat", "dog", "a b", "ünï", "0", "train"])) + str(c)
        for i in range(draw(st.integers(0, 4))):
            suffix, data = image_bytes(draw)
            nested = draw(st.integers(0, 6)) == 0
            files[f"{'extra/' if nested else ''}{cls}/{i}{suffix}"] = data
    if draw(st.integers(0, 4)) == 0:
        files[draw(st.sampled_from(["notes.txt", "stray.png", "labels.csv"]))] = b"x,y\n1,2\n"
    return files


@FUZZ
@given(image_folders(), st.sampled_from(["raise", "skip"]))
def test_random_image_folders_give_batches_or_a_clear_error(workdir, tiny_resnet_dir, files, on_error):
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        root = Path(folder) / "images"
        root.mkdir()
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        check(write_recipe(Path(folder), "image-classification", tiny_resnet_dir, root, on_error=on_error))
        shutil.rmtree(root, ignore_errors=True)

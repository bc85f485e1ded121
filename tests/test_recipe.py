"""Recipe validation: every kind of mistake gets one clear error naming the file, the key and the value.

One table row per kind of mistake; each asserts on the words of the message, since
the message is what the user gets. Cases that need the data (splits, columns,
labels) or the model (unfreezing schedule) come after the table.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from hftl.config.errors import DataError, HftlError, RecipeError
from hftl.config.recipe import Recipe, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
DROP = object()

BASE = {
    "name": "toy",
    "task": "text-classification",
    "model": {"checkpoint": "all-MiniLM-L6-v2"},
    "data": {"source": "rotten-tomatoes"},
}


def write(tmp_path: Path, doc: dict | None = None, changes: dict | None = None, text: str | None = None) -> Path:
    """Write a recipe: ``doc`` (default BASE) with dotted-key ``changes`` (DROP removes a key), or raw ``text``."""
    doc = copy.deepcopy(BASE if doc is None else doc)
    for dotted, value in (changes or {}).items():
        *parents, last = dotted.split(".")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(doc))
    return path


def assert_error(
    path: Path, fragments: list[str], overrides: tuple[str, ...] = (), error: type[Exception] = RecipeError
) -> str:
    with pytest.raises(error) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert message.startswith(str(path)), f"the message should name the file: {message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    return message


# (changes to BASE, words the message must contain)
MISTAKES = {
    "unknown-key": (
        {"train.epocs": 2},
        ["key 'train.epocs' is not allowed", "Did you mean 'epochs'?", "Allowed here: epochs,"],
    ),
    "unknown-section": ({"optimizer": {"lr": 1e-3}}, ["key 'optimizer' is not allowed", "Did you mean 'optim'?"]),
    "unknown-key-deep": ({"strategy.llrd": {"decai": 0.9}}, ["strategy.llrd.decai", "Did you mean 'decay'?"]),
    "wrong-type": ({"train.batch_size": "big"}, ["key 'train.batch_size'", "valid integer", "(got 'big')"]),
    "wrong-type-section": ({"optim": 5}, ["key 'optim'", "(got 5)"]),
    "wrong-type-list": ({"data.label_names": "pos,neg"}, ["key 'data.label_names'", "valid list"]),
    "wrong-choice": ({"train.mixed_precision": "fp8"}, ["key 'train.mixed_precision'", "'bf16'", "(got 'fp8')"]),
    "out-of-range": ({"optim.lr": -1}, ["key 'optim.lr'", "greater than 0", "(got -1)"]),
    "out-of-range-fraction": ({"data.validation_size": 1.5}, ["key 'data.validation_size'", "less than 1"]),
    "out-of-range-decay": ({"strategy.llrd": {"decay": 1.5}}, ["key 'strategy.llrd.decay'", "less than or equal to 1"]),
    "not-finite": ({"train.epochs": math.inf}, ["key 'train.epochs'", "finite number"]),
    "not-a-number": ({"optim.weight_decay": math.nan}, ["key 'optim.weight_decay'", "finite number"]),
    "missing-section": ({"data": DROP}, ["key 'data' is required"]),
    "missing-key": ({"data.source": DROP}, ["key 'data': data.source is required", "unless data.files"]),
    "missing-checkpoint": (
        {"model.checkpoint": DROP},
        ["key 'model.checkpoint'", "is required for text-classification", "all-MiniLM-L6-v2"],
    ),
    "bad-name": ({"name": "my run/1"}, ["key 'name'", "should match pattern"]),
    "unknown-task": (
        {"task": "text-clasification"},
        ["key 'task'", "unknown task 'text-clasification'", "Did you mean 'text-classification'?", "Allowed:"],
    ),
    "unknown-strategy": (
        {"strategy.name": "ful"},
        ["key 'strategy.name'", "unknown strategy 'ful'", "Did you mean 'full'?", "Allowed:"],
    ),
    "options-of-another-strategy": (
        {"strategy.progressive": {"every": 2}},
        ["key 'strategy.progressive'", "only applies with strategy.name: progressive"],
    ),
    "strategy-without-options": ({"strategy.name": "partial"}, ["key 'strategy.partial'", "is required"]),
    "two-lr-shapes": (
        {"strategy.llrd": {"decay": 0.9}, "strategy.discriminative": {"range": [1e-5, 1e-3]}},
        ["use either 'llrd' or 'discriminative'"],
    ),
    "column-role-typo": ({"data.columns": {"txt": "review"}}, ["key 'data.columns.txt'", "Did you mean 'text'?"]),
    "one-label": ({"data.label_names": ["pos"]}, ["key 'data.label_names'", "at least 2 labels"]),
    "duplicate-labels": ({"data.label_names": ["pos", "pos"]}, ["labels must be unique"]),
    "push-without-repo": ({"hub.push": True}, ["key 'hub'", "push: true needs repo_id"]),
    "bad-tracker": ({"train.trackers": ["tensorbord"]}, ["key 'train.trackers.0'", "'tensorboard'"]),
}


@pytest.mark.parametrize("changes, fragments", MISTAKES.values(), ids=MISTAKES.keys())
def test_recipe_mistake_is_named(tmp_path, changes, fragments):
    assert_error(write(tmp_path, changes=changes), fragments)


def test_several_mistakes_are_reported_together(tmp_path):
    message = assert_error(write(tmp_path, changes={"train.epocs": 2, "optim.lr": -1}), [])
    assert "train.epocs" in message and "optim.lr" in message


# (raw file text, words the message must contain)
FILE_MISTAKES = {
    "empty-file": ("", ["is empty"]),
    "only-comments": ("# a recipe\n", ["is empty"]),
    "a-list": ("- name: toy\n- task: text-classification\n", ["must be a YAML mapping", "not a list"]),
    "a-scalar": ("just some words\n", ["must be a YAML mapping", "not a str"]),
    "invalid-yaml": ("name: [toy\n", ["is not valid YAML at line"]),
    "tab-indent": ("name: toy\nmodel:\n\tcheckpoint: x\n", ["is not valid YAML"]),
    "python-object": ("!!python/object/apply:os.system ['echo pwned']\n", ["python/object/apply", "refused"]),
    "python-object-in-value": (
        "name: toy\ndescription: !!python/object/new:builtins.dict {}\n",
        ["python/object/new", "refused"],
    ),
    "python-name": ("name: !!python/name:os.system\n", ["python/name", "refused"]),
    "non-string-keys": ("1: 2\n", ["Keys should be strings"]),
}


@pytest.mark.parametrize("text, fragments", FILE_MISTAKES.values(), ids=FILE_MISTAKES.keys())
def test_file_mistake_is_named(tmp_path, text, fragments):
    assert_error(write(tmp_path, text=text), fragments)


def test_python_tags_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, text=f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError):
        load_recipe(path)
    assert not marker.exists()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(RecipeError, match=r"no-such\.yaml: cannot read the recipe file.*hftl recipes"):
        load_recipe(tmp_path / "no-such.yaml")


# --------------------------------------------------------------------------- overrides
OVERRIDE_MISTAKES = {
    "no-equals": (["train.epochs"], ["override 'train.epochs' is not of the form key.path=value"]),
    "no-key": (["=3"], ["is not of the form key.path=value"]),
    "sub-key-of-a-value": (
        ["data.source.x=1"],
        ["key 'data.source'", "is a value, so it has no sub-keys", "Override it directly: data.source=..."],
    ),
    "unknown-key": (["train.epocs=2"], ["key 'train.epocs' is not allowed", "Did you mean 'epochs'?"]),
    "wrong-type": (["train.batch_size=big"], ["key 'train.batch_size'", "(got 'big')"]),
    "out-of-range": (["train.epochs=0"], ["key 'train.epochs'", "greater than 0"]),
}


@pytest.mark.parametrize("overrides, fragments", OVERRIDE_MISTAKES.values(), ids=OVERRIDE_MISTAKES.keys())
def test_override_mistake_is_named(tmp_path, overrides, fragments):
    assert_error(write(tmp_path), fragments, tuple(overrides))


def test_overrides_are_typed_like_yaml(tmp_path):
    recipe = load_recipe(
        write(tmp_path),
        [
            "train.epochs=2",
            "optim.lr=3e-5",
            "train.batch_size=8",
            "train.group_by_length=false",
            "train.trackers=[tensorboard]",
            "data.label_names=[neg, pos]",
            "optim.max_grad_norm=null",
            "description=a: b = c",
            "strategy.name=feature_extraction",
            "output.dir=runs/x",
            "data.columns={text: review}",
        ],
    )
    assert recipe.train.epochs == 2.0 and recipe.train.batch_size == 8
    assert recipe.optim.lr == pytest.approx(3e-5) and recipe.optim.max_grad_norm is None
    assert recipe.train.group_by_length is False and recipe.train.trackers == ["tensorboard"]
    assert recipe.data.label_names == ["neg", "pos"] and recipe.description == "a: b = c"
    assert recipe.strategy.name == "feature_extraction" and recipe.run_dir == Path("runs/x")
    assert recipe.data.columns == {"text": "review"}


def test_override_creates_a_missing_section_and_does_not_touch_the_file(tmp_path):
    path = write(tmp_path)
    before = path.read_text()
    recipe = load_recipe(path, ["strategy.llrd.decay=0.8", "strategy.name=full"])
    assert recipe.strategy.llrd.decay == 0.8
    assert path.read_text() == before


def test_recipe_is_frozen_and_round_trips(tmp_path):
    recipe = load_recipe(write(tmp_path))
    with pytest.raises(ValidationError, match="frozen"):
        recipe.train.epochs = 3  # type: ignore[misc]
    again = tmp_path / "again.yaml"
    again.write_text(recipe.to_yaml())
    assert load_recipe(again).model_dump() == recipe.model_dump()


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe) and recipe.source_file == str(path)


# --------------------------------------------------------------------------- mistakes that need the data
def load_data(path: Path):
    from hftl.tasks import prepare_data

    prepared = prepare_data(load_recipe(path))
    return prepared.encoded, prepared.reports


DATA_MISTAKES = {
    "missing-split": (
        {"splits": {"validation": "dev"}},
        RecipeError,
        ["key 'data.splits.validation'", "split 'dev' is not in", "Available splits: train"],
    ),
    "missing-column": (
        {"columns": {"text": "review"}},
        RecipeError,
        ["key 'data.columns.text'", "column 'review' is not in", "Columns: text, label, movie"],
    ),
    "missing-group-column": (
        {"group_column": "film"},
        RecipeError,
        ["key 'data.group_column'", "column 'film' is not in the data"],
    ),
    "label-not-in-label-names": (
        {"label_names": ["pos", "negative"]},
        DataError,
        ["label 'neg' is not one of ['pos', 'negative']", "data.label_names", "data.on_error: skip"],
    ),
}


@pytest.mark.parametrize("data, error, fragments", DATA_MISTAKES.values(), ids=DATA_MISTAKES.keys())
def test_data_mistake_is_named(text_recipe, data, error, fragments):
    path = text_recipe(data=data)
    with pytest.raises(error) as info:
        load_data(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"


def test_unfreeze_schedule_longer_than_the_run(text_recipe):
    from hftl.training.build import describe_plan

    path = text_recipe(
        strategy={"name": "progressive", "progressive": {"every": 3, "unit": "epoch"}}, train={"epochs": 2}
    )
    with pytest.raises(RecipeError, match=r"key 'strategy.progressive'.*longer than the run.*would never train"):
        describe_plan(load_recipe(path))


def test_init_from_that_is_not_a_finished_run(text_recipe, tmp_path):
    from hftl.models import pretrained

    missing = load_recipe(text_recipe(model={"init_from": str(tmp_path / "nothing-here")}))
    with pytest.raises(RecipeError, match=r"key 'model.init_from': folder does not exist"):
        pretrained.model_source(missing.model, missing.source_file)
    (tmp_path / "half").mkdir()
    unfinished = load_recipe(text_recipe(model={"init_from": str(tmp_path / "half")}))
    with pytest.raises(RecipeError, match=r"key 'model.init_from': is not a completed hftl run"):
        pretrained.model_source(unfinished.model, unfinished.source_file)


def test_user_errors_are_hftl_errors():
    assert issubclass(RecipeError, HftlError) and issubclass(DataError, HftlError)
    message = str(RecipeError("f.yaml", "a.b", "is wrong", 3, hint="Fix it."))
    assert message == "f.yaml, key 'a.b': is wrong (got 3). Fix it."
    # no stray period after a question, and an ellipsis in a hint stays whole
    message = str(RecipeError("f.yaml", None, "unknown x. Did you mean 'y'?", hint="Use x=..."))
    assert message == "f.yaml: unknown x. Did you mean 'y'? Use x=..."

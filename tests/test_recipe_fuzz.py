"""Property: whatever document or override a user writes, the loader answers with a valid
Recipe or an HftlError (a message the CLI shows without a traceback), never another exception."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftl.config.errors import HftlError
from hftl.config.recipe import Recipe, Section, load_recipe

BASE = {
    "name": "toy",
    "task": "text-classification",
    "model": {"checkpoint": "all-MiniLM-L6-v2"},
    "data": {"source": "rotten-tomatoes"},
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def schema_paths(model: Any = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key path of the schema (so random documents often hit real keys)."""
    from hftl.config.recipe import _section_type

    paths = []
    for name, field in model.model_fields.items():
        if name == "source_file":
            continue
        paths.append(prefix + name)
        sub = _section_type(field.annotation)
        if sub is not None and sub is not model and issubclass(sub, Section) and prefix.count(".") < 3:
            paths += schema_paths(sub, f"{prefix}{name}.")
    return paths


PATHS = schema_paths()
NAMES = sorted({p.rsplit(".", 1)[-1] for p in PATHS})
CHOICES = [
    "text-classification",
    "token-classification",
    "image-classification",
    "full",
    "progressive",
    "partial",
    "lora",
    "two_stage",
    "feature_extraction",
    "epoch",
    "step",
    "linear",
    "tensorboard",
    "skip",
    "raise",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(CHOICES),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=6), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
# mostly sensible values, so that many documents pass the schema and reach the cross-field checks
plausible = st.one_of(st.integers(1, 8), st.floats(0.01, 0.99), st.booleans(), st.sampled_from(CHOICES), st.none())


@st.composite
def documents(draw) -> Any:
    """A valid base with a few random keys set or deleted, or a wholly random value."""
    if draw(st.integers(0, 4)) == 0:
        return draw(values)
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.one_of(st.sampled_from(PATHS), st.text(min_size=1, max_size=8)))
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if draw(st.integers(0, 5)) == 0:
            node.pop(last, None)
        else:
            node[last] = draw(st.one_of(plausible, plausible, values))
    return doc


override_values = st.one_of(
    st.text(max_size=15),
    st.sampled_from(
        [
            "1",
            "-1",
            "0",
            "3e-5",
            "1.5",
            ".inf",
            ".nan",
            "null",
            "true",
            "[a, b]",
            "{x: 1}",
            "[",
            "{",
            "a: b",
            "!!python/object/apply:os.system ['true']",
            "*alias",
            "&a 1",
            "'unclosed",
            "- x",
        ]
        + CHOICES
    ),
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)
overrides = st.lists(
    st.one_of(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PATHS), st.one_of(plausible.map(str), override_values)),
        st.builds(lambda k, v: f"{k}={v}", st.text(max_size=10), override_values),
        st.text(max_size=20),
    ),
    max_size=3,
)


def check(text: str, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            recipe = load_recipe(path, extra)
        except HftlError as exc:
            assert str(exc).strip(), "an error needs a message"
            return
        assert isinstance(recipe, Recipe)
        path.write_text(recipe.to_yaml(), encoding="utf-8")  # what the run folder keeps must load again
        assert load_recipe(path).model_dump() == recipe.model_dump()


@FUZZ
@given(documents(), overrides)
def test_random_documents_and_overrides_give_a_recipe_or_a_clear_error(doc, extra):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    check(text, extra)


YAML_PIECES = [
    "name: toy\n",
    "model:\n",
    "  checkpoint: x\n",
    "- a\n",
    "data: {source: d}\n",
    "&a [*a]\n",
    "!!python/object:os.system\n",
    "key: *b\n",
    "\t",
    ": :\n",
    "%YAML 1.1\n---\n",
    "--- !!binary aGk=\n",
    "...\n",
    "? [a]\n: 1\n",
]


@FUZZ
@given(st.one_of(st.text(max_size=200), st.lists(st.sampled_from(YAML_PIECES), max_size=8).map("".join)))
def test_random_text_gives_a_recipe_or_a_clear_error(text):
    check(text, [])


VALID_HEAD = "name: toy\ntask: text-classification\nmodel: {checkpoint: x}\ndata: {source: y}\n"
NASTY = {
    "deep-list": "[" * 5000 + "]" * 5000,
    "deep-mapping": VALID_HEAD + "description: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
    "alias-bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{k}: &{k} [{', '.join(['*' + p] * 9)}]\n" for p, k in zip("abcdef", "bcdefg")),
    "self-reference": VALID_HEAD.replace("data: {source: y}", "data: &d {source: y, columns: *d}"),
    "nul-byte": "name: t\x00oy\n",
    "date-as-name": VALID_HEAD.replace("name: toy", "name: 2024-01-01"),
    "huge-seed": VALID_HEAD + "train: {seed: 100000000000000000000000000000000}\n",
    "binary-tag": VALID_HEAD.replace("name: toy", "name: !!binary aGk="),
}


@pytest.mark.parametrize("text", NASTY.values(), ids=NASTY.keys())
def test_nasty_documents_give_a_clear_error(text):
    check(text, [])


def test_a_file_that_is_not_utf8_gives_a_clear_error(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes("name: toy\n".encode("utf-16"))
    with pytest.raises(HftlError, match="is not UTF-8 text"):
        load_recipe(path)


def test_a_deeply_nested_override_is_text_not_a_crash():
    check(VALID_HEAD, ["description=" + "[" * 5000])

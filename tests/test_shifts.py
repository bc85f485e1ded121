"""Domain shifts: identity at severity 0, strength monotone in severity, deterministic per seed (table-driven)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hftl.config.errors import HftlError
from hftl.data.shifts import SHIFTS, apply_shift

TEXTS = [
    "a warm , funny and beautifully acted film that never loses its nerve",
    "the plot is thin but the actors make the most of every single scene",
    "boring",
    "an awful , dull movie with a silly ending and a cold heart",
]


def images() -> list[Image.Image]:
    """A grey and an RGB picture with edges, texture and a gradient (no download)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    grey = ((xx * 4 + (yy // 8 % 2) * 80 + rng.integers(0, 40, (48, 48))) % 256).astype(np.uint8)
    grey[10:30, 20:26] = 255
    rgb = np.stack([grey, np.flipud(grey), (grey // 2 + 60).astype(np.uint8)], axis=-1)
    return [Image.fromarray(grey, "L"), Image.fromarray(rgb, "RGB")]


def inputs(name: str) -> list:
    return images() if SHIFTS.get(name).modality == "image" else TEXTS


def distance(a, b) -> float:
    if isinstance(a, str):  # typos keep the length (share of characters changed); dropout removes words
        if len(a) == len(b):
            return sum(x != y for x, y in zip(a, b)) / len(a)
        return 1.0 - len(b.split()) / len(a.split())
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


def same(a, b) -> bool:
    return a == b if isinstance(a, str) else (a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes())


@pytest.mark.parametrize("name", SHIFTS.names())
def test_severity_zero_is_the_identity(name):
    for x in inputs(name):
        assert same(apply_shift(name, 0, seed=3)(x), x)


@pytest.mark.parametrize("name", SHIFTS.names())
def test_strength_grows_with_severity(name):
    """Never weaker for any one input (the draws are shared across severities); stronger on average."""
    xs = inputs(name) if SHIFTS.get(name).modality == "image" else [" ".join([t] * 3) for t in TEXTS] * 5
    total = np.zeros(6)
    for i, x in enumerate(xs):
        d = [distance(x, apply_shift(name, s, seed=i)(x)) for s in range(6)]
        assert d[0] == 0
        assert all(b >= a for a, b in zip(d, d[1:])), (name, d)
        total += d
    assert all(b > a for a, b in zip(total, total[1:])), (name, total)


@pytest.mark.parametrize("name", SHIFTS.names())
def test_deterministic_per_seed_and_type_preserved(name):
    for x in inputs(name):
        a, b = apply_shift(name, 3, seed=7)(x), apply_shift(name, 3, seed=7)(x)
        assert same(a, b) and type(a) is type(x)
        if not isinstance(x, str):
            assert a.mode == x.mode and a.size == x.size


@pytest.mark.parametrize("name", ["gaussian_noise", "char_noise", "word_dropout"])
def test_another_seed_gives_another_corruption(name):
    x = inputs(name)[0]
    assert not same(apply_shift(name, 4, seed=0)(x), apply_shift(name, 4, seed=1)(x))


def test_unknown_names_and_bad_severities_are_user_errors():
    with pytest.raises(HftlError, match="Unknown shift 'gausian_noise'. Did you mean 'gaussian_noise'"):
        apply_shift("gausian_noise", 1)
    for bad in (-1, 6, 2.5, True):
        with pytest.raises(HftlError, match="severity must be an integer 0..5"):
            apply_shift("contrast", bad)


# --------------------------------------------------------------------------- data.shift in a recipe
def test_recipe_shift_changes_only_the_named_splits(text_recipe):
    from hftl.config.recipe import load_recipe
    from hftl.tasks import TASKS

    task = TASKS.get("text-classification")
    plain = task.load_splits(load_recipe(text_recipe()))
    shifted = task.load_splits(
        load_recipe(text_recipe(data={"shift": {"name": "char_noise", "severity": 5, "seed": 1, "splits": ["test"]}}))
    )
    assert shifted["train"]["text"] == plain["train"]["text"]
    changed = sum(a != b for a, b in zip(shifted["test"]["text"], plain["test"]["text"]))
    assert changed > 0.5 * len(plain["test"])


def test_recipe_shift_must_fit_the_tasks_inputs(text_recipe):
    import pytest

    from hftl.config.errors import RecipeError
    from hftl.config.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"data.shift.name.*shifts image inputs.*Use one of: char_noise"):
        load_recipe(text_recipe(data={"shift": {"name": "gaussian_noise", "severity": 2}}))
    with pytest.raises(RecipeError, match=r"data.shift.name.*unknown shift 'char_nose'. Did you mean 'char_noise'"):
        load_recipe(text_recipe(data={"shift": {"name": "char_nose", "severity": 2}}))

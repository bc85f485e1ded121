"""Named, seeded, severity-graded domain shifts for images (PIL -> PIL) and texts (str -> str).

For studies of how transfer holds up as the target moves away from the source, in the spirit of
ImageNet-C (Hendrycks & Dietterich, 2019): severity 0 is the identity, 1..5 are ever stronger.
Each shift is a small pure function of (input, severity, rng). Its random draws do not depend
on the severity (only their use does), so for one input and seed a stronger severity is the same
corruption, more of it: strength is monotone, not just on average.

:func:`apply_shift` gives ``f(x)`` whose randomness is seeded by ``(seed, the input's content)``:
deterministic per seed, and independent of the order in which examples are mapped or of the
process that maps them (datasets.map with num_proc, several ranks).

Not wired into recipes yet. The intended recipe keys (validated against :data:`SHIFTS`)::

    data:
      shift: {name: gaussian_noise, severity: 3, seed: 0, splits: [train, validation, test]}

applied to the raw input column (image or text) after the splits are carved and subsampled and
before encoding, so the feature cache (which hashes encoded rows) sees the shifted data. ``splits``
chooses between a shifted target domain (all splits) and a robustness test (test only). A study
axis ``data.shift.severity`` with ``model.pretrained: [true, false]`` then gives the
transfer-gain-vs-shift plot of :mod:`hftl.analysis.study_report`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hftl.config.errors import HftlError
from hftl.config.registry import Registry

MAX_SEVERITY = 5


@dataclass(frozen=True)
class Shift:
    """A registered shift: what it reads and writes, and the function of (input, severity, rng)."""

    name: str
    modality: Literal["image", "text"]
    fn: Callable[[Any, int, np.random.Generator], Any]
    description: str


SHIFTS: Registry[Shift] = Registry("shift")


def shift(name: str, modality: Literal["image", "text"], description: str) -> Callable:
    """Register ``fn(x, severity, rng)`` (called with severity 1..5 only; 0 never reaches it)."""

    def add(fn: Callable[[Any, int, np.random.Generator], Any]) -> Callable:
        SHIFTS.register(name)(Shift(name, modality, fn, description))
        return fn

    return add


def apply_shift(name: str, severity: int, seed: int = 0) -> Callable[[Any], Any]:
    """``f(x)``: shift ``name`` at ``severity`` (0 = identity), seeded by ``seed`` and the input's content."""
    entry = SHIFTS.get(name)
    if not isinstance(severity, int) or isinstance(severity, bool) or not 0 <= severity <= MAX_SEVERITY:
        raise HftlError(f"shift severity must be an integer 0..{MAX_SEVERITY} (0 = no shift), got {severity!r}")

    def apply(x: Any) -> Any:
        if severity == 0:
            return x
        return entry.fn(x, severity, np.random.default_rng([seed, _content_seed(x)]))

    apply.__name__ = f"{name}_s{severity}"
    return apply


def _content_seed(x: Any) -> int:
    data = x.encode("utf-8") if isinstance(x, str) else x.tobytes() + f"{x.mode}{x.size}".encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


# --------------------------------------------------------------------------- images (PIL in, PIL out)
def _array(img: Any) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def _image(arr: np.ndarray, like: Any) -> Any:
    from PIL import Image

    return Image.fromarray((np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8), mode=like.mode)


@shift("gaussian_blur", "image", "Gaussian blur; radius a fraction of the image side (ImageNet-C's 1..6 px at 224).")
def gaussian_blur(img: Any, severity: int, rng: np.random.Generator) -> Any:
    from PIL import ImageFilter

    radius = [0.005, 0.01, 0.015, 0.02, 0.03][severity - 1] * min(img.size)
    return img.filter(ImageFilter.GaussianBlur(radius=max(radius, 0.3 * severity)))


@shift("gaussian_noise", "image", "Additive Gaussian pixel noise, sigma 0.08..0.38 of the range (ImageNet-C).")
def gaussian_noise(img: Any, severity: int, rng: np.random.Generator) -> Any:
    x = _array(img)
    sigma = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return _image(x + rng.standard_normal(x.shape).astype(np.float32) * sigma, img)


@shift("contrast", "image", "Contrast towards the mean grey, keeping 40%..5% of it (ImageNet-C).")
def contrast(img: Any, severity: int, rng: np.random.Generator) -> Any:
    x = _array(img)
    keep = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    mean = x.mean(axis=(0, 1), keepdims=True)
    return _image((x - mean) * keep + mean, img)


@shift("rotation", "image", "Rotation by 6..30 degrees, direction drawn per image, black fill.")
def rotation(img: Any, severity: int, rng: np.random.Generator) -> Any:
    angle = 6.0 * severity * (1 if rng.random() < 0.5 else -1)
    return img.rotate(angle, resample=3, fillcolor=0 if img.mode in ("L", "I", "F") else (0,) * len(img.getbands()))


@shift("inversion", "image", "Blend towards the negative image: 20%..100% inverted.")
def inversion(img: Any, severity: int, rng: np.random.Generator) -> Any:
    x = _array(img)
    a = severity / MAX_SEVERITY
    return _image((1 - a) * x + a * (1 - x), img)


# --------------------------------------------------------------------------- texts (str in, str out)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@shift("char_noise", "text", "Typos: 3%..25% of the characters replaced by a random letter.")
def char_noise(text: str, severity: int, rng: np.random.Generator) -> str:
    p = [0.03, 0.06, 0.1, 0.15, 0.25][severity - 1]
    u = rng.random(len(text))  # drawn for every severity alike: a stronger shift edits a superset
    picks = rng.integers(0, len(_LETTERS) - 1, len(text))
    out = []
    for ch, ui, k in zip(text, u, picks):
        if ui < p and not ch.isspace():
            letters = _LETTERS.replace(ch.lower(), "")
            ch = letters[k % len(letters)]
        out.append(ch)
    return "".join(out)


@shift("word_dropout", "text", "Words dropped at random: 5%..50% of them (at least one kept).")
def word_dropout(text: str, severity: int, rng: np.random.Generator) -> str:
    p = [0.05, 0.1, 0.2, 0.35, 0.5][severity - 1]
    words = text.split()
    if len(words) <= 1:
        return text
    u = rng.random(len(words))
    kept = [w for w, ui in zip(words, u) if ui >= p]
    return " ".join(kept or [words[int(np.argmax(u))]])

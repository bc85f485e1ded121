"""``data.augment.zoom`` and ``data.augment.low_resolution`` (hftl/tasks/image_classification.py ``train_transform``):
recipe errors that name the key, refusal on text tasks, the image statistics each one produces (a zoomed digit fills
the frame, a low-resolution rendering loses detail finer than its size, ``bits`` quantises, ``probability`` mixes),
and, off, the very pipeline of before (bitwise the same images for the same seed); the target batches of
``strategy.adaptation`` get neither."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from transformers import ConvNextImageProcessor

from hftl.cli import main as cli
from hftl.config.errors import RecipeError
from hftl.config.recipe import load_recipe
from hftl.config.schema import AugmentSection
from hftl.tasks.image_classification import train_transform
from hftl.training.adaptation import target_side

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mnist-to-digits.yaml"
NO_CROP = {"random_resized_crop": False, "hflip": False}


@pytest.fixture(scope="module")
def processor() -> ConvNextImageProcessor:
    """resnet-small-untrained's processor: 32 px, mean = std = 0.5."""
    return ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def grey(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint8)).convert("RGB")


def square(side: int = 28, box: int = 20) -> Image.Image:
    """A white box x box square centred on black, as an MNIST digit sits in 28x28."""
    pixels = np.zeros((side, side))
    start = (side - box) // 2
    pixels[start : start + box, start : start + box] = 255
    return grey(pixels)


def checkerboard(side: int = 28) -> Image.Image:
    """1-pixel black and white squares: detail at the finest scale there is."""
    return grey((np.add.outer(np.arange(side), np.arange(side)) % 2) * 255)


def shown(augment: dict, processor, image: Image.Image, seed: int = 0) -> torch.Tensor:
    """The training pipeline's output for ``image``, back on the 0..1 scale (the processor normalises by 0.5)."""
    torch.manual_seed(seed)
    return train_transform(processor, AugmentSection(**augment))(image) * 0.5 + 0.5


@pytest.mark.parametrize(
    ("override", "key", "says"),
    [
        ("data.augment.zoom=[1.4, 1.0]", "data.augment.zoom", "0 < min <= max"),
        ("data.augment.zoom=[0, 1.4]", "data.augment.zoom", "got [0.0, 1.4]"),
        ("data.augment.zoom=1.2", "data.augment.zoom", "tuple"),
        ("data.augment.low_resolution={size: 0}", "data.augment.low_resolution.size", "greater than 0"),
        ("data.augment.low_resolution={bits: 4}", "data.augment.low_resolution.size", "required"),
        ("data.augment.low_resolution={size: 8, bits: 9}", "data.augment.low_resolution.bits", "8"),
        ("data.augment.low_resolution={size: 8, probability: 0}", "data.augment.low_resolution.probability", "0"),
        ("data.augment.low_resolution={size: 8, probability: 1.5}", "data.augment.low_resolution.probability", "1"),
        ("data.augment.low_resolution={sise: 8}", "data.augment.low_resolution.sise", "Did you mean 'size'"),
    ],
)
def test_bad_values_name_the_key(override, key, says) -> None:
    with pytest.raises(RecipeError) as error:
        load_recipe(RECIPE, [override])
    assert f"'{key}'" in str(error.value) and says in str(error.value), str(error.value)


@pytest.mark.parametrize(
    ("augment", "key"),
    [({"zoom": [1.0, 1.2]}, "data.augment.zoom"), ({"low_resolution": {"size": 8}}, "data.augment.low_resolution")],
)
def test_text_recipes_refuse_them_with_exit_2_and_nothing_written(text_recipe, capsys, augment, key) -> None:
    path = text_recipe(data={"augment": augment})
    assert cli(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"key '{key}'" in err and "Traceback" not in err, err
    assert not (path.parent / "run").exists()


def test_the_shipped_recipe_reads_them() -> None:
    augment = load_recipe(RECIPE).data.augment
    assert augment.zoom == (1.0, 1.4) and augment.low_resolution.size == 8 and augment.beyond_flip


def test_zoom_makes_a_centred_digit_fill_the_frame(processor) -> None:
    plain = shown(NO_CROP | {"zoom": [1.0, 1.0]}, processor, square())
    zoomed = shown(NO_CROP | {"zoom": [1.4, 1.4]}, processor, square())
    assert plain.shape == zoomed.shape == (3, 32, 32)
    assert 0.45 < (plain > 0.5).float().mean() < 0.6  # (20 / 28)^2 = 0.51 of the frame
    assert (zoomed > 0.5).float().mean() > 0.9  # 20 x 1.4 = 28: the whole frame


def test_low_resolution_loses_detail_finer_than_its_size_and_bits_quantise(processor) -> None:
    sharp = shown(NO_CROP | {"zoom": [1.0, 1.0]}, processor, checkerboard())
    blurred = shown(NO_CROP | {"low_resolution": {"size": 7, "probability": 1.0}}, processor, checkerboard())
    assert sharp.shape == blurred.shape == (3, 32, 32)
    assert sharp.std() > 0.15 and blurred.std() < 0.02  # 4x4 blocks of a 1-px checkerboard average to grey
    flat = grey(np.full((28, 28), 200))
    kept = shown(NO_CROP | {"low_resolution": {"size": 8, "probability": 1.0}}, processor, flat)
    one_bit = shown(NO_CROP | {"low_resolution": {"size": 8, "probability": 1.0, "bits": 1}}, processor, flat)
    assert torch.allclose(kept, torch.full_like(kept, 200 / 255))
    assert torch.allclose(one_bit, torch.full_like(one_bit, 128 / 255))  # 200 = 0b11001000 -> 0b10000000


def test_probability_renders_a_share_of_the_images(processor) -> None:
    augment = AugmentSection(**NO_CROP, low_resolution={"size": 7, "probability": 0.5})
    transform = train_transform(processor, augment)
    torch.manual_seed(0)
    low = [bool((transform(checkerboard()) * 0.5 + 0.5).std() < 0.02) for _ in range(40)]
    assert 8 < sum(low) < 32, sum(low)


def test_off_is_the_pipeline_of_before_bitwise(processor) -> None:
    images = [square(), checkerboard(), square(28, 12)]
    before = v2.Compose(  # the training pipeline as it was before zoom and low_resolution existed
        [
            v2.ToImage(),
            v2.RandomResizedCrop((32, 32), scale=(0.8, 1.0), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
    torch.manual_seed(1)
    expected = [before(image) for image in images]
    for augment in (AugmentSection(min_scale=0.8), AugmentSection(min_scale=0.8, zoom=None, low_resolution=None)):
        transform = train_transform(processor, augment)
        torch.manual_seed(1)
        assert all(torch.equal(transform(image), want) for image, want in zip(images, expected))
    assert train_transform(processor, AugmentSection(**NO_CROP)) is None  # nothing random: the processor itself
    assert not AugmentSection(**NO_CROP).beyond_flip
    assert AugmentSection(**NO_CROP, zoom=[1.0, 1.2]).beyond_flip  # so the feature cache is off (feature_eligibility)


def test_target_batches_of_adaptation_keep_their_framing_and_resolution() -> None:
    recipe = load_recipe(RECIPE, ["strategy.adaptation={method: coral}"])
    target = target_side(recipe)
    assert target.data.augment.zoom is None and target.data.augment.low_resolution is None
    assert target.data.augment.min_scale == recipe.data.augment.min_scale == 0.8  # the crop applies to both
    assert target.source_file == recipe.source_file and recipe.data.augment.zoom == (1.0, 1.4)  # not changed
    plain = load_recipe(RECIPE, ["data.augment.zoom=null", "data.augment.low_resolution=null"])
    assert target_side(plain) is plain

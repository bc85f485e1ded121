"""Image classification: one label per image, on transformers (ViT, ResNet, ConvNeXt, ...) and timm checkpoints.

Preprocessing comes from the checkpoint's own image processor (size, mean, std).
Images stay encoded until they are batched: :meth:`ImageClassification.encode`
only reads each file's header (so 60k images cost seconds, and a corrupt or
non-image file is reported with its split and index before training starts), and
the collator decodes, converts to RGB and transforms each batch. Training batches
get torchvision augmentation (random resized crop, horizontal flip, optionally TrivialAugment or
RandAugment, a centred zoom and a low-resolution rendering, from ``data.augment``); evaluation uses the
processor itself, exactly as ``pipeline("image-classification")`` does on the saved run.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from hftl.config.errors import CheckpointError, DataError, RecipeError
from hftl.tasks import TASKS, CardInfo
from hftl.tasks import labels as label_kinds
from hftl.tasks.classifier import SingleCheckpointClassifier
from hftl.tasks.common import (
    BadExamples,
    add_columns,
    check_columns_section,
    column,
    pipeline_predict,
    require_checkpoint,
    select_valid,
)

if TYPE_CHECKING:
    import datasets
    import torch
    from PIL import Image

    from hftl.config.schema import AugmentSection, DataSection, Recipe


@dataclass(frozen=True)
class Geometry:
    """What the checkpoint expects: input (height, width) and per-channel normalisation."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def processor_geometry(processor: Any) -> Geometry:
    """Input size, mean and std of a transformers or timm image processor."""
    timm_config = getattr(processor, "data_config", None)
    if timm_config is not None:  # TimmWrapperImageProcessor
        return Geometry(tuple(timm_config["input_size"][1:]), tuple(timm_config["mean"]), tuple(timm_config["std"]))
    cropped = getattr(processor, "do_center_crop", False) and processor.crop_size
    size = processor.crop_size if cropped else processor.size
    height, width = size.get("height"), size.get("width")
    if not (height and width):
        height = width = size.get("shortest_edge")
    if not height:
        raise CheckpointError(
            f"Cannot tell the input size from the image processor {type(processor).__name__} "
            f"(size {dict(size)}); set data.image_size."
        )
    if not getattr(processor, "do_normalize", True):
        return Geometry((height, width), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return Geometry((height, width), tuple(processor.image_mean), tuple(processor.image_std))


def resize_processor(processor: Any, pixels: int) -> Any:
    """The same processor making ``pixels`` x ``pixels`` inputs (``data.image_size``), the whole image resized.

    No centre crop at evaluation: the checkpoint's crop (timm's crop_pct 0.875) was made for photos with
    margins; on small images that fill the frame (Fashion-MNIST at 112 px) it cuts the object's edges,
    which training never does. Measured: EfficientNet-Lite0, 1,000 Fashion-MNIST images, the same trained
    model scored 0.794 test with the crop and 0.821 with a plain resize (2,000 test images, one seed).
    """
    if getattr(processor, "data_config", None) is not None:  # timm: the size lives in its pretrained_cfg
        return type(processor)(
            pretrained_cfg={**processor.data_config, "input_size": (3, pixels, pixels), "crop_pct": 1.0},
            architecture=processor.architecture,
        )
    square = {"height": pixels, "width": pixels}
    processor.size = {"shortest_edge": pixels} if processor.size.get("shortest_edge") else square
    if getattr(processor, "crop_size", None):
        processor.crop_size = square
    if getattr(processor, "crop_pct", None):  # ConvNeXt-style processors resize to size / crop_pct, then crop
        processor.crop_pct = 1.0
    return processor


def decode_image(value: dict[str, Any]) -> Image.Image:
    """An undecoded ``datasets.Image`` value ({bytes, path}) as an RGB PIL image (grey and RGBA included)."""
    import datasets

    image = datasets.Image().decode_example(value)
    return image if image.mode == "RGB" else image.convert("RGB")


def image_problem(value: dict[str, Any] | None) -> str | None:
    """Why an undecoded image cannot be read (checks the header and structure, decodes no pixels), or None."""
    from PIL import Image

    if not value or not (value.get("bytes") or value.get("path")):
        return "no image"
    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    try:
        with Image.open(source) as image:
            image.verify()
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, ... for bad files
        return f"{value.get('path') or 'the image'} is not a readable image ({type(exc).__name__}: {exc})"
    return None


def train_transform(processor: Any, augment: AugmentSection) -> Any:
    """The training images' torchvision pipeline (``data.augment``) for one image, or None when training uses the
    processor: :func:`train_stages` in one."""
    from torchvision.transforms import v2

    stages = train_stages(processor, augment)
    return None if stages is None else v2.Compose(list(stages))


def train_stages(processor: Any, augment: AugmentSection) -> tuple[Any, Any] | None:
    """The training pipeline in two parts: the random geometry for one image (uint8 out) and the normalisation, which
    the collator applies to the stacked batch at once (the same values: it is per pixel and draws nothing); None
    when training uses the processor.

    On the image at its own size: a random zoom about the centre (``zoom``), then, for a share of the images,
    a downscale to ``low_resolution.size`` (and fewer grey levels), which the next resize blows up again as the
    processor blows up a small image. Then a random resized crop to the checkpoint's input size (else a plain
    resize to it), the policy (TrivialAugmentWide / RandAugment) on the uint8 image at that size, as timm's
    training transforms do (their pixel magnitudes, e.g. TrivialAugment's translation of up to 32 px, are meant
    for model-sized images, not 28 px originals), then the checkpoint's normalisation.
    """
    import torch
    from torchvision.transforms import v2

    if not augment.random_resized_crop and augment.auto is None and not (augment.zoom or augment.low_resolution):
        return None
    geometry = processor_geometry(processor)
    bilinear = v2.InterpolationMode.BILINEAR  # RandomAffine's default, nearest, makes jagged edges
    zoom = [v2.RandomAffine(degrees=0, scale=augment.zoom, interpolation=bilinear)] if augment.zoom else []
    low = augment.low_resolution
    shrink = []
    if low is not None:
        side = (low.size, low.size)
        levels = [v2.RandomPosterize(low.bits, p=1.0)] if low.bits is not None else []
        shrink = [v2.RandomApply([v2.Resize(side, antialias=True), *levels], p=low.probability)]
    if augment.random_resized_crop:
        resize = v2.RandomResizedCrop(geometry.size, scale=(augment.min_scale, 1.0), antialias=True)
    else:
        resize = v2.Resize(geometry.size, antialias=True)
    policy = {
        None: [],
        "trivialaugment": [v2.TrivialAugmentWide()],
        "randaugment": [v2.RandAugment(num_ops=2, magnitude=augment.randaugment_magnitude)],
    }[augment.auto]
    normalise = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geometry.mean), list(geometry.std))]
    )
    return v2.Compose([v2.ToImage(), *zoom, *shrink, resize, *policy]), normalise


class ImageCollator:
    """Decodes a batch of images, then makes ``pixel_values``.

    Evaluation uses the checkpoint's processor as is. Training (``data.augment``) replaces its
    resize and crop by a random resized crop (and an automatic augmentation policy when asked), and flips half
    the images horizontally.
    """

    def __init__(self, processor: Any, data: DataSection, recipe_file: str | None, train: bool) -> None:
        from torchvision.transforms import v2

        augment = data.augment
        self.processor, self.on_error, self.file = processor, data.on_error, recipe_file
        self.crop, self.normalise = (train_stages(processor, augment) if train else None) or (None, None)
        self.flip = v2.RandomHorizontalFlip() if train and augment.hflip else None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        images, labels = [], []
        for feature in features:
            try:
                images.append(decode_image(feature["image"]))
                labels.append(feature["labels"])
            except Exception as exc:  # a file that passed the header check but whose pixels are broken
                bad = BadExamples(self.on_error, feature["split"], self.file)
                bad.bad(feature["index"], f"cannot decode the image ({type(exc).__name__}: {exc})")  # raises...
                warnings.warn(f"[data] {bad.report()}", stacklevel=2)  # ...unless data.on_error is skip
        if not images:
            raise DataError(f"{self.file}: no image of a batch could be decoded.")
        if self.crop is None:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
            if self.flip is not None:
                pixels = torch.stack([self.flip(image) for image in pixels])
            return {"pixel_values": pixels, "labels": torch.tensor(labels)}
        # every crop, then every flip (the random draws in that order), on uint8; then the batch normalised at once:
        # decoding included, 10 ms instead of 17 for 32 Fashion-MNIST images at 64 px, the same pixels
        # (python benchmarks/collate.py, 2026-12-04, load 0.7-1.2)
        pixels = [self.crop(image) for image in images]
        if self.flip is not None:
            pixels = [self.flip(image) for image in pixels]
        return {"pixel_values": self.normalise(torch.stack(pixels)), "labels": torch.tensor(labels)}


class ImageClassification(SingleCheckpointClassifier):
    name = "image-classification"
    roles = {"image": "image", "label": "label"}
    required_roles = ("image", "label")
    metric = "accuracy"
    problem_types = ("single_label", "multi_label", "regression")
    towers = ()
    peft_task_type = None  # peft has no image TaskType: its generic wrapper
    card = CardInfo("image-classification", "EXAMPLE_IMAGE", "AutoPeftModel")

    def check(self, recipe: Recipe) -> None:
        hint = "e.g. efficientnet-lite0 (offline) or google/vit-base-patch16-224-in21k (Hub)."
        require_checkpoint(recipe, hint, init_from=True)
        if recipe.model.pooling not in ("auto", "stages"):
            raise RecipeError(
                recipe.source_file,
                "model.pooling",
                "pools a text model's token states; an image classifier reads the checkpoint's own pooling (auto) "
                "or, on a timm model, every stage (stages)",
                recipe.model.pooling,
                hint="Set model.pooling: stages, or remove it.",
            )
        check_columns_section(recipe, self.roles)
        label_kinds.check_problem_type(recipe, self.problem_types)

    def load_processor(self, recipe: Recipe) -> Any:
        from transformers import AutoImageProcessor

        from hftl.models.pretrained import image_processor_backend, load_pretrained, model_source

        source, common = (
            model_source(recipe.model, recipe.source_file),
            {"revision": recipe.model.revision, "trust_remote_code": recipe.model.trust_remote_code},
        )
        processor = load_pretrained(
            AutoImageProcessor, source, what="image processor", **common, **image_processor_backend(source, **common)
        )
        return resize_processor(processor, recipe.data.image_size) if recipe.data.image_size else processor

    def encode(
        self, splits: datasets.DatasetDict, processor: Any, recipe: Recipe, labels: list[str]
    ) -> tuple[datasets.DatasetDict, list[str]]:
        """Check every image's header and label; keep images encoded (the collator decodes each batch).

        Encoded columns: ``image`` (undecoded), ``labels``, and ``split`` + ``index``, the example's
        place in the loaded split, so an image that fails to decode later is still named.
        """
        data = recipe.data
        image_col, label_col = column(data, self.roles, "image"), self.label_column(data)
        to_id = label_kinds.target_encoder(splits, data.problem_type, label_col, labels)
        reports = []
        for split in list(splits):
            ds = splits[split].select_columns(list(dict.fromkeys([image_col, label_col])))
            ds = undecoded(ds, image_col, recipe.source_file)
            rows = (
                (image_problem(value), raw)
                for batch in ds.iter(batch_size=1000)
                for value, raw in zip(batch[image_col], batch[label_col])
            )
            bad = BadExamples(data.on_error, split, recipe.source_file)
            ds, keep, ids, report = select_valid(ds, bad, rows, to_id, labels, data.problem_type)
            reports += [report] if report else []
            ds = ds.select_columns([image_col]).rename_columns({image_col: "image"} if image_col != "image" else {})
            splits[split] = add_columns(ds, {"labels": ids, "split": [split] * len(keep), "index": keep})
        return splits, reports

    def collator(self, processor: Any, recipe: Recipe, train: bool) -> ImageCollator:
        return ImageCollator(processor, recipe.data, recipe.source_file, train)

    def build_model(self, recipe: Recipe, labels: list[str]) -> Any:
        from transformers import AutoModelForImageClassification

        from hftl.models.pretrained import load_model_for_labels
        from hftl.models.stages_loading import load_stages_classifier

        load = (
            load_stages_classifier
            if recipe.model.pooling == "stages"
            else partial(load_model_for_labels, AutoModelForImageClassification)
        )
        model = load(recipe.model, labels, recipe.data.problem_type, recipe.strategy.layer_groups, recipe.source_file)
        if recipe.data.image_size:
            fit_image_size(model, recipe.data.image_size, recipe.source_file)
        return model

    def load_trained(self, run_dir: Any) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        return AutoModelForImageClassification.from_pretrained(str(run_dir)).eval(), AutoImageProcessor.from_pretrained(
            str(run_dir)
        )

    def predict(self, run_dir: Any, inputs: list[Any], top_k: int) -> list[list[dict[str, Any]]]:
        return pipeline_predict(run_dir, "image-classification", inputs, top_k)


def undecoded(ds: datasets.Dataset, image_col: str, recipe_file: str | None) -> datasets.Dataset:
    """``ds`` with ``image_col`` as an undecoded ``datasets.Image`` (file paths in a text column are accepted)."""
    import datasets

    feature = ds.features[image_col]
    if isinstance(feature, datasets.Image) and not feature.decode:
        return ds
    if not (isinstance(feature, datasets.Image) or feature == datasets.Value("string")):
        raise DataError(
            f"{recipe_file}: column '{image_col}' holds {feature}, not images or image paths. "
            "Map the image column with data.columns.image: <column>."
        )
    return ds.cast_column(image_col, datasets.Image(decode=False))


def fit_image_size(model: Any, pixels: int, recipe_file: str | None) -> None:
    """Record ``data.image_size`` in a timm config (its processor is rebuilt from it); check the model takes it."""
    import torch

    config, training = model.config, model.training
    if getattr(config, "pretrained_cfg", None) is not None:
        config.pretrained_cfg = {**config.pretrained_cfg, "input_size": [3, pixels, pixels]}
        config.pretrained_cfg.pop("test_input_size", None)
    try:
        with torch.no_grad():
            model.eval()(pixel_values=torch.zeros(1, 3, pixels, pixels))
    except (ValueError, RuntimeError) as exc:
        raise RecipeError(
            recipe_file,
            "data.image_size",
            f"does not suit this checkpoint: {(str(exc).splitlines() or [''])[0]}",
            pixels,
            hint="Models with fixed position embeddings (ViT, DeiT, ...) need their own size: remove data.image_size.",
        ) from None
    finally:
        model.train(training)


TASKS.register("image-classification")(ImageClassification())

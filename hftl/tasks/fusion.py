"""Task ``fusion``: classify an (image, text) pair with a vision tower, a text tower and a fusion head.

The model itself (towers, pooling, ``concat`` / ``gated`` head, save and reload) is in
:mod:`hftl.models.fusion_model`. Here: the recipe checks, data encoding, the per-tower strategy
plan, prediction, and the synthetic offline pairing ``digits-plus``.

Layer groups: each tower is mapped on its own (``vision.*``, ``text.*``) and planned with its own
strategy (``strategy.towers.vision`` / ``.text``; default: the top-level strategy), so e.g. a
vision tower can stay frozen while the text tower trains with layer-wise LR decay; the fusion
head is the ``head`` group and trains from the first step at ``optim.head_lr``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.config.errors import DataError, RecipeError
from hftl.tasks import TASKS, CardInfo
from hftl.tasks.classifier import PerExampleEvaluation
from hftl.tasks.common import (
    BadExamples,
    add_columns,
    check_columns_section,
    column,
    label_encoder,
    load_splits,
    refuse_pooling,
    select_valid,
    text_problem,
)
from hftl.tasks.labels import check_problem_type, label_names

if TYPE_CHECKING:
    import datasets
    import torch

    from hftl.config.schema import Recipe
    from hftl.models.fusion_model import FusionModel, FusionProcessor
    from hftl.strategies.plan import Plan

TOWERS = ("vision", "text")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


# --------------------------------------------------------------------------- the synthetic offline pairing
def digits_plus() -> datasets.DatasetDict:
    """The 5k MNIST digits, each paired with a text "plus <k>" (k seeded at random, 0..9); label (digit + k) mod 10.

    Neither input alone says anything about the label (each label is equally likely given the image
    alone or the text alone); together they decide it. Columns: image, text, label, digit, offset.
    """
    import datasets
    import numpy as np

    from hftl.data.catalog import DATASETS

    base = DATASETS.get("mnist-5k")()["train"]
    digits = np.asarray(base["label"])
    offsets = np.random.default_rng(0).integers(0, 10, len(base))
    names = [str(d) for d in range(10)]
    ds = (
        base.rename_column("label", "digit")
        .add_column("offset", offsets.tolist())
        .add_column("text", [f"plus {NUMBER_WORDS[k]}" for k in offsets])
        .add_column("label", ((digits + offsets) % 10).tolist())
    )
    return datasets.DatasetDict({"train": ds.cast_column("label", datasets.ClassLabel(names=names))})


def register_catalog() -> None:
    """Add ``digits-plus`` to the offline dataset catalog (done when the task loads data, so that
    validating a recipe does not import ``datasets``)."""
    from hftl.data.catalog import DATASETS

    if "digits-plus" not in DATASETS:
        DATASETS.register("digits-plus")(digits_plus)


# --------------------------------------------------------------------------- planning
def plan_fusion(model: FusionModel, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
    """Plan each tower with its own strategy section, then join the plans: vision groups, text groups, head."""
    from hftl.config.schema import StrategySection
    from hftl.models.layers import LayerGroup
    from hftl.strategies.plan import layer_groups_of, plan_strategy

    head_params = tuple(name for name, _ in model.named_parameters() if name.startswith("head."))
    head = LayerGroup(name="head", params=head_params, modules=("head",), is_head=True)
    joined, names = [], []
    for tower in TOWERS:
        towers = recipe.strategy.towers or {}
        section, key = (towers[tower], f"strategy.towers.{tower}") if tower in towers else (recipe.strategy, "strategy")
        groups = [
            dataclasses.replace(g, is_head=False)
            for g in layer_groups_of(getattr(model, tower), section, prefix=f"{tower}.")
        ]
        # The head joins each tower's plan so that LLRD distances and "only the head trains" mean what they
        # mean for a single model; the head's own entry is planned once, below.
        joined += plan_strategy([*groups, head], recipe, steps_per_epoch, total_steps, section=section, key=key).groups[
            :-1
        ]
        names.append(f"{tower}: {section.name}")
    # Under every strategy the new head trains from the first step, at optim.head_lr; the schedule
    # (kind, warmup) is the recipe's, shared by every group.
    head_plan = plan_strategy([head], recipe, steps_per_epoch, total_steps, section=StrategySection())
    groups = tuple(dataclasses.replace(g, depth=depth) for depth, g in enumerate([*joined, *head_plan.groups]))
    return dataclasses.replace(
        head_plan,
        strategy=f"fusion ({', '.join(names)})",
        groups=groups,
        batchnorm=recipe.strategy.batchnorm,
        options=recipe.strategy.model_dump(mode="json", exclude_none=True),
    )


# --------------------------------------------------------------------------- the task
def pair_problem(image: Any, text: Any, image_col: str, text_col: str) -> str | None:
    """Why an (undecoded image, text) pair cannot be used (None when it can)."""
    if image is None or not (image.get("bytes") or image.get("path")):
        return f"no image in column '{image_col}'"
    return text_problem(text, text_col)


class Fusion(PerExampleEvaluation):
    name = "fusion"
    roles = {"image": "image", "text": "text", "label": "label"}
    required_roles = ("image", "text", "label")
    metric = "accuracy"
    problem_types = ("single_label",)
    towers = TOWERS
    peft_task_type = None
    card = CardInfo(None, '{"image": EXAMPLE_IMAGE, "text": "plus three"}')

    def check(self, recipe: Recipe) -> None:
        file, m = recipe.source_file, recipe.model
        example = (
            "model: {towers: {vision: {checkpoint: google/vit-base-patch16-224-in21k}, "
            "text: {checkpoint: bert-base-uncased}}}"
        )
        if m.checkpoint:
            raise RecipeError(
                file,
                "model.checkpoint",
                "does not apply to fusion, which takes two towers",
                m.checkpoint,
                hint=f"Give model.towers.vision and model.towers.text instead, e.g. {example}.",
            )
        missing = [t for t in TOWERS if t not in (m.towers or {})]
        if missing:
            raise RecipeError(
                file,
                f"model.towers.{missing[0]}",
                "is required for fusion (one vision and one text checkpoint)",
                hint=f"e.g. {example}.",
            )
        if m.init_from:
            raise RecipeError(
                file,
                "model.init_from",
                "is not supported for fusion yet",
                m.init_from,
                hint="Point model.towers.vision/text at earlier runs' model folders instead.",
            )
        if recipe.strategy.layer_groups:
            raise RecipeError(
                file,
                "strategy.layer_groups",
                "does not apply to fusion as a whole",
                hint="Describe a tower's groups under strategy.towers.vision.layer_groups (or .text).",
            )
        if "augment" in recipe.data.model_fields_set:
            raise RecipeError(
                file,
                "data.augment",
                "is not used by fusion (images are only resized and normalised)",
                hint="Remove data.augment.",
            )
        refuse_pooling(recipe, "each tower's own pooled output")
        check_columns_section(recipe, self.roles)
        check_problem_type(recipe, self.problem_types)

    def load_splits(self, recipe: Recipe) -> datasets.DatasetDict:
        register_catalog()
        return load_splits(recipe, self.roles, self.required_roles, task=self.name)

    def load_processor(self, recipe: Recipe) -> FusionProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        from hftl.models.fusion_model import FusionProcessor
        from hftl.models.pretrained import image_processor_backend, load_pretrained

        vision, text = recipe.model.towers["vision"], recipe.model.towers["text"]
        remote = recipe.model.trust_remote_code
        images = load_pretrained(
            AutoImageProcessor,
            vision.checkpoint,
            revision=vision.revision,
            trust_remote_code=remote,
            what="image processor of model.towers.vision",
            **image_processor_backend(vision.checkpoint, vision.revision, remote),
        )
        if recipe.data.image_size:
            from hftl.tasks.image_classification import resize_processor

            images = resize_processor(images, recipe.data.image_size)
        tokenizer = load_pretrained(
            AutoTokenizer,
            text.checkpoint,
            revision=text.revision,
            trust_remote_code=remote,
            what="tokenizer of model.towers.text",
        )
        return FusionProcessor(images, tokenizer, max_length=recipe.data.max_length)

    def label_names(self, splits: datasets.DatasetDict, recipe: Recipe) -> list[str]:
        return label_names(splits, recipe.data, column(recipe.data, self.roles, "label"), recipe.source_file)

    def encode(
        self, splits: datasets.DatasetDict, processor: FusionProcessor, recipe: Recipe, labels: list[str]
    ) -> tuple[datasets.DatasetDict, list[str]]:
        """Drop bad rows, tokenize the texts; images stay encoded (decoded and processed per batch).

        The rows keep their split and index, so an image that cannot be decoded later is named.
        """
        import datasets

        image_col, text_col, label_col = (column(recipe.data, self.roles, r) for r in self.required_roles)
        to_id = label_encoder(splits, label_col, labels)
        reports = []
        for split in list(splits):
            ds = splits[split].cast_column(image_col, datasets.Image(decode=False))  # Image features or paths
            rows = (
                (pair_problem(image, text, image_col, text_col), raw)
                for image, text, raw in zip(ds[image_col], ds[text_col], ds[label_col])
            )
            bad = BadExamples(recipe.data.on_error, split, recipe.source_file)
            ds, keep, ids, report = select_valid(ds, bad, rows, to_id, labels, recipe.data.problem_type)
            reports += [report] if report else []
            ds = add_columns(
                ds.select_columns([image_col, text_col]), {"labels": ids, "index": keep, "split": [split] * len(keep)}
            )

            def tokenize(batch: dict[str, list]) -> dict[str, list]:
                out = processor.tokenizer(batch[text_col], truncation=True, max_length=recipe.data.max_length)
                out["length"] = [len(x) for x in out["input_ids"]]
                return out

            ds = ds.map(tokenize, batched=True, remove_columns=[text_col], desc=f"Tokenizing {split}")
            splits[split] = ds.rename_column(image_col, "image") if image_col != "image" else ds
        return splits, reports

    def collator(self, processor: FusionProcessor, recipe: Recipe, train: bool) -> Any:
        import datasets
        import torch

        not_text = ("image", "labels", "length", "index", "split")

        def decode(feature: dict) -> Any:
            try:
                return datasets.Image().decode_example(feature["image"])
            except Exception as exc:  # PIL raises several types for unreadable or truncated files
                raise DataError(
                    f"{recipe.source_file}: {feature['split']} example {feature['index']}: cannot read "
                    f"its image ({type(exc).__name__}: {exc}). Fix or remove that file."
                ) from None

        def collate(features: list[dict]) -> dict[str, torch.Tensor]:
            text = processor.tokenizer.pad(
                [{k: v for k, v in f.items() if k not in not_text} for f in features], return_tensors="pt"
            )
            return {
                "pixel_values": processor.images([decode(f) for f in features]),
                **text,
                "labels": torch.tensor([f["labels"] for f in features]),
            }

        return collate

    def build_model(self, recipe: Recipe, labels: list[str]) -> FusionModel:
        from hftl.config.schema import FusionSection
        from hftl.models.fusion_model import FusionConfig, FusionModel
        from hftl.models.pretrained import load_body

        specs = recipe.model.towers
        towers = {
            name: load_body(recipe.model, specs[name].checkpoint, specs[name].revision, what=f"model.towers.{name}")
            for name in TOWERS
        }
        if recipe.data.image_size:  # a clear error now if the vision tower cannot take that size
            from hftl.tasks.image_classification import fit_image_size

            fit_image_size(towers["vision"], recipe.data.image_size, recipe.source_file)
        fusion = recipe.model.fusion or FusionSection()
        saved = {
            name: {
                "checkpoint": specs[name].checkpoint,
                "revision": specs[name].revision,
                "config": towers[name].config.to_dict(),
            }
            for name in TOWERS
        }
        config = FusionConfig(
            towers=saved,
            labels=list(labels),
            method=fusion.method,
            hidden_size=fusion.hidden_size,
            dropout=fusion.dropout,
        )
        return FusionModel(towers["vision"], towers["text"], config)

    def plan(self, model: FusionModel, recipe: Recipe, steps_per_epoch: int, total_steps: int) -> Plan:
        return plan_fusion(model, recipe, steps_per_epoch, total_steps)

    def load_trained(self, run_dir: Any) -> tuple[Any, Any]:
        from hftl.models.fusion_model import load_fusion

        return load_fusion(run_dir)

    def predict(self, run_dir: str | Path, inputs: list[Any], top_k: int = 1) -> list[list[dict[str, Any]]]:
        """Top-k labels for (image path, text) pairs: dicts {image, text}, tuples, or 'path<TAB>text' lines."""
        import torch
        from PIL import Image, UnidentifiedImageError

        from hftl.models.fusion_model import load_fusion

        model, processor = load_fusion(run_dir)
        labels = model.fusion_config.labels
        images, texts = [], []
        for item in inputs:
            path, text = _pair(item)
            try:
                images.append(Image.open(path))
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"Cannot open image '{path}': {exc}.") from None
            texts.append(text)
        with torch.inference_mode():
            probs = model(**processor(images, texts)).logits.softmax(-1)
        top = probs.topk(min(top_k, len(labels)), dim=-1)
        return [
            [{"label": labels[i], "score": float(s)} for s, i in zip(scores.tolist(), ids.tolist())]
            for scores, ids in zip(top.values, top.indices)
        ]


def _pair(item: Any) -> tuple[str, str]:
    """(image path, text) from a dict, a pair, or an 'image<TAB>text' line."""
    if isinstance(item, dict) and {"image", "text"} <= set(item):
        return str(item["image"]), str(item["text"])
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return str(item[0]), str(item[1])
    if isinstance(item, str) and "\t" in item:
        path, text = item.split("\t", 1)
        return path, text
    raise DataError(
        f"A fusion model needs an image and a text per input, got {item!r}. Use "
        "`hftl predict RUN --image digit.png --text 'plus three'` (pairs in order), or --file with "
        "lines 'image-path<TAB>text'."
    )


TASKS.register("fusion")(Fusion())

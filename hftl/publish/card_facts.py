"""Model card (:mod:`hftl.publish.card`): facts read from a run folder (sizes, adapter settings, the task, the
data source) and the small formatters the card's sections share."""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from hftl.config.run_folder import RunFiles


def source_name(data: dict[str, Any]) -> str:
    """``data.source``, or for ``data.files`` alone the training files (the recipe at the end lists them all)."""
    if data.get("source"):
        return data["source"]
    train = (data.get("files") or {}).get("train", "local files")
    return train if isinstance(train, str) else ", ".join(train)


def short_source(source: str) -> str:
    """Local data files are named by their file name in the text (the recipe at the end has the full path)."""
    return Path(source).name if Path(source).exists() or source.startswith(("/", ".", "~")) else source


def adapter_settings(adapter_dir: Path) -> dict[str, Any]:
    """The saved peft adapter's settings (what peft actually applied, e.g. its default target modules)."""
    wanted = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save")
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    return {k: (sorted(set(config[k])) if isinstance(config.get(k), list) else config.get(k)) for k in wanted}


def param_sizes(run_dir: Path) -> dict[str, int]:
    """Parameter name -> element count, from safetensors headers (no weights read, no torch).

    A LoRA run has the merged model at the root and the adapter (LoRA matrices, head) in ``adapter/``.
    """
    out: dict[str, int] = {}
    for path in (
        run_dir / "model.safetensors",
        run_dir / "adapter" / "adapter_model.safetensors",
        run_dir / "adapter_model.safetensors",
    ):
        if path.is_file():
            with open(path, "rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(size))
            out.update({name: math.prod(info["shape"]) for name, info in header.items() if name != "__metadata__"})
    return out


def param_size(sizes: dict[str, int], param: str) -> int:
    """Element count of a parameter named as in the plan (peft names: adapter name, wrapper prefix)."""
    if ".original_module." in param:  # peft's untrained copy of the head: not part of the saved model
        return 0
    saved = re.sub(r"\.(modules_to_save\.)?default(?=\.)|\.base_layer(?=\.)", "", param)
    return sizes.get(param) or sizes.get(saved) or sizes.get(saved.removeprefix("base_model.model."), 0)


def strategy_doc(name: str) -> str:
    from hftl.strategies import STRATEGIES

    return STRATEGIES.get(name).summary.replace("``", "`") if name in STRATEGIES else "(strategy not registered here)"


def task_of(run: RunFiles) -> Any:
    from hftl.tasks import TASKS

    return TASKS.get(run.recipe["task"])


def kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items() if v is not None) or "defaults"


def num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def optimizer_text(o: dict[str, Any]) -> str:
    """The optimizer row: optim.name and its settings (recipes saved before optim.name read as AdamW)."""
    name, decay = o.get("name", "adamw"), f"weight decay {o['weight_decay']:g}"
    if name == "sgd":
        nesterov = ", Nesterov" if o.get("nesterov") else ""
        return f"SGD (momentum {o.get('momentum', 0.9):g}{nesterov}), {decay}"
    title = "LAMB (timm)" if name == "lamb" else "AdamW"
    return f"{title} (betas {tuple(o['betas'])}, eps {o['eps']:g}), {decay}"


def loss_text(t: dict[str, Any]) -> str:
    """The loss row: class weights, label smoothing and mixup, or the model's own loss."""
    parts = [f"class-weighted ({t['class_weights']})"] if t.get("class_weights") else []
    if t.get("label_smoothing"):
        parts.append(f"label smoothing {t['label_smoothing']:g}")
    if t.get("mixup"):
        m = t["mixup"]
        parts.append(f"mixup {m['mixup_alpha']:g} / cutmix {m['cutmix_alpha']:g} (prob {m['prob']:g})")
    return ", ".join(parts) if parts else "the model's own (no class weights)"


def weights_kept_text(t: dict[str, Any]) -> str:
    """The weights-kept row: the EMA of the weights, or the trained weights."""
    ema = t.get("ema")
    if not ema:
        return "the trained weights of the best step"
    return f"an EMA of the weights (decay {ema['decay']:g}{', warmup' if ema.get('warmup') else ''}) at the best step"

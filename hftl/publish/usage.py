"""The model card's "How to use" section: code that runs as written in a fresh Python process.

``tests/test_card_snippets.py`` executes it for every task, problem type and pooling mode. Image runs save
one input of their own data as ``example.png`` beside the model, so the snippet has a real file to read;
runs of hftl's own architecture (``model_type: hftl-...``) start with ``import hftl``, which registers it
with transformers' Auto classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hftl.config.run_folder import RunFiles, read_json

EXAMPLE_FILE = "example.png"  # one input image of the run's data, for the usage snippet (image tasks)


def save_example_image(run_dir: str | Path, encoded: Any) -> Path | None:
    """Save one image of the run's evaluation data as ``example.png``, the input of the card's usage snippet
    (image and fusion runs; None for runs without an ``image`` column)."""
    import io

    from PIL import Image

    split = next((s for s in ("test", "validation") if s in encoded and len(encoded[s])), None)
    if split is None or "image" not in encoded[split].column_names:
        return None
    value = encoded[split][0]["image"]
    path = Path(run_dir) / EXAMPLE_FILE
    source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    with Image.open(source) as image:
        image.convert("RGB").save(path)
    return path


def usage_section(run: RunFiles, repo_id: str | None) -> str:
    """Code that runs as written in a fresh Python process (tests/test_card_snippets.py executes it)."""
    from hftl.tasks import TASKS

    card = TASKS.get(run.recipe["task"]).card
    ref = repo_id or str(run.run_dir)
    data = run.recipe["data"]
    example = card.pair_input if data.get("columns", {}).get("text_pair") and card.pair_input else card.example_input
    fetch = "from huggingface_hub import hf_hub_download, snapshot_download\n\n" if repo_id else ""
    if "EXAMPLE_IMAGE" in example:  # an image of the run's own data, saved beside the model (example.png)
        image = f'hf_hub_download("{repo_id}", "{EXAMPLE_FILE}")' if repo_id else f'"{run.run_dir / EXAMPLE_FILE}"'
        example = example.replace("EXAMPLE_IMAGE", image)
    call = ", top_k=None" if data.get("problem_type") == "multi_label" else ""  # every label's probability
    config = read_json(run.run_dir, "config.json")
    own = str(config.get("model_type", "")).startswith("hftl-")  # registered with transformers by `import hftl`
    blocks = []
    if card.pipeline_tag and run.has_full_model:
        head = "import hftl  # registers hftl's own model class with transformers (pip install hftl)\n" if own else ""
        blocks += [
            f'```python\n{head}{fetch}from transformers import pipeline\n\npredict = pipeline("{card.pipeline_tag}", '
            f'model="{ref}"{card.pipeline_kwargs})\nprint(predict({example}{call}))\n```',
            _problem_note(data.get("problem_type"), run.labels)
            + (
                "The plain `transformers` Auto classes load it too (the label names are in `config.json`)"
                + (
                    f"; its architecture (`{config['model_type']}`) is hftl's, so `import hftl` first, or pass "
                    "`trust_remote_code=True` (the model code is saved beside the weights)."
                    if own
                    else "."
                )
            ),
        ]
    if run.adapter_dir is not None and card.peft_class:
        cls, sub = card.peft_class, run.adapter_dir.relative_to(run.run_dir).as_posix()
        where = (
            f'snapshot_download("{repo_id}", allow_patterns="{sub}/*") + "/{sub}"'
            if repo_id and sub != "."
            else f'snapshot_download("{repo_id}")'
            if repo_id
            else f'"{run.adapter_dir}"'
        )
        merged = " (the root holds the same model with the adapter merged in)" if run.has_full_model else ""
        # MobileNet's TF-style padding reads each conv's stride, which peft's LoRA conv wrapper hides
        shim = (
            (
                "from hftl.strategies.lora import expose_conv_geometry\n",
                "expose_conv_geometry(model)  # its TF-style padding reads the convs' stride, hidden by peft\n",
            )
            if config.get("tf_padding")
            else ("", "")
        )
        blocks += [
            f"The LoRA adapter, with its trained head, is in `{sub}/`{merged}. With peft, on top of the base model:"
            if sub != "."
            else "This repo holds a LoRA adapter with its trained head. With peft:",
            f"```python\n{fetch}from peft import {cls}\n{shim[0]}\n"
            f"model = {cls}.from_pretrained({where})\n{shim[1]}```",
        ]
    if not blocks:
        where = f'run_dir = snapshot_download("{repo_id}")\n' if repo_id else f'run_dir = "{ref}"\n'
        blocks += [
            f"```python\nimport hftl\n{fetch}{where}print(hftl.predict_run(run_dir, [{example}]))\n```",
            "This model loads with hftl's own loader (`hftl.predict_run`, or `hftl predict RUN_DIR`).",
        ]
    return "\n\n".join(["## How to use", *blocks])


def _problem_note(problem_type: str | None, labels: list[str]) -> str:
    """What the pipeline's scores mean for the run's problem type."""
    if problem_type == "multi_label":
        return "Each label gets its own probability (sigmoid); the model predicts every label above 0.5. "
    if problem_type == "regression":
        return f"The pipeline's `score` is the predicted value of `{labels[0] if labels else 'the target'}`. "
    return ""

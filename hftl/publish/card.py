"""The model card: a README.md with Hub metadata, written into every run folder and pushed with it.

It says what a reader of a transfer-learning model needs, read from the run
folder alone (``recipe.yaml``, ``plan.json``, ``metrics.json``,
``metrics.jsonl``, ``labels.json``): the base checkpoint, task, data and
splits, the strategy actually applied (per-group LRs and start steps from the
plan, not just the recipe's intent), hyper-parameters, validation and test
metrics (per stage when the strategy is staged), the training-curve plots, how
to load it, and the hftl version and full recipe. Nothing from the environment
(tokens, user names, hosts) goes into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hftl.config.run_folder import read_run
from hftl.publish.card_metadata import card_data
from hftl.publish.card_template import sections
from hftl.publish.plots import plot_run

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

__all__ = ["CARD_FILE", "build_card", "card_data", "write_card", "write_report"]

CARD_FILE = "README.md"


def write_report(run_dir: str | Path, repo_id: str | None = None) -> list[Path]:
    """Write the plots and the README.md model card into a finished run folder; returns the files."""
    plots = plot_run(run_dir)
    return [*plots, write_card(run_dir, repo_id)]


def write_card(run_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write README.md (the model card) into the run folder; returns its path."""
    path = Path(run_dir) / CARD_FILE
    build_card(run_dir, repo_id).save(path)
    return path


def build_card(run_dir: str | Path, repo_id: str | None = None) -> ModelCard:
    """The model card of a finished run; ``repo_id`` names the Hub repo in the usage snippets.

    Its parts: :mod:`hftl.publish.card_metadata` (the Hub metadata), :mod:`hftl.publish.card_template` (the
    sections), :mod:`hftl.publish.card_facts` (what they read from the run folder).
    """
    from huggingface_hub import ModelCard

    run = read_run(run_dir)
    repo_id = repo_id or run.recipe.get("hub", {}).get("repo_id")
    body = "\n\n".join(sections(run, repo_id))
    return ModelCard(f"---\n{card_data(run, repo_id).to_yaml()}\n---\n\n{body}\n")

"""Metrics as `evaluate` modules shipped inside hftl (``evaluate.load(name)`` would fetch them from the Hub)."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def load_metric(name: str):
    """Load one of hftl's bundled evaluate modules by folder name, offline."""
    import evaluate

    return evaluate.load(str(Path(__file__).parent / name))

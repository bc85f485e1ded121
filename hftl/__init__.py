"""hftl: transfer learning with Hugging Face checkpoints, driven by validated YAML recipes."""

__version__ = "0.1.0"

# The public API, imported on first use so that `import hftl` (and `hftl --help`) stays light.
_API = {
    "load_recipe": "hftl.recipe",
    "run_recipe": "hftl.api",
    "predict_run": "hftl.api",
    "plot_run": "hftl.plots",
    "compare_runs": "hftl.plots",
    "write_card": "hftl.card",
    "push_run": "hftl.hub",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")

"""hftl: transfer learning with Hugging Face checkpoints, driven by validated YAML recipes."""

__version__ = "0.1.0"

# The public API, imported on first use so that `import hftl` (and `hftl --help`) stays light.
_API = {
    "load_recipe": "hftl.config.recipe",
    "run_recipe": "hftl.cli.api",
    "predict_run": "hftl.cli.api",
    "plot_run": "hftl.publish.plots",
    "compare_runs": "hftl.publish.plots",
    "write_card": "hftl.publish.card",
    "push_run": "hftl.publish.hub",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")

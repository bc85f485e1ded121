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
    "strategy_settings": "hftl.analysis.advice_rules",
}
__all__ = ["__version__", *_API]


# hftl's own transformers architectures (the pooled text classifier, the all-stages image classifier) register with
# transformers' Auto classes as soon as transformers loads them, so `import hftl` is all a saved run needs to load
# with plain `pipeline(...)` / `AutoModelFor*.from_pretrained(...)`, without trust_remote_code. The hook waits for
# transformers' Auto model module: `import hftl` itself stays light (no torch) for the CLI.
_AUTO_MODULE = "transformers.models.auto.modeling_auto"
_ARCHITECTURES = ("hftl.models.pooled_model", "hftl.models.stages_model")


def _register_architectures() -> None:
    import importlib

    for module in _ARCHITECTURES:
        importlib.import_module(module)


class _RegisterWithTransformers:
    """A one-shot import hook: once transformers' Auto model module has run, register hftl's architectures."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        import importlib.util
        import sys

        if fullname != _AUTO_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            run = spec.loader.exec_module

            def exec_module(module: object) -> None:
                run(module)  # type: ignore[arg-type]
                _register_architectures()

            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _install_hook() -> None:
    import sys

    if _AUTO_MODULE in sys.modules:
        _register_architectures()
    elif not any(isinstance(f, _RegisterWithTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterWithTransformers())


_install_hook()


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'hftl' has no attribute {name!r}")

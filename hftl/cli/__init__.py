"""The user-facing surfaces: the ``hftl`` command line (:mod:`hftl.cli.commands`), the small Python API
(:mod:`hftl.cli.api`) and predictions from a run folder (:mod:`hftl.cli.predict`)."""

from hftl.cli.commands import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]

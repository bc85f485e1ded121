"""hftl's messages through Python ``logging``: one ``hftl`` logger, quiet or verbose on request.

Progress lines (``[eval] ...``, ``[resume] ...``) are INFO, shown by default; ``hftl --quiet`` (or
``HFTL_LOG_LEVEL=WARNING``) keeps only warnings, errors and the run's final summary, and hides progress bars
and transformers' weight-loading table (its "LOAD REPORT" of the new head's missing keys, a warning per model);
``--verbose`` (``DEBUG``) adds detail. Messages are written as plain lines: INFO and the summary to stdout,
warnings and errors to stderr. Like accelerate's multi-process ``get_logger`` (whose ``[RANK 0]`` prefix
it leaves out), only the main process writes: rank 0 of a launch, as the launchers' environment says
(``RANK`` from ``accelerate launch`` / ``torchrun``, the MPI ranks), or a lone process. An application
that configures logging itself can replace the handler of ``logging.getLogger("hftl")``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from hftl.config.errors import HftlError

LOGGER_NAME = "hftl"
SUMMARY = 35  # above WARNING: a run's final line is shown even with --quiet
logging.addLevelName(SUMMARY, "SUMMARY")
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")  # torchrun / accelerate, MPI
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
# The loggers transformers 5.x hands to its weight-loading report (``utils/loading_report.log_state_dict_report``, the
# "LOAD REPORT" table of missing / unexpected / mismatched keys, a WARNING on every checkpoint loaded under a new
# head): the callers of that function in transformers' own code (tests/test_log.py keeps this list complete).
LOAD_REPORT_LOGGERS = ("transformers.modeling_utils", "transformers.modeling_layers", "transformers.integrations.peft")


class _NoLoadReport(logging.Filter):
    """Drops transformers' weight-loading table (hftl loads a new head on purpose; --quiet asks not to hear it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.module != "loading_report"


_NO_LOAD_REPORT = _NoLoadReport()


class _ConsoleHandler(logging.Handler):
    """Plain lines to the streams of the moment (a notebook or test runner may swap sys.stdout)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if logging.WARNING <= record.levelno != SUMMARY else sys.stdout
        try:
            print(self.format(record), file=stream, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break a run
            self.handleError(record)


def env_level() -> int:
    """The level HFTL_LOG_LEVEL asks for (a name or a number); INFO when unset."""
    raw = os.environ.get("HFTL_LOG_LEVEL", "").strip()
    if not raw:
        return logging.INFO
    if raw.upper() in _LEVELS:
        return _LEVELS[raw.upper()]
    if raw.isdigit():
        return int(raw)
    raise HftlError(f"HFTL_LOG_LEVEL={raw!r} is not a log level; use one of {', '.join(_LEVELS)} (or unset it).")


def configure(quiet: bool = False, verbose: bool = False) -> int:
    """Set the ``hftl`` logger's level (flags win over HFTL_LOG_LEVEL) and its console handler; returns the level."""
    if quiet and verbose:
        raise HftlError("--quiet and --verbose contradict each other; give one.")
    level = logging.WARNING if quiet else logging.DEBUG if verbose else env_level()
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.propagate = False
    if level > logging.INFO:  # quiet: the libraries' progress bars go too
        for disable in _progress_bar_switches():
            disable()
    for name in LOAD_REPORT_LOGGERS:  # quiet: and transformers' load report, a table per model loaded (study trials)
        library = logging.getLogger(name)  # the same object transformers logs through, imported or not yet
        if level > logging.INFO:
            library.addFilter(_NO_LOAD_REPORT)
        else:
            library.removeFilter(_NO_LOAD_REPORT)
    return level


def _progress_bar_switches() -> list:
    switches = []
    try:
        import datasets

        switches.append(datasets.disable_progress_bars)
    except ImportError:
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        switches.append(disable_progress_bars)
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        switches.append(hf_logging.disable_progress_bar)
    except ImportError:
        pass
    return switches


def logger() -> logging.Logger:
    """The ``hftl`` logger (given hftl's console handler at the first use when nobody configured it)."""
    base = logging.getLogger(LOGGER_NAME)
    if not base.handlers:  # used from Python without the CLI: same output as `hftl run`
        configure()
    return base


def _main_process() -> bool:
    """Whether this process speaks: rank 0 of a launch (accelerate's and torchrun's RANK, MPI's), or a lone one."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value) == 0
    return True


def say(message: str, level: int = logging.INFO) -> None:
    """One progress line (main process only)."""
    if _main_process():
        logger().log(level, message)


def summary(message: str) -> None:
    """The line a run ends with (main process only): shown even with ``--quiet``."""
    say(message, SUMMARY)


def warn(message: str) -> None:
    """A warning (main process only; shown with --quiet, on stderr)."""
    say(message, logging.WARNING)


@contextlib.contextmanager
def hushed() -> Iterator[None]:
    """With --quiet, nested runs (a study's trials) keep their summaries to themselves: only errors pass."""
    base = logger()
    level = base.level
    if level > logging.INFO:
        base.setLevel(logging.ERROR)
    try:
        yield
    finally:
        base.setLevel(level)


@contextlib.contextmanager
def no_library_bars() -> Iterator[None]:
    """No transformers or datasets progress bar inside, as they were afterwards: for steps whose bars say nothing to
    the user, e.g. transformers' "Writing model shards" at every checkpoint save (it would cut the run's own bar
    mid-epoch) or datasets' "Flattening the indices" when a column is added to a subset."""
    import datasets
    from transformers.utils import logging as hf_logging

    restore = []
    if hf_logging.is_progress_bar_enabled():
        hf_logging.disable_progress_bar()
        restore.append(hf_logging.enable_progress_bar)
    if not datasets.are_progress_bars_disabled():
        datasets.disable_progress_bars()
        restore.append(datasets.enable_progress_bars)
    try:
        yield
    finally:
        for switch in restore:
            switch()


def shows(level: int = logging.INFO) -> bool:
    """Whether messages of ``level`` are shown (e.g. to hide a progress bar when quiet)."""
    base = logging.getLogger(LOGGER_NAME)
    if not base.handlers:
        configure()
    return base.isEnabledFor(level)

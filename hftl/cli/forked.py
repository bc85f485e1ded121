"""``hftl ARGV`` in a child forked from a process that already imported (and perhaps ran) hftl.

The test suite's multi-rank jobs and ``benchmarks/gpu_check.py --smoke`` fork their runs from one interpreter
instead of starting a new one each (imports cost seconds here). A forked child inherits accelerate's process-wide
singleton states, so they are reset first, as a fresh process would find them.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_with_main(argv: list[str], setup: Callable[[], None] = lambda: None) -> NoReturn:
    """In a forked child: ``setup()`` (redirect output, set the environment), then ``hftl ARGV``; exit with its code
    (70 and the traceback on stderr if anything raised). Never returns into the caller's code."""
    code = 70
    try:
        setup()
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        from hftl.cli.commands import main

        code = main(argv)
    except BaseException:  # noqa: BLE001 - report anything, then leave
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

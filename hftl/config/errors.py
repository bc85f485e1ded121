"""User-facing errors.

Anything a user can fix (a recipe typo, a missing column, an unreachable
checkpoint, a corrupt image) is raised as an :class:`HftlError`. The CLI prints
its message as one paragraph and exits with status 2; a traceback is shown only
with ``--debug``. Everything else is a bug in hftl and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class HftlError(Exception):
    """An error the user can fix; its message says what, where and how."""

    exit_code = 2


class RecipeError(HftlError):
    """A recipe problem, located by file and dotted key path."""

    def __init__(self, file: str | None, key: str | None, problem: str, value: Any = ..., hint: str = "") -> None:
        where = file or "<recipe>"
        if key:
            where += f", key '{key}'"
        text = problem + ("" if value is ... else f" (got {_short(value)})")
        end = "" if text.endswith((".", "?", "!")) else "."
        super().__init__(f"{where}: {text}{end}{(' ' + hint) if hint else ''}")
        self.file, self.key, self.value = file, key, value


class DataError(HftlError):
    """A problem with the data a recipe points at (column, split, example)."""


class CheckpointError(HftlError):
    """A checkpoint that cannot be found, reached or given the task's head."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

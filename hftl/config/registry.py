"""One tiny registry type, used for every extension point (tasks, strategies,
layer-group mappers, catalog entries), and the registries a recipe names things from.

Unknown names fail with the list of valid ones and a did-you-mean, so a typo
in a recipe is a one-line fix instead of a hunt through the source.

A recipe names a task, a strategy and a shift; their registries are declared here, in the lowest
layer, so that checking a recipe (:mod:`hftl.config.recipe`) needs no higher one. Their entries are
defined in higher layers (``hftl/tasks``, ``hftl/strategies``, ``hftl/data/shifts.py``), whose modules
the registry imports on its first lookup (``plugins``): importing a package never imports its plugins.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from hftl.config.errors import HftlError

if TYPE_CHECKING:
    from hftl.data.shifts import Shift
    from hftl.strategies import Strategy
    from hftl.tasks import Task

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A name -> object map filled by a decorator at the place each entry is defined."""

    def __init__(self, kind: str, plugins: str | tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        # modules, or packages whose modules, that register the entries (possibly from several layers)
        self._plugins = (plugins,) if isinstance(plugins, str) else plugins

    def _load(self) -> dict[str, T]:
        """The entries, after importing the plugin module(s) once (they register themselves)."""
        plugins, self._plugins = self._plugins, ()
        for name in plugins:
            module = importlib.import_module(name)
            for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                importlib.import_module(f"{name}.{info.name}")
        return self._entries

    def register(self, *names: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            for name in names:
                if not name or name != name.strip():
                    raise ValueError(f"{self.kind} name must be a non-empty stripped string, got {name!r}")
                if name in self._entries:
                    raise ValueError(f"{self.kind} '{name}' is registered twice")
                self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._load()[name]
        except KeyError:
            raise HftlError(
                f"Unknown {self.kind} '{name}'.{did_you_mean(name, self.names())} "
                f"Known: {', '.join(self.names()) or '(none)'}."
            ) from None

    def names_where(self, **fields: object) -> list[str]:
        """The names whose entry has these attribute values (for hints, e.g. the strategies that freeze the body)."""
        return [n for n in self.names() if all(getattr(self.get(n), k) == v for k, v in fields.items())]

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._load()))

    def names(self) -> list[str]:
        return sorted(self._load())

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._load().items())


TASKS: Registry[Task] = Registry("task", plugins="hftl.tasks")
STRATEGIES: Registry[Strategy] = Registry("strategy", plugins="hftl.strategies")
SHIFTS: Registry[Shift] = Registry("shift", plugins="hftl.data.shifts")

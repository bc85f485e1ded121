"""One tiny registry type, used for every extension point (tasks, strategies,
layer-group mappers, catalog entries).

Unknown names fail with the list of valid ones and a did-you-mean, so a typo
in a recipe is a one-line fix instead of a hunt through the source.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hftl.config.errors import HftlError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A name -> object map filled by a decorator at the place each entry is defined."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

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
            return self._entries[name]
        except KeyError:
            raise HftlError(
                f"Unknown {self.kind} '{name}'.{did_you_mean(name, self.names())} "
                f"Known: {', '.join(self.names()) or '(none)'}."
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

"""One registry helper for what no library names: metrics, losses, TTA views, blend methods.

It owns the "choose from ... (did you mean ...?)" message, so every registry fails the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from comp.errors import ConfigError, closest

V = TypeVar("V")


class Registry(Generic[V]):
    """An ordered name -> value mapping with a decorator to add entries and fixable lookup errors."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, V] = {}

    def register(self, name: str) -> Callable[[V], V]:
        """Decorator: add the decorated object under ``name``."""

        def deco(obj: V) -> V:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: V) -> None:
        if name in self._items:
            raise ValueError(f"{self.what} '{name}' is registered twice")
        self._items[name] = obj

    def check(self, name: object, what: str | None = None) -> str:
        """Return ``name`` if registered, else raise ConfigError listing the valid names and the closest."""
        if not isinstance(name, str) or name not in self._items:
            raise ConfigError(
                f"unknown {what or self.what} '{name}'; choose from {', '.join(self._items)}"
                f"{closest(str(name), self._items)}"
            )
        return name

    def get(self, name: str) -> V:
        return self._items[self.check(name)]

    def __getitem__(self, name: str) -> V:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def items(self):
        return self._items.items()

"""Name -> builder tables for models, layers, augmentations, optimizers, schedules, datasets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cnnlab.errors import SpecError, suggest

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, loc: tuple = ()) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise SpecError(
                loc, f"unknown {self.kind} '{name}'; {suggest(name, self._items)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

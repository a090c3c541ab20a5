"""Name -> constructor registries (methods, datasets, schedules, priors, ...).

A registry replaces if/elif ladders on names and dotted-string class lookup: each component
registers itself with one decorator line, and `build` validates constructor arguments
against the registered signature (`diffrep.validate.check_kwargs`; defaults live in
signatures, not in config files).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from diffrep.errors import UserError
from diffrep.validate import check_kwargs

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(obj: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = obj
            obj.registry_name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> T:
        """Construct `name` after checking `kwargs` against its signature (clear errors)."""
        ctor = self.get(name)
        check_kwargs(ctor, kwargs, where=f"{self.kind} {name!r}")
        return ctor(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

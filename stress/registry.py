"""A small name -> entry registry shared by phantoms, perturbations, metrics and model adapters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from stress.errors import StressError, unknown_name_message

T = TypeVar("T")


class Registry(Generic[T]):
    """Closed registry of named entries; lookups of unknown names suggest the closest one.

    Args:
        kind: what the entries are, used in messages (e.g. ``"perturbation"``).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a second registration of one name is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise :class:`StressError` with a did-you-mean hint."""
        try:
            return self._entries[name]
        except KeyError:
            raise StressError(unknown_name_message(self.kind, name, self._entries)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def items(self) -> list[tuple[str, T]]:
        """Entries sorted by name."""
        return sorted(self._entries.items())

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

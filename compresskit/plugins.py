"""Other packages' strategies, exit rules and backbone adapters, found through entry points."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def load_entry_points(group: str, what: str, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    """(name, loaded object) of every entry point of `group`; a plugin that fails to import raises
    `error` naming it (`what` says what kind of plugin), rather than vanishing from the registry."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=group):
        try:
            loaded = ep.load()
        except Exception as err:  # any import failure of a plugin must surface, named
            raise error(f"{what} plugin {ep.name!r} ({ep.value}) failed to import: {err}") from err
        yield ep.name, loaded

"""One exception family, so the CLI can print any of them without a traceback."""

from __future__ import annotations


class CompressKitError(Exception):
    """Base of every error compresskit raises on purpose (bad input, missing asset, ...)."""


class RecipeError(CompressKitError):
    """A recipe is invalid. Carries every problem found, each with its location."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(problems)} problem(s){where}:"]
        lines += [f"  {loc}: {msg}" if loc else f"  {msg}" for loc, msg in problems]
        super().__init__("\n".join(lines))


class AssetError(CompressKitError):
    """A packaged asset is missing or could not be prepared."""


class ModelFormatError(CompressKitError):
    """A compressed-model config does not describe a buildable model."""


class DataError(CompressKitError):
    """A task or data source cannot be loaded as asked."""


class TrainingError(CompressKitError):
    """Training cannot go on (a NaN or infinite loss): the stage stops and keeps nothing."""

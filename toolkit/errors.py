"""Errors a person can act on: each names the file, line, field or user concerned."""


class ToolkitError(Exception):
    """Base class: everything the toolkit raises on purpose."""


class StoreError(ToolkitError):
    """The DuckDB store cannot be opened or is at an unknown schema version."""


class LoadError(ToolkitError):
    """A file cannot be loaded (unreadable, unknown format, or refused under --strict)."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")

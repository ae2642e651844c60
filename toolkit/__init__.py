"""Mixpanel cohorts to OneSignal, in notebooks. The small public surface a notebook imports."""

from toolkit.errors import LoadError, StoreError, ToolkitError
from toolkit.loading import LoadSummary, load
from toolkit.store import Store, open_store

__all__ = ["Store", "open_store", "load", "LoadSummary", "ToolkitError", "LoadError", "StoreError"]

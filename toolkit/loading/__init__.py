"""Loading Mixpanel exports into the store (the algorithm: docs/design.md, "Loading a file").

The package is ``loading`` so that ``toolkit.load``, the function a notebook calls, never hides it.
"""

from toolkit.loading.run import load
from toolkit.loading.summary import LoadSummary

__all__ = ["load", "LoadSummary"]

"""Loading Mixpanel exports into the store (the algorithm: docs/architecture.md, "Loading a file").

``toolkit.load`` the package and ``toolkit.load`` the function share a name: ``import toolkit`` binds the
function (``from toolkit import load``); the modules are reached as ``from toolkit.load import run``.
"""

from toolkit.load.run import load
from toolkit.load.summary import LoadSummary

__all__ = ["load", "LoadSummary"]

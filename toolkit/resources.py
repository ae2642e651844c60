"""Where the files that ship with the toolkit are: the notebooks the CLI runs and the sample the demo
loads. An installed wheel holds them inside the package (toolkit/notebooks, toolkit/sample: see
pyproject.toml); a checkout keeps them at notebooks/ and data/sample/ beside the package."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def _shipped(packaged: Path, checkout: Path) -> Path:
    return packaged if packaged.is_dir() else checkout


NOTEBOOKS = _shipped(PACKAGE / "notebooks", PACKAGE.parent / "notebooks")
SAMPLE = _shipped(PACKAGE / "sample", PACKAGE.parent / "data" / "sample")
SYNC_NOTEBOOK = NOTEBOOKS / "sync.ipynb"

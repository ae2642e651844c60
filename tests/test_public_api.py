"""The public surface a notebook imports from ``toolkit`` is fixed here: a name added to or dropped from
``toolkit.__all__`` is a decision this test makes visible (like httpx's exported-members test)."""

import inspect

import toolkit

PUBLIC = ["Store", "open_store", "load", "LoadSummary", "ToolkitError", "LoadError", "StoreError"]


def test_all_is_exactly_the_public_surface():
    assert toolkit.__all__ == PUBLIC
    # and nothing else public sits in the package's namespace (its submodules aside)
    exposed = [name for name, value in vars(toolkit).items()
               if not name.startswith("_") and not inspect.ismodule(value)]
    assert sorted(exposed) == sorted(PUBLIC)


def test_every_public_name_is_importable_and_documented():
    namespace: dict = {}
    exec(f"from toolkit import {', '.join(PUBLIC)}", namespace)
    for name in PUBLIC:
        member = namespace[name]
        assert member is getattr(toolkit, name)
        doc = inspect.getdoc(member) or ""
        # a dataclass without a docstring gets its signature as __doc__: that documents nothing
        assert doc.strip() and not doc.startswith(f"{name}("), f"toolkit.{name} has no docstring"


def test_import_toolkit_stays_light():
    """What a notebook or the CLI pays just to start: loading imports neither the cohort compiler, nor
    matching, nor the synthetic data generator, nor pandas or pyarrow, nor tqdm until a bar is shown (it
    brings asyncio: ~50 ms). A fresh interpreter, so other tests' imports do not count."""
    import subprocess
    import sys

    heavy = ["toolkit.cohort_sql", "toolkit.cohorts", "toolkit.matching", "toolkit.synthetic", "pandas", "pyarrow",
             "tqdm", "asyncio"]
    code = f"import sys, toolkit; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

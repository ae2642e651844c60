"""The package's import layers, read from the source (every import, at module level or inside a
function): no cycles, no import up a layer, loading imports nothing above it, the pure core no I/O."""

import ast
import functools
import sys
from pathlib import Path

from helpers import ROOT, toolkit_sources

PACKAGE = ROOT / "toolkit"
# What a load runs: it must not reach cohorts, matching, export or the notebooks' layer.
LOADING = {"loading", *(f"loading.{m}" for m in ("run", "summary", "events", "profiles", "quarantine", "derived",
                                                   "execute", "readers", "sources", "validation", "profile_ops",
                                                   "identity", "pipelines", "mappings")),
           "store", "sql", "errors", "redaction", "onesignal_ids", "event_columns"}
PURE = {"planning", "loading.identity", "loading.profile_ops", "loading.pipelines", "cohort_model", "cohort_sql",
        "onesignal_events", "loading.validation", "sql", "onesignal_ids", "incidents", "drift",
        "dialects"}
PURE_LIBRARIES = {"sqlglot"}     # a SQL parser and generator: no I/O
STANDARD = set(sys.stdlib_module_names) - {"os", "io", "socket", "subprocess", "shutil", "tempfile", "sqlite3",
                                           "threading", "asyncio", "urllib", "http", "pathlib", "glob", "time"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(the toolkit modules ``path`` imports, the top-level names of everything else it imports)."""
    inside, outside = set(), set()
    for node in ast.walk(toolkit_sources()[path]):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "toolkit" or node.module.startswith("toolkit."):
                base = node.module.removeprefix("toolkit").lstrip(".")
                for alias in node.names:    # `from toolkit import x` names a module when x is one
                    full = f"{base}.{alias.name}".lstrip(".")
                    is_module = (PACKAGE / Path(*full.split("."))).with_suffix(".py").exists() or \
                        (PACKAGE / Path(*full.split("."))).is_dir()
                    inside.add(full if is_module else base)
            elif node.module != "__future__":
                outside.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "toolkit" or alias.name.startswith("toolkit."):
                    inside.add(alias.name.removeprefix("toolkit").lstrip("."))
                else:
                    outside.add(alias.name.split(".")[0])
    return inside, outside


@functools.cache
def graph() -> dict[str, tuple[set[str], set[str]]]:
    """Each toolkit module's imports (``_imports``), read once, when a test first asks (not at collection)."""
    return {_module(p): _imports(p) for p in toolkit_sources()}


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph()[todo.pop()][0]:
            if dep and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_imports_have_no_cycle():
    for name in graph():
        assert name not in _reach(name), f"toolkit.{name} imports itself through others"


def test_loading_imports_nothing_above_it():
    assert _reach("loading") <= LOADING, sorted(_reach("loading") - LOADING)
    assert _reach("") <= LOADING, "import toolkit reaches " + ", ".join(sorted(_reach("") - LOADING))


def test_the_pure_core_does_no_io():
    for name in PURE:
        inside, outside = graph()[name]
        assert inside <= PURE | {"errors"}, (name, sorted(inside - PURE))
        assert outside <= STANDARD | PURE_LIBRARIES, (name, sorted(outside - STANDARD - PURE_LIBRARIES))


# Bottom up, as docs/architecture.md draws them; a module may import its own layer or those below.
LAYERS = [
    ("ground", {"errors", "redaction", "onesignal_ids", "sql", "store", "resources", "waiting"}),
    ("loading", {"loading", "event_columns"}),
    ("core", {"cohort_model", "cohort_sql", "cohorts", "cohort_batch", "kept_pass", "matching", "planning",
              "incidents", "drift", "onesignal_events", "mtu", "dialects"}),
    ("services", {"onesignal", "rate_budget", "emulator", "credentials", "snapshots", "export", "mixpanel", "alerts",
                  "reconcile", "spark_session",
                  "lake", "engine"}),
    ("workflows", {"sync", "schedule"}),
    ("surfaces", {"", "__main__", "cli", "report", "widgets", "demo", "lab", "synthetic"}),
]


def _layer(module: str) -> int:
    for level, (_, members) in enumerate(LAYERS):
        if module in members or module.split(".")[0] in members - {""}:
            return level
    raise AssertionError(f"toolkit.{module} is in no layer: place it in tests/test_layers.py and the architecture page")


def test_no_import_points_up_a_layer():
    upward = [f"toolkit.{name} ({LAYERS[_layer(name)][0]}) imports toolkit.{dep} ({LAYERS[_layer(dep)][0]})"
              for name, (inside, _) in graph().items() for dep in inside if dep and _layer(dep) > _layer(name)]
    assert not upward, "\n".join(upward)

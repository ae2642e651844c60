"""What the tests share besides fixtures (those live in conftest.py): the checkout's paths, the moments
the tests evaluate at, and small builders of input files. Import them as `from helpers import ...`."""

import ast
import functools
import gzip
import json
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
NOW = datetime(2026, 11, 1, tzinfo=UTC)
T0 = 1_790_000_000          # 2026-09-21, seconds


@functools.cache
def toolkit_sources() -> dict[Path, ast.Module]:
    """Every module of the toolkit package, parsed: once per process, when a test first asks (parsing the
    ~100 modules costs ~0.5 s of CPU; test_errors and test_layers both read them, not at collection)."""
    return {path: ast.parse(path.read_text(encoding="utf-8")) for path in (ROOT / "toolkit").rglob("*.py")}


def event(name="Page View", distinct_id="u1", time=T0, insert_id=None, **props):
    properties = {"time": time, "distinct_id": distinct_id, **props}
    if insert_id is not None:
        properties["$insert_id"] = insert_id
    return {"event": name, "properties": properties}


def write_lines(path: Path, records, *, compress=False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def a_new_buyer(db: Path, emulator, app_id: str, user: str, when: datetime) -> None:
    """A cohort of buyers changes (a run with nothing to change sends nothing, so cannot hear OneSignal
    refuse it): ``user`` makes a Purchase, with a OneSignal id (``ext-<user>``) the emulator's app knows."""
    from toolkit import Store, load

    data = db.parent / f"new-{user}"
    data.mkdir()
    write_lines(data / "events.jsonl", [event("Purchase", user, insert_id=f"p{user}")])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": user, "$properties": {"$onesignal_user_id": f"ext-{user}"}}])
    emulator.add_user(app_id, f"ext-{user}")
    with Store(db) as store:
        load(store, [data], now=when)


FOUR_USERS = ["u1", "u2", "u3", "u4"]


def buyers_and_panel(store, folder: Path) -> None:
    """Four buyers with OneSignal ids; the cohorts "Buyers" and the static "Panel" (a world for sync tests)."""
    from toolkit import cohorts, load

    data = folder / "data"
    data.mkdir()
    write_lines(data / "events.jsonl", [event("Purchase", u, insert_id=f"p{u}") for u in FOUR_USERS])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": u, "$properties": {"$onesignal_user_id": f"ext-{u}"}}
                                          for u in FOUR_USERS])
    load(store, [data], now=NOW)
    cohorts.save_all(store, [{"name": "Buyers", "rules": [{"event": "Purchase"}]},
                             {"name": "Panel", "static_ids": FOUR_USERS}])


def rows(store, sql, params=None):
    return store.con.execute(sql, params or []).fetchall()


def emptied(store):
    """``store`` with the rows of every table deleted, its schema kept: as a new store reads, without the
    ~0.1 s of opening and migrating one (a property test resets one store per example)."""
    tables = store.con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' "
                               "AND table_type = 'BASE TABLE' AND table_name <> 'schema_version'").fetchall()
    for (table,) in tables:
        store.con.execute(f'DELETE FROM "{table}"')
    return store


def expected_reasons(path: Path) -> dict[int, str]:
    """data/sample/broken/expected.tsv: line -> a phrase the quarantine reason must contain."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return {int(n): reason for n, reason in (line.split("\t", 1) for line in lines)}


# -- kill -9 at a named point of a load ---------------------------------------------------------------

def _load_until(db: Path, paths, point: str, now: datetime):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "load_until.py"), str(db), now.isoformat(), point,
                             *map(str, paths)], stdout=subprocess.PIPE, text=True)


def load_points(db: Path, paths, now: datetime = NOW) -> list[str]:
    """Load ``paths`` into ``db`` in a process of its own and return the points it announced, in order
    (see tests/load_until.py): the points a kill can be aimed at."""
    process = _load_until(db, paths, "", now)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0 and out.endswith("loaded\n"), out
    return [line.removeprefix("point: ") for line in out.splitlines() if line.startswith("point: ")]


def kill_load_at(db: Path, paths, point: str, now: datetime = NOW) -> None:
    """Start loading ``paths`` into ``db`` in a process of its own and kill -9 it at ``point``, once it
    says it stopped there."""
    import signal

    process = _load_until(db, paths, point, now)
    try:
        said = []
        for line in process.stdout:
            said.append(line)
            if line == f"stopped at {point}\n":
                break
        else:
            raise AssertionError(f"the load ended before {point!r}: {''.join(said)}")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


class _Nbformat:
    """nbformat, imported on first use: its import builds a URI grammar (jsonschema's rfc3987 check, about
    1 s) that collecting the tests need not pay in every worker."""

    def __getattr__(self, name):
        if name.startswith(("_", "pytest")):      # pytest looks at every module-level name as it collects
            raise AttributeError(name)
        import nbformat

        return getattr(nbformat, name)


nbformat = _Nbformat()


class _Node(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def read_notebook(path) -> _Node:
    """A committed notebook as nbformat reads it (cells, outputs, metadata by attribute; a cell's source as
    one string) from its JSON alone, for tests that only look at it: no nbformat import in their worker."""
    def node(fields: dict) -> _Node:
        found = _Node(fields)
        if isinstance(found.get("source"), list):
            found["source"] = "".join(found["source"])
        return found

    return json.loads(Path(path).read_text(encoding="utf-8"), object_hook=node)

import gzip
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from toolkit.store import Store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
NOW = datetime(2026, 11, 1, tzinfo=UTC)
T0 = 1_790_000_000          # 2026-09-21, seconds
# Tests write a file and load it at once: no waiting for it to settle (tests/test_hostile_load.py tests it).
os.environ.setdefault("TOOLKIT_SETTLE_SECONDS", "0")


@pytest.fixture
def store():
    with Store(":memory:") as s:
        yield s


@pytest.fixture
def emulator():
    """A OneSignal emulator on 127.0.0.1 with its default limits (1 update/s per user)."""
    from toolkit.emulator import Emulator

    with Emulator() as emu:
        yield emu


@pytest.fixture
def app(emulator):
    return emulator.add_app()


@pytest.fixture(scope="module")
def sample():
    """The sample loaded (as of NOW) with its cohorts stored; shared by a module's tests, read only."""
    from toolkit import cohorts, load

    with Store(":memory:") as s:
        load(s, [SAMPLE], now=NOW)
        cohorts.save_all(s, cohorts.load_definitions(SAMPLE / "cohorts.yaml"), now=NOW)
        yield s


@pytest.fixture(scope="module")
def sample_db(tmp_path_factory):
    """The sample loaded (as of NOW) with its cohorts, in a store file made once per module; tests that
    write take a copy. Modules needing another shape define their own."""
    from toolkit import cohorts, load

    path = tmp_path_factory.mktemp("sample") / "s.duckdb"
    with Store(path) as s:
        load(s, [SAMPLE], now=NOW)
        cohorts.save_all(s, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
    return path


@pytest.fixture
def file_store(tmp_path):
    with Store(tmp_path / "store.duckdb") as s:
        yield s


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


def rows(store, sql, params=None):
    return store.con.execute(sql, params or []).fetchall()


def expected_reasons(path: Path) -> dict[int, str]:
    """data/sample/broken/expected.tsv: line -> a phrase the quarantine reason must contain."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return {int(n): reason for n, reason in (line.split("\t", 1) for line in lines)}

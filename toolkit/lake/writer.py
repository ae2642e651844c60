"""``toolkit lake export``: a store's data written as a Parquet lake (the layout in ``layout``), so
DuckDB and Spark can be compared on the same data, and a lake can be started from a store.

Atomic: everything is written into a sibling folder, then renamed into place; a failure or an
interrupt leaves the target as it was. A non-empty target is refused unless ``replace``.
What is written: the published events (already one copy per Mixpanel key), one file per day and
month of writing; the profiles as loaded (before identity, with ``sequence``: the store's order
among profiles, which breaks ties); the identity map as Mixpanel's identity mappings.

``export_pipelines`` writes such a lake again as a Mixpanel Data Pipelines JSON folder (tests and benches
read the same data both ways).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import LakeError
from toolkit.lake.layout import EVENTS, MANIFEST, MAPPINGS, PROFILES
from toolkit.store import Store, connection

EVENT_COLUMNS = ("event, distinct_id, time, insert_id, device_id, user_id, CAST(properties AS VARCHAR) AS properties")


@dataclass(frozen=True)
class Written:
    path: str
    events: int
    days: int
    profiles: int
    identity_mappings: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def export_store(store: Store, target: str | os.PathLike, *, replace: bool = False,
                 on_progress: Callable[[int, int], None] | None = None) -> Written:
    """Write ``store``'s events, profiles and identity map as a Parquet lake at ``target``.
    ``on_progress(done, total)`` is told the events written so far."""
    target = Path(target).expanduser()
    if target.exists() and not target.is_dir():
        raise LakeError(f"lake {target} exists and is not a folder; choose another path")
    if target.is_dir() and any(target.iterdir()) and not replace:
        raise LakeError(f"lake {target} is not empty; choose an empty folder, or pass --replace to write over it")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        written = _write(connection(store), partial, on_progress)
        (partial / MANIFEST).write_text(json.dumps({
            "format": 1, "written_by": "toolkit lake export", "store": store.path,
            "written_at": dt.datetime.now(dt.UTC).isoformat(), "deduplicated": True,
            "events": written[0], "profiles": written[2], "identity_mappings": written[3],
            "event_files": sorted(p.relative_to(partial).as_posix() for p in (partial / EVENTS).rglob("*.parquet")),
        }, indent=1))
        _swap(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return Written(str(target), *written)


# A copy of each event with an $insert_id, older than the event: no mp_processing_time_ms, and a marker that
# shows if a copy ever survived deduplication.
STALE_PATCH = '{"mp_processing_time_ms": null, "stale": true}'


def export_pipelines(lake: str | os.PathLike, root: str | os.PathLike, project_id: str = "1000001") -> Path:
    """Write a Parquet lake (``export_store``'s) as a Mixpanel Data Pipelines JSON folder,
    ``root/<project_id>`` (the layout of ``loading.pipelines``), and return that folder: events by day
    with Pipelines' field names and epoch-second times, every event with an $insert_id a second time in an
    earlier gzipped file (without mp_processing_time_ms, marked ``"stale": true``: the copy deduplication
    drops), people (one per resolved user, as Mixpanel exports them) and identity mappings. For tests and
    benches. Atomic as ``export_store``; an existing project folder is refused."""
    import duckdb

    from toolkit.lake.duck import DuckLake
    from toolkit.lake.layout import find
    from toolkit.loading import pipelines

    lake, target = Path(lake), Path(root) / project_id
    if target.exists():
        raise LakeError(f"{target} exists; choose another folder for the Data Pipelines copy of {lake}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{project_id}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        columns = f"event AS {pipelines.EVENT_NAME}, epoch(time) AS time, distinct_id, insert_id, device_id, user_id"
        # Folder by folder (the lake's are by day): a scan of the whole lake for each day took ~1 s of CPU for
        # the sample's two months, and grows with days x events
        by_day = [(day, events) for events in _day_folders(lake / EVENTS)
                  for day, in con.execute(f"SELECT DISTINCT strftime(time, '%Y/%m/%d') FROM {events}").fetchall()]
        for day, events in by_day:
            out = partial / pipelines.EVENTS / day
            out.mkdir(parents=True)
            select = (f"SELECT {columns}, json(properties) AS properties FROM {events} "
                      f"WHERE strftime(time, '%Y/%m/%d') = '{day}'")
            con.execute(f"COPY ({select}) TO '{_quoted(out / 'part-1.json')}' (FORMAT json)")
            stale = (f"SELECT * REPLACE (json_merge_patch(properties, '{STALE_PATCH}') AS properties) "
                     f"FROM ({select}) WHERE insert_id IS NOT NULL")
            con.execute(f"COPY ({stale}) TO '{_quoted(out / 'part-0.json.gz')}' (FORMAT json, COMPRESSION gzip)")
        (partial / pipelines.PEOPLE).mkdir()
        with DuckLake(find(lake)).prepare() as resolved:
            resolved.con.execute(f"COPY (SELECT distinct_id, json(properties) AS properties FROM resolved_profiles) "
                                 f"TO '{_quoted(partial / pipelines.PEOPLE / 'people.json')}' (FORMAT json)")
        (partial / pipelines.IDENTITY).mkdir()
        con.execute(f"COPY (SELECT * FROM read_parquet('{_quoted(lake / MAPPINGS)}/*.parquet')) "
                    f"TO '{_quoted(partial / pipelines.IDENTITY / 'mappings.json')}' (FORMAT json)")
        con.close()
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _day_folders(events: Path) -> list[str]:
    """``read_parquet`` of each folder of the events (``date=YYYY-MM-DD``, as ``_write`` partitions them)."""
    return [f"read_parquet('{_quoted(folder)}/*.parquet')" for folder in sorted(events.iterdir()) if folder.is_dir()]


def _write(con, folder: Path, on_progress) -> tuple[int, int, int, int]:
    (folder / EVENTS).mkdir()
    months = con.execute("SELECT date_trunc('month', time) AS m, count(*) FROM events GROUP BY 1 ORDER BY 1").fetchall()
    total, done = sum(n for _, n in months), 0
    for month, n in months:
        end = (month + dt.timedelta(days=32)).replace(day=1)
        con.execute(f"""COPY (SELECT {EVENT_COLUMNS}, strftime(time, '%Y-%m-%d') AS date FROM events
                              WHERE time >= ? AND time < ?)
                        TO '{_quoted(folder / EVENTS)}'
                        (FORMAT parquet, PARTITION_BY (date), FILENAME_PATTERN 'part-{month:%Y%m}-{{uuid}}',
                         APPEND, COMPRESSION zstd)""", [month, end])
        done += n
        if on_progress:
            on_progress(done, total)
    days = sum(1 for p in (folder / EVENTS).iterdir() if p.is_dir())
    profiles = _copy(con, folder / PROFILES, """
        SELECT distinct_id, CAST(properties AS VARCHAR) AS properties, updated_at,
               row_number() OVER (ORDER BY updated_at, file_id, line, distinct_id) AS sequence
        FROM profiles""")
    mappings = _copy(con, folder / MAPPINGS,
                     "SELECT distinct_id, canonical_id AS resolved_distinct_id FROM identity_map ORDER BY distinct_id")
    return total, days, profiles, mappings


def _copy(con, folder: Path, select: str) -> int:
    folder.mkdir()
    n = con.execute(f"SELECT count(*) FROM ({select})").fetchone()[0]
    if n:
        con.execute(f"COPY ({select}) TO '{_quoted(folder / 'part-0.parquet')}' (FORMAT parquet, COMPRESSION zstd)")
    return n


def _quoted(path: Path) -> str:
    return str(path).replace("'", "''")


def _swap(partial: Path, target: Path) -> None:
    """Put ``partial`` at ``target``; an existing target goes aside first and is removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    partial.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

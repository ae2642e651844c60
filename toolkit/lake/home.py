"""Members come home: a cohort evaluated over a lake (on Spark or DuckDB) is written to the local store
as Arrow, one transaction per cohort (store migration 11: ``lake_evaluations``, ``lake_members``), so
the export side, which plans against the store's snapshot, runs as it does for the store's own cohorts,
and the last lake evaluation of a cohort can be read again without the lake (``read``)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from toolkit.matching import COLUMNS, SCHEMA, Preview, summarize
from toolkit.sql import to_utc_naive
from toolkit.store import Store, connection


def write(store: Store, preview: Preview, *, engine: str, lake: str) -> None:
    """Replace the cohort's stored lake evaluation with ``preview`` (its members never pass through
    Python rows: the Arrow table is inserted as it is)."""
    con = connection(store)
    summary = preview.summary
    with store.transaction():
        con.execute("DELETE FROM lake_members WHERE cohort = ?", [preview.cohort])
        con.execute("DELETE FROM lake_evaluations WHERE cohort = ?", [preview.cohort])
        con.register("_home", preview.table.select(COLUMNS))
        try:
            con.execute(f"INSERT INTO lake_members SELECT ?, {', '.join(COLUMNS)} FROM _home", [preview.cohort])
        finally:
            con.unregister("_home")
        con.execute("INSERT INTO lake_evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                    [preview.cohort, preview.version, to_utc_naive(preview.now or dt.datetime.now(dt.UTC)),
                     engine, lake, summary["user_id_property"], summary["id_type"], preview.table.num_rows])


def read(store: Store, cohort: str) -> Preview | None:
    """The cohort's last lake evaluation as a Preview (None: never evaluated over a lake)."""
    con = connection(store)
    found = con.execute("SELECT version, as_of, user_id_property, id_type, engine, lake FROM lake_evaluations "
                        "WHERE cohort = ?", [cohort]).fetchall()
    if not found:
        return None
    (version, as_of, prop, id_type, engine, lake), = found
    table: pa.Table = con.sql(f"SELECT {', '.join(COLUMNS)} FROM lake_members WHERE cohort = $cohort",
                              params={"cohort": cohort}).to_arrow_table().cast(SCHEMA)
    summary = {"cohort": cohort, "version": version, "now": as_of.isoformat() + "Z", "engine": engine, "lake": lake,
               **summarize(table, user_id_property=prop, id_type=id_type)}
    return Preview(summary, table, cohort=cohort, version=version, now=as_of.replace(tzinfo=dt.UTC))

"""DuckDB over a lake: views over the Parquet or JSON files, read in place (nothing is copied to disk).

A Data Pipelines JSON folder is read once per session: its events, parsed and deduplicated, and its
identity mappings are kept in temporary tables (DuckDB parses JSON text on every read: a cohort over the
views re-read every file), so a panel or a sync evaluating many cohorts reads the folder once. A session
sees the files as they were when it opened; the next session reads the folder again."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from toolkit.errors import LakeError
from toolkit.lake import views
from toolkit.lake.base import LakeEngine
from toolkit.lake.layout import Lake
from toolkit.sql import Query

_TEXT = ("event_name", "event", "time", "distinct_id", "insert_id", "device_id", "user_id", "properties")


class DuckLake(LakeEngine):
    """An in-memory DuckDB whose views read the lake's files."""

    name = "duckdb"

    def __init__(self, lake: Lake, memory_limit: str | None = None, read_once: bool = True):
        super().__init__(lake)
        self.read_once = read_once and lake.kind == "pipelines"     # False: read the JSON at every query
        self.con = duckdb.connect(config={"memory_limit": memory_limit} if memory_limit else {})
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute("SET enable_progress_bar = false")

    def read_sources(self) -> None:
        lake = self.lake
        if lake.kind == "parquet":
            self._parquet("lake_events_src", "events", lake.events,
                          "event, distinct_id, CAST(time AS TIMESTAMP) AS time, insert_id, device_id, user_id, "
                          "CAST(properties AS VARCHAR) AS properties, filename AS source_file")
            if lake.profiles:
                self._parquet("lake_profiles_src", "profiles", lake.profiles,
                              "distinct_id, CAST(properties AS VARCHAR) AS properties, "
                              "CAST(updated_at AS TIMESTAMP) AS updated_at, CAST(sequence AS BIGINT) AS sequence")
            if lake.mappings:
                self._parquet("lake_mappings_src", "identity mappings", lake.mappings,
                              "CAST(distinct_id AS VARCHAR) AS distinct_id, "
                              "CAST(resolved_distinct_id AS VARCHAR) AS resolved_distinct_id")
        else:
            self._json("lake_events_text", "events", lake.events, _TEXT)
            if self.read_once:      # parsed once here; dedup reads it twice (with and without $insert_id)
                self._checked("events", lake.events, "CREATE TEMP TABLE lake_events_src AS "
                              + _inlined(views.pipeline_events()), "lake_events_src")
            else:
                self.view("lake_events_src", views.pipeline_events())
            if lake.profiles:
                self._json("lake_profiles_text", "people", lake.profiles, ("distinct_id", "properties"))
                self.view("lake_profiles_src", views.pipeline_profiles())
            if lake.mappings:
                self._json("lake_mappings_src", "identity mappings", lake.mappings,
                           ("distinct_id", "resolved_distinct_id"), keep=self.read_once)
        if not lake.profiles:
            self.view("lake_profiles_src", views.no_profiles())

    def _parquet(self, name: str, what: str, files: tuple[Path, ...], columns: str) -> None:
        listed = [str(f) for f in files]
        self._checked(what, files, f"CREATE VIEW {name} AS SELECT {columns} FROM "
                      f"read_parquet({listed!r}, hive_partitioning = false, filename = true, union_by_name = true)")

    def _json(self, name: str, what: str, files: tuple[Path, ...], fields: tuple[str, ...], keep: bool = False) -> None:
        """A view over JSON files; ``keep``: a temporary table (read now, once)."""
        listed = [str(f) for f in files]
        typed = "{" + ", ".join(f"'{f}': 'VARCHAR'" for f in fields) + "}"
        self._checked(what, files, f"CREATE {'TEMP TABLE' if keep else 'VIEW'} {name} AS SELECT {', '.join(fields)}, "
                      f"filename AS source_file FROM "
                      f"read_json({listed!r}, format = 'newline_delimited', columns = {typed}, filename = true)",
                      name)

    def events(self, query: Query) -> None:
        if self.read_once:
            self.con.execute(f"CREATE TEMP TABLE lake_events AS {_inlined(query)}")
            self.con.execute("DROP TABLE lake_events_src")      # read by lake_events only: free its memory
        else:
            super().events(query)

    def _checked(self, what: str, files: tuple[Path, ...], sql: str, name: str | None = None) -> None:
        """Define the view (or fill the table) and read a row of it, so an unreadable file fails here, named."""
        try:
            self.con.execute(sql)
            self.con.execute(f"SELECT * FROM {name or sql.split()[2]} LIMIT 1").fetchall()
        except duckdb.Error as exc:
            raise LakeError(f"lake {self.lake}: cannot read its {what}: {_unreadable(self.con, files, exc)}") from None

    def view(self, name: str, query: Query) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {_inlined(query)}")

    def table(self, name: str, table: pa.Table) -> None:
        self.con.register("_lake_table", table)
        try:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _lake_table")
        finally:
            self.con.unregister("_lake_table")

    def materialize(self, name: str, query: Query) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {query.sql}", query.params or None)

    def arrow(self, query: Query) -> pa.Table:
        try:
            return self.con.sql(query.sql, params=query.params or None).to_arrow_table()
        except duckdb.Error as exc:
            raise LakeError(f"lake {self.lake}: {exc}") from None

    def close(self) -> None:
        self.con.close()


def _inlined(query: Query) -> str:
    """A view's SQL with its (text) parameters written in: DuckDB binds no parameters in a view."""
    sql = query.sql
    for name in sorted(query.params, key=len, reverse=True):     # $p_merge1 before $p_merge
        value = query.params[name]
        if not isinstance(value, str):
            raise TypeError(f"view parameter {name} must be text")
        sql = sql.replace(f"${name}", "'" + value.replace("'", "''") + "'")
    return sql


def _unreadable(con, files: tuple[Path, ...], exc: Exception) -> str:
    """The first file DuckDB cannot read alone, with its reason; else DuckDB's reason for them all."""
    for f in files:
        reader = "read_parquet" if f.name.endswith(".parquet") else "read_json_auto"
        try:
            con.execute(f"SELECT * FROM {reader}(?) LIMIT 1", [str(f)]).fetchall()
        except duckdb.Error as one:
            return f"{f} is not readable ({_first_line(one)})"
    return _first_line(exc)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

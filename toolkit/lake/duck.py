"""DuckDB over a lake: views over the Parquet or JSON files, read in place.

A Data Pipelines JSON folder is read once per session: its events, parsed and deduplicated, and its
identity mappings are kept in temporary tables (DuckDB parses JSON text on every read: a cohort over the
views re-read every file), so a panel or a sync evaluating many cohorts reads the folder once. A session
sees the files as they were when it opened; the next session reads the folder again.

With a ``cache`` folder (the engine seam gives one beside the store), each JSON file's parsed events are
also kept there as Parquet, named by the file's path, size and modification time and by the parsing
query, and so are the deduplicated events of the whole set: a next session over the same files loads
those; over a changed folder it parses only the files that are new or changed (Data Pipelines adds files,
it rarely rewrites them) and deduplicates again. Entries of files no longer there are removed."""

from __future__ import annotations

import hashlib
import os
import uuid
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

    def __init__(self, lake: Lake, memory_limit: str | None = None, read_once: bool = True,
                 cache: str | os.PathLike | None = None):
        super().__init__(lake)
        self.read_once = read_once and lake.kind == "pipelines"     # False: read the JSON at every query
        self.cache = Path(cache) if cache is not None and self.read_once else None
        self.parsed = 0         # JSON files parsed by this session (the others came from the cache)
        self.deduplicated: Path | None = None      # the cache's deduplicated events of these very files
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
            if self.cache is not None and self._cached_events():
                pass
            elif self.read_once:    # parsed once here; dedup reads it twice (with and without $insert_id)
                self._json("lake_events_text", "events", lake.events, _TEXT)
                self._checked("events", lake.events, "CREATE TEMP TABLE lake_events_src AS "
                              + _inlined(views.pipeline_events()), "lake_events_src")
                self.parsed = len(lake.events)
            else:
                self._json("lake_events_text", "events", lake.events, _TEXT)
                self.view("lake_events_src", views.pipeline_events())
            if lake.profiles:
                self._json("lake_profiles_text", "people", lake.profiles, ("distinct_id", "properties"))
                self.view("lake_profiles_src", views.pipeline_profiles())
            if lake.mappings:
                self._json("lake_mappings_src", "identity mappings", lake.mappings,
                           ("distinct_id", "resolved_distinct_id"), keep=self.read_once)
        if not lake.profiles:
            self.view("lake_profiles_src", views.no_profiles())

    def _cached_events(self) -> bool:
        """``lake_events_src`` from the cache, parsing the files not in it yet; False when the cache folder
        cannot be written (the session then parses every file, as without a cache)."""
        assert self.cache is not None
        parse = _inlined(views.pipeline_events())
        version = hashlib.sha256(parse.encode()).hexdigest()[:12]    # a new parsing query: a new cache
        folder = self.cache / hashlib.sha256(str(self.lake.root.resolve()).encode()).hexdigest()[:16]
        entries = {}
        for f in self.lake.events:
            stat = f.stat()
            key = f"{f.relative_to(self.lake.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{version}"
            entries[f] = folder / f"events-{hashlib.sha256(key.encode()).hexdigest()[:32]}.parquet"
        every = "\0".join([*(e.name for e in entries.values()), _inlined(views.events(self.lake.deduplicated))])
        self.deduplicated = folder / f"lake-events-{hashlib.sha256(every.encode()).hexdigest()[:32]}.parquet"
        if self.deduplicated.exists():
            return True         # the same files as a session before: `events` reads what it kept
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for f, entry in entries.items():
                if not entry.exists():
                    self._parse_into(f, parse, entry)
            for old in folder.glob("events-*.parquet"):      # files gone from the folder, or changed
                if old not in entries.values():
                    old.unlink(missing_ok=True)
        except OSError:
            self.deduplicated = None
            return False
        listed = [str(e) for e in entries.values()]
        self.con.execute(f"CREATE TEMP TABLE lake_events_src AS SELECT * FROM read_parquet({listed!r})")
        return True

    def _parse_into(self, file: Path, parse: str, entry: Path) -> None:
        """One JSON file's parsed events, written to ``entry`` (aside first: a reader never sees half a file)."""
        self._json("lake_events_text", "events", (file,), _TEXT, replace=True)
        partial = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}")
        try:
            self.con.execute(f"COPY ({parse}) TO '{partial}' (FORMAT parquet)")
        except duckdb.IOException as exc:
            partial.unlink(missing_ok=True)
            raise OSError(str(exc)) from None
        except duckdb.Error as exc:
            partial.unlink(missing_ok=True)
            raise LakeError(f"lake {self.lake}: cannot read its events: {_unreadable(self.con, (file,), exc)}"
                            ) from None
        os.replace(partial, entry)
        self.parsed += 1

    def _keep_deduplicated(self, kept: Path) -> None:
        """The deduplicated events, for the next session over the same files (an older set's file is
        removed); a cache that cannot be written is skipped."""
        partial = kept.with_name(f".{kept.name}.{uuid.uuid4().hex}")
        try:
            self.con.execute(f"COPY lake_events TO '{partial}' (FORMAT parquet)")
            os.replace(partial, kept)
            for old in kept.parent.glob("lake-events-*.parquet"):
                if old != kept:
                    old.unlink(missing_ok=True)
        except (OSError, duckdb.IOException):
            partial.unlink(missing_ok=True)

    def _parquet(self, name: str, what: str, files: tuple[Path, ...], columns: str) -> None:
        listed = [str(f) for f in files]
        self._checked(what, files, f"CREATE VIEW {name} AS SELECT {columns} FROM "
                      f"read_parquet({listed!r}, hive_partitioning = false, filename = true, union_by_name = true)")

    def _json(self, name: str, what: str, files: tuple[Path, ...], fields: tuple[str, ...], keep: bool = False,
              replace: bool = False) -> None:
        """A view over JSON files; ``keep``: a temporary table (read now, once)."""
        listed = [str(f) for f in files]
        typed = "{" + ", ".join(f"'{f}': 'VARCHAR'" for f in fields) + "}"
        kind = "TEMP TABLE" if keep else "OR REPLACE VIEW" if replace else "VIEW"
        self._checked(what, files, f"CREATE {kind} {name} AS SELECT {', '.join(fields)}, "
                      f"filename AS source_file FROM "
                      f"read_json({listed!r}, format = 'newline_delimited', columns = {typed}, filename = true)",
                      name)

    def events(self, query: Query) -> None:
        kept = self.deduplicated
        if kept is not None and kept.exists():      # loaded, not a view: the file may be replaced meanwhile
            self.con.execute(f"CREATE TEMP TABLE lake_events AS SELECT * FROM read_parquet('{kept}')")
        elif self.read_once:
            self.con.execute(f"CREATE TEMP TABLE lake_events AS {_inlined(query)}")
            self.con.execute("DROP TABLE lake_events_src")      # read by lake_events only: free its memory
            if kept is not None:
                self._keep_deduplicated(kept)
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

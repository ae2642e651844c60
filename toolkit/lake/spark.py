"""Spark over a lake: the lake's files as temp views, read in place by the cluster (or local[N]), and
every relation and query the DuckDB engine runs, transpiled (toolkit/dialects.py). pyspark is imported
only here, and only when a Spark engine is asked for."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

from toolkit.errors import EngineError, LakeError
from toolkit.lake import views
from toolkit.lake.base import LakeEngine
from toolkit.lake.layout import Lake
from toolkit.sql import Query

IDENTITY_MAP = "identity_map"
# Mappings up to which the identity map is broadcast (a hash table of ~100 bytes a mapping on each
# executor); above, Spark's sort-merge join shuffles the events instead (a cluster's case).
BROADCAST_MAPPINGS = 2_000_000
_TEXT = ("event_name", "event", "time", "distinct_id", "insert_id", "device_id", "user_id", "properties")


class SparkLake(LakeEngine):
    name = "spark"

    def __init__(self, lake: Lake, master: str | None = None, remote: str | None = None):
        super().__init__(lake)
        from toolkit import spark_session

        self.spark = _own_session(spark_session.start(master=master, remote=remote))
        self._kept: list = []

    def read_sources(self) -> None:
        from pyspark.sql import functions as F

        lake = self.lake
        if lake.kind == "parquet":
            events = self._read("events", lake.events, lambda r, files: r.parquet(*files))
            events.select(
                "event", "distinct_id", F.col("time").cast("timestamp_ntz").alias("time"), "insert_id", "device_id",
                "user_id", F.col("properties").cast("string").alias("properties"),
                F.input_file_name().alias("source_file")).createOrReplaceTempView("lake_events_src")
            if lake.profiles:
                profiles = self._read("profiles", lake.profiles, lambda r, files: r.parquet(*files))
                profiles.select("distinct_id", F.col("properties").cast("string").alias("properties"),
                                F.col("updated_at").cast("timestamp_ntz").alias("updated_at"),
                                F.col("sequence").cast("bigint").alias("sequence")
                                ).createOrReplaceTempView("lake_profiles_src")
            if lake.mappings:
                self._read("identity mappings", lake.mappings, lambda r, files: r.parquet(*files)).select(
                    F.col("distinct_id").cast("string"), F.col("resolved_distinct_id").cast("string")
                ).createOrReplaceTempView("lake_mappings_src")
        else:
            self._json("events", lake.events, _TEXT).createOrReplaceTempView("lake_events_text")
            self.view("lake_events_src", views.pipeline_events())
            if lake.profiles:
                self._json("people", lake.profiles, ("distinct_id", "properties")
                           ).createOrReplaceTempView("lake_profiles_text")
                self.view("lake_profiles_src", views.pipeline_profiles())
            if lake.mappings:
                self._json("identity mappings", lake.mappings, ("distinct_id", "resolved_distinct_id")
                           ).createOrReplaceTempView("lake_mappings_src")
        if not lake.profiles:
            self.view("lake_profiles_src", views.no_profiles())

    def _json(self, what: str, files: tuple[Path, ...], fields: tuple[str, ...]):
        from pyspark.sql import functions as F

        schema = ", ".join(f"`{f}` STRING" for f in fields)     # every field as its JSON text
        frame = self._read(what, files, lambda r, paths: r.schema(schema).json(list(paths)))
        return frame.withColumn("source_file", F.input_file_name())

    def _read(self, what: str, files: tuple[Path, ...], read):
        """The files as a DataFrame, one row read now so that an unreadable file fails here, named."""
        try:
            frame = read(self.spark.read, [str(f) for f in files])
            frame.limit(1).collect()
            return frame
        except Exception as exc:        # Spark's Py4J / analysis errors: name the file
            raise LakeError(f"lake {self.lake}: cannot read its {what}: {_first_line(exc)}") from None

    def sql(self, query: Query):
        from toolkit import dialects

        text = dialects.for_spark(query)
        try:
            return self.spark.sql(text)
        except Exception as exc:
            raise EngineError(f"Spark refused a query over the lake {self.lake}: {_first_line(exc)}") from None

    def view(self, name: str, query: Query) -> None:
        self.sql(query).createOrReplaceTempView(name)

    def table(self, name: str, table: pa.Table) -> None:
        from toolkit import spark_session

        spark_session.register(self.spark, name, table)

    def materialize(self, name: str, query: Query) -> None:
        """The relation computed once, kept by Spark's block manager (memory, then disk), as a temp
        view whose plan is that data: a local checkpoint. Spark's ``cache()`` (and CACHE TABLE) only
        serve a query whose plan Spark matches to the cached one, and the cohort queries (WITH
        clauses over the views) did not match: every query recomputed the profiles' ranking and the
        user-id facts, up to three times each."""
        self._keep(name, self.sql(query))

    def keep_identity_map(self) -> None:
        """The identity map kept, and broadcast to every join when it is small enough to: every query
        joins the events to it, and above Spark's 10 MB guess (some 500k mappings) the join became a
        sort-merge join shuffling all the events, per query (x11 time for x10 events)."""
        kept = self._keep(IDENTITY_MAP, self.spark.table(IDENTITY_MAP))
        if kept.count() <= BROADCAST_MAPPINGS:
            kept.hint("broadcast").createOrReplaceTempView(IDENTITY_MAP)

    def _keep(self, name: str, frame):
        try:
            kept = frame.localCheckpoint(eager=True)    # computed now: a broken file fails here, named
        except Exception as exc:
            raise _failure(self.lake, exc) from None
        kept.createOrReplaceTempView(name)
        self._kept.append(kept)
        return kept

    def arrow(self, query: Query) -> pa.Table:
        frame = self.sql(query)
        try:
            return frame.toArrow()
        except Exception as exc:
            raise _failure(self.lake, exc) from None

    def close(self) -> None:
        """Free what this engine kept; the session stays (one per process, toolkit/spark_session.py)."""
        for frame in self._kept:
            _release(frame)
        self._kept.clear()


def _own_session(spark):
    """A session of this engine's own over the process's Spark (same JVM and settings): its temp views
    (every engine names them alike) and kept data are its own, so closing one engine, or opening one
    over another lake, leaves the others' views intact. Spark Connect has no such sessions."""
    try:
        return spark.newSession()
    except Exception:
        return spark


def _release(frame) -> None:
    """Unpersist a local checkpoint's blocks now (else Spark's cleaner frees them once the JVM
    collects the plan). Its plan is a LogicalRDD over the persisted RDD; Spark Connect has no JVM
    handle: its server frees them."""
    try:
        frame._jdf.queryExecution().analyzed().rdd().unpersist(False)
    except Exception:
        pass


def _failure(lake: Lake, exc: Exception) -> Exception:
    """A file Spark could not read (it reads the lake lazily: a broken file fails the first query that
    reaches it) is the lake's fault, named; anything else is the engine's."""
    full = str(exc)
    found = re.search(r"reading file (?:file:)?(\S+?)\.?(?:\s|$)", full)
    if found:
        return LakeError(f"lake {lake}: cannot read {found.group(1)} (not a readable Parquet or JSON file)")
    if "FAILED_READ_FILE" in full:
        return LakeError(f"lake {lake}: cannot read one of its files: {_first_line(exc)}")
    return EngineError(f"Spark failed a query over the lake {lake}: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
